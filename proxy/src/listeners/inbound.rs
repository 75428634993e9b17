//! The inbound listener: mutual TLS from other sidecars, then HTTP (HTTP/2 from Trellis peers) to
//! the local app. The caller's SPIFFE ID, proven by its certificate, is handed to the app in the
//! `trellis-client-id` header; a copy of that header arriving from the network is dropped first.

use super::serve_connection;
use crate::config::SnapshotStore;
use crate::drain::DrainWatch;
use crate::errors::ProxyError;
use crate::http::app::AppClient;
use crate::http::headers::CLIENT_ID;
use crate::http::{rescue::RescueLayer, Body};
use crate::tls::peer_identity;
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tower::ServiceBuilder;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    store: SnapshotStore,
    app: AppClient,
    drain: DrainWatch,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
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
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let (store, app, drain) = (store.clone(), app.clone(), drain.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::info!(%peer, error = %e, "inbound TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::info!(%peer, "inbound TLS handshake timed out");
                    return;
                }
            };
            // The verifier already required a SPIFFE ID; a missing one here means no client cert.
            let identity = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(peer_identity)
                .and_then(|id| HeaderValue::from_str(&id).ok());
            let Some(identity) = identity else {
                tracing::info!(%peer, "inbound connection without a SPIFFE identity refused");
                return;
            };
            let service = ServiceBuilder::new()
                .map_request(|req: Request<Incoming>| req.map(Body::from))
                .layer(RescueLayer)
                .service(ToApp {
                    identity,
                    store,
                    app,
                });
            serve_connection(tls, service, drain).await;
        });
    }
}

/// Hands a request from an authenticated peer to the local app.
#[derive(Clone)]
struct ToApp {
    identity: HeaderValue,
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

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let headers = req.headers_mut();
        headers.remove(&CLIENT_ID);
        headers.insert(CLIENT_ID.clone(), self.identity.clone());
        let port = crate::http::authority(&req).and_then(|(_, p)| p);
        let app_port = self
            .store
            .load()
            .inbound
            .as_ref()
            .and_then(|i| i.app_port(port).copied());
        let app = self.app.clone();
        Box::pin(async move {
            let app_port = app_port.ok_or(ProxyError::NoAppPort {
                port: port.unwrap_or(80),
            })?;
            app.send(app_port, req).await
        })
    }
}
