//! HTTP/1.1 requests to peer sidecars on pooled mutual-TLS connections (ALPN `http/1.1`), one
//! request per connection at a time, instead of as streams of the shared HTTP/2 connection.
//!
//! Why: on the mesh path the HTTP/2 hop is most of what a sidecar pair does beyond the app's own
//! HTTP/1.1 (callgrind, docs/benchmarks.md step 17): h2's framing and HPACK on both sides, a task
//! spawned per request by hyper's client and one per stream by its server, and every request
//! moved into them. An HTTP/1.1 request is written by the request's own task. What it costs:
//! one connection (and TLS handshake) per concurrent request instead of one per peer, kept idle
//! for `IDLE` (the peer's inbound closes an idle HTTP/1.1 connection after one to two header read
//! timeouts, 10 s by default, so the pool lets go first and the keep-alive race stays rare). A
//! connection that goes silent costs the one request on it, which ends at its own timeout and
//! closes the connection; an idle one is closed by the sweep. No PING is needed.
//! Envoy's sidecars make the same choice by default (Istio's `h2UpgradePolicy: DO_NOT_UPGRADE`);
//! `--http1-to-peers h2` keeps linkerd2-proxy's (every request over HTTP/2).
//!
//! A connection retires at its peer certificate's expiry (`Dialed::retire_at`: never taken from
//! the pool after it; the socket fails `EXPIRY_GRACE` later), as the HTTP/2 one does, and is no
//! longer lent a second before this side's own certificate expires, when the peer closes it.
//! HTTP/1.1 has no GOAWAY: a peer closing an idle connection as a request goes out on it (the
//! keep-alive race, when the peer drains) fails that request; an idempotent one is reported as
//! unprocessed, so the retry layer sends it again (RFC 9112 §9.3.1).

use super::send::{judge, Blame};
use super::{peer_tls, MeshConnection};
use crate::errors::ProxyError;
use crate::http::app_pool::{Dial, Dialed, FromIdle, Http1Pool, NewConn, PoolError, Pooled};
use crate::http::body::Body;
use crate::telemetry::metrics::{Direction, ProxyMetrics};
use crate::tls::{record_retired, CertStore, PeerExpiry};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long a pooled connection to a peer stays open unused (to 1.5 × this: the pool's sweep).
pub const IDLE: Duration = Duration::from_secs(4);

/// A connection is lent until this long before this side's own certificate expires: the peer's
/// inbound closes it at that expiry, and a request sent as it closes would fail (HTTP/1.1 has no
/// GOAWAY to say which requests were not processed).
const OWN_EXPIRY_MARGIN: Duration = Duration::from_secs(1);

/// When a new connection stops being lent: at the peer certificate's expiry, or shortly before
/// this side's own certificate (as presented in the handshake, or an older one) expires; `true`
/// when it is the latter.
fn retire_at(peer: &PeerExpiry, own: Option<&CertStore>) -> (tokio::time::Instant, bool) {
    let own_at = (own.and_then(|c| c.get()))
        .and_then(|key| PeerExpiry::of_chain(&key.cert))
        .and_then(|e| e.at.checked_sub(OWN_EXPIRY_MARGIN));
    match own_at {
        Some(own_at) if own_at < peer.at => (own_at, true),
        _ => (peer.at, false),
    }
}

/// Counts a connection retired ahead of this side's own certificate expiry where the peer's
/// expiries are counted (the peer would have closed it at that expiry, as its inbound does).
fn record_own_expiry(metrics: Option<&ProxyMetrics>, peer: &str) {
    if let Some(metrics) = metrics {
        let closes = &metrics.conns(Direction::Outbound).peer_expired_closes;
        closes.fetch_add(1, Ordering::Relaxed);
    }
    tracing::info!(
        peer,
        "this sidecar's certificate is about to expire; its HTTP/1.1 connection takes no new request"
    );
}

/// Which way HTTP/1.x requests travel to peer sidecars (`--http1-to-peers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Http1ToPeers {
    /// As HTTP/1.1 on pooled mTLS connections.
    #[default]
    Http1,
    /// As streams of the one HTTP/2 connection per peer, like gRPC and h2c traffic.
    H2,
}

/// Opens mutual-TLS connections to one peer, offering only `http/1.1`.
pub struct PeerDial {
    addr: SocketAddr,
    /// The peer's client config offering `http/1.1`, or why there is none.
    tls: Result<Arc<rustls::ClientConfig>, String>,
    own: Option<Arc<CertStore>>,
    /// The peer's expected identity and where retirements are counted (as for HTTP/2).
    identity: String,
    metrics: Option<Arc<ProxyMetrics>>,
    /// Connections open now, for the circuit breaker's `max connections`.
    open: Arc<AtomicUsize>,
}

impl Dial for PeerDial {
    type Error = ProxyError;

    async fn dial(&self, after: Duration) -> Result<Dialed, ProxyError> {
        let addr = self.addr;
        let open = async {
            let tls = (self.tls.as_ref()).map_err(|reason| ProxyError::Tls {
                addr,
                reason: reason.clone(),
            })?;
            let (stream, expiry) = peer_tls(addr, tls, self.own.as_deref()).await?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| ProxyError::Upstream {
                    addr,
                    reason: e.to_string(),
                })?;
            let counted = OpenGuard::new(&self.open);
            let (identity, metrics) = (self.identity.clone(), self.metrics.clone());
            let (retire, own_first) = retire_at(&expiry, self.own.as_deref());
            tokio::spawn(async move {
                let _counted = counted;
                tokio::pin!(conn);
                let ended = tokio::select! {
                    _ = crate::seldom::deadline(retire) => None,
                    res = &mut conn => Some(res),
                };
                // The pool stops lending the connection at `retire` and drops it when it next
                // looks, which ends `conn`, possibly before the timer's tick: that is a
                // retirement too.
                if let Some(res) = &ended {
                    if let Err(e) = res {
                        tracing::debug!(%addr, error = %e, "HTTP/1.1 mesh connection closed");
                    }
                    if tokio::time::Instant::now() < retire {
                        return;
                    }
                }
                if own_first {
                    record_own_expiry(metrics.as_deref(), &identity);
                } else {
                    record_retired(metrics.as_deref(), Direction::Outbound, &identity, &expiry);
                }
                // A request in flight may finish (within the grace after the peer's expiry, when
                // the socket fails).
                if ended.is_none() {
                    if let Err(e) = conn.await {
                        tracing::debug!(%addr, error = %e, "retired HTTP/1.1 mesh connection closed");
                    }
                }
            });
            tracing::debug!(%addr, not_after = expiry.not_after, "HTTP/1.1 mesh connection established");
            Ok(Dialed {
                sender,
                retire_at: Some(retire.into_std()),
            })
        };
        tokio::time::timeout(after, open)
            .await
            .map_err(|_| ProxyError::ConnectTimeout { addr, after })?
    }
}

impl MeshConnection {
    /// Whether HTTP/1.x requests to this peer go on pooled HTTP/1.1 connections: with
    /// `--http1-to-peers http1` and mutual TLS (a plain-text endpoint keeps h2c).
    pub fn carries_http1(&self) -> bool {
        self.http1_to_peers == Http1ToPeers::Http1 && self.tls.is_some()
    }

    /// HTTP/1.1 connections to the peer open now (pooled or carrying a request).
    pub fn http1_open(&self) -> usize {
        self.http1
            .get()
            .map_or(0, |pool| pool.dial().open.load(Ordering::Relaxed))
    }

    /// Sends `req` (HTTP/1.1 form) on an idle pooled connection to the peer if there is one; the
    /// response comes with its connection, back to the pool once its body is read
    /// (`Body::pooled`). `NoneIdle` hands the request back for `send_http1_on_new`, which the
    /// caller's circuit breaker may refuse first.
    pub async fn send_http1_on_idle(&self, req: Request<Body>) -> Http1Sent {
        let idempotent = req.method().is_idempotent();
        match self.http1_pool().send_on_idle(req).await {
            FromIdle::Answered(rsp, pooled) => Http1Sent::Answered(rsp, pooled),
            // The keep-alive race: the peer closed the idle connection (draining, or retiring it
            // at this side's certificate expiry) as the request went out. RFC 9112 §9.3.1 lets
            // an idempotent request be retried then; the retry layer retries unprocessed ones.
            FromIdle::Failed(PoolError::Request { error, .. })
                if idempotent && error.is_incomplete_message() =>
            {
                let reason = format!("{error} (a reused connection closed by the peer)");
                let unprocessed = ProxyError::Unprocessed {
                    addr: self.addr,
                    reason,
                };
                Http1Sent::Failed((unprocessed, Blame::Unprocessed))
            }
            FromIdle::Failed(e) => Http1Sent::Failed(self.judged(e)),
            FromIdle::NoneIdle(req) => Http1Sent::NoneIdle(req),
        }
    }

    /// A new connection to the peer for one request, opened within `connect_timeout`.
    pub async fn open_http1(&self, connect_timeout: Duration) -> Result<NewConn, ProxyError> {
        self.http1_pool().open(connect_timeout).await
    }

    /// Sends `req` on the connection `open_http1` made for it.
    pub async fn send_http1_on_new(
        &self,
        conn: NewConn,
        req: Request<Body>,
    ) -> Result<(Response<Incoming>, Pooled), (ProxyError, Blame)> {
        (self.http1_pool().send_on_new(conn, req).await).map_err(|e| self.judged(e))
    }

    fn judged(&self, e: PoolError<ProxyError>) -> (ProxyError, Blame) {
        match e {
            PoolError::Dial(e) => (e, Blame::Endpoint),
            PoolError::Request { error, unsent } => judge(self.addr, unsent, &error),
        }
    }

    fn http1_pool(&self) -> &Arc<Http1Pool<PeerDial>> {
        self.http1.get_or_init(|| {
            let tls = match &self.tls {
                Some(Ok(config)) => {
                    let mut config = (**config).clone();
                    config.alpn_protocols = vec![b"http/1.1".to_vec()];
                    Ok(Arc::new(config))
                }
                Some(Err(e)) => Err(e.to_string()),
                None => Err("a plain-text endpoint has no TLS".to_string()),
            };
            let dial = PeerDial {
                addr: self.addr,
                tls,
                own: self.own.clone(),
                identity: self.identity.clone(),
                metrics: self.metrics.clone(),
                open: Arc::default(),
            };
            Http1Pool::with_dial(self.addr, dial, IDLE)
        })
    }
}

/// What trying the pooled connections came to (`MeshConnection::send_http1_on_idle`).
pub enum Http1Sent {
    Answered(Response<Incoming>, Pooled),
    Failed((ProxyError, Blame)),
    NoneIdle(Request<Body>),
}

/// Counts a connection open from its handshake until its task ends.
struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    fn new(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        OpenGuard(open.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
