//! Declares an MLP with the graph builder, weights as constants, and runs
//! it: `x` (FP32 `[batch, 16]`) → Gemm+ReLU → MatMul+Add+GELU → LayerNorm
//! → Gemm → Softmax → `probs` (FP32 `[batch, 10]`).
//!
//! Weights come from a seeded splitmix64 stream (parameter `seed`, default
//! 7), so the same network can be rebuilt outside the guest and checked.

use mote_sdk::{GraphBuilder, Handler, HandlerError, Request, RequestExt, Response, Target, Tensor, TensorType};

struct MlpBuilder;

struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / 16_777_216.0 * 2.0 - 1.0
    }

    fn take(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

impl Handler for MlpBuilder {
    fn handle(req: Request) -> Result<Response, HandlerError> {
        let x = req.input("x")?;
        let seed = match req.param("seed") {
            Some(v) => v.parse().map_err(|_| HandlerError::InvalidInput(format!("seed '{v}' is not a number")))?,
            None => 7u64,
        };
        let mut rng = SplitMix(seed);
        let scale = |fan_in: usize| 1.0 / (fan_in as f32).sqrt();
        let w1 = rng.take(16 * 32, scale(16));
        let b1 = rng.take(32, 0.1);
        let w2 = rng.take(32 * 32, scale(32));
        let b2 = rng.take(32, 0.1);
        let w3 = rng.take(32 * 10, scale(32));
        let b3 = rng.take(10, 0.1);

        let g = GraphBuilder::new();
        let input = g.input("x", TensorType::Fp32, &[-1, 16])?;
        let h = g.relu(g.gemm(input, g.constant_f32(&[16, 32], &w1)?, Some(g.constant_f32(&[32], &b1)?), false)?)?;
        let h = g.gelu(g.add(g.matmul(h, g.constant_f32(&[32, 32], &w2)?)?, g.constant_f32(&[32], &b2)?)?)?;
        let h = g.layer_norm(h, g.constant_f32(&[32], &[1.0; 32])?, g.constant_f32(&[32], &[0.0; 32])?, -1, 1e-5)?;
        let logits = g.gemm(h, g.constant_f32(&[32, 10], &w3)?, Some(g.constant_f32(&[10], &b3)?), false)?;
        let probs = g.softmax(logits, -1)?;
        let graph = g.build(&[("probs", probs), ("logits", logits)], Target::Cpu)?;

        let outputs = graph.run(vec![("x".into(), Tensor::from_io(x)?)])?;
        let mut out: Vec<_> = outputs.iter().map(|(n, t)| t.to_io(n)).collect();
        out.sort_by(|a, b| b.name.cmp(&a.name));
        Ok(Response { outputs: out, parameters: vec![("seed".into(), seed.to_string())] })
    }
}

mote_sdk::export_handler!(MlpBuilder);
