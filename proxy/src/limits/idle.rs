//! Silent tunnels (opaque TCP streams, WebSockets): a tunnel's two sides are read through
//! `Watched`, which counts the bytes that pass, and `Activity::silent_for` completes once no byte
//! has moved for `Limits::tunnel_idle_timeout`. A tunnel the app abandoned, or whose far side
//! hangs with its socket open, is then closed instead of holding its connection slot and two
//! descriptors for as long as the process lives.
//!
//! Counting is one uncontended atomic add per read; the clock is read only by the watchdog, a
//! few times per idle period.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The bytes read so far from either side of one tunnel.
#[derive(Debug, Clone, Default)]
pub struct Activity(Arc<AtomicU64>);

/// How many looks the watchdog takes per idle period: the tunnel closes between the idle
/// timeout and a quarter more.
const LOOKS: u32 = 4;

impl Activity {
    /// Wraps `io` so that what is read from it counts as activity.
    pub fn watch<IO>(&self, io: IO) -> Watched<IO> {
        Watched {
            io,
            moved: self.0.clone(),
        }
    }

    pub fn bytes(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Completes once no byte has moved for `idle`.
    pub async fn silent_for(&self, idle: Duration) {
        let step = (idle / LOOKS).max(Duration::from_millis(1));
        let mut last = self.bytes();
        let mut quiet = Duration::ZERO;
        loop {
            tokio::time::sleep(step).await;
            let now = self.bytes();
            if now != last {
                (last, quiet) = (now, Duration::ZERO);
                continue;
            }
            quiet += step;
            if quiet >= idle {
                return;
            }
        }
    }
}

/// How `copy_until_idle` ended.
#[derive(Debug)]
pub enum Ended {
    /// Both sides ended: the bytes copied from `a` to `b` and from `b` to `a`.
    Closed(u64, u64),
    /// A side failed (often the normal end of a TCP conversation).
    Failed(std::io::Error),
    /// No byte moved either way for the idle timeout; `bytes` moved before.
    Idle { bytes: u64 },
}

/// The tunnel both opaque streams and WebSockets are: bytes copied both ways until both sides
/// end, or until neither has sent a byte for `idle`.
pub async fn copy_until_idle<A, B>(a: A, b: B, idle: Duration) -> Ended
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::default();
    let (mut a, mut b) = (activity.watch(a), activity.watch(b));
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut a, &mut b) => match copied {
            Ok((ab, ba)) => Ended::Closed(ab, ba),
            Err(e) => Ended::Failed(e),
        },
        () = activity.silent_for(idle) => Ended::Idle { bytes: activity.bytes() },
    }
}

/// An I/O object whose reads count as its tunnel's activity.
#[derive(Debug)]
pub struct Watched<IO> {
    io: IO,
    moved: Arc<AtomicU64>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.moved.fetch_add(read as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::Instant;

    #[tokio::test]
    async fn silence_is_noticed_after_the_idle_time_and_traffic_keeps_it_away() {
        let activity = Activity::default();
        let (mut near, far) = tokio::io::duplex(64);
        let mut far = activity.watch(far);
        let idle = Duration::from_millis(200);
        let started = Instant::now();
        let watchdog = tokio::spawn({
            let activity = activity.clone();
            async move { activity.silent_for(idle).await }
        });
        // Bytes every 50 ms for 600 ms: three idle periods, never silent for one.
        let mut buf = [0u8; 4];
        for _ in 0..12 {
            near.write_all(b"ping").await.unwrap();
            far.read_exact(&mut buf).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!watchdog.is_finished(), "traffic is activity");
        assert_eq!(activity.bytes(), 48);
        let quiet_from = Instant::now();
        tokio::time::timeout(Duration::from_secs(2), watchdog)
            .await
            .expect("silence is noticed")
            .unwrap();
        let quiet = quiet_from.elapsed();
        assert!(quiet >= Duration::from_millis(150), "{quiet:?}");
        assert!(quiet < Duration::from_secs(1), "{quiet:?}");
        assert!(started.elapsed() >= Duration::from_millis(750));
    }
}
