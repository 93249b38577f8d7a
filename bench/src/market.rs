//! Market benchmark: a real `nats-server` (JetStream) and real `mote node`
//! processes on loopback, jobs posted through the library. Measures
//! submit → result latency against the same job run in-process, and jobs/s
//! with 1 and 3 nodes.

use crate::stats::Summary;
use crate::{bar, Ctx};
use anyhow::{Context, Result};
use futures_util::StreamExt;
use mote_agent::market::client::Submission;
use mote_agent::market::spec::{new_job_id, BackendReq, JobLimits};
use mote_agent::market::{Market, NatsOptions};
use mote_runtime::{DeploymentSpec, Limits, Runtime, RuntimeConfig};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn mote_bin() -> Result<PathBuf> {
    let p = std::env::current_exe()?.with_file_name("mote");
    anyhow::ensure!(p.exists(), "{} missing: cargo build --release --bins", p.display());
    Ok(p)
}

fn start_nodes(url: &str, market: &str, n: usize, dir: &std::path::Path) -> Result<Vec<Proc>> {
    let conc = std::thread::available_parallelism().map_or(1, |n| n.get()).to_string();
    let mut nodes = Vec::new();
    for i in 0..n {
        let dd = dir.join(format!("{market}-node{i}"));
        let log = std::fs::File::create(dd.with_extension("log"))?;
        let child = Command::new(mote_bin()?)
            .args(["node", "--nats", url, "--market", market, "--concurrency", &conc, "--data-dir"])
            .arg(&dd)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        nodes.push(Proc(child));
        // Joined once its snapshot is there.
        let start = Instant::now();
        while !std::fs::read_to_string(dd.with_extension("log")).unwrap_or_default().contains("joined market") {
            anyhow::ensure!(start.elapsed() < Duration::from_secs(60), "node {i} did not join");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(nodes)
}

pub(crate) fn run(ctx: &Ctx) -> Result<Value> {
    let deps = std::env::var_os("MOTE_DEPS_DIR").map_or_else(|| PathBuf::from("deps"), PathBuf::from);
    let nats_bin = deps.join("nats-server");
    anyhow::ensure!(nats_bin.exists(), "{} missing: run scripts/setup.sh", nats_bin.display());
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    // An explicit max_file_store: the server's default (75 % of the free
    // disk) can be smaller than the 1 GiB the job queue reserves.
    let conf = dir.path().join("server.conf");
    std::fs::write(
        &conf,
        format!("jetstream {{ store_dir: \"{}\", max_file_store: 8G }}\n", dir.path().join("js").display()),
    )?;
    let _server = Proc(
        Command::new(&nats_bin)
            .arg("-c")
            .arg(&conf)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server")?,
    );
    let url = format!("nats://127.0.0.1:{port}");
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(start.elapsed() < Duration::from_secs(20), "nats-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let market = rt.block_on(async { Market::open(NatsOptions::from_urls(&url).connect().await?, 1).await })?;

    let guest = ctx.read("guests/passthrough.wasm")?;
    let model = ctx.read("models/mlp.onnx")?;
    let request: Value = serde_json::from_slice(&ctx.read("models/mlp.request.json")?)?;
    let submission = |m: &str| Submission {
        market: m.into(),
        name: "passthrough".into(),
        guest: guest.clone(),
        models: vec![("model".into(), model.clone())],
        request: request.clone(),
        backend: BackendReq::Any,
        max_price: 10_000,
        timeout_s: 30,
        limits: JobLimits::default(),
        verify: 0.0,
    };

    // Baseline: the same job in-process (a whole job, receipt included).
    let runtime = Runtime::new(RuntimeConfig { data_dir: None, ..RuntimeConfig::default() })?;
    let d = runtime.deploy(DeploymentSpec {
        name: "mlp".into(),
        guest: guest.clone(),
        models: vec![("model".into(), model.clone())],
        limits: Limits::default(),
        backend: Default::default(),
        batching: None,
    })?;
    let req = ctx.request("mlp")?;
    let runs = if ctx.quick { 200 } else { 2000 };
    let pb = bar(runs, "market: in-process baseline");
    let mut base = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        d.run(&req).result.expect("in-process job");
        base.push(t.elapsed());
        pb.inc(1);
    }
    pb.finish_and_clear();
    let base = Summary::of(&base);

    // Latency: one job at a time, one node.
    let nodes = start_nodes(&url, "lat", 1, dir.path())?;
    let n = if ctx.quick { 50 } else { 300 };
    let pb = bar(n, "market: submit → result, 1 node");
    let lat = rt.block_on(async {
        let first = market.submit(submission("lat")).await?;
        market.wait("lat", &first.id, Duration::from_secs(60)).await?;
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            let mut job = first.clone();
            job.id = new_job_id();
            let mut sub = market.client.subscribe(mote_agent::market::result_subject("lat", &job.id)).await?;
            let t = Instant::now();
            market.post(&job).await?;
            sub.next().await.context("result")?;
            samples.push(t.elapsed());
            pb.inc(1);
        }
        anyhow::Ok(Summary::of(&samples))
    })?;
    pb.finish_and_clear();
    drop(nodes);

    // Throughput with 1 and 3 nodes.
    let jobs = if ctx.quick { 300 } else { 2000 };
    let mut throughput = Vec::new();
    for n_nodes in [1usize, 3] {
        let name = format!("tput{n_nodes}");
        let nodes = start_nodes(&url, &name, n_nodes, dir.path())?;
        let pb = bar(jobs, &format!("market: {jobs} jobs, {n_nodes} node(s)"));
        let (secs, post_secs) = rt.block_on(async {
            let first = market.submit(submission(&name)).await?;
            market.wait(&name, &first.id, Duration::from_secs(60)).await?;
            // Warm every node (artifacts fetched, guest compiled) before
            // the clock starts.
            for _ in 0..20 * n_nodes {
                let mut job = first.clone();
                job.id = new_job_id();
                market.post(&job).await?;
                market.wait(&name, &job.id, Duration::from_secs(60)).await?;
            }
            let mut sub = market.client.subscribe(format!("mote.results.{name}.*")).await?;
            let t = Instant::now();
            // A client pipelines its posts (64 outstanding), as a batch
            // submitter would.
            let posted: Vec<Result<()>> = futures_util::stream::iter(0..jobs)
                .map(|_| {
                    let mut job = first.clone();
                    job.id = new_job_id();
                    let market = &market;
                    async move { market.post(&job).await }
                })
                .buffer_unordered(64)
                .collect()
                .await;
            posted.into_iter().collect::<Result<Vec<()>>>()?;
            let post_secs = t.elapsed().as_secs_f64();
            let mut seen = std::collections::HashSet::new();
            while seen.len() < jobs {
                let m = tokio::time::timeout(Duration::from_secs(120), sub.next()).await?.context("results")?;
                seen.insert(m.subject.to_string());
                pb.inc(1);
            }
            anyhow::Ok((t.elapsed().as_secs_f64(), post_secs))
        })?;
        pb.finish_and_clear();
        drop(nodes);
        throughput.push(json!({"nodes": n_nodes, "jobs": jobs, "seconds": secs, "jobs_per_s": jobs as f64 / secs,
                               "post_seconds": post_secs}));
    }
    Ok(json!({
        "in_process": base,
        "market_1_node": lat,
        "overhead_p50_us": lat.p50_us - base.p50_us,
        "throughput": throughput,
    }))
}
