//! Classifies a tensor with an ONNX model through standard wasi-nn and
//! prints the top 5, like wasmtime's `classification-example`.
//!
//! ```text
//! wasi-nn-classify [--by-name NAME] [--input NAME] [--shape 1,3,224,224]
//!     reads fixture/model.onnx (or the host's graph NAME) and
//!     fixture/tensor.bin (float32, little-endian)
//! wasi-nn-classify probe WRITE_PATH READ_PATH
//!     tries to write one path and read another; exit 0 when both are denied
//! ```

wit_bindgen::generate!({
    path: "../../wit/deps/wasi-nn",
    world: "ml",
    generate_all,
});

use wasi::nn::graph::{self, ExecutionTarget, GraphEncoding};
use wasi::nn::tensor::{Tensor, TensorType};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("probe") {
        std::process::exit(probe(&args[2], &args[3]));
    }
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let input = flag("--input").unwrap_or_else(|| "image".into());
    let shape: Vec<u32> = flag("--shape")
        .unwrap_or_else(|| "1,3,224,224".into())
        .split(',')
        .map(|d| d.parse().expect("--shape: numbers separated by commas"))
        .collect();

    let graph = match flag("--by-name") {
        Some(name) => graph::load_by_name(&name),
        None => {
            let model = std::fs::read("fixture/model.onnx").expect("reading fixture/model.onnx");
            graph::load(&[model], GraphEncoding::Onnx, ExecutionTarget::Cpu)
        }
    }
    .unwrap_or_else(|e| fail("loading the graph", e));
    eprintln!("graph loaded");
    let context = graph.init_execution_context().unwrap_or_else(|e| fail("creating a context", e));
    let data = std::fs::read("fixture/tensor.bin").expect("reading fixture/tensor.bin");
    let tensor = Tensor::new(&shape, TensorType::Fp32, &data);
    let outputs = context.compute(vec![(input, tensor)]).unwrap_or_else(|e| fail("computing", e));
    let (name, out) = outputs.into_iter().next().expect("the model has an output");
    let values: Vec<f32> =
        out.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let mut ranked: Vec<(usize, f32)> = values.into_iter().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!("{name}: top 5 of {}", ranked.len());
    for (rank, (index, value)) in ranked.iter().take(5).enumerate() {
        println!("{}. class {index}: {value:.6}", rank + 1);
    }
}

fn fail(what: &str, e: wasi::nn::errors::Error) -> ! {
    eprintln!("{what} failed: {:?}: {}", e.code(), e.data());
    std::process::exit(1)
}

/// The sandbox's file-system contract, seen from inside.
fn probe(write: &str, read: &str) -> i32 {
    let wrote = std::fs::write(write, b"escaped");
    println!("write {write}: {}", wrote.as_ref().map_or_else(|e| format!("denied ({e})"), |_| "ALLOWED".into()));
    let got = std::fs::read(read);
    println!("read {read}: {}", got.as_ref().map_or_else(|e| format!("denied ({e})"), |b| format!("ALLOWED ({} bytes)", b.len())));
    if wrote.is_err() && got.is_err() {
        0
    } else {
        4
    }
}
