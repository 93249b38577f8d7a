//! `mote node`, `mote job …` and `mote market …` **(contract: docs/cli.md)**.

use super::client::{self, Submission};
use super::node::NodeConfig;
use super::spec::{BackendReq, JobLimits, JobPhase};
use super::{Market, NatsOptions};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// How to reach NATS (shared by every market command).
#[derive(clap::Args, Debug, Clone)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// NATS credentials file (.creds).
    #[arg(long)]
    creds: Option<PathBuf>,
    /// File holding an nkey seed.
    #[arg(long)]
    nkey: Option<PathBuf>,
    /// NATS user (with --password).
    #[arg(long)]
    user: Option<String>,
    /// NATS password.
    #[arg(long)]
    password: Option<String>,
    /// Require TLS, trusting this CA certificate (PEM).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Replicas for streams and buckets this command creates.
    #[arg(long)]
    replicas: Option<usize>,
}

impl NatsArgs {
    fn options(&self) -> NatsOptions {
        NatsOptions {
            creds: self.creds.clone(),
            nkey: self.nkey.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            tls_ca: self.tls_ca.clone(),
            ..NatsOptions::from_urls(&self.nats)
        }
    }

    async fn market(&self) -> Result<Market> {
        Market::open(self.options().connect().await?, self.replicas.unwrap_or(1)).await
    }
}

/// `mote node`.
#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    #[command(flatten)]
    nats: NatsArgs,
    /// Market to join.
    #[arg(long)]
    market: Option<String>,
    /// Node key and artifact cache directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Node config (node.toml); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Jobs run at once.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Seconds between heartbeats.
    #[arg(long)]
    heartbeat_s: Option<u64>,
    /// Seconds without ack or progress before a job is redelivered.
    #[arg(long)]
    ack_wait_s: Option<u64>,
    /// Deliveries before a job is dead-lettered.
    #[arg(long)]
    max_deliver: Option<i64>,
    /// Price units per second of work.
    #[arg(long)]
    price: Option<u64>,
    /// Serve only these backend requirements (comma-separated: ort-cpu,
    /// wgpu, gpu, any; default: what the node has).
    #[arg(long, value_delimiter = ',')]
    serve: Vec<String>,
}

/// Runs `mote node`.
pub fn node(a: NodeArgs) -> Result<ExitCode> {
    let mut cfg = match &a.config {
        Some(p) => NodeConfig::load(p)?,
        None => NodeConfig::default(),
    };
    let from_flags = a.nats.options();
    if cfg.nats.urls.is_empty() || a.nats.nats != "nats://127.0.0.1:4222" {
        cfg.nats.urls = from_flags.urls;
    }
    macro_rules! flag {
        ($($f:ident => $dst:expr),*) => { $( if let Some(v) = a.$f.clone() { $dst = v; } )* };
    }
    flag!(market => cfg.market, data_dir => cfg.data_dir, concurrency => cfg.concurrency,
          heartbeat_s => cfg.heartbeat_s, ack_wait_s => cfg.ack_wait_s, max_deliver => cfg.max_deliver,
          price => cfg.price.per_backend_second);
    if !a.serve.is_empty() {
        cfg.serve =
            Some(a.serve.iter().map(|s| BackendReq::parse(s)).collect::<Result<_, _>>().map_err(anyhow::Error::msg)?);
    }
    if let Some(r) = a.nats.replicas {
        cfg.replicas = r;
    }
    cfg.nats.creds = from_flags.creds.or(cfg.nats.creds);
    cfg.nats.nkey = from_flags.nkey.or(cfg.nats.nkey);
    cfg.nats.user = from_flags.user.or(cfg.nats.user);
    cfg.nats.password = from_flags.password.or(cfg.nats.password);
    cfg.nats.tls_ca = from_flags.tls_ca.or(cfg.nats.tls_ca);
    if cfg.market.is_empty() {
        bail!("--market is required (or `market` in the node config)");
    }
    runtime()?.block_on(super::node::run(cfg))?;
    Ok(ExitCode::SUCCESS)
}

/// `mote job …`.
#[derive(clap::Subcommand, Debug)]
pub enum JobCommand {
    /// Post a job: uploads the artifacts the market lacks, prints the job id.
    Submit(SubmitArgs),
    /// Print a job's state as JSON.
    Status {
        /// NATS connection.
        #[command(flatten)]
        nats: NatsArgs,
        /// Job id.
        id: String,
    },
    /// Print a job's response (as `mote run` does) after verifying its receipt.
    Result {
        /// NATS connection.
        #[command(flatten)]
        nats: NatsArgs,
        /// Job id.
        id: String,
        /// Write the receipt here.
        #[arg(long)]
        receipt: Option<PathBuf>,
    },
    /// Check a job's result; with --reexecute, rerun it here and compare.
    Verify {
        /// NATS connection.
        #[command(flatten)]
        nats: NatsArgs,
        /// Job id.
        id: String,
        /// Rerun the job locally and compare the output hash.
        #[arg(long)]
        reexecute: bool,
    },
}

/// `mote job submit`.
#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    #[command(flatten)]
    nats: NatsArgs,
    /// Market to post to.
    #[arg(long)]
    market: String,
    /// Guest component (.wasm).
    guest: PathBuf,
    /// A model: NAME=PATH.onnx (repeatable).
    #[arg(long = "model", value_name = "NAME=PATH")]
    models: Vec<String>,
    /// KServe v2 request JSON.
    #[arg(long)]
    input: PathBuf,
    /// Backend: ort-cpu, wgpu, gpu or any.
    #[arg(long, default_value = "any")]
    backend: String,
    /// Most price units per second of work.
    #[arg(long, default_value_t = 10_000)]
    max_price: u64,
    /// Seconds of work paid at most (the job's deadline).
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Fuel limit.
    #[arg(long)]
    fuel: Option<u64>,
    /// Memory limit, MiB.
    #[arg(long)]
    memory_mb: Option<u64>,
    /// Share of jobs re-executed by other nodes (0..1).
    #[arg(long, default_value_t = 0.0)]
    verify: f64,
    /// Wait for the result and print the response.
    #[arg(long)]
    wait: bool,
    /// Seconds to wait with --wait.
    #[arg(long, default_value_t = 300)]
    wait_s: u64,
}

/// `mote market …`.
#[derive(clap::Subcommand, Debug)]
pub enum MarketCommand {
    /// List the market's nodes: specs, score, price, liveness, checks.
    Nodes {
        /// NATS connection.
        #[command(flatten)]
        nats: NatsArgs,
        /// Market.
        #[arg(long)]
        market: String,
    },
    /// One line per node: jobs, backend seconds, price units, all receipts verified.
    Settle {
        /// NATS connection.
        #[command(flatten)]
        nats: NatsArgs,
        /// Market.
        #[arg(long)]
        market: String,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

/// Prints a result's response as `mote run` does; exit 0 on outcome ok.
fn print_result(r: &super::spec::JobResult) -> Result<ExitCode> {
    let u = &r.receipt.usage;
    eprintln!(
        "job {} on node {} (attempt {}): outcome={} wall={:.3}ms backend={:.3}ms price={}",
        r.job_id,
        r.node_id,
        r.attempt,
        r.receipt.outcome,
        u.wall_ns as f64 / 1e6,
        u.backend_ns as f64 / 1e6,
        r.receipt.price_units
    );
    match (&r.response, &r.error) {
        (Some(v), _) => {
            println!("{}", serde_json::to_string(v)?);
            Ok(ExitCode::SUCCESS)
        }
        (None, Some(e)) => {
            eprintln!("error: job failed ({}): {}", e.outcome, e.message);
            Ok(ExitCode::from(2))
        }
        (None, None) => bail!("result has neither response nor error"),
    }
}

/// Runs `mote job …`.
pub fn job(cmd: JobCommand) -> Result<ExitCode> {
    runtime()?.block_on(async move {
        match cmd {
            JobCommand::Submit(a) => {
                let backend = BackendReq::parse(&a.backend).map_err(anyhow::Error::msg)?;
                let guest = std::fs::read(&a.guest).with_context(|| format!("reading {}", a.guest.display()))?;
                let mut models = Vec::new();
                for m in &a.models {
                    let (name, path) = m.split_once('=').with_context(|| format!("--model {m}: expected NAME=PATH"))?;
                    models.push((name.to_string(), std::fs::read(path).with_context(|| format!("reading {path}"))?));
                }
                let text = std::fs::read(&a.input).with_context(|| format!("reading {}", a.input.display()))?;
                let request: serde_json::Value = serde_json::from_slice(&text)
                    .with_context(|| format!("{} is not valid JSON", a.input.display()))?;
                mote_runtime::kserve::parse_request(&request)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", a.input.display()))?;
                let market = a.nats.market().await?;
                let name = a.guest.file_stem().map_or_else(|| "guest".into(), |s| s.to_string_lossy().into_owned());
                let job = market
                    .submit(Submission {
                        market: a.market.clone(),
                        name,
                        guest,
                        models,
                        request,
                        backend,
                        max_price: a.max_price,
                        timeout_s: a.timeout,
                        limits: JobLimits { fuel: a.fuel, memory_bytes: a.memory_mb.map(|m| m << 20) },
                        verify: a.verify,
                    })
                    .await?;
                if !a.wait {
                    println!("{}", job.id);
                    return Ok(ExitCode::SUCCESS);
                }
                eprintln!("job {}", job.id);
                let r = market.wait(&a.market, &job.id, Duration::from_secs(a.wait_s)).await?;
                accept(&market, &r).await?;
                print_result(&r)
            }
            JobCommand::Status { nats, id } => {
                let market = nats.market().await?;
                let mut st = market.job_state(&id).await?.with_context(|| format!("no job {id}"))?;
                // The result is the authority; the state record is written
                // just after it.
                if matches!(st.state, JobPhase::Queued | JobPhase::Running) {
                    if let Some(r) = market.result(&st.market, &id).await? {
                        st.state = if r.error.is_none() { JobPhase::Done } else { JobPhase::Failed };
                        st.node_id = Some(r.node_id);
                        st.attempt = r.attempt;
                    }
                }
                println!("{}", serde_json::to_string(&st)?);
                Ok(ExitCode::SUCCESS)
            }
            JobCommand::Result { nats, id, receipt } => {
                let market = nats.market().await?;
                let r = result_of(&market, &id).await?;
                accept(&market, &r).await?;
                if let Some(p) = receipt {
                    std::fs::write(&p, r.receipt.to_json_pretty()).with_context(|| format!("writing {}", p.display()))?;
                }
                print_result(&r)
            }
            JobCommand::Verify { nats, id, reexecute } => {
                let market = nats.market().await?;
                let r = result_of(&market, &id).await?;
                accept(&market, &r).await?;
                eprintln!("receipt of job {id} verifies (node {})", r.node_id);
                if reexecute {
                    let ours = reexecute_locally(&market, &r.job).await?;
                    // In the receipt's own hash (sha256 in older receipts).
                    let (alg, theirs) = r.receipt.output_digest().context("the receipt has no output digest")?;
                    let got = ours.output_digest(alg);
                    if got != theirs {
                        bail!(
                            "job {id}: re-executed output hashes to {got} ({alg:?}), node {} reported {theirs}: mismatch",
                            r.node_id,
                        );
                    }
                    eprintln!("re-executed here: output hash {theirs} matches");
                }
                println!("ok");
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

/// Refuses a result that does not pass [`client::check_result`].
async fn accept(market: &Market, r: &super::spec::JobResult) -> Result<()> {
    let problems = client::check_result(market, r, &Default::default()).await;
    if !problems.is_empty() {
        bail!("job {}: result rejected: {}", r.job_id, problems.join("; "));
    }
    Ok(())
}

async fn result_of(market: &Market, id: &str) -> Result<super::spec::JobResult> {
    let st = market.job_state(id).await?.with_context(|| format!("no job {id}"))?;
    match market.result(&st.market, id).await? {
        Some(r) => Ok(r),
        None if st.state == JobPhase::Dead => bail!("job {id} was dead-lettered: {}", st.reason.unwrap_or_default()),
        None => bail!("job {id} has no result yet (state {:?})", st.state),
    }
}

/// Runs a job here (ORT CPU or the job's backend) and returns its report.
pub async fn reexecute_locally(market: &Market, job: &super::spec::JobSpec) -> Result<mote_runtime::JobReport> {
    let guest = market.download(&job.guest, 512 << 20).await?;
    let mut models = Vec::new();
    for (name, sha) in &job.models {
        models.push((name.clone(), market.download(sha, 512 << 20).await?));
    }
    let request = super::request_of(job, |sha| async move { Ok(market.download(&sha, 64 << 20).await?) }).await?;
    let job = job.clone();
    tokio::task::spawn_blocking(move || -> Result<mote_runtime::JobReport> {
        let rt = mote_runtime::Runtime::new(mote_runtime::RuntimeConfig {
            data_dir: None,
            pool_instances: 2,
            ..Default::default()
        })?;
        let limits = job.limits();
        let backend = match job.backend {
            BackendReq::Wgpu => mote_runtime::backend::BackendChoice::Fixed(mote_runtime::backend::BackendKind::Wgpu),
            _ => mote_runtime::backend::BackendChoice::Fixed(mote_runtime::backend::BackendKind::OrtCpu),
        };
        let d = rt.deploy(mote_runtime::DeploymentSpec { name: "verify".into(), guest, models, limits, backend, batching: None })?;
        Ok(d.run_as(job.id.clone(), request))
    })
    .await?
}

/// Runs `mote market …`.
pub fn market(cmd: MarketCommand) -> Result<ExitCode> {
    runtime()?.block_on(async move {
        match cmd {
            MarketCommand::Nodes { nats, market: name } => {
                let market = nats.market().await?;
                for (s, live) in market.list_nodes(&name).await? {
                    let (checked, mismatches) = market.verify_record(&name, &s.node_id).await?;
                    println!(
                        "{}",
                        serde_json::json!({
                            "node_id": s.node_id, "live": live, "heartbeat_at": s.heartbeat_at,
                            "serves": s.serves, "concurrency": s.concurrency, "score": s.score,
                            "price": s.price, "verified": checked, "mismatches": mismatches,
                            "cpus": s.specs["cpus"], "backends": s.specs["backends"],
                        })
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            MarketCommand::Settle { nats, market: name } => {
                let market = nats.market().await?;
                let (table, rejections) = client::settle(&market, &name).await?;
                for (node, s) in &table {
                    println!(
                        "node {node} jobs={} failed={} backend_s={:.6} wall_s={:.6} price_units={} rejected={}",
                        s.jobs,
                        s.failed,
                        s.backend_ns as f64 / 1e9,
                        s.wall_ns as f64 / 1e9,
                        s.price_units,
                        s.rejected
                    );
                }
                for r in &rejections {
                    eprintln!("rejected: {r}");
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}
