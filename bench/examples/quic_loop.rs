//! One QUIC client asking `mote serve` for a deployment in a loop, as the
//! bench's floor row does: a load for profiling the QUIC path.
//! `quic_loop ADDR CERT_PEM N [DEPLOYMENT [REQUEST_JSON]] [current]`:
//! N requests (a missing deployment by default); `current` drives the
//! client on a current-thread runtime, `spawn` in a task spawned on the
//! multi-threaded one (as the bench's clients), else in `block_on` on the
//! main thread (as `mote infer` did). `SHOW=1` prints the first reply's
//! header, `STATS=1` the connection's counters at the end (datagrams and
//! frames by type: `QuicClient::stats`).
use mote_agent::quic::QuicClient;
use mote_agent::tls::Trust;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr = args[1].parse().unwrap();
    let cert = std::path::PathBuf::from(&args[2]);
    let n: usize = args[3].parse().unwrap();
    let deployment = args.get(4).cloned().unwrap_or_else(|| "no-such-deployment".into());
    let req = match args.get(5).filter(|a| *a != "current" && *a != "spawn") {
        Some(p) => {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
            mote_runtime::kserve::parse_request(&v).unwrap()
        }
        None => mote_runtime::Request::default(),
    };
    let rt = if args.iter().any(|a| a == "current") {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    } else {
        tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap()
    };
    let spawn = args.iter().any(|a| a == "spawn");
    let work = async move {
        let c = QuicClient::connect(addr, "localhost", &Trust::CaFile(cert)).await.unwrap();
        if std::env::var_os("SHOW").is_some() {
            let r = c.infer(&deployment, "", &req).await.unwrap();
            println!("{}", r.header);
        }
        for _ in 0..(n / 10).max(10) {
            c.infer(&deployment, "", &req).await.unwrap();
        }
        let mut t = Vec::with_capacity(n);
        for _ in 0..n {
            let s = Instant::now();
            c.infer(&deployment, "", &req).await.unwrap();
            t.push(s.elapsed());
        }
        if std::env::var_os("STATS").is_some() {
            println!("{:#?}", c.stats());
        }
        t
    };
    let mut t = if spawn { rt.block_on(async { tokio::spawn(work).await.unwrap() }) } else { rt.block_on(work) };
    t.sort();
    println!("{n} QUIC requests: p50 {:?} p99 {:?}", t[n / 2], t[n * 99 / 100]);
}
