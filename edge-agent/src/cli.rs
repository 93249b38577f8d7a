//! Command-line interface **(contract: see docs/cli.md)**.

use crate::build;
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use mote_runtime::backend::BackendChoice;
use mote_runtime::{kserve, DeploymentSpec, Limits, Receipt, Runtime, RuntimeConfig};
use std::path::PathBuf;
use std::process::ExitCode;

/// mote: sandboxed WebAssembly inference for edge GPU nodes.
#[derive(Parser, Debug)]
#[command(name = "mote", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one job: a guest component on one KServe v2 request, or a
    /// wasi-nn command program (`wasi:cli/command`) with its arguments.
    Run(RunArgs),
    /// Build a guest crate or workspace into components.
    Build {
        /// Crate or workspace directory.
        dir: PathBuf,
        /// Where to write NAME.wasm components.
        #[arg(long, default_value = "build/guests")]
        out: PathBuf,
        /// Toolchain: wasip2 (rustup target) or build-std (distribution rustc).
        #[arg(long)]
        toolchain: Option<String>,
        /// Target triple (default: the toolchain's; build-std also takes
        /// wasm32-wasip1 for WASI guests). A crate with a `main` builds into
        /// a command program: wasm32-wasip1 (the default with build-std) or
        /// wasm32-wasip2 (rustup's target).
        #[arg(long)]
        target: Option<String>,
        /// Ship guests as built, without running their pre-initializer
        /// (`wizer-initialize`, `mote_sdk::export_initializer!`).
        #[arg(long)]
        no_preinit: bool,
    },
    /// Turn a wit-bindgen core module into a component.
    Componentize {
        /// Core wasm module.
        input: PathBuf,
        /// Output component.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Check a receipt's signature and, optionally, its hashes.
    Verify {
        /// Receipt JSON file.
        receipt: PathBuf,
        /// The guest component the receipt should name.
        #[arg(long)]
        guest: Option<PathBuf>,
        /// Model files the receipt should list (repeatable).
        #[arg(long)]
        model: Vec<PathBuf>,
        /// The request JSON the receipt should hash.
        #[arg(long)]
        input: Option<PathBuf>,
        /// The node id (hex public key) that must have signed it: without
        /// it, any key's valid signature is accepted.
        #[arg(long)]
        node: Option<String>,
    },
    /// Print what this node can do (backends, devices, node id) as JSON.
    Specs,
    /// Serve deployments over HTTPS (KServe v2) and QUIC until SIGTERM.
    Serve {
        /// The node config (see mote.toml).
        #[arg(long, default_value = "mote.toml")]
        config: PathBuf,
        /// Serve plain HTTP instead of HTTPS (loopback addresses only).
        #[arg(long)]
        insecure_http: bool,
        /// Override `[server] listen`.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Override `[server] quic`.
        #[arg(long)]
        quic: Option<std::net::SocketAddr>,
        /// Override `[server] grpc`.
        #[arg(long)]
        grpc: Option<std::net::SocketAddr>,
    },
    /// Join a job market on NATS JetStream and run its jobs until SIGTERM.
    Node(crate::market::commands::NodeArgs),
    /// Post market jobs and read their results.
    #[command(subcommand)]
    Job(crate::market::commands::JobCommand),
    /// Inspect and settle a market.
    #[command(subcommand)]
    Market(crate::market::commands::MarketCommand),
    /// Send a request to a node over QUIC (`mote/1`).
    Infer {
        /// Node address, HOST:PORT.
        #[arg(long)]
        quic: String,
        /// Deployment name.
        #[arg(long)]
        model: String,
        /// KServe v2 request JSON (`-` for stdin).
        #[arg(long)]
        input: PathBuf,
        /// Bearer token of your tenant.
        #[arg(long, default_value = "")]
        token: String,
        /// Trust this PEM certificate (default: the local node's generated one).
        #[arg(long)]
        cert: Option<PathBuf>,
        /// Trust the server whose certificate has this sha256 fingerprint.
        #[arg(long)]
        fingerprint: Option<String>,
        /// TLS server name.
        #[arg(long, default_value = "localhost")]
        server_name: String,
        /// Send the request this many times over one connection and report
        /// latencies on stderr.
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        /// Write the response JSON here instead of stdout (what the guest
        /// streams always goes to stdout, as it arrives).
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Guest component (.wasm): a `mote:edge/job` guest or a command program.
    guest: PathBuf,
    /// A command program's arguments (after `--` when they start with `-`).
    args: Vec<String>,
    /// KServe v2 infer request (JSON file, `-` for stdin); job guests only.
    #[arg(long)]
    input: Option<PathBuf>,
    /// A model the guest may load by name: NAME=PATH.onnx (repeatable).
    #[arg(long = "model", value_name = "NAME=PATH")]
    models: Vec<String>,
    /// A graph a command program may `load-by-name` (as `--model`).
    #[arg(long = "nn-graph", value_name = "NAME=PATH")]
    nn_graphs: Vec<String>,
    /// A host directory a command program sees read-only: HOST[::GUEST]
    /// (repeatable; nothing else of the host is reachable).
    #[arg(long = "dir", value_name = "HOST[::GUEST]")]
    dirs: Vec<String>,
    /// Backend: auto, ort-cpu, ort-cuda or wgpu.
    #[arg(long, default_value = "auto")]
    backend: String,
    /// Write the signed receipt here.
    #[arg(long)]
    receipt: Option<PathBuf>,
    /// Fuel limit (default: the built-in default).
    #[arg(long)]
    fuel: Option<u64>,
    /// Deadline in milliseconds.
    #[arg(long)]
    deadline_ms: Option<u64>,
    /// Linear memory limit in MiB.
    #[arg(long)]
    memory_mb: Option<u64>,
    /// Use an ephemeral node key instead of the one in the data directory.
    #[arg(long)]
    ephemeral_key: bool,
    /// Write the response JSON here instead of stdout (what the guest
    /// streams always goes to stdout, as it arrives).
    #[arg(long)]
    output: Option<PathBuf>,
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run_job(args),
        Command::Build { dir, out, toolchain, target, no_preinit } => {
            let tc = match toolchain.as_deref() {
                None => None,
                Some("wasip2") => Some(build::Toolchain::Wasip2),
                Some("build-std") => Some(build::Toolchain::BuildStd),
                Some(other) => bail!("--toolchain {other}: expected wasip2 or build-std"),
            };
            build::build(&dir, &out, tc, target.as_deref(), !no_preinit)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Componentize { input, output } => {
            let module = std::fs::read(&input).with_context(|| format!("reading {}", input.display()))?;
            let component = build::componentize(&module)?;
            std::fs::write(&output, component).with_context(|| format!("writing {}", output.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { receipt, guest, model, input, node } => verify(receipt, guest, model, input, node),
        Command::Specs => specs(),
        Command::Node(a) => crate::market::commands::node(a),
        Command::Job(c) => crate::market::commands::job(c),
        Command::Market(c) => crate::market::commands::market(c),
        Command::Serve { config, insecure_http, listen, quic, grpc } => {
            let mut cfg = crate::config::Config::load(&config)?;
            if let Some(l) = listen {
                cfg.server.listen = l;
            }
            if quic.is_some() {
                cfg.server.quic = quic;
            }
            if grpc.is_some() {
                cfg.server.grpc = grpc;
            }
            tokio_runtime()?.block_on(crate::serve::serve(cfg, insecure_http))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Infer { quic, model, input, token, cert, fingerprint, server_name, repeat, output } => {
            let request = parse_request_file(&input)?;
            let trust = match (cert, fingerprint) {
                (_, Some(fp)) => crate::tls::Trust::Fingerprint(fp),
                (Some(c), None) => crate::tls::Trust::CaFile(c),
                (None, None) => {
                    crate::tls::Trust::CaFile(mote_runtime::receipt::default_data_dir().join("tls/cert.pem"))
                }
            };
            let target = Target { addr: &quic, server_name: &server_name, trust: &trust, model: &model, token: &token };
            // One request at a time: quinn's endpoint and connection
            // drivers run on the thread that awaits the reply, which a
            // multi-threaded runtime's `block_on` would have its workers
            // hand over (docs/benchmarks.md, "The client's runtime").
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(infer(target, &request, repeat, output.as_deref()))
        }
    }
}

fn tokio_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

/// Where `mote infer` sends its request.
struct Target<'a> {
    addr: &'a str,
    server_name: &'a str,
    trust: &'a crate::tls::Trust,
    model: &'a str,
    token: &'a str,
}

async fn infer(
    Target { addr, server_name, trust, model, token }: Target<'_>,
    request: &mote_runtime::Request,
    repeat: usize,
    output: Option<&std::path::Path>,
) -> Result<ExitCode> {
    use std::io::Write;
    use std::net::ToSocketAddrs;
    let sock = addr.to_socket_addrs().with_context(|| format!("resolving {addr}"))?.next().context("no address")?;
    let start = std::time::Instant::now();
    let client = crate::quic::QuicClient::connect(sock, server_name, trust).await?;
    let connect = start.elapsed();
    let mut reply = None;
    let mut latencies = Vec::with_capacity(repeat.max(1));
    for i in 0..repeat.max(1) {
        let t = std::time::Instant::now();
        // What the guest streams is printed as it arrives.
        let mut streamed = false;
        let r = client
            .infer_streaming(model, token, request, |chunk| {
                streamed = true;
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(chunk).and_then(|()| out.flush());
            })
            .await?;
        if streamed && output.is_none() {
            println!();
        }
        let took = t.elapsed();
        if repeat > 1 {
            eprintln!("request {i}: {:.3} ms", took.as_secs_f64() * 1e3);
        }
        latencies.push(took);
        reply = Some(r);
    }
    eprintln!("connected in {:.3} ms (one handshake for {} request(s))", connect.as_secs_f64() * 1e3, repeat.max(1));
    if repeat > 1 {
        latencies.sort_unstable();
        // Nearest rank: the smallest latency at least q % of the requests took.
        let ms = |q: usize| latencies[(q * latencies.len()).div_ceil(100).max(1) - 1].as_secs_f64() * 1e3;
        eprintln!("latency over {} requests: min {:.3} ms, p50 {:.3} ms, p99 {:.3} ms", latencies.len(), ms(0), ms(50), ms(99));
    }
    let reply = reply.expect("at least one request");
    match &reply.response {
        Some(resp) if reply.is_ok() => {
            let mut v = kserve::response_json(resp, Some(model)).map_err(anyhow::Error::msg)?;
            v["parameters"] = reply.header["parameters"].clone();
            match output {
                Some(path) => std::fs::write(path, serde_json::to_vec(&v)?)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => println!("{}", serde_json::to_string(&v)?),
            }
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            eprintln!("error: {}", reply.error().unwrap_or("request failed"));
            Ok(ExitCode::from(2))
        }
    }
}

fn read(path: &PathBuf) -> Result<Vec<u8>> {
    if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).context("reading stdin")?;
        return Ok(buf);
    }
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn parse_request_file(path: &PathBuf) -> Result<mote_runtime::Request> {
    let text = read(path)?;
    let json: serde_json::Value =
        serde_json::from_slice(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    kserve::parse_request(&json).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn run_job(args: RunArgs) -> Result<ExitCode> {
    let backend = BackendChoice::parse(&args.backend).map_err(anyhow::Error::msg)?;
    let guest = read(&args.guest)?;
    let mut models = Vec::new();
    for m in args.models.iter().chain(&args.nn_graphs) {
        let (name, path) = m.split_once('=').with_context(|| format!("--model {m}: expected NAME=PATH"))?;
        let bytes = std::fs::read(path).with_context(|| format!("reading model {path}"))?;
        models.push((name.to_string(), bytes));
    }
    let mut limits = Limits::default();
    if let Some(f) = args.fuel {
        limits.fuel = f;
    }
    if let Some(d) = args.deadline_ms {
        limits.deadline_ms = d;
    }
    if let Some(m) = args.memory_mb {
        limits.memory_bytes = m << 20;
    }
    let config = RuntimeConfig {
        data_dir: if args.ephemeral_key { None } else { RuntimeConfig::default().data_dir },
        pool_instances: 4,
        ..RuntimeConfig::default()
    };
    let runtime = Runtime::new(config).map_err(anyhow::Error::msg)?;
    if let BackendChoice::Fixed(_) = backend {
        // A backend asked for by name must exist; say so before running.
        runtime.backend_device(backend).map_err(anyhow::Error::msg)?;
    }
    let name = args.guest.file_stem().map_or_else(|| "guest".into(), |s| s.to_string_lossy().into_owned());
    let deployment = runtime.deploy(DeploymentSpec { name: name.clone(), guest, models, limits, backend, batching: None })?;
    if deployment.is_command() {
        return run_program(&deployment, &args, &name);
    }
    if !args.dirs.is_empty() || !args.args.is_empty() {
        bail!("--dir and program arguments are for command programs; {} is a job guest (use --input)", args.guest.display());
    }
    let input = args.input.as_ref().context("a job guest needs --input REQUEST.json")?;
    let request = parse_request_file(input)?;
    // What the guest streams (mote:edge/output) is printed as it comes.
    let streamed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = streamed.clone();
    let sink: mote_runtime::StreamSink = Box::new(move |chunk: &[u8]| {
        use std::io::Write;
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut out = std::io::stdout().lock();
        // A closed stdout (`| head`) is a client that went away.
        out.write_all(chunk).and_then(|()| out.flush()).is_ok()
    });
    let report = deployment.run_streaming(mote_runtime::new_job_id(), request, Some(sink));
    if streamed.load(std::sync::atomic::Ordering::Relaxed) && args.output.is_none() {
        println!();
    }
    report_run(&report, args.receipt.as_deref())?;
    match report.result {
        Ok(response) => {
            let json = kserve::response_json(&response, Some(&name)).map_err(anyhow::Error::msg)?;
            match &args.output {
                Some(path) => std::fs::write(path, serde_json::to_string(&json)?)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => println!("{}", serde_json::to_string(&json)?),
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: job failed ({}): {}", e.outcome, e.message);
            Ok(ExitCode::from(2))
        }
    }
}

/// Runs a command program: stdout and stderr stream to the terminal, the
/// exit code is the program's (or 2 when the sandbox stopped it: trap,
/// fuel, deadline, memory).
fn run_program(deployment: &mote_runtime::Deployment, args: &RunArgs, name: &str) -> Result<ExitCode> {
    use mote_runtime::command::{CommandRun, Mount};
    if args.input.is_some() {
        bail!("--input is for job guests; {} is a command program (it takes arguments and --dir)", args.guest.display());
    }
    let mut argv = vec![format!("{name}.wasm")];
    argv.extend(args.args.iter().cloned());
    let run = CommandRun {
        args: argv,
        mounts: args.dirs.iter().map(|d| Mount::parse(d)).collect(),
        stdout: Box::new(std::io::stdout()),
        stderr: Box::new(std::io::stderr()),
    };
    let report = deployment.run_command(mote_runtime::new_job_id(), run)?;
    report_run(&report, args.receipt.as_deref())?;
    let r = &report.receipt;
    match (&report.result, r.exit_code) {
        (_, Some(code)) => Ok(ExitCode::from(u8::try_from(code).unwrap_or(1))),
        (Err(e), None) => {
            eprintln!("error: program stopped ({}): {}", e.outcome, e.message);
            Ok(ExitCode::from(2))
        }
        (Ok(_), None) => Ok(ExitCode::SUCCESS),
    }
}

/// A finished run on stderr (log lines, then the usage line), and its
/// receipt written where asked.
fn report_run(report: &mote_runtime::JobReport, receipt: Option<&std::path::Path>) -> Result<()> {
    for line in &report.log {
        eprintln!("[guest {:?}] {}", line.level, line.message);
    }
    print_usage(&report.receipt);
    if let Some(path) = receipt {
        std::fs::write(path, report.receipt.to_json_pretty()).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The job's usage line on stderr.
fn print_usage(r: &Receipt) {
    eprintln!(
        "usage: outcome={} fuel={} wall={:.3}ms backend={:.3}ms bytes_in={} bytes_out={} peak_memory={}KiB graphs={} tokens={}+{} backend={} device={:?} price={}",
        r.outcome,
        r.usage.fuel,
        r.usage.wall_ns as f64 / 1e6,
        r.usage.backend_ns as f64 / 1e6,
        r.usage.bytes_in,
        r.usage.bytes_out,
        r.usage.peak_memory_bytes / 1024,
        r.usage.graphs_loaded,
        r.usage.prompt_tokens,
        r.usage.completion_tokens,
        r.backend,
        r.device,
        r.price_units
    );
}

fn verify(
    receipt: PathBuf,
    guest: Option<PathBuf>,
    models: Vec<PathBuf>,
    input: Option<PathBuf>,
    node: Option<String>,
) -> Result<ExitCode> {
    let text = mote_runtime::receipt::read_receipt_file(&receipt)
        .with_context(|| format!("reading {}", receipt.display()))?;
    let r = Receipt::verify_json(&text).map_err(|e| anyhow::anyhow!("{}: {e}", receipt.display()))?;
    let mut problems = Vec::new();
    if let Some(want) = node {
        if !want.trim().eq_ignore_ascii_case(&r.node_id) {
            problems.push(format!("it was signed by node {}, not by the expected node {}", r.node_id, want.trim()));
        }
    }
    if let Some(g) = guest {
        let sha = mote_runtime::receipt::sha256_hex(&read(&g)?);
        if sha != r.guest_sha256 {
            problems.push(format!("guest {} has sha256 {sha}, the receipt names {}", g.display(), r.guest_sha256));
        }
    }
    for m in models {
        let sha = mote_runtime::receipt::sha256_hex(&read(&m)?);
        if !r.model_sha256.contains(&sha) {
            problems.push(format!("model {} (sha256 {sha}) is not among the receipt's models", m.display()));
        }
    }
    if let Some(i) = input {
        let req = parse_request_file(&i)?;
        // In the receipt's own hash: BLAKE3, or sha256 for older receipts.
        let (alg, want) = r.input_digest().expect("a verified receipt has one input digest");
        let got = mote_runtime::digest_with(alg, &req.inputs, &req.parameters);
        if got != want {
            problems.push(format!("request {} hashes to {got} ({alg:?}), the receipt has {want}", i.display()));
        }
    }
    if !problems.is_empty() {
        bail!("{}: signature valid, but {}", receipt.display(), problems.join("; "));
    }
    println!(
        "ok: receipt {} signed by node {} (outcome {}, {} price units)",
        r.job_id, r.node_id, r.outcome, r.price_units
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "wgpu")]
fn wgpu_adapters() -> serde_json::Value {
    serde_json::to_value(mote_runtime::backend::wgpu::adapters()).unwrap_or_default()
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_adapters() -> serde_json::Value {
    serde_json::json!("not built")
}

fn specs() -> Result<ExitCode> {
    let runtime = Runtime::new(RuntimeConfig::default())?;
    println!("{}", serde_json::to_string_pretty(&specs_json(&runtime)?)?);
    Ok(ExitCode::SUCCESS)
}

/// What `mote specs` prints: backends, devices, node id.
pub(crate) fn specs_json(runtime: &Runtime) -> Result<serde_json::Value> {
    let device = |choice| match runtime.backend_device(choice) {
        Ok((k, d)) => serde_json::json!({"available": true, "backend": k.as_str(), "device": d}),
        Err(e) => serde_json::json!({"available": false, "reason": e.message}),
    };
    let ort = match mote_runtime::backend::ort::OrtBackend::probe() {
        Ok(p) => serde_json::to_value(p)?,
        Err(e) => serde_json::json!({"error": e}),
    };
    let specs = serde_json::json!({
        "node_id": runtime.node_id(),
        "version": env!("CARGO_PKG_VERSION"),
        "cpus": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "arch": std::env::consts::ARCH,
        "onnxruntime": ort,
        "backends": {
            "ort-cpu": device(BackendChoice::Fixed(mote_runtime::backend::BackendKind::OrtCpu)),
            "ort-cuda": device(BackendChoice::Fixed(mote_runtime::backend::BackendKind::OrtCuda)),
            "wgpu": device(BackendChoice::Fixed(mote_runtime::backend::BackendKind::Wgpu)),
            "auto": device(BackendChoice::Auto),
        },
        "wgpu_adapters": wgpu_adapters(),
    });
    Ok(specs)
}
