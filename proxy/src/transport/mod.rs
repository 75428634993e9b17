//! Connections between sidecars: one multiplexed HTTP/2 connection over mutual TLS per endpoint,
//! opened on first use and reopened when it closes. It carries the app's gRPC, h2c and upgrade
//! requests, whatever their concurrency; the app's HTTP/1.x requests go on pooled HTTP/1.1
//! connections instead (`http1`), unless `--http1-to-peers h2` sends them here too.
//!
//! A peer that drains sends GOAWAY: hyper then refuses new streams on that connection (the handle
//! reports closed), the next request opens a new connection, and a request caught in between is
//! reported as never processed (`send`), so the retry layer may send it elsewhere.
//!
//! A peer whose certificate expires is treated like one that drains: at the expiry the connection
//! leaves its slot and takes no new request (`expiry`), and a request caught in between is
//! reported as never processed. The reconnect's handshake checks the peer's current certificate.
//!
//! One client's cancellations must not cost the others their shared connection. A stream this
//! side resets (its app went away) is remembered (`RESET_STREAMS_REMEMBERED`) so that the peer's
//! frames still in flight on it are dropped quietly; once forgotten, h2 answers each such frame
//! with a RST_STREAM of its own and counts it as a local error, of which it allows 1,024 over the
//! connection's life before closing it. The peer is an authenticated sidecar, so that lifetime
//! count is not bounded here. Whether a failure was the endpoint's fault (for outlier detection)
//! is decided in `send`.
//!
//! The connection handle sits behind arc-swap: sending a request costs one atomic load and a clone
//! of the sender; only (re)connecting takes a lock, so that concurrent first requests share one
//! handshake instead of racing many.

use crate::errors::ProxyError;
use crate::http::body::Body;
use crate::telemetry::metrics::ProxyMetrics;
use crate::tls::{CertStore, PeerExpiry, TlsContext, EXPIRY_GRACE};
use arc_swap::ArcSwapOption;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// HTTP/2 PING interval on connections to peer sidecars, and how long an answer may take.
const MESH_KEEPALIVE: Duration = Duration::from_secs(10);

mod expiry;
mod http1;
mod send;
pub use http1::{Http1Sent, Http1ToPeers};
pub use send::{send, send_judged, Blame};

/// Makes `MeshConnection`s that share this proxy's TLS context.
#[derive(Debug, Clone)]
pub struct MeshConnector {
    tls: TlsContext,
    /// Where connections retired at their peer's certificate expiry are counted.
    metrics: Option<Arc<ProxyMetrics>>,
    http1_to_peers: Http1ToPeers,
}

impl MeshConnector {
    pub fn new(tls: TlsContext) -> Self {
        MeshConnector {
            tls,
            metrics: None,
            http1_to_peers: Http1ToPeers::default(),
        }
    }

    /// How HTTP/1.x requests travel to peers (`--http1-to-peers`).
    pub fn with_http1_to_peers(mut self, way: Http1ToPeers) -> Self {
        self.http1_to_peers = way;
        self
    }

    /// Counts connections retired because the peer's certificate expired in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<ProxyMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    #[cfg(test)]
    pub fn for_tests() -> Self {
        MeshConnector::new(TlsContext::default())
    }

    pub fn connection(&self, addr: SocketAddr, identity: &str) -> MeshConnection {
        MeshConnection {
            addr,
            identity: identity.to_string(),
            tls: Some(self.tls.client_config(identity)),
            own: Some(self.tls.certs.clone()),
            sender: Arc::default(),
            connecting: tokio::sync::Mutex::new(()),
            last_used: AtomicU64::new(0),
            metrics: self.metrics.clone(),
            http1_to_peers: self.http1_to_peers,
            http1: OnceLock::new(),
        }
    }
}

/// An HTTP/2 connection to one address: over mTLS to a peer sidecar, or in plain text (h2c) to
/// the local app.
pub struct MeshConnection {
    addr: SocketAddr,
    identity: String,
    tls: Option<Result<Arc<rustls::ClientConfig>, crate::tls::TlsConfigError>>,
    /// This proxy's certificate, to say why a peer would refuse the handshake.
    own: Option<Arc<CertStore>>,
    /// Shared (weakly) with the connection's task, which clears it at the peer's expiry.
    sender: Arc<ArcSwapOption<SendRequest<Body>>>,
    connecting: tokio::sync::Mutex<()>,
    /// `clock_ms()` of the last request, for idle closing.
    last_used: AtomicU64,
    /// Where a retirement at the peer's expiry is counted (`MeshConnector::with_metrics`).
    metrics: Option<Arc<ProxyMetrics>>,
    /// How HTTP/1.x requests travel to this peer, and their pool when it is HTTP/1.1 (`http1`).
    http1_to_peers: Http1ToPeers,
    http1: OnceLock<Arc<crate::http::app_pool::Http1Pool<http1::PeerDial>>>,
}

fn clock_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl std::fmt::Debug for MeshConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshConnection")
            .field("addr", &self.addr)
            .field("identity", &self.identity)
            .finish()
    }
}

impl MeshConnection {
    /// A plain-text (h2c) connection, for apps on loopback.
    pub fn plain(addr: SocketAddr) -> Self {
        MeshConnection {
            addr,
            identity: String::new(),
            tls: None,
            own: None,
            sender: Arc::default(),
            connecting: tokio::sync::Mutex::new(()),
            last_used: AtomicU64::new(0),
            metrics: None,
            http1_to_peers: Http1ToPeers::H2,
            http1: OnceLock::new(),
        }
    }

    /// A sender on a live connection, connecting first if needed.
    pub async fn sender(&self, connect_timeout: Duration) -> Result<SendRequest<Body>, ProxyError> {
        if let Some(s) = self.live() {
            return Ok(s);
        }
        let _guard = self.connecting.lock().await;
        // Another request may have connected while this one waited for the lock.
        if let Some(s) = self.live() {
            return Ok(s);
        }
        let sender = tokio::time::timeout(connect_timeout, self.connect())
            .await
            .map_err(|_| ProxyError::ConnectTimeout {
                addr: self.addr,
                after: connect_timeout,
            })??;
        self.sender.store(Some(sender.clone()));
        self.touch();
        Ok((*sender).clone())
    }

    /// A sender on the open connection, if there is one (no connecting).
    pub fn live(&self) -> Option<SendRequest<Body>> {
        let current = self.sender.load();
        match current.as_deref() {
            Some(s) if !s.is_closed() => {
                self.touch();
                Some(s.clone())
            }
            _ => None,
        }
    }

    pub fn is_live(&self) -> bool {
        self.sender
            .load()
            .as_deref()
            .is_some_and(|s| !s.is_closed())
    }

    fn touch(&self) {
        self.last_used.store(clock_ms(), Ordering::Relaxed);
    }

    /// Lets go of the connection if it has not been used for `idle`; in-flight requests keep
    /// their own handles, so the connection closes once they finish.
    pub fn close_if_idle(&self, idle: Duration) -> bool {
        let unused_for = clock_ms().saturating_sub(self.last_used.load(Ordering::Relaxed));
        if self.is_live() && Duration::from_millis(unused_for) >= idle {
            self.sender.store(None);
            tracing::debug!(addr = %self.addr, "closing idle connection");
            return true;
        }
        false
    }

    /// A new connection, its sender as the slot will hold it.
    async fn connect(&self) -> Result<Arc<SendRequest<Body>>, ProxyError> {
        let addr = self.addr;
        let Some(tls) = &self.tls else {
            let (sender, conn) = handshake(addr, tcp_connect(addr).await?).await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%addr, error = %e, "connection closed");
                }
            });
            return Ok(Arc::new(sender));
        };
        let tls = tls.as_ref().map_err(|e| ProxyError::Tls {
            addr,
            reason: e.to_string(),
        })?;
        let (stream, expiry) = peer_tls(addr, tls, self.own.as_deref()).await?;
        let (sender, conn) = handshake(addr, stream).await?;
        let sender = Arc::new(sender);
        let retire = expiry::Retire {
            addr,
            identity: self.identity.clone(),
            expiry,
            slot: Arc::downgrade(&self.sender),
            entry: Arc::downgrade(&sender),
            metrics: self.metrics.clone(),
        };
        tokio::spawn(expiry::serve_until_expiry(conn, retire));
        tracing::debug!(%addr, identity = %self.identity, not_after = expiry.not_after, "mesh connection established");
        Ok(sender)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

async fn tcp_connect(addr: SocketAddr) -> Result<TcpStream, ProxyError> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| ProxyError::Connect {
            addr,
            reason: e.to_string(),
        })?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// A peer's socket: mutual TLS that fails `EXPIRY_GRACE` after the peer's certificate expires.
type PeerStream = expiry::CutAt<tokio_rustls::client::TlsStream<TcpStream>>;

/// TCP and the mutual-TLS handshake with the peer sidecar at `addr`, whose identity `tls`
/// verifies; with the peer certificate's expiry.
async fn peer_tls(
    addr: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    own: Option<&CertStore>,
) -> Result<(PeerStream, PeerExpiry), ProxyError> {
    // In TLS 1.3 the client learns that the server refused its certificate only from the
    // first read after the handshake, as a bare connection error; say it plainly instead.
    if (own.and_then(|c| c.get()))
        .is_some_and(|key| PeerExpiry::of_chain(&key.cert).is_some_and(|e| e.has_passed()))
    {
        return Err(ProxyError::Tls {
            addr,
            reason: "this sidecar's certificate expired (renewal is failing); peers refuse it"
                .into(),
        });
    }
    let tcp = tcp_connect(addr).await?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(crate::tls::placeholder_server_name(), tcp)
        .await
        .map_err(|e| ProxyError::Tls {
            addr,
            reason: e.to_string(),
        })?;
    // The verifier accepted the chain, so it parses and has not expired; this only catches an
    // expiry reached during the handshake, refused rather than retired at once.
    let expiry = PeerExpiry::of(stream.get_ref().1)
        .filter(|e| !e.has_passed())
        .ok_or_else(|| ProxyError::Tls {
            addr,
            reason: "peer certificate expired".into(),
        })?;
    Ok((expiry::CutAt::new(stream, expiry.at + EXPIRY_GRACE), expiry))
}

/// Streams reset by this side that h2 remembers (for 30 s each), so that late frames on them are
/// ignored: a burst of a thousand cancellations, several times over (h2's default is 50). Each
/// costs a slab entry of a few hundred bytes.
const RESET_STREAMS_REMEMBERED: usize = 10_000;

/// The HTTP/2 handshake; the caller drives the connection.
async fn handshake<T>(
    addr: SocketAddr,
    io: T,
) -> Result<
    (
        SendRequest<Body>,
        hyper::client::conn::http2::Connection<TokioIo<T>, Body, TokioExecutor>,
    ),
    ProxyError,
>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(2 * 1024 * 1024)
        .initial_connection_window_size(8 * 1024 * 1024)
        // A connection to a peer that went silent (a partition, a dropped NAT entry) is found
        // within 20 s and dropped from the pool, also while no request uses it: the balancer
        // steers requests away from such an endpoint, so nothing else would ever notice.
        .keep_alive_interval(MESH_KEEPALIVE)
        .keep_alive_timeout(MESH_KEEPALIVE)
        .keep_alive_while_idle(true)
        .max_concurrent_reset_streams(RESET_STREAMS_REMEMBERED)
        .max_local_error_reset_streams(None)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| ProxyError::Upstream {
            addr,
            reason: e.to_string(),
        })
}
