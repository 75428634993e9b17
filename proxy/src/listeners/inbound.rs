//! The inbound listener: connections from other sidecars (mutual TLS) and, when the workload's
//! mTLS mode allows, from plaintext clients; then HTTP to the local app. The mode is read from the
//! snapshot at accept time: `strict` requires the TLS handshake, `permissive` peeks at the first
//! bytes (`crate::detect`) and serves TLS or plaintext on the same port, `disabled` serves
//! plaintext only. The caller's SPIFFE ID, proven by its certificate, is handed to the app in
//! `trellis-client-id`; a copy of that header from the network is always dropped, so a plaintext
//! caller never carries an identity. Each request passes the authorization layer (`crate::authz`)
//! with the connection's peer before it reaches the app. A peer that negotiated the
//! `trellis-opaque` ALPN gets an opaque TCP stream to the app instead (`super::opaque`); in
//! transparent mode the app port is the connection's original destination port
//! (`super::transparent`). A WebSocket arrives as an HTTP/2 extended CONNECT (RFC 8441, enabled
//! in `HttpServer`) and goes to the app as an HTTP/1.1 upgrade (`crate::http::upgrade`).
//!
//! A peer's identity is good until its certificate expires, and rustls checks that only at the
//! handshake: each mTLS connection is therefore retired at the expiry (`crate::tls::expiry`),
//! through a drain of its own (`DrainWatch::until`): HTTP/2 GOAWAY (HTTP/1.1 `Connection: close`)
//! so in-flight requests finish, closed after `EXPIRY_GRACE`; an opaque stream is cut at once.
//! The client then reconnects and must present a current certificate.

use super::Listener;
use super::{serve_connection, HttpServer};
use crate::authz::{AuthzLayer, AuthzStats, Peer};
use crate::config::{AppPort, AppProtocol, MtlsMode, SnapshotStore};
use crate::detect::{self, Detected};
use crate::drain::DrainWatch;
use crate::errors::ProxyError;
use crate::http::app::AppClient;
use crate::http::headers::CLIENT_ID;
use crate::http::synthetic::Audience;
use crate::http::{rescue::RescueLayer, Body};
use crate::limits::Slot;
use crate::resilience::shed::ShedLayer;
use crate::telemetry::io::Counted;
use crate::telemetry::metrics::{tls_failure_reason, Direction};
use crate::telemetry::observe::{ObserveLayer, Telemetry};
use crate::tls::{peer_identity, record_retired, PeerExpiry, EXPIRY_GRACE};
use crate::Limits;
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tower::ServiceBuilder;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What every inbound connection needs.
#[derive(Clone)]
pub struct Inbound {
    pub tls: Arc<rustls::ServerConfig>,
    pub store: SnapshotStore,
    pub app: AppClient,
    pub authz: Arc<AuthzStats>,
    pub telemetry: Arc<Telemetry>,
    /// Opaque TCP streams from peer sidecars.
    pub opaque: Arc<super::opaque::InboundOpaque>,
    /// Transparent mode: the app port comes from the original destination.
    pub transparent: bool,
}

pub async fn serve(listener: Listener, inbound: Inbound, drain: DrainWatch, limits: Limits) {
    let server = HttpServer::new(&limits);
    let connections = (inbound.telemetry.metrics)
        .connections(Direction::Inbound)
        .clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = drain.signaled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "inbound accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(permit) = connections.try_take() else {
            tracing::debug!(%peer, "inbound connection limit reached; closed");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = connection(
            (stream, permit),
            peer,
            inbound.clone(),
            drain.clone(),
            server.clone(),
        );
        tokio::spawn(conn);
    }
}

/// One accepted connection, holding its `place` in the listener's budget until it ends (into a
/// WebSocket upgrade too).
async fn connection(
    (stream, place): (TcpStream, Slot),
    addr: SocketAddr,
    inbound: Inbound,
    drain: DrainWatch,
    server: HttpServer,
) {
    let target = match inbound.transparent {
        false => None,
        true => match super::transparent::inbound_target_port(&stream) {
            Ok(target) => target,
            Err(e) => {
                tracing::warn!(peer = %addr, error = %e, "inbound: no original destination; refused");
                return;
            }
        },
    };
    let mode = (inbound.store.load().inbound.as_ref()).map_or(MtlsMode::Strict, |i| i.mtls);
    let is_tls = match mode {
        MtlsMode::Strict => true,
        MtlsMode::Permissive | MtlsMode::Disabled => {
            match detect::peek(&stream, HANDSHAKE_TIMEOUT).await {
                Ok(Some(Detected::Tls)) => true,
                Ok(Some(Detected::Plaintext)) => false,
                Ok(Some(Detected::NeedMore)) | Ok(None) | Err(_) => return,
            }
        }
    };
    match (mode, is_tls) {
        (MtlsMode::Disabled, true) => {
            tracing::info!(peer = %addr, "inbound TLS refused: mTLS is disabled for this workload");
        }
        (_, false) => match target {
            // Transparent mode: a plaintext client that is not HTTP goes to the app as opaque TCP.
            Some(port) if !super::transparent::speaks_http(&stream).await => {
                let opaque = super::opaque::serve_plaintext(stream, port.0, &inbound.opaque, drain);
                if let Err(e) = opaque.await {
                    tracing::info!(peer = %addr, error = %e, "inbound plaintext TCP refused");
                }
            }
            _ => {
                let peer = Peer::unauthenticated();
                serve_http(stream, place, peer, inbound, drain, target, server).await
            }
        },
        (_, true) => {
            let Some((tls, peer, expiry)) = handshake(stream, addr, &inbound).await else {
                return;
            };
            let opaque = super::opaque::is_opaque(&tls);
            // An opaque protocol cannot be asked to wind down: cut at the expiry.
            let grace = if opaque { Duration::ZERO } else { EXPIRY_GRACE };
            let identity = peer.identity.clone().unwrap_or_default();
            let metrics = inbound.telemetry.metrics.clone();
            let (drain, expiring) = drain.until(expiry.at, grace, || {
                record_retired(Some(&metrics), Direction::Inbound, &identity, &expiry)
            });
            let serve = async move {
                if opaque {
                    let opaque = super::opaque::serve_inbound(tls, peer, &inbound.opaque, drain);
                    if let Err(e) = opaque.await {
                        tracing::info!(peer = %addr, error = %e, "inbound opaque stream refused");
                    }
                } else {
                    let server = server.for_mesh_peer();
                    serve_http(tls, place, peer, inbound, drain, target, server).await
                }
            };
            tokio::select! {
                _ = serve => {}
                never = expiring => match never {},
            }
            if expiry.has_passed() {
                tracing::debug!(peer = %addr, %identity, "inbound connection closed: peer certificate expired");
            }
        }
    }
}

/// The mTLS handshake, the peer's SPIFFE ID and when its certificate expires; `None` (logged) if
/// any fails.
async fn handshake(
    stream: TcpStream,
    addr: SocketAddr,
    inbound: &Inbound,
) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, Peer, PeerExpiry)> {
    let acceptor = tokio_rustls::TlsAcceptor::from(inbound.tls.clone());
    let failures = &inbound.telemetry.metrics.tls_failures;
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            failures.record(tls_failure_reason(&e));
            tracing::info!(peer = %addr, error = %e, "inbound TLS handshake refused");
            return None;
        }
        Err(_) => {
            failures.record("timeout");
            tracing::info!(peer = %addr, "inbound TLS handshake timed out");
            return None;
        }
    };
    // The verifier already required a SPIFFE ID; a missing one here means no client cert.
    let identity = (tls.get_ref().1.peer_certificates())
        .and_then(|chain| chain.first())
        .and_then(peer_identity);
    let Some(identity) = identity else {
        tracing::info!(peer = %addr, "inbound connection without a SPIFFE identity refused");
        return None;
    };
    // The verifier refused an expired chain; this catches an expiry reached during the handshake.
    let expiry = PeerExpiry::of(tls.get_ref().1).filter(|e| !e.has_passed());
    let Some(expiry) = expiry else {
        failures.record("expired");
        tracing::info!(peer = %addr, %identity, "inbound TLS refused: the client certificate expired");
        return None;
    };
    Some((tls, Peer::authenticated(identity), expiry))
}

async fn serve_http<IO>(
    io: IO,
    place: Slot,
    peer: Peer,
    inbound: Inbound,
    drain: DrainWatch,
    target: Option<super::transparent::TargetPort>,
    server: HttpServer,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let identity = (peer.identity.as_deref()).and_then(|id| HeaderValue::from_str(id).ok());
    let observe = ObserveLayer::inbound(
        inbound.telemetry.clone(),
        identity
            .clone()
            .unwrap_or_else(|| HeaderValue::from_static("unauthenticated")),
    );
    let io = Counted::new(io, inbound.telemetry.metrics.clone(), Direction::Inbound);
    let shed = ShedLayer::of(&inbound.telemetry.metrics, Direction::Inbound);
    let owed = shed.share().clone();
    // The identity header is set (or removed) before authorization, so header rules can never
    // match a copy sent by the caller.
    let service = ServiceBuilder::new()
        .map_request(move |req: Request<Incoming>| {
            let mut req = with_identity(req.map(Body::from), &identity);
            crate::http::upgrade::inbound_form(&mut req);
            if let Some(target) = target {
                req.extensions_mut().insert(target);
            }
            req
        })
        .layer(RescueLayer)
        .layer(shed)
        .layer(observe)
        .layer(AuthzLayer::new(
            inbound.store.clone(),
            peer,
            inbound.authz.clone(),
        ))
        .service(ToApp {
            store: inbound.store,
            app: inbound.app,
        });
    serve_connection(io, (place, owed), service, drain, server).await;
}

/// Replaces any `trellis-client-id` from the network with the proven identity, if there is one.
/// A caller without one is told only the short reason of an error (`http::synthetic`).
fn with_identity(mut req: Request<Body>, identity: &Option<HeaderValue>) -> Request<Body> {
    let headers = req.headers_mut();
    headers.remove(&CLIENT_ID);
    if let Some(identity) = identity {
        headers.insert(CLIENT_ID.clone(), identity.clone());
    } else {
        req.extensions_mut().insert(Audience::Anonymous);
    }
    req
}

/// Hands a request to the local app on the app port that serves its service port.
#[derive(Clone)]
struct ToApp {
    store: SnapshotStore,
    app: AppClient,
}

impl tower::Service<Request<Body>> for ToApp {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let port = crate::http::authority_port(&req);
        let target = req
            .extensions()
            .get::<super::transparent::TargetPort>()
            .copied();
        let app_port = self
            .store
            .load()
            .inbound
            .as_ref()
            .and_then(|i| match target {
                Some(target) => Some(super::transparent::app_port_for(i, target)),
                None => i.app_port(port).copied(),
            });
        let app = self.app.clone();
        Box::pin(async move {
            let app_port = app_port.ok_or(ProxyError::NoAppPort {
                port: port.unwrap_or(80),
            })?;
            if let Some(asked) = crate::http::upgrade::inbound_asked(&req)? {
                // Boxed: the upgrade's future is large and rare; inline it would be copied
                // with every request's future (`http::forward::connection` says more).
                return Box::pin(upgrade_to_app(&app, app_port, req, asked)).await;
            }
            app.send(app_port, req).await
        })
    }
}

/// A WebSocket (carried over the mesh as extended CONNECT, or from a plaintext HTTP/1.1 client;
/// see `crate::http::upgrade`) goes to the app over a connection of its own; an h2c app port
/// cannot take an HTTP/1.1 upgrade.
async fn upgrade_to_app(
    app: &AppClient,
    port: AppPort,
    req: Request<Body>,
    asked: crate::http::upgrade::Asked,
) -> Result<Response<Body>, ProxyError> {
    let target = port.target_port;
    if port.protocol != AppProtocol::Http1 {
        return Err(ProxyError::App {
            port: target,
            reason: "WebSocket upgrades need an http1 app port; this one speaks h2c".into(),
        });
    }
    let to = (app.addr(target), app.upgrade_connection(target));
    crate::http::upgrade::to_app(req, asked, to, app.tunnel_idle_timeout()).await
}
