//! What the node takes in from the network before a job exists: request
//! bodies counted against a node-wide byte budget, read under a deadline,
//! and connections counted against a cap and closed when idle.
//!
//! Every transport calls these before it parses anything, and only after
//! the caller was authenticated from its headers (HTTP) or frame prefix
//! (QUIC) and admitted to a deployment's queue: a stranger without a token,
//! or a flood beyond the queue, costs the node a few hundred bytes, not a
//! buffered body.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a body was not taken.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum IntakeError {
    /// Larger than the node accepts for one request.
    #[error("request body is larger than {0} bytes (server.max_body_bytes)")]
    TooLarge(usize),
    /// The node's budget for bodies being received is spent.
    #[error("the node is receiving too many request bytes at once; retry shortly")]
    Busy,
    /// The client did not send the body in time.
    #[error("the request body did not arrive within {0:?} (server.body_timeout_ms)")]
    Timeout(Duration),
    /// The connection failed while the body was read.
    #[error("reading the request body: {0}")]
    Broken(String),
}

/// Bytes of request bodies the node holds at once (received, or parsed and
/// waiting for their job), across all connections and transports. Counted
/// in KiB so a u32 of permits spans terabytes.
#[derive(Clone)]
pub(crate) struct BodyBudget {
    kib: Arc<Semaphore>,
}

/// A part of the body budget, given back when dropped (with the request).
#[derive(Debug)]
pub(crate) struct BodyShare {
    permit: Option<OwnedSemaphorePermit>,
}

impl BodyBudget {
    pub(crate) fn new(bytes: u64) -> Self {
        let kib = usize::try_from(bytes.div_ceil(1024)).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS);
        Self { kib: Arc::new(Semaphore::new(kib)) }
    }

    /// An empty share, to grow as bytes arrive.
    pub(crate) fn share(&self) -> BodyShare {
        BodyShare { permit: None }
    }

    /// Grows `share` to cover `total` bytes, without waiting: a node out of
    /// budget answers "busy" rather than queueing bytes.
    pub(crate) fn cover(&self, share: &mut BodyShare, total: usize) -> Result<(), IntakeError> {
        let want = u32::try_from(total.div_ceil(1024)).map_err(|_| IntakeError::Busy)?;
        let have = share.permit.as_ref().map_or(0, |p| p.num_permits() as u32);
        if want <= have {
            return Ok(());
        }
        let more = self.kib.clone().try_acquire_many_owned(want - have).map_err(|_| IntakeError::Busy)?;
        match &mut share.permit {
            Some(p) => p.merge(more),
            None => share.permit = Some(more),
        }
        Ok(())
    }

    /// KiB not taken now (for tests and metrics).
    #[cfg(test)]
    pub(crate) fn available_kib(&self) -> usize {
        self.kib.available_permits()
    }
}

/// A body that arrives in chunks (an HTTP body, a QUIC stream).
pub(crate) trait Chunks {
    /// The next chunk; `None` at the end.
    #[allow(async_fn_in_trait)] // used generically, never as a trait object
    async fn next_chunk(&mut self) -> Result<Option<axum::body::Bytes>, String>;
}

impl Chunks for axum::body::Body {
    async fn next_chunk(&mut self) -> Result<Option<axum::body::Bytes>, String> {
        loop {
            match http_body_util::BodyExt::frame(self).await {
                None => return Ok(None),
                Some(Err(e)) => return Err(e.to_string()),
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        return Ok(Some(d));
                    }
                    // Trailers carry no request data.
                }
            }
        }
    }
}

impl Chunks for quinn::RecvStream {
    async fn next_chunk(&mut self) -> Result<Option<axum::body::Bytes>, String> {
        self.read_chunk(1 << 20, true).await.map(|c| c.map(|c| c.bytes)).map_err(|e| e.to_string())
    }
}

/// Reads `body` to its end: at most `max` bytes, each chunk covered by
/// `budget` before it is kept, the whole body within `timeout`. `prefix`
/// (bytes already read, e.g. a frame's header) counts towards all three;
/// its spare capacity is room the body is read into.
pub(crate) async fn read_body(
    body: &mut impl Chunks,
    prefix: Vec<u8>,
    max: usize,
    budget: &BodyBudget,
    share: &mut BodyShare,
    timeout: Duration,
) -> Result<Vec<u8>, IntakeError> {
    let read = async {
        let mut bytes = prefix;
        if bytes.len() > max {
            return Err(IntakeError::TooLarge(max));
        }
        budget.cover(share, bytes.len())?;
        while let Some(chunk) = body.next_chunk().await.map_err(IntakeError::Broken)? {
            let total = bytes.len() + chunk.len();
            if total > max {
                return Err(IntakeError::TooLarge(max));
            }
            budget.cover(share, total)?;
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    };
    tokio::time::timeout(timeout, read).await.map_err(|_| IntakeError::Timeout(timeout))?
}

/// Connections the node serves at once (each holds a socket and buffers).
#[derive(Clone)]
pub(crate) struct ConnectionCap {
    slots: Arc<Semaphore>,
}

impl ConnectionCap {
    pub(crate) fn new(max: usize) -> Self {
        Self { slots: Arc::new(Semaphore::new(max.max(1))) }
    }

    /// A slot for one more connection, or `None` when the cap is reached.
    pub(crate) fn try_take(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }
}

/// A connection that holds its slot in the [`ConnectionCap`] and fails
/// with `TimedOut` once neither side has moved a byte for `idle`.
pub(crate) struct Guarded<S> {
    inner: S,
    _slot: OwnedSemaphorePermit,
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl<S> Guarded<S> {
    pub(crate) fn new(inner: S, slot: OwnedSemaphorePermit, idle: Duration) -> Self {
        Self { inner, _slot: slot, idle, timer: Box::pin(tokio::time::sleep(idle)) }
    }

    fn touched(&mut self) {
        let at = tokio::time::Instant::now() + self.idle;
        self.timer.as_mut().reset(at);
    }

    fn idle_check(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, "connection idle")),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.touched();
                }
                Poll::Ready(r)
            }
            Poll::Pending => self.idle_check(cx).map(Err),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touched();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touched();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// An axum-server acceptor (TCP, before TLS) that enforces the connection
/// cap and the idle timeout. A connection over the cap is closed at once.
#[derive(Clone)]
pub(crate) struct GuardAcceptor {
    pub(crate) cap: ConnectionCap,
    pub(crate) idle: Duration,
}

impl<S> axum_server::accept::Accept<tokio::net::TcpStream, S> for GuardAcceptor {
    type Stream = Guarded<tokio::net::TcpStream>;
    type Service = S;
    type Future = std::future::Ready<io::Result<(Self::Stream, S)>>;

    fn accept(&self, stream: tokio::net::TcpStream, service: S) -> Self::Future {
        let _ = stream.set_nodelay(true);
        std::future::ready(match self.cap.try_take() {
            Some(slot) => Ok((Guarded::new(stream, slot, self.idle), service)),
            None => {
                tracing::debug!("connection refused: server.max_connections reached");
                Err(io::Error::new(io::ErrorKind::ConnectionRefused, "connection cap reached"))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Vec<axum::body::Bytes>);
    impl Chunks for Fixed {
        async fn next_chunk(&mut self) -> Result<Option<axum::body::Bytes>, String> {
            Ok((!self.0.is_empty()).then(|| self.0.remove(0)))
        }
    }
    struct Stalled;
    impl Chunks for Stalled {
        async fn next_chunk(&mut self) -> Result<Option<axum::body::Bytes>, String> {
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn bodies_are_bounded_by_size_budget_and_time() {
        let budget = BodyBudget::new(8 << 10);
        let chunks = || Fixed(vec![vec![1u8; 3000].into(), vec![2u8; 3000].into()]);
        let second = Duration::from_secs(1);
        let mut share = budget.share();
        let body = read_body(&mut chunks(), vec![0; 10], 10_000, &budget, &mut share, second).await.unwrap();
        assert_eq!(body.len(), 6010);
        assert_eq!(budget.available_kib(), 8 - 6, "the body holds its share");

        // A second body does not fit the rest of the budget: busy, not queued.
        let mut other = budget.share();
        let busy = read_body(&mut chunks(), vec![], 10_000, &budget, &mut other, second).await.unwrap_err();
        assert_eq!(busy, IntakeError::Busy);
        drop((share, other));
        assert_eq!(budget.available_kib(), 8, "shares are given back");

        let mut share = budget.share();
        let big = read_body(&mut chunks(), vec![], 4000, &budget, &mut share, second).await.unwrap_err();
        assert_eq!(big, IntakeError::TooLarge(4000));

        let mut share = budget.share();
        let late = read_body(&mut Stalled, vec![], 4000, &budget, &mut share, Duration::from_millis(50)).await;
        assert!(matches!(late.unwrap_err(), IntakeError::Timeout(_)));
    }

    #[tokio::test]
    async fn idle_connections_time_out_and_hold_a_slot() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let cap = ConnectionCap::new(1);
        let (a, mut b) = tokio::io::duplex(64);
        let mut guarded = Guarded::new(a, cap.try_take().unwrap(), Duration::from_millis(100));
        assert!(cap.try_take().is_none(), "the connection holds the only slot");
        // Traffic keeps it alive past the idle time.
        for _ in 0..3 {
            b.write_all(b"x").await.unwrap();
            let mut one = [0u8; 1];
            guarded.read_exact(&mut one).await.unwrap();
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        let mut one = [0u8; 1];
        let err = guarded.read(&mut one).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(guarded);
        assert!(cap.try_take().is_some(), "the slot is free again");
    }
}
