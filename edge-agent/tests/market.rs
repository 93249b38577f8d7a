//! End-to-end tests of the job market: real `nats-server` processes
//! (deps/nats-server, JetStream, loopback ports, temp store dirs), real
//! `mote node` processes, jobs posted through the library and the CLI.

use mote_agent::market::client::{self, Submission};
use mote_agent::market::spec::{BackendReq, JobLimits, JobPhase, JobResult, RequestRef};
use mote_agent::market::{Market, NatsOptions};
use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn artifact(rel: &str) -> PathBuf {
    let p = root().join("build").join(rel);
    assert!(p.exists(), "{} missing: run `make guests` first", p.display());
    p
}

fn nats_server_bin() -> PathBuf {
    let deps = std::env::var_os("MOTE_DEPS_DIR").map_or_else(|| root().join("deps"), PathBuf::from);
    let p = deps.join("nats-server");
    assert!(p.exists(), "{} missing: run scripts/setup.sh (make test does)", p.display());
    p
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Storage a test server may use (files are sparse; tests write a few MB).
const TEST_FILE_STORE: &str = "8G";

fn jetstream_conf(store_dir: &Path, max_file_store: &str) -> String {
    format!("jetstream {{ store_dir: \"{}\", max_file_store: {max_file_store} }}\n", store_dir.display())
}

/// A `nats-server` with JetStream; killed on drop.
struct NatsServer {
    child: Option<Child>,
    url: String,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    fn start() -> Self {
        Self::start_with(&[])
    }

    fn start_with(extra: &[String]) -> Self {
        Self::start_storing(TEST_FILE_STORE, extra)
    }

    /// `max_file_store` is set, not left to the server's default (75 % of
    /// the free disk when it starts), so a test does not depend on how full
    /// this machine's disk is: the job queue alone reserves 1 GiB.
    fn start_storing(max_file_store: &str, extra: &[String]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("server.conf");
        std::fs::write(&conf, jetstream_conf(&dir.path().join("js"), max_file_store)).unwrap();
        let mut args = vec![
            "-c".to_string(),
            conf.to_string_lossy().into_owned(),
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ];
        args.extend(extra.iter().cloned());
        let child = Command::new(nats_server_bin())
            .args(&args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("server.log")).unwrap())
            .spawn()
            .expect("start nats-server");
        wait_port(port);
        Self { child: Some(child), url: format!("nats://127.0.0.1:{port}"), _dir: dir }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn wait_port(port: u16) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(20), "port {port} never opened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `mote node` process; killed on drop.
struct MoteNode {
    child: Option<Child>,
    data_dir: PathBuf,
}

impl MoteNode {
    fn start(nats: &str, market: &str, data_dir: &Path, extra: &[&str]) -> Self {
        let mut args = vec!["node", "--nats", nats, "--market", market, "--data-dir"];
        let dd = data_dir.to_string_lossy().into_owned();
        args.push(&dd);
        args.extend_from_slice(extra);
        let child = Command::new(env!("CARGO_BIN_EXE_mote"))
            .args(&args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(data_dir.with_extension("log")).unwrap())
            .spawn()
            .expect("start mote node");
        Self { child: Some(child), data_dir: data_dir.to_path_buf() }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        Command::new("kill").args(["-TERM", &c.id().to_string()]).status().unwrap();
        c.wait().unwrap()
    }

    fn node_id(&self) -> String {
        mote_runtime::NodeKey::load_or_create(&self.data_dir).unwrap().node_id()
    }
}

/// `n` nodes of `market`, data dirs `dir/node0`, `dir/node1`, ...
fn start_nodes(url: &str, market: &str, n: usize, dir: &Path, extra: &[&str]) -> Vec<MoteNode> {
    (0..n).map(|i| MoteNode::start(url, market, &dir.join(format!("node{i}")), extra)).collect()
}

impl Drop for MoteNode {
    fn drop(&mut self) {
        self.kill();
    }
}

fn mote(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mote"))
        .args(args)
        .env("MOTE_HOME", std::env::temp_dir().join(format!("mote-market-home-{}", std::process::id())))
        .output()
        .expect("run mote")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

async fn open(urls: &str) -> Market {
    let client = NatsOptions::from_urls(urls).connect().await.expect("connect");
    Market::open(client, 1).await.expect("market")
}

fn mlp_submission(market: &str) -> Submission {
    let request: serde_json::Value =
        serde_json::from_slice(&std::fs::read(artifact("models/mlp.request.json")).unwrap()).unwrap();
    Submission {
        market: market.into(),
        name: "passthrough".into(),
        guest: std::fs::read(artifact("guests/passthrough.wasm")).unwrap(),
        models: vec![("model".into(), std::fs::read(artifact("models/mlp.onnx")).unwrap())],
        request,
        backend: BackendReq::Any,
        max_price: 10_000,
        timeout_s: 30,
        limits: JobLimits::default(),
        verify: 0.0,
    }
}

fn misbehave_submission(market: &str, params: serde_json::Value, timeout_s: u64) -> Submission {
    Submission {
        market: market.into(),
        name: "misbehave".into(),
        guest: std::fs::read(artifact("guests/misbehave.wasm")).unwrap(),
        models: vec![],
        request: serde_json::json!({"inputs": [], "parameters": params}),
        backend: BackendReq::Any,
        max_price: 10_000,
        timeout_s,
        limits: JobLimits::default(),
        verify: 0.0,
    }
}

/// Posts `n` jobs like `s` (artifacts uploaded once); returns their ids.
async fn post_many(m: &Market, s: &Submission, n: usize) -> Vec<String> {
    let first = m.submit(s.clone()).await.expect("submit");
    let mut ids = vec![first.id.clone()];
    for _ in 1..n {
        let mut job = first.clone();
        job.id = mote_agent::market::spec::new_job_id();
        m.post(&job).await.expect("post");
        ids.push(job.id);
    }
    ids
}

/// Waits until every id has a result; returns all results of the market
/// (duplicates included, so callers can count them).
async fn wait_all(m: &Market, market: &str, ids: &[String], timeout: Duration) -> Vec<JobResult> {
    let start = Instant::now();
    loop {
        // (Right after a server of a cluster dies, reads can fail while
        // the stream elects a new leader: retried.)
        let all = match m.all_results(market).await {
            Ok(a) => a,
            Err(e) => {
                assert!(start.elapsed() < timeout, "reading results: {e:#}");
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        let have: std::collections::HashSet<&str> = all.iter().map(|r| r.job_id.as_str()).collect();
        let missing = ids.iter().filter(|i| !have.contains(i.as_str())).count();
        if missing == 0 {
            return all;
        }
        assert!(start.elapsed() < timeout, "{missing} of {} jobs have no result after {timeout:?}", ids.len());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn assert_each_once(results: &[JobResult], ids: &[String]) {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for r in results {
        *count.entry(r.job_id.as_str()).or_default() += 1;
    }
    for id in ids {
        assert_eq!(count.get(id.as_str()), Some(&1), "job {id} must have exactly one result");
    }
}

/// Parses `mote market settle` lines into node → (jobs, price_units, rejected).
fn parse_settle(out: &str) -> HashMap<String, (u64, u64, u64)> {
    let mut t = HashMap::new();
    for line in out.lines() {
        let mut it = line.split_whitespace();
        assert_eq!(it.next(), Some("node"), "{line}");
        let node = it.next().unwrap().to_string();
        let kv: HashMap<&str, &str> = it.filter_map(|f| f.split_once('=')).collect();
        let n = |k: &str| kv[k].parse::<u64>().unwrap();
        t.insert(node, (n("jobs"), n("price_units"), n("rejected")));
    }
    t
}

#[test]
fn three_nodes_run_200_jobs_once_each_and_settlement_adds_up() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let nodes: Vec<MoteNode> = start_nodes(&server.url, "m1", 3, dir.path(), &["--concurrency", "2"]);
    let rt = rt();
    let m = rt.block_on(open(&server.url));
    let ids = rt.block_on(post_many(&m, &mlp_submission("m1"), 200));
    let results = rt.block_on(wait_all(&m, "m1", &ids, Duration::from_secs(180)));
    assert_each_once(&results, &ids);
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(artifact("models/mlp.expected.json")).unwrap()).unwrap();
    let mut by_node: HashMap<String, u64> = HashMap::new();
    let mut paid: HashMap<String, u64> = HashMap::new();
    let snapshots: HashMap<String, _> = rt
        .block_on(m.list_nodes("m1"))
        .unwrap()
        .into_iter()
        .map(|(s, live)| {
            assert!(live, "node {} should be live", s.node_id);
            (s.node_id.clone(), s)
        })
        .collect();
    assert_eq!(snapshots.len(), 3, "three signed snapshots in MOTE_NODES");
    for r in &results {
        let problems = rt.block_on(client::check_result(&m, r, &snapshots));
        assert!(problems.is_empty(), "job {}: {problems:?}", r.job_id);
        assert_eq!(r.receipt.job_id, r.job_id);
        let out = &r.response.as_ref().expect("ok")["outputs"];
        assert_eq!(out[0]["shape"], expected["outputs"][0]["shape"]);
        *by_node.entry(r.node_id.clone()).or_default() += 1;
        *paid.entry(r.node_id.clone()).or_default() +=
            mote_agent::market::spec::payment(&snapshots[&r.node_id].price, &r.receipt, r.job.timeout_s);
    }
    assert!(by_node.len() >= 2, "jobs spread over the nodes: {by_node:?}");

    // The CLI's settlement adds up to the receipts.
    let o = mote(&["market", "settle", "--nats", &server.url, "--market", "m1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = parse_settle(&String::from_utf8_lossy(&o.stdout));
    for (node, jobs) in &by_node {
        assert_eq!(table[node], (*jobs, paid[node], 0), "settlement line of {node}");
    }
    assert_eq!(table.values().map(|t| t.0).sum::<u64>(), 200);

    // `mote market nodes` lists the three, live.
    let o = mote(&["market", "nodes", "--nats", &server.url, "--market", "m1"]);
    let listed = String::from_utf8_lossy(&o.stdout);
    assert_eq!(listed.lines().filter(|l| l.contains("\"live\":true")).count(), 3, "{listed}");

    // `mote job submit --wait` prints the response exactly as `mote run`.
    let (guest, model, input) =
        (artifact("guests/passthrough.wasm"), artifact("models/mlp.onnx"), artifact("models/mlp.request.json"));
    let model_arg = format!("model={}", model.display());
    let run = mote(&["run", guest.to_str().unwrap(), "--model", &model_arg, "--input", input.to_str().unwrap()]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let sub = mote(&[
        "job", "submit", "--nats", &server.url, "--market", "m1", guest.to_str().unwrap(), "--model", &model_arg,
        "--input", input.to_str().unwrap(), "--wait",
    ]);
    assert!(sub.status.success(), "{}", String::from_utf8_lossy(&sub.stderr));
    assert_eq!(String::from_utf8_lossy(&sub.stdout), String::from_utf8_lossy(&run.stdout));
    let id = String::from_utf8_lossy(&sub.stderr).lines().find_map(|l| l.strip_prefix("job ").map(String::from)).unwrap();
    let id = id.split_whitespace().next().unwrap().to_string();
    let res = mote(&["job", "result", "--nats", &server.url, &id]);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    assert_eq!(res.stdout, run.stdout);
    let st = mote(&["job", "status", "--nats", &server.url, &id]);
    assert!(String::from_utf8_lossy(&st.stdout).contains("\"state\":\"done\""));
    // An honest job verifies by re-execution.
    let v = mote(&["job", "verify", "--nats", &server.url, &id, "--reexecute"]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    drop(nodes);
}

#[test]
fn a_killed_node_loses_no_job_and_a_terminated_one_finishes_its_work() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let opts = ["--concurrency", "2", "--ack-wait-s", "3"];
    let mut nodes: Vec<MoteNode> =
        start_nodes(&server.url, "m2", 3, dir.path(), &opts);
    let rt = rt();
    let m = rt.block_on(open(&server.url));
    let ids = rt.block_on(post_many(&m, &misbehave_submission("m2", serde_json::json!({"mode": "work", "ms": "150"}), 30), 200));
    // Kill a node once jobs flow (it holds jobs: 2 running, more buffered).
    let start = Instant::now();
    while rt.block_on(m.all_results("m2")).unwrap().len() < 20 {
        assert!(start.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(100));
    }
    let victim = nodes[0].node_id();
    nodes[0].kill();
    // SIGTERM another: it stops pulling, finishes what runs, exits 0.
    std::thread::sleep(Duration::from_millis(500));
    let status = nodes[1].terminate();
    assert!(status.success(), "a terminated node exits 0 after its running jobs: {status}");
    let results = rt.block_on(wait_all(&m, "m2", &ids, Duration::from_secs(240)));
    assert_each_once(&results, &ids);
    let redelivered = results.iter().filter(|r| r.attempt > 1).count();
    eprintln!(
        "killed {victim}: {redelivered} jobs completed on a later delivery; {} by the victim before",
        results.iter().filter(|r| r.node_id == victim).count()
    );
    for r in &results {
        assert!(r.error.is_none(), "job {} failed: {:?}", r.job_id, r.error);
    }
}

#[test]
fn a_server_without_room_for_the_queue_is_named_as_the_cause() {
    // The job queue is bounded at 1 GiB and JetStream reserves that up
    // front: a server that cannot must give a message an operator can act on.
    let server = NatsServer::start_storing("256M", &[]);
    let err = rt().block_on(async {
        let client = NatsOptions::from_urls(&server.url).connect().await.expect("connect");
        Market::open(client, 1).await.err().expect("a 256 MiB store cannot hold the 1 GiB queue")
    });
    let msg = format!("{err:#}");
    assert!(msg.contains("cannot reserve 1073741824 bytes for stream MOTE_JOBS"), "{msg}");
    assert!(msg.contains("max_file_store"), "{msg}");
}

#[test]
fn poison_tampered_unpriced_and_invalid_jobs_end_without_blocking_the_others() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let opts = ["--concurrency", "2", "--max-deliver", "3", "--ack-wait-s", "5"];
    let _nodes: Vec<MoteNode> =
        start_nodes(&server.url, "m3", 2, dir.path(), &opts);
    let rt = rt();
    let m = rt.block_on(open(&server.url));
    rt.block_on(async {
        // An infinite loop: a failed result with its receipt, once.
        // Fuel enough that the 2 s timeout, not the fuel, ends the spin
        // (a fast core burns the default 20 G in under 2 s).
        let mut poison = misbehave_submission("m3", serde_json::json!({"mode": "spin"}), 2);
        poison.limits.fuel = Some(150_000_000_000);
        let poison = m.submit(poison).await.unwrap();
        // A guest whose stored bytes are not the ones its hash names.
        let mut tampered = m.submit(misbehave_submission("m3", serde_json::json!({}), 5)).await.unwrap();
        let fake_sha = mote_runtime::receipt::sha256_hex(b"the guest the client meant");
        m.artifacts.put(fake_sha.as_str(), &mut &b"something else entirely"[..]).await.unwrap();
        tampered.id = mote_agent::market::spec::new_job_id();
        tampered.guest = fake_sha;
        m.post(&tampered).await.unwrap();
        // An output too large for a NATS message: dead-lettered saying so,
        // not retried.
        let big_model = {
            use mote_runtime::tensor::ElementType;
            let mut d = mote_runtime::graph_builder::GraphDraft::default();
            let x = d.input("x", ElementType::F32, &[1]).unwrap();
            let shape: Vec<u8> = [1i64, 600_000].iter().flat_map(|v| v.to_le_bytes()).collect();
            let shape = d.constant(ElementType::I64, &[2], shape).unwrap();
            let y = d.node("Expand", &[x, shape], vec![], 1).unwrap()[0];
            d.lower(&[("y".into(), y)]).unwrap()
        };
        let mut big = mlp_submission("m3");
        big.models = vec![("model".into(), big_model)];
        big.request = serde_json::json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]});
        let big = m.submit(big).await.unwrap();
        // A price no node accepts: refused by every delivery, then dead.
        let mut cheap = misbehave_submission("m3", serde_json::json!({}), 5);
        cheap.max_price = 1;
        let cheap = m.submit(cheap).await.unwrap();
        // Bytes that are no job at all.
        m.js.publish("mote.jobs.m3.any", "{\"not\": \"a job\"}".into()).await.unwrap().await.unwrap();
        // A job longer than the consumer's ack_wait (5 s): kept by
        // progress acks, never redelivered.
        let long_posted = Instant::now();
        let long = m.submit(misbehave_submission("m3", serde_json::json!({"mode": "work", "ms": "5500"}), 30)).await.unwrap();
        // And ordinary jobs, which must all complete.
        let ids = post_many(&m, &mlp_submission("m3"), 10).await;
        let results = wait_all(&m, "m3", &ids, Duration::from_secs(120)).await;
        assert_each_once(&results, &ids);

        let r = m.wait("m3", &long.id, Duration::from_secs(60)).await.unwrap();
        assert!(r.error.is_none(), "{:?}", r.error);
        assert!(r.receipt.usage.wall_ns >= 5_500_000_000);
        // Had it been redelivered at 5 s, the second run would have ended
        // (and recorded its attempt) by ~11 s.
        tokio::time::sleep(Duration::from_secs(12).saturating_sub(long_posted.elapsed())).await;
        let st = m.job_state(&long.id).await.unwrap().unwrap();
        assert_eq!((r.attempt, st.attempt), (1, 1), "a long job is kept by progress acks, never redelivered");

        let r = m.wait("m3", &poison.id, Duration::from_secs(60)).await.unwrap();
        let e = r.error.as_ref().expect("the poison job fails");
        assert_eq!(e.outcome, mote_runtime::Outcome::Deadline, "{e:?}");
        assert_eq!(r.attempt, 1, "ended on its first delivery: no redelivery loop");
        assert!(client::check_result(&m, &r, &HashMap::new()).await.is_empty(), "its receipt verifies");
        // The state record follows the result (written beside the ack).
        let start = Instant::now();
        while m.job_state(&poison.id).await.unwrap().unwrap().state != JobPhase::Failed {
            assert!(start.elapsed() < Duration::from_secs(10), "state never became failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        for (id, want) in [(&tampered.id, "tampered"), (&cheap.id, "deliveries"), (&big.id, "max_payload")] {
            let start = Instant::now();
            loop {
                let st = m.job_state(id).await.unwrap().unwrap();
                if st.state == JobPhase::Dead {
                    let reason = st.reason.unwrap_or_default();
                    assert!(reason.contains(want), "job {id}: {reason}");
                    break;
                }
                assert!(start.elapsed() < Duration::from_secs(90), "job {id} never dead-lettered: {st:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            assert!(m.result("m3", id).await.unwrap().is_none(), "no result for a dead job");
            if want == "max_payload" {
                assert_eq!(m.job_state(id).await.unwrap().unwrap().attempt, 1, "not retried");
            }
        }
        // Everything dead-lettered is on the dead-letter subjects, with reasons.
        let mut dead = m.dead.clone();
        let n = dead.info().await.unwrap().state.messages;
        assert!(n >= 3, "tampered, unpriced and invalid jobs dead-lettered ({n})");
        let _ = RequestRef::Object(String::new());
    });
}

/// Publishes a forged result, changed by `f`, for a job posted for a
/// backend no node of the market serves here (`gpu`: so no honest result
/// races it); returns the job id.
async fn forge(m: &Market, mut r: JobResult, f: impl FnOnce(&mut JobResult)) -> String {
    let mut job = r.job.clone();
    job.id = mote_agent::market::spec::new_job_id();
    job.backend = BackendReq::Gpu;
    m.post(&job).await.unwrap();
    r.job = job.clone();
    r.job_id = job.id.clone();
    r.market = job.market.clone();
    r.job_sha256 = job.sha256();
    r.receipt.job_id = job.id.clone();
    f(&mut r);
    m.js.publish(mote_agent::market::result_subject("m4", &job.id), serde_json::to_vec(&r).unwrap().into())
        .await
        .unwrap()
        .await
        .unwrap();
    job.id
}

#[test]
fn settlement_rejects_forged_results_and_reexecution_catches_altered_output() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let node =
        MoteNode::start(&server.url, "m4", &dir.path().join("node0"), &["--concurrency", "2", "--serve", "ort-cpu,any"]);
    let rt = rt();
    let m = rt.block_on(open(&server.url));
    rt.block_on(async {
        let ids = post_many(&m, &mlp_submission("m4"), 3).await;
        let results = wait_all(&m, "m4", &ids, Duration::from_secs(60)).await;
        let honest = results[0].clone();
        let node_key = mote_runtime::NodeKey::load_or_create(&node.data_dir).unwrap();

        // Forged results are published for jobs posted to a market no
        // node serves (so no honest result races them).
        // Signed by a key that is not the claimed node's.
        let other = mote_runtime::NodeKey::generate();
        forge(&m, honest.clone(), |r| r.receipt.sign(&other)).await;
        // Re-signed by the real node over an altered output: its hashes
        // agree, only re-execution can tell.
        let altered = forge(&m, honest.clone(), |r| {
            let mut resp = r.response.clone().unwrap();
            resp["outputs"][0]["data"][0] = serde_json::json!(42.0);
            let parsed = client::response_of(&resp).unwrap();
            r.receipt.set_output_digest(mote_runtime::receipt_digest(&parsed.outputs, &parsed.parameters));
            r.response = Some(resp);
            r.receipt.sign(&node_key);
        })
        .await;
        // Re-signed by the real node, but the job's posted hash differs.
        forge(&m, honest.clone(), |r| {
            r.job.timeout_s += 1;
            r.job_sha256 = r.job.sha256();
            r.receipt.sign(&node_key);
        })
        .await;

        let o = mote(&["market", "settle", "--nats", &server.url, "--market", "m4"]);
        let table = parse_settle(&String::from_utf8_lossy(&o.stdout));
        let rejected: u64 = table.values().map(|t| t.2).sum();
        let accepted: u64 = table.values().map(|t| t.0).sum();
        // 3 honest + the altered one (its hashes agree) accepted, 2 rejected.
        assert_eq!((accepted, rejected), (4, 2), "{}", String::from_utf8_lossy(&o.stderr));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("signed by") || err.contains("signature"), "{err}");

        // Re-execution: the honest job verifies, the altered one is caught.
        let ok = mote(&["job", "verify", "--nats", &server.url, &honest.job_id, "--reexecute"]);
        assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
        let bad = mote(&["job", "verify", "--nats", &server.url, &altered, "--reexecute"]);
        assert!(!bad.status.success());
        assert!(String::from_utf8_lossy(&bad.stderr).contains("mismatch"), "{}", String::from_utf8_lossy(&bad.stderr));
    });
    drop(node);
}

#[test]
fn a_three_server_cluster_with_r3_loses_no_job_when_a_server_dies() {
    let (c1, c2, c3) = (free_port(), free_port(), free_port());
    let routes = format!("nats://127.0.0.1:{c1},nats://127.0.0.1:{c2},nats://127.0.0.1:{c3}");
    let mut servers: Vec<NatsServer> = [(1, c1), (2, c2), (3, c3)]
        .iter()
        .map(|(i, c)| {
            NatsServer::start_with(&[
                "--server_name".into(),
                format!("s{i}"),
                "--cluster_name".into(),
                "motetest".into(),
                "--cluster".into(),
                format!("nats://127.0.0.1:{c}"),
                "--routes".into(),
                routes.clone(),
            ])
        })
        .collect();
    let urls = servers.iter().map(|s| s.url.clone()).collect::<Vec<_>>().join(",");
    let dir = tempfile::tempdir().unwrap();
    let _nodes = start_nodes(&urls, "m5", 2, dir.path(), &["--concurrency", "2", "--replicas", "3"]);
    let rt = rt();
    let m = rt.block_on(async {
        let client = NatsOptions::from_urls(&urls).connect().await.unwrap();
        // JetStream needs a meta leader: retry until the cluster formed.
        let start = Instant::now();
        loop {
            match Market::open(client.clone(), 3).await {
                Ok(m) => break m,
                Err(e) => {
                    assert!(start.elapsed() < Duration::from_secs(60), "cluster never ready: {e:#}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    });
    let ids = rt.block_on(post_many(&m, &mlp_submission("m5"), 200));
    let start = Instant::now();
    while rt.block_on(m.all_results("m5")).map_or(0, |r| r.len()) < 30 {
        assert!(start.elapsed() < Duration::from_secs(90), "no progress");
        std::thread::sleep(Duration::from_millis(100));
    }
    servers[1].kill();
    let results = rt.block_on(wait_all(&m, "m5", &ids, Duration::from_secs(240)));
    assert_each_once(&results, &ids);
}

#[test]
fn other_nodes_reexecute_the_verify_share_and_record_mismatches() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let nodes: Vec<MoteNode> = start_nodes(&server.url, "m6", 2, dir.path(), &["--concurrency", "2"]);
    let rt = rt();
    let m = rt.block_on(open(&server.url));
    rt.block_on(async {
        let mut s = mlp_submission("m6");
        s.verify = 1.0;
        let ids = post_many(&m, &s, 4).await;
        let results = wait_all(&m, "m6", &ids, Duration::from_secs(60)).await;
        let records = |want_checked: u64| {
            let m = m.clone();
            let ids: Vec<String> = nodes.iter().map(MoteNode::node_id).collect();
            async move {
                let start = Instant::now();
                loop {
                    let mut total = (0, 0);
                    let mut per = Vec::new();
                    for id in &ids {
                        let r = m.verify_record("m6", id).await.unwrap();
                        total = (total.0 + r.0, total.1 + r.1);
                        per.push(r);
                    }
                    if total.0 >= want_checked {
                        return per;
                    }
                    assert!(start.elapsed() < Duration::from_secs(90), "checked {total:?}, want {want_checked}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        };
        let per = records(4).await;
        assert_eq!(per.iter().map(|r| r.1).sum::<u64>(), 0, "honest results match: {per:?}");

        // A node signs a wrong output with its real key: its hashes agree,
        // the other node's re-execution catches it.
        let liar = mote_runtime::NodeKey::load_or_create(&nodes[0].data_dir).unwrap();
        let mut r = results.iter().find(|r| r.node_id == liar.node_id()).unwrap_or(&results[0]).clone();
        let mut job = r.job.clone();
        job.id = mote_agent::market::spec::new_job_id();
        m.set_job_state(
            &job.id,
            &mote_agent::market::spec::JobState {
                state: JobPhase::Queued,
                market: "m6".into(),
                job_sha256: job.sha256(),
                node_id: None,
                attempt: 0,
                reason: None,
                updated_at: mote_agent::market::spec::now_rfc3339(),
            },
        )
        .await
        .unwrap();
        r.job = job.clone();
        r.job_id = job.id.clone();
        r.job_sha256 = job.sha256();
        r.node_id = liar.node_id();
        r.receipt.job_id = job.id.clone();
        let mut resp = r.response.clone().unwrap();
        resp["outputs"][0]["data"][0] = serde_json::json!(42.0);
        let parsed = client::response_of(&resp).unwrap();
        r.receipt.set_output_digest(mote_runtime::receipt_digest(&parsed.outputs, &parsed.parameters));
        r.response = Some(resp);
        r.receipt.sign(&liar);
        assert!(client::check_result(&m, &r, &HashMap::new()).await.is_empty(), "the forgery passes every hash check");
        m.js.publish(mote_agent::market::result_subject("m6", &job.id), serde_json::to_vec(&r).unwrap().into())
            .await
            .unwrap()
            .await
            .unwrap();
        let start = Instant::now();
        while m.verify_record("m6", &liar.node_id()).await.unwrap().1 == 0 {
            assert!(start.elapsed() < Duration::from_secs(90), "the mismatch was never recorded");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let o = mote(&["market", "nodes", "--nats", &server.url, "--market", "m6"]);
        let line = String::from_utf8_lossy(&o.stdout)
            .lines()
            .find(|l| l.contains(&liar.node_id()))
            .map(String::from)
            .expect("the liar is listed");
        assert!(line.contains("\"mismatches\":1"), "{line}");
    });
}

#[test]
fn nodes_authenticate_and_resume_after_the_server_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = dir.path().join("auth.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:{port}\n{}\
             authorization {{ users = [ {{user: node1, password: n0de-secret}}, {{user: client1, password: cl1ent-secret}} ] }}\n",
            jetstream_conf(&dir.path().join("js"), TEST_FILE_STORE)
        ),
    )
    .unwrap();
    let start_server = || {
        let child = Command::new(nats_server_bin())
            .args(["-c", conf.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        wait_port(port);
        child
    };
    let mut server = start_server();
    let url = format!("nats://127.0.0.1:{port}");
    let node_dir = dir.path().join("node0");
    let _node = MoteNode::start(&url, "m7", &node_dir, &["--user", "node1", "--password", "n0de-secret"]);
    let rt = rt();
    let client = |password: &str| {
        let opts = NatsOptions {
            user: Some("client1".into()),
            password: Some(password.into()),
            ..NatsOptions::from_urls(&url)
        };
        async move { Market::open(opts.connect().await?, 1).await }
    };
    // A wrong password is refused.
    assert!(rt.block_on(client("wrong")).is_err(), "a client with a wrong password must be refused");
    let m = rt.block_on(client("cl1ent-secret")).expect("authenticated client");
    let ids = rt.block_on(post_many(&m, &mlp_submission("m7"), 5));
    rt.block_on(wait_all(&m, "m7", &ids, Duration::from_secs(60)));
    drop(m);

    // The server dies and comes back (same store): the node reconnects by
    // itself and takes new jobs.
    let _ = server.kill();
    let _ = server.wait();
    std::thread::sleep(Duration::from_secs(1));
    let mut server = start_server();
    let m = rt.block_on(async {
        let start = Instant::now();
        loop {
            match client("cl1ent-secret").await {
                Ok(m) => break m,
                Err(e) => {
                    assert!(start.elapsed() < Duration::from_secs(30), "{e:#}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    let more = rt.block_on(post_many(&m, &mlp_submission("m7"), 5));
    let results = rt.block_on(wait_all(&m, "m7", &more, Duration::from_secs(90)));
    assert_each_once(&results, &more);
    let _ = server.kill();
    let _ = server.wait();
}
