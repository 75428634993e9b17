//! The control plane's accept loop, in place of tonic's `TcpIncoming`: it binds with a listen
//! backlog sized for a fleet reconnecting at once, caps how many connections are open so that
//! descriptors are always left for the reloader and the CA, and survives running out of them.
//! tonic ends its server on any accept error it does not know (EMFILE among them) and retries
//! the others at once, which spins a core; here an accept error never leaves the stream, and the
//! resource errors back off (5 ms doubling to 1 s) while logging at most once a second.
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::metrics::ControlPlaneMetrics;

const BACKOFF_START: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Binds `addr` with `backlog` pending connections (the kernel clamps it to
/// `net.core.somaxconn`) and address reuse, so a restart binds while old sockets are in
/// TIME_WAIT, as `TcpListener::bind` does.
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// `net.core.somaxconn`, the kernel's ceiling on any listen backlog, when readable.
pub fn somaxconn() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Settings of accepted sockets.
#[derive(Debug, Clone, Copy)]
pub struct AcceptOptions {
    /// At most this many connections open; more are accepted and closed at once (the client
    /// sees the connection end and retries with its backoff) rather than left in the backlog.
    pub max_connections: usize,
    /// TCP keepalive idle time and probe interval; `None` leaves keepalive off.
    pub tcp_keepalive: Option<Duration>,
}

/// Counts open connections against the cap; shared by the stream and every `Admitted`.
#[derive(Debug, Default)]
pub struct Admission {
    open: AtomicUsize,
    /// Where connections closed over the cap are counted.
    metrics: Arc<ControlPlaneMetrics>,
}

impl Admission {
    pub fn with_metrics(metrics: Arc<ControlPlaneMetrics>) -> Self {
        Admission {
            open: AtomicUsize::new(0),
            metrics,
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn try_admit(self: &Arc<Self>, max: usize) -> Option<Slot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }
}

/// One admitted connection; returns its place when dropped (the connection closed).
#[derive(Debug)]
struct Slot(Arc<Admission>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An accepted connection holding its admission slot.
#[derive(Debug)]
pub struct Admitted {
    stream: TcpStream,
    _slot: Slot,
}

impl Connected for Admitted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Logs at most once per interval; the count of what was not logged goes with the next line.
#[derive(Debug)]
pub(crate) struct Throttle {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    pub(crate) fn new(every: Duration) -> Self {
        Throttle {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(n)` when a line may be logged now, `n` being how many were held back since the
    /// last one.
    pub(crate) fn ready(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < self.every => {
                state.1 += 1;
                None
            }
            _ => {
                let held = std::mem::take(&mut state.1);
                state.0 = Some(now);
                Some(held)
            }
        }
    }
}

/// Accept errors that say the process or system is out of a resource: waiting helps, retrying
/// at once only spins.
fn is_resource_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Errors about one connection that the peer ended before we took it: the next accept is fine.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

struct Acceptor {
    listener: TcpListener,
    options: AcceptOptions,
    admission: Arc<Admission>,
    backoff: Duration,
    errors: Throttle,
    shed: Throttle,
}

impl Acceptor {
    /// The next admitted connection; waits out errors and sheds connections over the cap.
    async fn next(&mut self) -> Admitted {
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    self.backoff = BACKOFF_START;
                    let Some(slot) = self.admission.try_admit(self.options.max_connections) else {
                        // Closing at once (rather than leaving it in the backlog) tells the
                        // client now, and its reconnect backoff spreads the retries.
                        drop(stream);
                        self.admission.metrics.connection_refused();
                        if let Some(held) = self.shed.ready() {
                            tracing::warn!(
                                %peer,
                                open = self.admission.open(),
                                max = self.options.max_connections,
                                closed_since_last_log = held,
                                "connection limit reached; closing new connections"
                            );
                        }
                        continue;
                    };
                    self.configure(&stream);
                    return Admitted {
                        stream,
                        _slot: slot,
                    };
                }
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of descriptors (or another error we cannot fix by retrying now): the
                    // pending connection stays in the backlog until one closes.
                    let kind = if is_resource_error(&e) {
                        "out of resources"
                    } else {
                        "unexpected error"
                    };
                    if let Some(held) = self.errors.ready() {
                        tracing::warn!(
                            error = %e,
                            open = self.admission.open(),
                            backoff_ms = self.backoff.as_millis() as u64,
                            errors_since_last_log = held,
                            "accept failed ({kind}); backing off"
                        );
                    }
                    tokio::time::sleep(self.backoff).await;
                    self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    fn configure(&self, stream: &TcpStream) {
        // Discovery responses are small and latency matters more than packet count.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        if let Some(idle) = self.options.tcp_keepalive {
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(idle)
                .with_interval(idle);
            if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
                tracing::debug!(error = %e, "cannot set TCP keepalive");
            }
        }
    }
}

/// The connections of `listener` as tonic's `serve_with_incoming*` takes them. The stream never
/// yields an error (tonic would stop serving) and never ends.
pub fn incoming(
    listener: TcpListener,
    options: AcceptOptions,
    admission: Arc<Admission>,
) -> impl Stream<Item = Result<Admitted, Infallible>> + Send + 'static {
    let acceptor = Acceptor {
        listener,
        options,
        admission,
        backoff: BACKOFF_START,
        errors: Throttle::new(Duration::from_secs(1)),
        shed: Throttle::new(Duration::from_secs(1)),
    };
    futures_util::stream::unfold(acceptor, |mut acceptor| async move {
        let admitted = acceptor.next().await;
        Some((Ok(admitted), acceptor))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn caps_open_connections_and_frees_a_place_on_close() {
        let listener = bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = ControlPlaneMetrics::new();
        let admission = Arc::new(Admission::with_metrics(metrics.clone()));
        let options = AcceptOptions {
            max_connections: 2,
            tcp_keepalive: Some(Duration::from_secs(10)),
        };
        let mut incoming = Box::pin(incoming(listener, options, admission.clone()));

        let mut clients = Vec::new();
        let mut admitted = Vec::new();
        for _ in 0..2 {
            clients.push(TcpStream::connect(addr).await.unwrap());
            let Some(Ok(conn)) = incoming.next().await else {
                panic!("the stream ends only with the process")
            };
            assert!(conn.stream.nodelay().unwrap());
            assert!(socket2::SockRef::from(&conn.stream).keepalive().unwrap());
            admitted.push(conn);
        }
        assert_eq!(admission.open(), 2);

        // Over the cap: accepted and closed, so the client reads EOF (or a reset) at once.
        let mut third = TcpStream::connect(addr).await.unwrap();
        let next = tokio::time::timeout(Duration::from_millis(300), incoming.next()).await;
        assert!(next.is_err(), "nothing admitted over the cap");
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(2), third.read(&mut buf))
            .await
            .expect("closed promptly");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert_eq!(admission.open(), 2);
        assert_eq!(metrics.connections_refused(), 1);

        // One closes: the next connection is admitted and carries bytes.
        drop(admitted.pop());
        assert_eq!(admission.open(), 1);
        let mut fourth = TcpStream::connect(addr).await.unwrap();
        let Some(Ok(mut conn)) = incoming.next().await else {
            panic!("admitted")
        };
        assert_eq!(admission.open(), 2);
        fourth.write_all(b"x").await.unwrap();
        conn.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"x");
        let info = conn.connect_info();
        assert_eq!(info.local_addr(), Some(addr));
    }

    #[test]
    fn throttle_logs_once_per_interval_and_counts_the_rest() {
        let throttle = Throttle::new(Duration::from_millis(100));
        assert_eq!(throttle.ready(), Some(0));
        assert_eq!(throttle.ready(), None);
        assert_eq!(throttle.ready(), None);
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(throttle.ready(), Some(2));
    }

    #[test]
    fn classifies_accept_errors() {
        assert!(is_resource_error(&io::Error::from_raw_os_error(
            libc::EMFILE
        )));
        assert!(is_resource_error(&io::Error::from_raw_os_error(
            libc::ENFILE
        )));
        assert!(!is_resource_error(&io::Error::from_raw_os_error(
            libc::ECONNABORTED
        )));
        assert!(is_connection_error(&io::Error::from_raw_os_error(
            libc::ECONNABORTED
        )));
    }
}
