//! Retiring a mesh connection when the peer's certificate expires (`tls::expiry`), so that an
//! expired identity carries no new request: the connection's task, which drives hyper's client
//! connection anyway, also waits for the expiry. At that instant it takes the connection out of
//! its slot (the next request opens a new one, whose handshake checks the peer's current
//! certificate) and drops hyper's dispatch: from then on a request still holding the old sender
//! is handed back unsent, which `send` classifies as never processed, so it is retried. Streams
//! already in flight carry on, and the connection closes when they end, but no later than
//! `EXPIRY_GRACE` after the expiry: `CutAt` fails the socket then.
//!
//! The cost is per connection (one timer, one task that existed already); the request path is
//! untouched but for the socket wrapper, which polls that timer in each read (`seldom`: one
//! atomic load while it has not fired).

use crate::http::body::Body;
use crate::seldom::{self, Deadline};
use crate::telemetry::metrics::{Direction, ProxyMetrics};
use crate::tls::{record_retired, PeerExpiry};
use arc_swap::ArcSwapOption;
use hyper::client::conn::http2::{Connection, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// What the connection task needs to retire its connection.
pub(super) struct Retire {
    pub addr: SocketAddr,
    pub identity: String,
    pub expiry: PeerExpiry,
    /// The connection's slot, and its own entry there: only that entry is cleared, never a newer
    /// connection stored since. Weak, so that neither outlives its owner because of this task.
    pub slot: Weak<ArcSwapOption<SendRequest<Body>>>,
    pub entry: Weak<SendRequest<Body>>,
    pub metrics: Option<Arc<ProxyMetrics>>,
}

/// Drives the connection until it ends or its peer's certificate expires.
pub(super) async fn serve_until_expiry<T>(
    conn: Connection<TokioIo<T>, Body, TokioExecutor>,
    retire: Retire,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let addr = retire.addr;
    tokio::select! {
        res = conn => {
            if let Err(e) = res {
                tracing::debug!(%addr, error = %e, "mesh connection closed");
            }
            return;
        }
        _ = seldom::deadline(retire.expiry.at) => {}
    }
    // `conn` (hyper's dispatch) is dropped by now: the connection takes no new request.
    if let (Some(slot), Some(entry)) = (retire.slot.upgrade(), retire.entry.upgrade()) {
        slot.compare_and_swap(&Some(entry), None);
    }
    record_retired(
        retire.metrics.as_deref(),
        Direction::Outbound,
        &retire.identity,
        &retire.expiry,
    );
    tracing::debug!(%addr, identity = %retire.identity, "mesh connection closed: peer certificate expired");
}

/// A socket that fails once `cut` has passed, so a retired connection whose streams outlast the
/// grace closes (hyper's connection runs in a task of its own that nothing else can stop).
pub(super) struct CutAt<T> {
    io: T,
    cut: Deadline,
}

impl<T> CutAt<T> {
    pub fn new(io: T, cut: Instant) -> Self {
        CutAt {
            io,
            cut: seldom::deadline(cut),
        }
    }
}

fn cut_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "peer certificate expired and the grace for requests in flight is over",
    )
}

impl<T: AsyncRead + Unpin> AsyncRead for CutAt<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // The connection always has a read pending, so the timer wakes it even when idle.
        if Pin::new(&mut self.cut).poll(cx).is_ready() {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CutAt<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.cut.get().is_elapsed() {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.cut.get().is_elapsed() {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
