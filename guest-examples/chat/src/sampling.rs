//! Token sampling: repetition penalty, temperature, top-k, top-p, and a
//! seeded generator (SplitMix64) so that a seed fixes the output.

/// The sampling knobs of a request.
#[derive(Clone, Copy, Debug)]
pub struct SamplingParams {
    /// 0 = greedy (argmax).
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = all).
    pub top_k: u32,
    /// Keep the smallest set of tokens whose probability reaches p.
    pub top_p: f32,
    /// HF-style: logits of tokens already seen are divided (if positive) or
    /// multiplied (if negative) by it; 1 = off.
    pub repetition_penalty: f32,
}

impl SamplingParams {
    /// Refuses values outside the meaningful ranges.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=2.0).contains(&self.temperature) {
            return Err("temperature must be in 0..=2".into());
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err("top_p must be in (0, 1]".into());
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty <= 10.0) {
            return Err("repetition_penalty must be in (0, 10]".into());
        }
        Ok(())
    }
}

/// A small, well-known generator: deterministic across platforms.
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// Seeds it.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Picks tokens from logits.
pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
}

impl Sampler {
    /// A sampler for `params`, seeded.
    pub fn new(params: SamplingParams, seed: u64) -> Self {
        Self { params, rng: SplitMix64::new(seed) }
    }

    /// The next token from one row of logits (modified in place); `seen`
    /// are the tokens of the sequence so far (for the repetition penalty).
    pub fn sample(&mut self, logits: &mut [f32], seen: &[u32]) -> u32 {
        let p = self.params;
        if p.repetition_penalty != 1.0 {
            let mut done = vec![false; logits.len()];
            for &t in seen {
                let t = t as usize;
                if t < logits.len() && !done[t] {
                    done[t] = true;
                    let l = &mut logits[t];
                    *l = if *l > 0.0 { *l / p.repetition_penalty } else { *l * p.repetition_penalty };
                }
            }
        }
        if p.temperature == 0.0 {
            return argmax(logits);
        }
        // Candidates sorted by logit, highest first (ties: lower id first).
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        idx.sort_unstable_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
        if p.top_k > 0 {
            idx.truncate(p.top_k as usize);
        }
        let max = f64::from(logits[idx[0] as usize]);
        let mut probs: Vec<f64> =
            idx.iter().map(|&i| ((f64::from(logits[i as usize]) - max) / f64::from(p.temperature)).exp()).collect();
        let sum: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= sum);
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, &x) in probs.iter().enumerate() {
                acc += x;
                if acc >= f64::from(p.top_p) {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
            idx.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut r = self.rng.next_f64() * total;
        for (i, &x) in probs.iter().enumerate() {
            if r < x {
                return idx[i];
            }
            r -= x;
        }
        idx[probs.len() - 1]
    }
}

/// The first index of the largest value (the best value kept in a local:
/// no reload of `v[best]` per element).
fn argmax(v: &[f32]) -> u32 {
    let Some(&first) = v.first() else { return 0 };
    let (mut best, mut best_v) = (0, first);
    for (i, &x) in v.iter().enumerate().skip(1) {
        if x > best_v {
            best = i;
            best_v = x;
        }
    }
    best as u32
}
