//! Prometheus metrics of the node (`GET /metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Outcome {
    pub(crate) deployment: String,
    pub(crate) outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Dep {
    pub(crate) deployment: String,
}

fn latency() -> Histogram {
    // 50 µs … ~ 26 s
    Histogram::new(exponential_buckets(0.00005, 2.0, 20))
}

/// Every metric the node exports.
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) requests: Family<Outcome, Counter>,
    pub(crate) queue_seconds: Family<Dep, Histogram>,
    pub(crate) job_seconds: Family<Dep, Histogram>,
    pub(crate) backend_seconds: Family<Dep, Histogram>,
    pub(crate) fuel: Family<Dep, Counter>,
    pub(crate) backend_compute_seconds: Family<Dep, Counter<f64, AtomicU64>>,
    pub(crate) in_flight: Gauge,
    pub(crate) cache_hits: Gauge,
    pub(crate) cache_misses: Gauge,
    pub(crate) cache_entries: Gauge,
    pub(crate) cache_bytes: Gauge,
    pub(crate) cache_evictions: Gauge,
    pub(crate) batched_runs: Family<Dep, Gauge>,
    pub(crate) batched_computes: Family<Dep, Gauge>,
    pub(crate) batch_fallbacks: Family<Dep, Gauge>,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("mote");
        let requests = Family::<Outcome, Counter>::default();
        let queue_seconds = Family::<Dep, Histogram>::new_with_constructor(latency as fn() -> Histogram);
        let job_seconds = Family::<Dep, Histogram>::new_with_constructor(latency as fn() -> Histogram);
        let backend_seconds = Family::<Dep, Histogram>::new_with_constructor(latency as fn() -> Histogram);
        let fuel = Family::<Dep, Counter>::default();
        let backend_compute_seconds = Family::<Dep, Counter<f64, AtomicU64>>::default();
        let in_flight = Gauge::default();
        let (cache_hits, cache_misses, cache_entries) = (Gauge::default(), Gauge::default(), Gauge::default());
        registry.register("requests", "Inference requests by deployment and outcome", requests.clone());
        registry.register("queue_seconds", "Time a request waited for a job slot", queue_seconds.clone());
        registry.register("job_seconds", "Wall time of jobs: guest code and backend together", job_seconds.clone());
        registry.register("backend_seconds", "Backend time per job", backend_seconds.clone());
        registry.register("fuel", "Wasm fuel consumed by guests", fuel.clone());
        registry.register("backend_compute_seconds", "Backend seconds consumed", backend_compute_seconds.clone());
        registry.register("in_flight_requests", "Requests admitted and not yet answered", in_flight.clone());
        registry.register("graph_cache_hits", "Graph loads served from the cache", cache_hits.clone());
        registry.register("graph_cache_misses", "Graph loads that built a graph", cache_misses.clone());
        registry.register("graph_cache_entries", "Graphs held by the cache", cache_entries.clone());
        let (cache_bytes, cache_evictions) = (Gauge::default(), Gauge::default());
        registry.register("graph_cache_bytes", "Bytes charged for the graphs the cache holds", cache_bytes.clone());
        registry.register("graph_cache_evictions", "Graphs evicted from the cache", cache_evictions.clone());
        let (batched_runs, batched_computes, batch_fallbacks) =
            (Family::<Dep, Gauge>::default(), Family::<Dep, Gauge>::default(), Family::<Dep, Gauge>::default());
        registry.register("batched_runs", "Backend runs that merged two or more jobs (dynamic batching)", batched_runs.clone());
        registry.register("batched_computes", "Jobs' computes served by merged runs", batched_computes.clone());
        registry.register(
            "batch_fallbacks",
            "Merged runs that failed or were not per-row, whose jobs then ran alone",
            batch_fallbacks.clone(),
        );
        Self {
            registry,
            requests,
            queue_seconds,
            job_seconds,
            backend_seconds,
            fuel,
            backend_compute_seconds,
            in_flight,
            cache_hits,
            cache_misses,
            cache_entries,
            cache_bytes,
            cache_evictions,
            batched_runs,
            batched_computes,
            batch_fallbacks,
        }
    }

    /// The text exposition format.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }

    pub(crate) fn count(&self, deployment: &str, outcome: &str) {
        self.requests.get_or_create(&Outcome { deployment: deployment.into(), outcome: outcome.into() }).inc();
    }
}
