//! Endpoint benchmark: the real `mote serve` on loopback, driven by this
//! process's own async clients over HTTPS (JSON and binary), QUIC and
//! KServe gRPC (tonic, raw tensor contents, over TLS), with the same
//! deployment called in-process as the baseline.

use crate::blocking_https::BlockingPost;
use crate::stats::Summary;
use crate::{bar, Ctx};
use anyhow::{bail, Context, Result};
use mote_agent::busy_poll::BusyPoll;
use mote_agent::jobs::{JobThreads, Slots};
use mote_agent::quic::QuicClient;
use mote_agent::tls::Trust;
use mote_runtime::{DeploymentSpec, Limits, Request, Runtime, RuntimeConfig};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CONCURRENCY: [usize; 3] = [1, 8, 64];
/// How many blocks each transport's one-client requests are cut into,
/// the transports taking turns block by block.
const ONE_CLIENT_BLOCKS: usize = 8;
/// The one-client row of HTTPS JSON from [`BlockingPost`].
pub(crate) const BLOCKING_CLIENT: &str = "https-json-blocking";
/// How long an in-process job may wait in line for a slot (the served
/// config's deadline).
pub(crate) const SLOT_WAIT: Duration = Duration::from_secs(120);

/// The node's busy-polling window, here and in the served config:
/// `MOTE_BENCH_BUSY_POLL_US` (µs; 0: off), else the node's default.
pub(crate) fn busy_poll_window() -> Duration {
    std::env::var("MOTE_BENCH_BUSY_POLL_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(mote_agent::busy_poll::DEFAULT_WINDOW, Duration::from_micros)
}

/// The in-process node: job threads polling as the served node's do, and
/// an async runtime of its own whose workers poll as the server's (the
/// transports' clients run on another runtime, which does not poll, as a
/// remote client's would not).
fn in_process_node(threads: usize) -> Result<(tokio::runtime::Runtime, Arc<JobThreads>)> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let jobs = JobThreads::polling(threads, BusyPoll::new(busy_poll_window()))?;
    let poll = jobs.busy_poll().clone();
    rt.block_on(async move { poll.start_async(2) });
    Ok((rt, jobs))
}

const TRANSPORTS: [&str; 5] = ["in-process", "https-json", "https-binary", "quic", "grpc"];

struct Server {
    child: Child,
    https: SocketAddr,
    quic: SocketAddr,
    grpc: SocketAddr,
    cert: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(ctx: &Ctx) -> Result<Server> {
    let dir = tempfile::tempdir()?;
    let b = ctx.build.canonicalize()?;
    let cfg = format!(
        r#"
[server]
listen = "127.0.0.1:0"
quic = "127.0.0.1:0"
grpc = "127.0.0.1:0"
busy_poll_us = {poll}
[[deployment]]
name = "mlp"
guest = "{b}/guests/passthrough.wasm"
models = {{ model = "{b}/models/mlp.onnx" }}
max_concurrency = 2
max_queue = 256
[[deployment]]
name = "cnn"
guest = "{b}/guests/passthrough.wasm"
models = {{ model = "{b}/models/cnn.onnx" }}
max_concurrency = 2
max_queue = 256
[deployment.limits]
deadline_ms = 120000
"#,
        b = b.display(),
        poll = busy_poll_window().as_micros()
    );
    let path = dir.path().join("mote.toml");
    std::fs::write(&path, cfg)?;
    let exe = std::env::current_exe()?.with_file_name("mote");
    if !exe.exists() {
        bail!("{} not found: build the workspace binaries first (make bench does)", exe.display());
    }
    let mut child = Command::new(&exe)
        .args(["serve", "--config"])
        .arg(&path)
        .env("MOTE_HOME", dir.path().join("home"))
        .env("MOTE_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped"));
    let mut seen = mote_agent::serve::Announced::default();
    let mut line = String::new();
    while lines.read_line(&mut line)? > 0 && !seen.feed(&line) {
        line.clear();
    }
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.lines() {});
    Ok(Server {
        child,
        https: seen.http.context("mote serve announced no https address")?,
        quic: seen.quic.context("mote serve announced no quic address")?,
        grpc: seen.grpc.context("mote serve announced no grpc address")?,
        cert: seen.cert.context("mote serve announced no certificate")?,
        _dir: dir,
    })
}

fn binary_body(req: &Request) -> (Vec<u8>, usize) {
    let inputs: Vec<Value> = req
        .inputs
        .iter()
        .map(|t| json!({"name": t.name, "shape": t.shape, "datatype": t.datatype.as_str(), "parameters": {"binary_data_size": t.data.len()}}))
        .collect();
    let mut body =
        serde_json::to_vec(&json!({"inputs": inputs, "parameters": {"binary_data_output": true}})).expect("json");
    let n = body.len();
    for t in &req.inputs {
        body.extend(&t.data);
    }
    (body, n)
}

/// One request of a transport, as a future.
pub(crate) type Call = Arc<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>> + Send + Sync>;

/// Runs `total` requests with `conc` concurrent clients; latency summary and
/// requests per second.
pub(crate) fn drive(
    rt: &tokio::runtime::Runtime,
    conc: usize,
    total: usize,
    pb: &indicatif::ProgressBar,
    call: Call,
) -> Result<(Summary, f64)> {
    let (samples, secs) = drive_samples(rt, conc, total, pb, call)?;
    Ok((Summary::of(&samples), samples.len() as f64 / secs))
}

/// [`drive`]'s latencies, each request's, and the seconds the run took.
fn drive_samples(
    rt: &tokio::runtime::Runtime,
    conc: usize,
    total: usize,
    pb: &indicatif::ProgressBar,
    call: Call,
) -> Result<(Vec<Duration>, f64)> {
    let next = Arc::new(AtomicUsize::new(0));
    let samples = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let start = Instant::now();
    rt.block_on(async {
        let tasks: Vec<_> = (0..conc)
            .map(|_| {
                let (next, samples, call, pb) = (next.clone(), samples.clone(), call.clone(), pb.clone());
                tokio::spawn(async move {
                    while next.fetch_add(1, Ordering::SeqCst) < total {
                        let t = Instant::now();
                        call().await?;
                        samples.lock().expect("samples").push(t.elapsed());
                        pb.inc(1);
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        for t in tasks {
            t.await??;
        }
        anyhow::Ok(())
    })?;
    let elapsed = start.elapsed().as_secs_f64();
    let samples = std::mem::take(&mut *samples.lock().expect("samples"));
    Ok((samples, elapsed))
}

pub(crate) fn run(ctx: &Ctx) -> Result<Value> {
    let server = start(ctx)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let pem = std::fs::read(&server.cert)?;
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
        .tls_built_in_root_certs(false)
        .pool_max_idle_per_host(128)
        .build()?;
    let quic =
        Arc::new(rt.block_on(QuicClient::connect(server.quic, "localhost", &Trust::CaFile(server.cert.clone())))?);
    let local =
        Runtime::new(RuntimeConfig { data_dir: None, ..RuntimeConfig::default() }).map_err(anyhow::Error::msg)?;
    let grpc = rt.block_on(async {
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&pem))
            .domain_name("localhost");
        let channel = tonic::transport::Channel::from_shared(format!("https://localhost:{}", server.grpc.port()))?
            .tls_config(tls)?
            .connect()
            .await?;
        anyhow::Ok(GrpcClient::new(channel).max_decoding_message_size(usize::MAX))
    })?;

    let mut rows = Vec::new();
    for model in ["mlp", "cnn"] {
        let req = Arc::new(ctx.request(model)?);
        let json_body = bytes_of(&std::fs::read(ctx.build.join(format!("models/{model}.request.json")))?);
        let (bin, bin_len) = binary_body(&req);
        let bin = bytes_of(&bin);
        let d = Arc::new(local.deploy(DeploymentSpec {
            name: model.into(),
            guest: ctx.read("guests/passthrough.wasm")?,
            models: vec![("model".into(), ctx.read(&format!("models/{model}.onnx"))?)],
            limits: Limits::default(),
            ..DeploymentSpec::default()
        })?);
        // The node's admission: at most `max_concurrency` (2, as in the
        // served config) jobs at once, each on a job thread as the node runs
        // them, the others in line.
        let slots = Slots::new(2);
        let (node_rt, job_threads) = in_process_node(2)?;
        let total = match (ctx.quick, model) {
            (true, "cnn") => 16,
            (true, _) => 128,
            (false, "cnn") => 128,
            (false, _) => 1024,
        };
        let infer_path = format!("/v2/models/{model}/infer");
        let url = format!("https://localhost:{}{infer_path}", server.https.port());
        for conc in CONCURRENCY {
            let pb = bar(total * TRANSPORTS.len(), &format!("endpoint {model} x{conc}"));
            let mut calls = Vec::new();
            for transport in TRANSPORTS {
                let call: Call = match transport {
                    "in-process" => {
                        let (d, req, slots, jobs) = (d.clone(), req.clone(), slots.clone(), job_threads.clone());
                        Arc::new(move || {
                            let (d, req) = (d.clone(), req.clone());
                            let run =
                                slots.run_then(&jobs, SLOT_WAIT, move || crate::replying_first(d, (*req).clone()));
                            Box::pin(async move {
                                let r = run.await?;
                                r.result.map(|_| ()).map_err(anyhow::Error::new)
                            })
                        })
                    }
                    "https-json" | "https-binary" => {
                        let binary = transport == "https-binary";
                        let (http, url, body) =
                            (http.clone(), url.clone(), if binary { bin.clone() } else { json_body.clone() });
                        Arc::new(move || {
                            let mut r = http.post(&url).body(body.clone());
                            if binary {
                                r = r.header("Inference-Header-Content-Length", bin_len.to_string());
                            }
                            Box::pin(exchange(r))
                        })
                    }
                    "grpc" => {
                        let (grpc, msg) = (grpc.clone(), Arc::new(grpc_request(model, &req)));
                        Arc::new(move || {
                            let (mut grpc, msg) = (grpc.clone(), msg.clone());
                            Box::pin(async move {
                                grpc.model_infer((*msg).clone()).await?;
                                Ok(())
                            })
                        })
                    }
                    _ => {
                        let (quic, req, model) = (quic.clone(), req.clone(), model.to_string());
                        Arc::new(move || {
                            let (quic, req, model) = (quic.clone(), req.clone(), model.clone());
                            Box::pin(async move {
                                let r = quic.infer(&model, "", &req).await?;
                                if !r.is_ok() {
                                    bail!("QUIC: {:?}", r.error());
                                }
                                Ok(())
                            })
                        })
                    }
                };
                // Warm-up: connections, sessions, caches.
                let on = if transport == "in-process" { &node_rt } else { &rt };
                drive(on, conc.min(8), conc.min(8) * 2, &indicatif::ProgressBar::hidden(), call.clone())?;
                calls.push((transport, on, call));
            }
            // One client: the transports take turns in blocks, so that the
            // overhead over in-process compares figures measured side by
            // side, not stretches minutes apart on a VM whose speed drifts;
            // HTTPS JSON also from a blocking client, for reference. More
            // clients: one stretch each (their figures are throughput).
            let mut blocking = None;
            if conc == 1 {
                let json = [("content-type", "application/json".to_string())];
                let mut client =
                    BlockingPost::connect(server.https.port(), &server.cert, &infer_path, &json, &json_body)?;
                for _ in 0..16 {
                    client.exchange()?;
                }
                blocking = Some(client);
            }
            let blocks = if conc == 1 { ONE_CLIENT_BLOCKS } else { 1 };
            let mut runs: Vec<(Vec<Duration>, f64)> = vec![(Vec::new(), 0.0); calls.len() + 1];
            for _ in 0..blocks {
                let per_block = total.div_ceil(blocks);
                for ((_, on, call), run) in calls.iter().zip(runs.iter_mut()) {
                    let (samples, secs) = drive_samples(on, conc, per_block, &pb, call.clone())?;
                    run.0.extend(samples);
                    run.1 += secs;
                }
                if let Some(client) = blocking.as_mut() {
                    let run = runs.last_mut().expect("a run per transport and one more");
                    let start = Instant::now();
                    for _ in 0..per_block {
                        let t = Instant::now();
                        client.exchange()?;
                        run.0.push(t.elapsed());
                    }
                    run.1 += start.elapsed().as_secs_f64();
                }
            }
            let names = calls.iter().map(|(t, _, _)| *t).chain(blocking.is_some().then_some(BLOCKING_CLIENT));
            for (transport, (samples, secs)) in names.zip(runs) {
                let (lat, rps) = (Summary::of(&samples), samples.len() as f64 / secs);
                rows.push(json!({"model": model, "transport": transport, "concurrency": conc, "latency": lat, "throughput_rps": rps}));
            }
            pb.finish_and_clear();
        }
    }
    rows.extend(floors(ctx, &rt, &server, &http, &quic)?);
    drop(server);
    std::thread::sleep(Duration::from_millis(50));
    Ok(Value::Array(rows))
}

/// What a transport costs without a job, one client: HTTPS `GET
/// /v2/health/live`, and a QUIC request for a deployment that does not
/// exist (answered `not found` before any job). The distance between these
/// and the in-process job is the part of the endpoint overhead that is the
/// transport itself (sockets, TLS, wake-ups of client and server).
fn floors(
    ctx: &Ctx,
    rt: &tokio::runtime::Runtime,
    server: &Server,
    http: &reqwest::Client,
    quic: &Arc<QuicClient>,
) -> Result<Vec<Value>> {
    let total = if ctx.quick { 128 } else { 1024 };
    let url = format!("https://localhost:{}/v2/health/live", server.https.port());
    let (http, quic) = (http.clone(), quic.clone());
    let https: Call = Arc::new(move || Box::pin(exchange(http.get(&url))));
    let empty = Arc::new(Request::default());
    let quic: Call = Arc::new(move || {
        let (quic, empty) = (quic.clone(), empty.clone());
        Box::pin(async move {
            let r = quic.infer("no-such-deployment", "", &empty).await?;
            if r.is_ok() {
                bail!("QUIC: a missing deployment answered ok");
            }
            Ok(())
        })
    });
    // The node's hand-off without a job: an async task gives a no-op to a
    // job thread and awaits its answer (two thread wake-ups), as every
    // served request does around its job.
    let (node_rt, jobs) = in_process_node(2)?;
    let handoff: Call = Arc::new(move || {
        let done = jobs.run(|| ());
        Box::pin(async move {
            done.await?;
            Ok(())
        })
    });
    let pb = bar(total * 3, "endpoint floors x1");
    let mut rows = Vec::new();
    for (transport, call, on) in
        [("https-no-job", https, rt), ("quic-no-job", quic, rt), ("job-thread-handoff", handoff, &node_rt)]
    {
        drive(on, 1, 16, &indicatif::ProgressBar::hidden(), call.clone())?;
        let (lat, rps) = drive(on, 1, total, &pb, call)?;
        rows.push(json!({"model": "none", "transport": transport, "concurrency": 1, "latency": lat, "throughput_rps": rps}));
    }
    pb.finish_and_clear();
    // Pinned, so that the placement is known: the scheduler otherwise puts
    // the two threads on one core in some runs and on two in others.
    let cores = allowed_cores()?;
    let mut placements = vec![("tcp-same-core", cores[0], cores[0])];
    if let Some(&other) = cores.get(1) {
        placements.push(("tcp-across-cores", cores[0], other));
    }
    for (transport, client_core, echo_core) in placements {
        let tcp = tcp_round_trip(total, client_core, echo_core)?;
        rows.push(json!({"model": "none", "transport": transport, "concurrency": 1, "latency": tcp,
            "throughput_rps": 1e6 / tcp.mean_us}));
    }
    Ok(rows)
}

/// The machine's floor for any request that crosses threads: a loopback
/// TCP round trip between two threads of this process (blocking sockets,
/// `TCP_NODELAY`, 64 bytes each way, no TLS, no async runtime), the caller
/// pinned to `client_core` and the echo to `echo_core`. Each direction
/// wakes a thread asleep in `read`: on one core that is a context switch;
/// across two, the other core has gone idle meanwhile, and the wake-up
/// costs what leaving its idle state costs (on a VM without guest halt
/// polling, the hypervisor's).
fn tcp_round_trip(total: usize, client_core: usize, echo_core: usize) -> Result<Summary> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let echo = std::thread::Builder::new().name("bench-tcp-echo".into()).spawn(move || -> std::io::Result<()> {
        pin_to_core(echo_core)?;
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut buf = [0u8; 64];
        loop {
            match s.read_exact(&mut buf) {
                Ok(()) => s.write_all(&buf)?,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    })?;
    let timed = std::thread::Builder::new()
        .name("bench-tcp-client".into())
        .spawn(move || time_round_trips(addr, client_core, total))?;
    let summary = timed.join().map_err(|_| anyhow::anyhow!("the timing thread panicked"))??;
    echo.join().map_err(|_| anyhow::anyhow!("the echo thread panicked"))??;
    Ok(summary)
}

/// The client side of [`tcp_round_trip`]: `total` round trips timed after a
/// warm-up, from `core`.
fn time_round_trips(addr: SocketAddr, core: usize, total: usize) -> std::io::Result<Summary> {
    use std::io::{Read, Write};
    pin_to_core(core)?;
    let mut c = std::net::TcpStream::connect(addr)?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = [7u8; 64];
    let warm_up = 64;
    let mut samples = Vec::with_capacity(total);
    for i in 0..warm_up + total {
        let t = Instant::now();
        c.write_all(&buf)?;
        c.read_exact(&mut buf)?;
        if i >= warm_up {
            samples.push(t.elapsed());
        }
    }
    Ok(Summary::of(&samples))
}

/// The cores this process may run on (its affinity mask, which a cgroup's
/// cpuset narrows), lowest first; at least one.
fn allowed_cores() -> Result<Vec<usize>> {
    // SAFETY: `set` is a plain bit set the call fills for this process
    // (pid 0); `CPU_ISSET` reads bits below `CPU_SETSIZE` only.
    let cores: Vec<usize> = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(std::io::Error::last_os_error()).context("reading this process's CPU affinity");
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    };
    if cores.is_empty() {
        bail!("this process may run on no core");
    }
    Ok(cores)
}

/// Pins the calling thread to one core (one of [`allowed_cores`]).
fn pin_to_core(core: usize) -> std::io::Result<()> {
    // SAFETY: `set` is a plain bit set, zeroed then given one bit; the call
    // reads it and changes only the calling thread's affinity (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sends one HTTP request and reads the whole answer; an error status is
/// an error.
async fn exchange(r: reqwest::RequestBuilder) -> Result<()> {
    let resp = r.send().await?;
    if !resp.status().is_success() {
        bail!("HTTP {}", resp.status());
    }
    resp.bytes().await?;
    Ok(())
}

type GrpcClient = mote_agent::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient<tonic::transport::Channel>;

/// The request as tritonclient[grpc] sends it: tensors in raw contents.
fn grpc_request(model: &str, req: &Request) -> mote_agent::grpc::pb::ModelInferRequest {
    use mote_agent::grpc::pb::{model_infer_request::InferInputTensor, ModelInferRequest};
    ModelInferRequest {
        model_name: model.into(),
        inputs: req
            .inputs
            .iter()
            .map(|t| InferInputTensor {
                name: t.name.clone(),
                datatype: t.datatype.as_str().into(),
                shape: t.shape.iter().map(|&d| d as i64).collect(),
                ..Default::default()
            })
            .collect(),
        raw_input_contents: req.inputs.iter().map(|t| t.data.clone()).collect(),
        ..Default::default()
    }
}

fn bytes_of(v: &[u8]) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(v)
}
