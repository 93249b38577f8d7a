//! A blocking HTTPS/1.1 client: rustls over a std `TcpStream`, one kept-alive
//! connection, the request's bytes built once. The endpoint bench's
//! reference client for one client: a thread that writes its request and
//! sleeps in `read` until the answer, as curl or Triton's perf_analyzer do,
//! without an async runtime's tasks and wake-ups or a pooling client's
//! per-request work on the client's side of the measurement.

use anyhow::{bail, Context, Result};
use rustls_pki_types::pem::PemObject;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

/// One connection and one request, sent again and again.
pub(crate) struct BlockingPost {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    request: Vec<u8>,
    buf: Vec<u8>,
}

impl BlockingPost {
    /// Connects to `localhost:port`, trusting the CA in `ca_pem`, to post
    /// `body` to `path` with `headers` (name, value) besides the length.
    pub(crate) fn connect(
        port: u16,
        ca_pem: &Path,
        path: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca_pem).context("reading the CA")? {
            roots.add(cert.context("reading the CA")?)?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let conn = rustls::ClientConnection::new(Arc::new(config), "localhost".try_into()?)?;
        let sock = TcpStream::connect(("127.0.0.1", port))?;
        sock.set_nodelay(true)?;
        let mut request = format!("POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-length: {}\r\n", body.len());
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let mut request = request.into_bytes();
        request.extend_from_slice(body);
        Ok(Self { tls: rustls::StreamOwned::new(conn, sock), request, buf: vec![0; 64 << 10] })
    }

    /// Sends the request and reads the whole answer; fails unless it is a
    /// `200` with a `content-length` body.
    pub(crate) fn exchange(&mut self) -> Result<()> {
        self.tls.write_all(&self.request)?;
        self.tls.flush()?;
        let mut have = 0;
        let (head_end, body_len) = loop {
            if have == self.buf.len() {
                self.buf.resize(self.buf.len() * 2, 0);
            }
            let n = self.tls.read(&mut self.buf[have..])?;
            if n == 0 {
                bail!("the server closed the connection");
            }
            have += n;
            if let Some(end) = self.buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                break (end + 4, head_length(&self.buf[..end])?);
            }
        };
        let total = head_end + body_len;
        if self.buf.len() < total {
            self.buf.resize(total, 0);
        }
        while have < total {
            let n = self.tls.read(&mut self.buf[have..total])?;
            if n == 0 {
                bail!("the server closed the connection mid-answer");
            }
            have += n;
        }
        if have > total {
            bail!("{} bytes past the answer", have - total);
        }
        Ok(())
    }
}

/// The body length a response head declares; an error unless its status is
/// `200`.
fn head_length(head: &[u8]) -> Result<usize> {
    let head = std::str::from_utf8(head).context("a response head that is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200 ") {
        bail!("answered '{status}'");
    }
    lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .context("an answer without content-length")?
        .1
        .trim()
        .parse()
        .context("a content-length that is not a number")
}

#[cfg(test)]
mod tests {
    use super::head_length;

    #[test]
    fn reads_the_length_of_an_ok_answer_only() {
        assert_eq!(head_length(b"HTTP/1.1 200 OK\r\ncontent-type: x\r\nContent-Length: 17").unwrap(), 17);
        assert!(head_length(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 3").is_err());
        assert!(head_length(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked").is_err());
    }
}
