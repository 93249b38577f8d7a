//! One client posting a KServe JSON request over HTTPS in a loop, as the
//! bench's endpoint client does (reqwest, kept-alive connection): a load
//! for profiling `mote serve` at one client.
//! `post URL BODY_FILE CERT_PEM N`
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (url, body, cert, n) = (
        &args[1],
        std::fs::read(&args[2]).unwrap(),
        std::fs::read(&args[3]).unwrap(),
        args[4].parse::<usize>().unwrap(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&cert).unwrap())
        .tls_built_in_root_certs(false)
        .build()
        .unwrap();
    let body = bytes::Bytes::from(body);
    rt.block_on(async move {
        let mut t = Vec::with_capacity(n);
        for _ in 0..n {
            let s = Instant::now();
            let r = http.post(url.as_str()).body(body.clone()).send().await.unwrap();
            assert!(r.status().is_success(), "{}", r.status());
            r.bytes().await.unwrap();
            t.push(s.elapsed());
        }
        t.sort();
        println!("{n} requests: p50 {:?} p99 {:?}", t[n / 2], t[n * 99 / 100]);
    });
}
