//! An accepted connection together with what it holds for its whole life: its place in the
//! listener's connection budget (`limits::Slot`) and its claim on drain (`DrainWatch`). They go
//! wherever the socket goes: when hyper hands an HTTP/1.1 connection over to a WebSocket (a 101),
//! the socket moves into the upgrade and outlives the HTTP server that accepted it; held here,
//! the place and the claim move with it, so tunnels count against `--max-connections` like any
//! connection (a client cannot open more of them than the cap), and a draining proxy waits for
//! them up to its grace period.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub struct Held<IO, G> {
    io: IO,
    /// Released on drop, with the socket.
    _place: G,
}

impl<IO, G> Held<IO, G> {
    pub fn new(io: IO, place: G) -> Self {
        Held { io, _place: place }
    }
}

impl<IO: AsyncRead + Unpin, G: Unpin> AsyncRead for Held<IO, G> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin, G: Unpin> AsyncWrite for Held<IO, G> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
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
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Place(Arc<AtomicUsize>);
    impl Drop for Place {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn bytes_pass_and_the_place_goes_with_the_socket() {
        let released = Arc::new(AtomicUsize::new(0));
        let (a, mut b) = tokio::io::duplex(64);
        let mut held = Held::new(a, Place(released.clone()));
        held.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        b.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        b.write_all(b"pong").await.unwrap();
        held.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        // Moved (as into an upgrade): still held.
        let moved: Box<dyn AsyncWrite + Unpin + Send> = Box::new(held);
        assert_eq!(released.load(Ordering::SeqCst), 0);
        drop(moved);
        assert_eq!(released.load(Ordering::SeqCst), 1);
    }
}
