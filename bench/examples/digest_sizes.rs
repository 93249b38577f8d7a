//! Receipt digests by size (the measurement behind
//! `mote_protocol::SHORT_FORM_BYTES`): p50 of 2000 digests of canonical
//! forms, sha256 against BLAKE3 — the transformer's request, then one FP32
//! tensor of 1 to 64 KiB. `digest_sizes`, from the repository root.
use mote_runtime::tensor::{Datatype, IoTensor};
use mote_runtime::{digest_with, kserve, DigestAlg};
use std::time::Instant;

/// p50 of `f`, in ns, after a warm-up.
fn p50_ns(mut f: impl FnMut()) -> f64 {
    for _ in 0..200 {
        f();
    }
    let mut ns: Vec<f64> = (0..2000)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_nanos() as f64
        })
        .collect();
    ns.sort_by(f64::total_cmp);
    ns[ns.len() / 2]
}

/// sha256 and BLAKE3 p50 of the canonical form of `tensors`.
fn both(tensors: &[IoTensor], parameters: &[(String, String)]) -> (f64, f64) {
    let sha256 = p50_ns(|| {
        std::hint::black_box(digest_with(DigestAlg::Sha256, tensors, parameters));
    });
    let blake3 = p50_ns(|| {
        std::hint::black_box(digest_with(DigestAlg::Blake3, tensors, parameters));
    });
    (sha256, blake3)
}

fn main() {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read("build/models/transformer.request.json").unwrap()).unwrap();
    let req = kserve::parse_request(&v).unwrap();
    let (s, b) = both(&req.inputs, &req.parameters);
    let bytes: usize = req.inputs.iter().map(|t| t.data.len()).sum();
    println!("transformer request ({bytes} data bytes): sha256 {s:.0} ns, BLAKE3 {b:.0} ns");
    for kib in [1usize, 2, 4, 8, 12, 16, 32, 64] {
        let t = [IoTensor {
            name: "x".into(),
            datatype: Datatype::Fp32,
            shape: vec![(kib * 256) as u64],
            data: vec![7; kib * 1024],
        }];
        let (s, b) = both(&t, &[]);
        println!("{kib:>3} KiB: sha256 {s:>6.0} ns, BLAKE3 {b:>6.0} ns");
    }
}
