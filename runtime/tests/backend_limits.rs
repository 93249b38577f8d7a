//! The backend boundary under hostile models: a model that asks ONNX
//! Runtime for more memory than the node's budget, one that fits the
//! budget but not its job's limit, and a graph too large to compile before
//! the deadline.
//!
//! One test in its own binary: ONNX Runtime's environment (and with it the
//! node's backend budget) is created once per process, by the first
//! runtime, so this file's runtime must be the process's first.

mod common;

use common::*;
use mote_runtime::backend::BackendChoice;
use mote_runtime::tensor::{Datatype, IoTensor};
use mote_runtime::{attack_models, DeploymentSpec, Limits, Outcome, Request, Runtime, RuntimeConfig};
use std::time::{Duration, Instant};

const BUDGET: u64 = 256 << 20;
const CACHE: u64 = 128 << 20;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 =
        status.lines().find(|l| l.starts_with("VmRSS:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

/// The misbehave guest's `load-model` request: `model` plus an `x` of one
/// float.
fn load_model(model: Vec<u8>) -> Request {
    let model = IoTensor { name: "model".into(), datatype: Datatype::Uint8, shape: vec![model.len() as u64], data: model };
    let x = IoTensor { name: "x".into(), datatype: Datatype::Fp32, shape: vec![1], data: 1f32.to_le_bytes().to_vec() };
    with_params(Request { inputs: vec![model, x], parameters: vec![] }, &[("mode", "load-model")])
}

#[test]
fn hostile_models_stay_within_the_backend_budget_and_the_deadline() {
    let rt = Runtime::new(RuntimeConfig {
        data_dir: None,
        pool_instances: 8,
        backend_memory_bytes: BUDGET,
        cache_bytes: CACHE,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let misbehave = |limits: Limits| {
        rt.deploy(DeploymentSpec {
            name: "misbehave".into(),
            guest: guest("misbehave"),
            models: vec![],
            limits,
            backend: BackendChoice::Auto,
            batching: None,
        })
        .unwrap()
    };
    let roomy = misbehave(Limits { memory_bytes: 2 << 30, ..Limits::default() });

    // 1. 2^30 floats: 4 GiB for the Expand alone. The arena refuses it.
    let before = rss_bytes();
    let r = roomy.run(&load_model(attack_models::memory_bomb_model(1 << 30)));
    let err = r.result.expect_err("a 4 GiB intermediate must not be allocated");
    assert_eq!(err.outcome, Outcome::MemoryLimit, "{err}");
    assert_eq!(r.receipt.outcome, Outcome::MemoryLimit);
    let grew = rss_bytes().saturating_sub(before);
    assert!(grew < BUDGET + (64 << 20), "RSS grew by {} MiB with a {} MiB budget", grew >> 20, BUDGET >> 20);

    // 2. 2^24 floats (64 MiB, twice): within the node's budget, so it runs,
    // and the receipt is charged for it.
    let r = roomy.run(&load_model(attack_models::memory_bomb_model(1 << 24)));
    let out = r.result.expect("a 128 MiB model fits a 256 MiB budget");
    assert_eq!(out.outputs[0].data, ((1u64 << 24) as f32).to_le_bytes().to_vec(), "sum of 2^24 ones");
    assert!(
        r.receipt.usage.peak_memory_bytes >= 64 << 20,
        "backend memory is not in the receipt: peak {} bytes",
        r.receipt.usage.peak_memory_bytes
    );

    // 3. The same model against a job limit of 48 MiB: memory_limit.
    let tight = misbehave(Limits { memory_bytes: 48 << 20, ..Limits::default() });
    let err = tight.run(&load_model(attack_models::memory_bomb_model(1 << 24))).result.expect_err("over the job's limit");
    assert_eq!(err.outcome, Outcome::MemoryLimit, "{err}");

    // 4. A graph of 30,000 matmul layers (60,001 nodes), declared in a few
    // milliseconds of guest time: ORT's optimiser is quadratic in it
    // (minutes). Over max_graph_nodes: refused before ORT sees it.
    let quick = misbehave(Limits { deadline_ms: 1000, ..Limits::default() });
    let started = Instant::now();
    let r = quick.run(&with_params(Request::default(), &[("mode", "heavy"), ("layers", "30000")]));
    let err = r.result.expect_err("60,001 nodes are over the limit");
    assert!(err.message.contains("max_graph_nodes"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(1), "refused after {:?}", started.elapsed());

    // 5. 4,900 layers (9,801 nodes, under the limit) take ORT seconds to
    // optimise: the job stops waiting at its 1 s deadline.
    let started = Instant::now();
    let r = quick.run(&with_params(Request::default(), &[("mode", "heavy"), ("layers", "4900")]));
    let took = started.elapsed();
    let err = r.result.expect_err("4,900 layers cannot be optimised in 1 s");
    assert_eq!(err.outcome, Outcome::Deadline, "{err}");
    assert!(took < Duration::from_millis(2500), "the load ran {took:?} past a 1 s deadline");

    // 6. A flood of distinct 16 MiB models from one tenant: the cache stays
    // within its bytes, the other tenant's warm model stays cached, and
    // memory goes back to the system after eviction.
    let warm = rt
        .deploy(DeploymentSpec {
            name: "other-tenant".into(),
            guest: guest("passthrough"),
            models: vec![("model".into(), model("mlp"))],
            limits: Limits::default(),
            backend: BackendChoice::Auto,
            batching: None,
        })
        .unwrap();
    warm.warm().unwrap();
    let misses = rt.cache_stats().misses;
    let rss_start = rss_bytes();
    let mut rss_peak = rss_start;
    for seed in 0..40 {
        let mut req = load_model(attack_models::weights_model(seed, 16 << 20));
        req.inputs.retain(|t| t.name == "model");
        let r = roomy.run(&req);
        r.result.unwrap_or_else(|e| panic!("model {seed}: {e}"));
        assert!(rt.cache_stats().bytes <= CACHE, "cache over its bytes: {:?}", rt.cache_stats());
        rss_peak = rss_peak.max(rss_bytes());
    }
    assert!(rt.cache_stats().evictions >= 30, "{:?}", rt.cache_stats());
    warm.run(&request("mlp")).result.expect("the other tenant still serves");
    // (That run also gave the arena's free regions back.)
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(rt.cache_stats().misses, misses + 40, "the other tenant's model was evicted by the flood");
    let grew = rss_peak.saturating_sub(rss_start);
    eprintln!(
        "flood of 40 x 16 MiB models, cache {} MiB: RSS {} MiB at start, peak +{} MiB, end +{} MiB",
        CACHE >> 20,
        rss_start >> 20,
        grew >> 20,
        rss_bytes().saturating_sub(rss_start) >> 20
    );
    assert!(grew < 2 * CACHE + (256 << 20), "RSS grew {} MiB for a {} MiB cache", grew >> 20, CACHE >> 20);
    let kept = rss_bytes().saturating_sub(rss_start);
    assert!(kept < CACHE + (96 << 20), "{} MiB kept after eviction with a {} MiB cache", kept >> 20, CACHE >> 20);

    // The node still serves.
    let d = deploy(&rt, "passthrough", &[("model", "mlp")], Limits::default());
    assert!(d.run(&request("mlp")).result.is_ok());
}
