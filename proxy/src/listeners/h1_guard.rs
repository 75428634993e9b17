//! The HTTP/1 guard: `h1_scan` wired into a connection. `GuardedIo` sits under hyper, feeds every
//! byte hyper reads to the scanner and bounds how long a request body may stall; the request
//! service above hyper (`request_guard::Guarded`) answers for what the scanner found:
//!
//! - a refused head is answered with its status (400, 501) and `Connection: close` instead of
//!   being served;
//! - a request whose body was malformed (400) or stalled past `Limits::body_idle_timeout` (408)
//!   gets that status instead of the 502 the failed forward produced: the fault was the
//!   client's, and nothing upstream saw a complete request.
//!
//! hyper serves an HTTP/1 connection's requests one at a time and in order, so the n-th call of
//! the service is the n-th head the scanner saw; one finding per connection is enough, since the
//! connection ends with the request it names. Per request this costs one atomic increment and
//! one atomic load; the scanner parses each head once more with httparse (a few hundred
//! nanoseconds for a typical head) and walks chunk framing byte by byte only for chunk-size
//! lines, skipping chunk data and Content-Length bodies in one step.

use super::h1_scan::{Finding, Problem, Scanner};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

/// What a connection's reader found, shared with its request service (`request_guard`).
#[derive(Debug, Default)]
pub struct Findings {
    found: OnceLock<Finding>,
    /// Requests handed to the service so far.
    pub(super) served: AtomicU64,
    /// Requests the client gave up on before their response began.
    pub(super) abandoned: AtomicU64,
    /// Signalled once the connection is to be closed for abuse.
    pub(super) abusive: Notify,
}

impl Findings {
    fn record(&self, finding: Finding) {
        // Only the first counts: the connection ends with the request it names.
        let _ = self.found.set(finding);
    }

    /// The finding about `request`, if there is one.
    pub(super) fn about(&self, request: u64) -> Option<Problem> {
        self.found
            .get()
            .filter(|f| f.request == request)
            .map(|f| f.problem)
    }

    /// Resolves when the connection should be closed for abuse (see `request_guard`).
    pub async fn abusive(&self) {
        self.abusive.notified().await
    }
}

pin_project_lite::pin_project! {
    /// The connection's bytes, as read by hyper, also read by the scanner.
    pub struct GuardedIo<IO> {
        #[pin]
        inner: IO,
        scanner: Scanner,
        findings: Arc<Findings>,
        body_idle: Duration,
        // Created on the first stall, then reset: no allocation per request.
        idle_timer: Option<Pin<Box<Sleep>>>,
        idle_armed: bool,
    }
}

impl<IO> GuardedIo<IO> {
    pub fn new(inner: IO, max_head: usize, body_idle: Duration) -> (Self, Arc<Findings>) {
        let findings = Arc::new(Findings::default());
        let io = GuardedIo {
            inner,
            scanner: Scanner::new(max_head),
            findings: findings.clone(),
            body_idle,
            idle_timer: None,
            idle_armed: false,
        };
        (io, findings)
    }
}

impl<IO: AsyncRead> AsyncRead for GuardedIo<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        match this.inner.poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                *this.idle_armed = false;
                if let Some(finding) = this.scanner.feed(&buf.filled()[before..]) {
                    this.findings.record(finding);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if this.scanner.in_body() => {
                // hyper reads body bytes only when the request's consumer wants them, so a
                // stall seen here is the client's, not backpressure from upstream.
                let idle = *this.body_idle;
                let timer =
                    (this.idle_timer).get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if !*this.idle_armed {
                    timer.as_mut().reset(Instant::now() + idle);
                    *this.idle_armed = true;
                }
                ready!(timer.as_mut().poll(cx));
                let request = this.scanner.current_request();
                this.scanner.stop();
                this.findings.record(Finding {
                    request,
                    problem: Problem::StalledBody,
                });
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request body idle timeout",
                )))
            }
            other => other,
        }
    }
}

impl<IO: AsyncWrite> AsyncWrite for GuardedIo<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
