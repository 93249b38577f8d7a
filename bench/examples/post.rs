//! Clients posting a KServe JSON request over HTTPS in a loop, as the
//! bench's endpoint client does (reqwest, kept-alive connections): a load
//! for profiling `mote serve`.
//! `post URL BODY_FILE CERT_PEM N [CLIENTS]`: N requests in all, from
//! CLIENTS concurrent clients (1 by default), each on its own connection.
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (url, body, cert, n) = (
        args[1].clone(),
        bytes::Bytes::from(std::fs::read(&args[2]).unwrap()),
        std::fs::read(&args[3]).unwrap(),
        args[4].parse::<usize>().unwrap(),
    );
    let clients = args.get(5).map_or(1, |c| c.parse::<usize>().unwrap()).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let client = || {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&cert).unwrap())
            .tls_built_in_root_certs(false)
            .build()
            .unwrap()
    };
    let start = Instant::now();
    let mut t: Vec<_> = rt.block_on(async {
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                let (http, url, body) = (client(), url.clone(), body.clone());
                let share = n / clients + usize::from(c < n % clients);
                tokio::spawn(async move {
                    let mut t = Vec::with_capacity(share);
                    for _ in 0..share {
                        let s = Instant::now();
                        let r = http.post(url.as_str()).body(body.clone()).send().await.unwrap();
                        assert!(r.status().is_success(), "{}", r.status());
                        r.bytes().await.unwrap();
                        t.push(s.elapsed());
                    }
                    t
                })
            })
            .collect();
        let mut all = Vec::with_capacity(n);
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        all
    });
    let secs = start.elapsed().as_secs_f64();
    t.sort();
    println!(
        "{n} requests from {clients} client(s): p50 {:?} p99 {:?}, {:.0} req/s",
        t[n / 2],
        t[n * 99 / 100],
        n as f64 / secs
    );
}
