//! `AuthzLayer`: enforces the workload's authorization policy on each inbound HTTP request, for
//! the peer of the connection it was built for. It loads the policy from the snapshot in force per
//! request (so a policy update applies to the next request, even on an open connection), counts
//! the decision, and refuses with `ProxyError::Forbidden` naming the rule, which the rescue layer
//! answers with 403 and a `trellis-error` reason.

use super::{Attributes, AuthzStats, HttpAttributes, Peer};
use crate::config::SnapshotStore;
use crate::errors::ProxyError;
use futures_util::future::{Either, Ready};
use http::Request;
use std::sync::Arc;
use std::task::{Context, Poll};

#[derive(Clone)]
pub struct AuthzLayer {
    store: SnapshotStore,
    peer: Arc<Peer>,
    stats: Arc<AuthzStats>,
}

impl AuthzLayer {
    pub fn new(store: SnapshotStore, peer: Peer, stats: Arc<AuthzStats>) -> Self {
        AuthzLayer {
            store,
            peer: Arc::new(peer),
            stats,
        }
    }
}

impl<S> tower::Layer<S> for AuthzLayer {
    type Service = Authorize<S>;
    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authorize<S> {
    inner: S,
    layer: AuthzLayer,
}

impl<S, B> tower::Service<Request<B>> for Authorize<S>
where
    S: tower::Service<Request<B>, Error = ProxyError>,
{
    type Response = S::Response;
    type Error = ProxyError;
    type Future = Either<Ready<Result<S::Response, ProxyError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let snapshot = self.layer.store.load();
        let Some(inbound) = snapshot.inbound.as_ref() else {
            return refuse(ProxyError::NotReady("no inbound config yet"));
        };
        // No port in the authority: the workload's only port, else HTTP's default.
        let port = crate::http::authority_port(&req).unwrap_or(match inbound.ports.as_slice() {
            [only] => only.port,
            _ => 80,
        });
        let attrs = Attributes {
            port: Some(port),
            http: Some(HttpAttributes {
                method: req.method(),
                path: req.uri().path(),
                headers: req.headers(),
            }),
        };
        let decision = inbound.authorization.decide(&self.layer.peer, &attrs);
        self.layer.stats.record(&decision);
        if !decision.allowed() {
            tracing::debug!(peer = ?self.layer.peer.identity, rule = %decision.rule, "request denied");
            return refuse(ProxyError::Forbidden {
                rule: decision.rule,
            });
        }
        Either::Right(self.inner.call(req))
    }
}

fn refuse<T, F>(err: ProxyError) -> Either<Ready<Result<T, ProxyError>>, F> {
    Either::Left(futures_util::future::ready(Err(err)))
}
