//! Routing: which route and which backend cluster serve a request. Loads the config snapshot once
//! per request (one arc-swap load), finds the route table for the authority, the first rule whose
//! match holds (path, method, headers), the backend by the rule's weighted split, and attaches the
//! decision to the request as a `Target` for the layers below.
//!
//! On-demand discovery hooks into the misses only (an authority no route table answers for, a
//! cluster not held yet): when the snapshot carries a `Demand`, the request waits (bounded) for
//! the service's resources to be subscribed and applied, then is resolved again; a name the
//! control plane does not know gets a 404 naming it. A hit costs what it always did.

use super::body::Body;
use super::ResponseFuture;
use crate::config::{Cluster, RouteRule, SnapshotStore};
use crate::discovery::{Demand, Lookup};
use crate::errors::ProxyError;
use crate::resilience::timeout::Deadline;
use http::{Request, Response};
use std::sync::Arc;
use std::task::{Context, Poll};

/// The routing decision, carried in request extensions.
#[derive(Debug, Clone)]
pub struct Target {
    pub rule: Arc<RouteRule>,
    pub cluster: Arc<Cluster>,
    /// When the request must be answered, set by the timeout layer (`resilience::timeout`).
    /// Kept here rather than as an extension of its own: each extension is an allocation.
    pub deadline: Option<Deadline>,
}

#[derive(Clone)]
pub struct RouteLayer {
    store: SnapshotStore,
}

impl RouteLayer {
    pub fn new(store: SnapshotStore) -> Self {
        RouteLayer { store }
    }
}

impl<S> tower::Layer<S> for RouteLayer {
    type Service = Router<S>;
    fn layer(&self, inner: S) -> Router<S> {
        Router {
            store: self.store.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct Router<S> {
    store: SnapshotStore,
    inner: S,
}

pub fn resolve(store: &SnapshotStore, req: &Request<Body>) -> Result<Target, ProxyError> {
    resolve_with(store, req, ByDestination::UnlessHostIsPending)
}

/// When a request whose Host no held table answers for goes to its connection's destination
/// cluster (transparent mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ByDestination {
    /// Unless, on demand, the Host names a service not held yet: the app named that service
    /// (a call through a pod address with another service's name, such as a self-call), so it
    /// is subscribed and waited for first.
    UnlessHostIsPending,
    /// Always: the wait found no such service (or no answer in time).
    Always,
}

fn resolve_with(
    store: &SnapshotStore,
    req: &Request<Body>,
    by_destination: ByDestination,
) -> Result<Target, ProxyError> {
    let (host, port) =
        super::host_and_port(req).ok_or(ProxyError::BadRequest("missing or invalid authority"))?;
    let snapshot = store.load();
    let pending = || {
        by_destination == ByDestination::UnlessHostIsPending
            && (snapshot.demand.as_ref()).is_some_and(|d| {
                !snapshot.routes_by_host.contains_key(&*host) && d.names_service(&host)
            })
    };
    let table = snapshot
        .route_table(&host, port)
        .or_else(|| match pending() {
            true => None,
            false => destination_table(&snapshot, req),
        })
        .ok_or_else(|| ProxyError::NoRoute {
            authority: format_authority(&host, port),
        })?;
    let rule = table.select(req);
    let cluster_name = rule.backend().unwrap_or(
        table
            .fallback
            .backends
            .first()
            .map_or("", |b| b.cluster.as_str()),
    );
    let cluster = snapshot
        .clusters
        .get(cluster_name)
        .ok_or_else(|| ProxyError::NoEndpoints {
            cluster: cluster_name.to_string(),
        })?;
    Ok(Target {
        rule: rule.clone(),
        cluster: cluster.clone(),
        deadline: None,
    })
}

/// The cluster a transparently intercepted connection was addressed to (set per connection by
/// `listeners::transparent`): requests whose Host matches no route go to that cluster's routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationCluster(pub String);

/// The route table whose fallback is the request's `DestinationCluster`, if it has one.
fn destination_table<'a>(
    snapshot: &'a crate::config::MeshSnapshot,
    req: &Request<Body>,
) -> Option<&'a Arc<crate::config::RouteTable>> {
    let DestinationCluster(cluster) = req.extensions().get::<DestinationCluster>()?;
    (snapshot.routes.values()).find(|t| t.fallback.backends.iter().any(|b| &b.cluster == cluster))
}

fn format_authority(host: &str, port: Option<u16>) -> String {
    match port {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    }
}

/// Whether a lookup miss is one on-demand discovery can fill, and what to wait for.
fn on_demand(
    store: &SnapshotStore,
    req: &Request<Body>,
    miss: &ProxyError,
) -> Option<(Arc<Demand>, Lookup)> {
    let snapshot = store.load();
    let demand = snapshot.demand.as_ref()?;
    let lookup = match miss {
        ProxyError::NoRoute { .. } => {
            let (host, _) = super::authority(req)?;
            // A known host on a port it does not have: no subscription changes that.
            if snapshot.routes_by_host.contains_key(&host) {
                return None;
            }
            Lookup::Service(demand.service_of_host(&host)?)
        }
        ProxyError::NoEndpoints { cluster } => Lookup::Cluster(cluster.clone()),
        _ => return None,
    };
    Some((demand.clone(), lookup))
}

impl<S> tower::Service<Request<Body>> for Router<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> ResponseFuture {
        match resolve(&self.store, &req) {
            Ok(target) => {
                req.extensions_mut().insert(target);
                super::boxed(self.inner.call(req))
            }
            Err(miss) => match on_demand(&self.store, &req, &miss) {
                None => Box::pin(std::future::ready(Err(miss))),
                Some((demand, lookup)) => {
                    // The ready service goes with the request; a fresh clone stays here.
                    let fresh = self.inner.clone();
                    let mut inner = std::mem::replace(&mut self.inner, fresh);
                    let store = self.store.clone();
                    Box::pin(async move {
                        let Some(mut waiter) = demand.waiter(lookup) else {
                            // The set is full: the connection's destination, if it has one.
                            let target = resolve_with(&store, &req, ByDestination::Always);
                            req.extensions_mut().insert(target.map_err(|_| miss)?);
                            return inner.call(req).await;
                        };
                        let target = loop {
                            let miss = match resolve(&store, &req) {
                                Ok(target) => break target,
                                Err(miss) => miss,
                            };
                            match waiter.retry_after(miss).await {
                                Ok(()) => {}
                                // The Host named no service the control plane knows (or it did
                                // not answer): the connection's destination, if it has one.
                                Err(
                                    e @ (ProxyError::UnknownService { .. }
                                    | ProxyError::DiscoveryTimeout { .. }),
                                ) if req.extensions().get::<DestinationCluster>().is_some() => {
                                    break resolve_with(&store, &req, ByDestination::Always)
                                        .map_err(|_| e)?;
                                }
                                Err(e) => return Err(e),
                            }
                        };
                        req.extensions_mut().insert(target);
                        inner.call(req).await
                    })
                }
            },
        }
    }
}
