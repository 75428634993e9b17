//! Counting bytes and connections on accepted sockets: a thin `AsyncRead`/`AsyncWrite` wrapper
//! adding to the direction's counters (relaxed atomics) and counting the close when dropped.

use super::metrics::{Direction, ProxyMetrics};
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub struct Counted<T> {
    inner: T,
    metrics: Arc<ProxyMetrics>,
    direction: Direction,
}

impl<T> Counted<T> {
    pub fn new(inner: T, metrics: Arc<ProxyMetrics>, direction: Direction) -> Self {
        metrics
            .conns(direction)
            .opened
            .fetch_add(1, Ordering::Relaxed);
        Counted {
            inner,
            metrics,
            direction,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T> Drop for Counted<T> {
    fn drop(&mut self) {
        self.metrics
            .conns(self.direction)
            .closed
            .fetch_add(1, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.metrics
                .conns(self.direction)
                .bytes_read
                .fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.metrics
                .conns(self.direction)
                .bytes_written
                .fetch_add(*n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &polled {
            self.metrics
                .conns(self.direction)
                .bytes_written
                .fetch_add(*n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
