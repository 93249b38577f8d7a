//! A guest that misbehaves on purpose, for the runtime's limit tests. The
//! request parameter `mode` picks the misbehaviour.

use mote_sdk::{
    log, Datatype, Graph, GraphBuilder, Handler, HandlerError, IoTensor, Request, RequestExt, Response, Target, Tensor,
    TensorData, TensorType,
};

struct Misbehave;

impl Handler for Misbehave {
    fn handle(req: Request) -> Result<Response, HandlerError> {
        let mode = req.param("mode").unwrap_or("ok");
        match mode {
            "ok" => Ok(Response { outputs: vec![IoTensor::from_f32("ok", &[1], &[1.0])], parameters: vec![] }),
            "spin" => {
                let mut x: u64 = 1;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            "grow" => {
                let mut hog: Vec<Vec<u8>> = Vec::new();
                loop {
                    hog.push(vec![1u8; 16 << 20]);
                    std::hint::black_box(&hog);
                }
            }
            "huge-tensor" => {
                // Claims a 4 GiB × 4 tensor with a few bytes of data.
                let t = Tensor::new(TensorType::Fp32, &[65536, 65536, 4], &[0u8; 16]);
                Ok(Response { outputs: vec![t.to_io("never")], parameters: vec![] })
            }
            "hoard-tensors" => {
                // Creates 1 MiB tensors and keeps every one: each lives on
                // the host (in the job's resource table), not in guest
                // memory, so only the host's count can stop it.
                let data = vec![0u8; 1 << 20];
                let mut kept = Vec::new();
                for _ in 0..100_000 {
                    kept.push(Tensor::new(TensorType::U8, &[1 << 20], &data));
                }
                Ok(Response { outputs: vec![IoTensor::from_f32("kept", &[1], &[kept.len() as f32])], parameters: vec![] })
            }
            "io-lie" => {
                // Passes a tensor by value (mote:edge/inference-io) whose
                // data does not match its shape: `claim=huge` claims 64 GiB
                // with 16 bytes, `claim=short` 4 floats with 8 bytes,
                // `claim=bytes` a BYTES tensor (not a wasi-nn type),
                // `claim=many` 100,000 tensors.
                let g = GraphBuilder::new();
                let x = g.input("x", TensorType::Fp32, &[-1])?;
                let y = g.node("Identity", &[x], &[])?;
                let graph = g.build(&[("y", y)], Target::Cpu)?;
                let (datatype, shape, data): (_, &[u64], &[u8]) = match req.param("claim") {
                    Some("huge") => (Datatype::Fp32, &[65536, 65536, 4], &[0; 16]),
                    Some("bytes") => (Datatype::Bytes, &[1], &[1, 0, 0, 0, 42]),
                    _ => (Datatype::Fp32, &[4], &[0; 8]),
                };
                let x = IoTensor { name: "x".into(), datatype, shape: shape.to_vec(), data: data.to_vec() };
                // `claim=many`: 100,000 tensors in one compute.
                let inputs = if req.param("claim") == Some("many") { vec![x; 100_000] } else { vec![x] };
                let out = graph.compute(&inputs)?;
                Ok(Response { outputs: vec![IoTensor::from_f32("outputs", &[1], &[out.len() as f32])], parameters: vec![] })
            }
            "io-state" => {
                // A running sum kept on the host (`sum` bound to `acc`),
                // stepped by value and through wasi-nn on one context:
                // 1, then 2 and 3 fed by value, then 4 through wasi-nn.
                let g = GraphBuilder::new();
                let x = g.input("x", TensorType::Fp32, &[1])?;
                let acc = g.input("acc", TensorType::Fp32, &[1])?;
                let sum = g.add(x, acc)?;
                let y = g.node("Identity", &[sum], &[])?;
                let graph = g.build(&[("y", y), ("sum", sum)], Target::Cpu)?;
                graph.bind_state(&[("sum".into(), "acc".into())])?;
                let mut ys = Vec::new();
                let mut names = Vec::new();
                let steps = [
                    vec![IoTensor::from_f32("x", &[1], &[1.0]), IoTensor::from_f32("acc", &[1], &[0.0])],
                    vec![IoTensor::from_f32("x", &[1], &[2.0])],
                    vec![IoTensor::from_f32("x", &[1], &[3.0])],
                ];
                for step in &steps {
                    for t in graph.compute(step)? {
                        ys.extend(t.f32s()?);
                        names.push(t.name);
                    }
                }
                for (n, t) in graph.run(vec![("x".into(), Tensor::from_f32(&[1], &[4.0]))])? {
                    names.push(n);
                    ys.extend(t.to_f32().unwrap_or_default());
                }
                Ok(Response {
                    outputs: vec![IoTensor::from_f32("y", &[ys.len() as u64], &ys)],
                    parameters: vec![("names".into(), names.join(","))],
                })
            }
            "bad-onnx" => match Graph::load_onnx(b"this is not an onnx model", Target::Cpu) {
                Ok(_) => Err(HandlerError::BackendError("garbage loaded as a model".into())),
                Err(e) => Ok(Response {
                    outputs: vec![IoTensor::from_strings("error", &[1], &[&e.to_string()])],
                    parameters: vec![],
                }),
            },
            "missing-model" => {
                let e = Graph::by_name("no-such-model").err().map(|e| e.to_string()).unwrap_or_default();
                Ok(Response { outputs: vec![IoTensor::from_strings("error", &[1], &[&e])], parameters: vec![] })
            }
            "gpu" => match Graph::load_onnx(b"irrelevant", Target::Gpu) {
                Ok(_) => Err(HandlerError::BackendError("gpu load unexpectedly succeeded".into())),
                Err(e) => Ok(Response {
                    outputs: vec![IoTensor::from_strings("error", &[1], &[&e.to_string()])],
                    parameters: vec![],
                }),
            },
            "panic" => panic!("the guest panicked on purpose"),
            // What `supports` answers for the ops in parameter `ops`
            // (comma-separated) on `target` (cpu or gpu): 1 or 0 each.
            "supports" => {
                let target = if req.param("target") == Some("gpu") { Target::Gpu } else { Target::Cpu };
                let ops: Vec<&str> = req.param("ops").unwrap_or("").split(',').filter(|s| !s.is_empty()).collect();
                let answers: Vec<i64> = ops.iter().map(|op| i64::from(GraphBuilder::supports(op, target))).collect();
                Ok(Response { outputs: vec![IoTensor::from_i64("supported", &[answers.len() as u64], &answers)], parameters: vec![] })
            }
            "log" => {
                log::info("hello from the guest log");
                println!("hello from stdout");
                eprintln!("hello from stderr");
                let u = mote_sdk::usage();
                Ok(Response {
                    outputs: vec![IoTensor::from_i64("fuel", &[1], &[u.fuel as i64])],
                    parameters: vec![("peak_memory_bytes".into(), u.peak_memory_bytes.to_string())],
                })
            }
            "work" => {
                // Busy for `ms` milliseconds of job wall time, then succeed.
                let ms: u64 = req.param("ms").and_then(|v| v.parse().ok()).unwrap_or(100);
                let mut spins = 0u64;
                while mote_sdk::usage().wall_ns < ms * 1_000_000 {
                    spins = std::hint::black_box(spins + 1);
                }
                Ok(Response { outputs: vec![IoTensor::from_i64("spins", &[1], &[spins as i64])], parameters: vec![] })
            }
            "heavy" => {
                // A long chain of `size`×`size` matmuls (default 512)
                // declared with the graph builder: seconds of backend work
                // from a one-element input, in many kernels (ORT checks its
                // terminate flag between them).
                let layers: usize = req.param("layers").and_then(|v| v.parse().ok()).unwrap_or(400);
                let size: i64 = req.param("size").and_then(|v| v.parse().ok()).filter(|&n| (1..=4096).contains(&n)).unwrap_or(512);
                let g = GraphBuilder::new();
                let x = g.input("x", TensorType::Fp32, &[1, 1])?;
                let mut e = g.node("Expand", &[x, g.constant_i64(&[2], &[size, size])?], &[])?;
                let scale = g.constant_f32(&[], &[1.0 / size as f32])?;
                for _ in 0..layers {
                    e = g.mul(g.matmul(e, e)?, scale)?;
                }
                let mean = g.node("ReduceMean", &[e], &[])?;
                let graph = g.build(&[("mean", mean)], Target::Cpu)?;
                let out = graph.run(vec![("x".into(), Tensor::from_f32(&[1, 1], &[1.0]))])?;
                Ok(Response { outputs: out.iter().map(|(n, t)| t.to_io(n)).collect(), parameters: vec![] })
            }
            "wasi" => {
                // What a WASI guest can reach on a node: nothing but its own
                // captured stdout/stderr, clocks and random.
                let fs = match std::fs::read_dir("/") {
                    Ok(_) => "listed /".to_string(),
                    Err(e) => format!("denied: {e}"),
                };
                let file = match std::fs::File::create("mote-test-file") {
                    Ok(_) => "created a file".to_string(),
                    Err(e) => format!("denied: {e}"),
                };
                let env = std::env::vars().count() as i64;
                println!("stdout from a WASI guest");
                Ok(Response {
                    outputs: vec![
                        IoTensor::from_strings("fs", &[2], &[&fs, &file]),
                        IoTensor::from_i64("env_vars", &[1], &[env]),
                    ],
                    parameters: vec![],
                })
            }
            "load-model" => {
                // What an attacker's guest does: load model bytes it was
                // sent (input `model`, UINT8), run it on the other inputs
                // and return every output.
                let model = req.inputs.iter().find(|t| t.name == "model").ok_or_else(|| {
                    HandlerError::InvalidInput("load-model needs a UINT8 input named 'model'".into())
                })?;
                let graph = Graph::load_onnx(&model.data, Target::Cpu)?;
                // Every other input feeds the model.
                let mut inputs = Vec::new();
                for t in req.inputs.iter().filter(|t| t.name != "model") {
                    inputs.push((t.name.clone(), Tensor::from_io(t)?));
                }
                let out = graph.run(inputs)?;
                Ok(Response { outputs: out.iter().map(|(n, t)| t.to_io(n)).collect(), parameters: vec![] })
            }
            "remember" => {
                // Keeps the request's `secret` in the instance's memory and
                // returns what an earlier call left there, and how many
                // calls this instance has served: a fresh instance per job
                // returns nothing and 1.
                static KEPT: std::sync::Mutex<(Vec<u8>, u32)> = std::sync::Mutex::new((Vec::new(), 0));
                let mut kept = KEPT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let earlier = std::mem::replace(&mut kept.0, req.param("secret").unwrap_or("").as_bytes().to_vec());
                kept.1 += 1;
                let earlier =
                    IoTensor { name: "earlier".into(), datatype: Datatype::Uint8, shape: vec![earlier.len() as u64], data: earlier };
                Ok(Response {
                    outputs: vec![earlier, IoTensor::from_f32("calls", &[1], &[kept.1 as f32])],
                    parameters: vec![],
                })
            }
            "preinit" => {
                // What `mote build`'s pre-initialization left: whether the
                // table was there before this job touched it, and its sum
                // before this job overwrites one entry (every job of a
                // deployment must see the same, untouched table).
                let before = PREINITIALIZED.load(std::sync::atomic::Ordering::Relaxed);
                let mut table = table().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let sum = table.iter().fold(0u32, |a, &v| a.wrapping_add(v));
                table[7] = table[7].wrapping_add(req.param("secret").map_or(1, |s| s.len() as u32 + 1));
                Ok(Response {
                    outputs: vec![
                        IoTensor::from_f32("preinitialized", &[1], &[if before { 1.0 } else { 0.0 }]),
                        IoTensor::from_i64("sum", &[1], &[i64::from(sum)]),
                    ],
                    parameters: vec![],
                })
            }
            "invalid" => Err(HandlerError::InvalidInput("the guest refused the request".into())),
            other => Err(HandlerError::InvalidInput(format!("unknown mode '{other}'"))),
        }
    }
}

mote_sdk::export_handler!(Misbehave);

/// State built by the pre-initializer (`mode=preinit`): a table worth
/// building once (64 Ki entries of a xorshift stream) and a flag saying it
/// was built before any job.
static TABLE: std::sync::OnceLock<std::sync::Mutex<Vec<u32>>> = std::sync::OnceLock::new();
static PREINITIALIZED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn table() -> &'static std::sync::Mutex<Vec<u32>> {
    TABLE.get_or_init(|| {
        let mut x = 0x9e37_79b9u32;
        std::sync::Mutex::new(
            (0..65_536)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x
                })
                .collect(),
        )
    })
}

fn init() {
    table();
    PREINITIALIZED.store(true, std::sync::atomic::Ordering::Relaxed);
}

mote_sdk::export_initializer!(init);
