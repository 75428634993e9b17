//! Connections between sidecars: one multiplexed HTTP/2 connection over mutual TLS per endpoint,
//! opened on first use and reopened when it closes. HTTP/2 carries every request the app makes,
//! whatever protocol the app speaks, so a handful of connections serve any concurrency.
//!
//! A peer that drains sends GOAWAY: hyper then refuses new streams on that connection (the handle
//! reports closed), the next request opens a new connection, and a request caught in between is
//! reported as never processed (`send`), so the retry layer may send it elsewhere.
//!
//! The connection handle sits behind arc-swap: sending a request costs one atomic load and a clone
//! of the sender; only (re)connecting takes a lock, so that concurrent first requests share one
//! handshake instead of racing many.

use crate::errors::ProxyError;
use crate::http::body::Body;
use crate::tls::TlsContext;
use arc_swap::ArcSwapOption;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

mod send;
pub use send::send;

/// Makes `MeshConnection`s that share this proxy's TLS context.
#[derive(Debug, Clone)]
pub struct MeshConnector {
    tls: TlsContext,
}

impl MeshConnector {
    pub fn new(tls: TlsContext) -> Self {
        MeshConnector { tls }
    }

    #[cfg(test)]
    pub fn for_tests() -> Self {
        MeshConnector {
            tls: TlsContext::default(),
        }
    }

    pub fn connection(&self, addr: SocketAddr, identity: &str) -> MeshConnection {
        MeshConnection {
            addr,
            identity: identity.to_string(),
            tls: Some(self.tls.client_config(identity)),
            sender: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            last_used: AtomicU64::new(0),
        }
    }
}

/// An HTTP/2 connection to one address: over mTLS to a peer sidecar, or in plain text (h2c) to
/// the local app.
pub struct MeshConnection {
    addr: SocketAddr,
    identity: String,
    tls: Option<Result<Arc<rustls::ClientConfig>, crate::tls::TlsConfigError>>,
    sender: ArcSwapOption<SendRequest<Body>>,
    connecting: tokio::sync::Mutex<()>,
    /// `clock_ms()` of the last request, for idle closing.
    last_used: AtomicU64,
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
            sender: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            last_used: AtomicU64::new(0),
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
        self.sender.store(Some(Arc::new(sender.clone())));
        self.touch();
        Ok(sender)
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

    async fn connect(&self) -> Result<SendRequest<Body>, ProxyError> {
        let addr = self.addr;
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| ProxyError::Connect {
                addr,
                reason: e.to_string(),
            })?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return handshake(addr, tcp).await;
        };
        let tls = tls.as_ref().map_err(|e| ProxyError::Tls {
            addr,
            reason: e.to_string(),
        })?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(crate::tls::placeholder_server_name(), tcp)
            .await
            .map_err(|e| ProxyError::Tls {
                addr,
                reason: e.to_string(),
            })?;
        let sender = handshake(addr, stream).await?;
        tracing::debug!(%addr, identity = %self.identity, "mesh connection established");
        Ok(sender)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

async fn handshake<T>(addr: SocketAddr, io: T) -> Result<SendRequest<Body>, ProxyError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(2 * 1024 * 1024)
        .initial_connection_window_size(8 * 1024 * 1024)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| ProxyError::Upstream {
            addr,
            reason: e.to_string(),
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%addr, error = %e, "mesh connection closed");
        }
    });
    Ok(sender)
}
