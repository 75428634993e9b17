//! Connections to the local app (HTTP/1.1) that end with a reset, not a clean close, when they are
//! dropped in the middle of a request.
//!
//! hyper's HTTP/1 client abandons a connection when the request body it is sending fails (the
//! caller's framing broke after the head was forwarded, the caller vanished): it simply drops the
//! socket, and the app reads a clean end of stream. An app that takes the end of the connection as
//! the end of the body (HTTP/1.0 style, or a sloppy chunked parser) would then process a request
//! the caller never finished and the proxy refused. A reset (SO_LINGER 0) cannot be mistaken for
//! an end. A connection dropped idle, after its last response was read, still closes cleanly.

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::rt::TokioIo;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::net::TcpStream;

/// A connection to the app, as hyper sees it.
#[derive(Debug)]
pub struct ResetOnAbort(TokioIo<Tracked>);

impl ResetOnAbort {
    /// Wraps a connected socket (`app_pool` connects its own).
    pub fn new(stream: TcpStream) -> Self {
        ResetOnAbort(TokioIo::new(Tracked {
            stream,
            mid_request: false,
        }))
    }
}

/// The socket, and whether a request is out without its answer.
#[derive(Debug)]
pub struct Tracked {
    stream: TcpStream,
    /// Bytes were written since the app last sent any: a request (or part of one) is out.
    mid_request: bool,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.mid_request {
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl tokio::io::AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.mid_request = false;
        }
        poll
    }
}

impl tokio::io::AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.mid_request = true;
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.mid_request = true;
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // hyper shuts a connection down (a FIN) when a request body fails before it drops it:
        // that FIN would be the clean end this type exists to prevent. The drop resets instead.
        if self.mid_request {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl Read for ResetOnAbort {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl Write for ResetOnAbort {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Connects as `app_pool` does; returns the app's end of the connection too.
    async fn pair() -> (ResetOnAbort, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (conn, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (ResetOnAbort::new(conn.unwrap()), accepted.unwrap().0)
    }

    fn write(conn: &mut ResetOnAbort, bytes: &[u8]) {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let written = Pin::new(conn).poll_write(&mut cx, bytes);
        assert!(matches!(written, Poll::Ready(Ok(n)) if n == bytes.len()));
    }

    /// What the app reads until the connection ends: `Ok` bytes at a clean end, `Err` on reset.
    async fn app_reads(mut app: TcpStream) -> Result<Vec<u8>, std::io::ErrorKind> {
        let mut got = Vec::new();
        match app.read_to_end(&mut got).await {
            Ok(_) => Ok(got),
            Err(e) => Err(e.kind()),
        }
    }

    #[tokio::test]
    async fn dropped_mid_request_the_app_sees_a_reset() {
        let (mut conn, app) = pair().await;
        write(
            &mut conn,
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
        );
        drop(conn);
        assert_eq!(
            app_reads(app).await,
            Err(std::io::ErrorKind::ConnectionReset)
        );
    }

    #[tokio::test]
    async fn dropped_after_the_answer_the_app_sees_a_clean_end() {
        let (mut conn, mut app) = pair().await;
        write(&mut conn, b"GET / HTTP/1.1\r\n\r\n");
        let mut head = [0u8; 18];
        app.read_exact(&mut head).await.unwrap();
        app.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .unwrap();
        // The answer arrives (what hyper's read does, through the same socket wrapper).
        let mut buf = [0u8; 64];
        let read = conn.0.inner_mut().read(&mut buf).await;
        assert!(matches!(read, Ok(n) if n > 0), "{read:?}");
        drop(conn);
        assert_eq!(app_reads(app).await, Ok(Vec::new()));
    }

    #[tokio::test]
    async fn shut_down_mid_request_the_app_sees_a_reset_not_a_fin() {
        let (mut conn, app) = pair().await;
        write(
            &mut conn,
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
        );
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let shut = Pin::new(&mut conn).poll_shutdown(&mut cx);
        assert!(matches!(shut, Poll::Ready(Ok(()))));
        drop(conn);
        assert_eq!(
            app_reads(app).await,
            Err(std::io::ErrorKind::ConnectionReset)
        );
    }

    #[tokio::test]
    async fn a_fresh_connection_dropped_unused_closes_cleanly() {
        let (conn, app) = pair().await;
        drop(conn);
        assert_eq!(app_reads(app).await, Ok(Vec::new()));
    }
}
