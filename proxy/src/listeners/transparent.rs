//! Transparent mode (`--transparent`): connections arrive through the iptables `REDIRECT` of
//! `trellis-proxy redirect`, and the original destination (`original_dst`) says where they were
//! going. This module decides what to do with them:
//!
//! - outbound: refuse a connection whose original destination is the outbound listener itself
//!   (that would be a loop); otherwise detect the protocol (`crate::detect`, skipped for ports
//!   configured as opaque). To a mesh destination (an endpoint address of some cluster, or a
//!   service's virtual address such as a ClusterIP on one of its ports) HTTP goes through the
//!   outbound HTTP stack, routed by Host or, failing that, by the destination's cluster; TLS and
//!   opaque TCP go over mTLS to that endpoint, or to one the service's balancer picks, at the
//!   target port behind the service port (`opaque::to_mesh`), as does anything to another port
//!   of a meshed pod (an endpoint's IP). Anything to a destination outside the mesh passes
//!   through as plain TCP. On demand (the default), a destination whose service is not held yet
//!   waits for that service's resources first (`on_demand.rs`).
//! - inbound: the app port is the original destination's port (`TargetPort`), unless the peer
//!   addressed the inbound listener directly; a plaintext client (permissive or disabled mTLS)
//!   that does not speak HTTP is carried to the app as opaque TCP.

use super::opaque;
use super::original_dst::{local_addr, original_dst};
use super::{serve_connection, HttpServer};
use crate::config::{
    AppPort, AppProtocol, Endpoint, InboundPolicy, MeshSnapshot, SnapshotStore, VirtualMatch,
};
use crate::detect::{peek_protocol, Protocol};
use crate::drain::DrainWatch;
use crate::http::route::DestinationCluster;
use crate::http::Body;
use crate::limits::{Share, Slot};
use crate::telemetry::io::Counted;
use crate::telemetry::metrics::{Direction, ProxyMetrics};
use crate::tls::TlsContext;
use hyper::body::Incoming;
use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// The settings of transparent mode.
#[derive(Debug, Clone)]
pub struct TransparentConfig {
    /// Destination ports never sniffed: opaque TCP at once (server-speaks-first protocols).
    pub opaque_ports: HashSet<u16>,
    /// How long to wait for the app's first bytes before treating the connection as opaque.
    pub detect_timeout: Duration,
}

impl Default for TransparentConfig {
    fn default() -> Self {
        TransparentConfig {
            opaque_ports: HashSet::new(),
            detect_timeout: Duration::from_secs(1),
        }
    }
}

/// The app port an inbound request goes to, taken from the connection's original destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetPort(pub u16);

/// Where an outbound connection goes.
#[derive(Debug, Clone)]
pub enum Destination {
    /// An endpoint of `cluster` in the mesh.
    Mesh {
        cluster: String,
        endpoint: Arc<Endpoint>,
    },
    /// A service's virtual address (a Kubernetes ClusterIP) on one of the service's ports. The
    /// app resolved the service's name to it, so the connection is for the service, not for
    /// one of its endpoints: the service's cluster chooses which endpoint serves it.
    Service {
        /// `<namespace>/<service>`, for logs.
        service: String,
        /// The service's default cluster.
        cluster: String,
        /// The port the service's workloads listen on behind the port the app addressed.
        target_port: u16,
    },
    /// Another port of a meshed pod (an endpoint's IP): opaque TCP over mTLS to that endpoint,
    /// whatever the protocol, since no service names the port.
    MeshPod { endpoint: Arc<Endpoint> },
    /// Not a mesh address: plain TCP to it.
    Outside,
}

/// What `dst` is, by the snapshot's address index: an endpoint's address, else a service's
/// virtual address and port, else an endpoint's IP, else outside the mesh.
pub fn classify(snapshot: &MeshSnapshot, dst: SocketAddr) -> Destination {
    let index = &snapshot.addresses;
    if let Some((cluster, endpoint)) = index.endpoint(dst) {
        return Destination::Mesh {
            cluster: cluster.to_owned(),
            endpoint: endpoint.clone(),
        };
    }
    match index.service(dst) {
        Some(VirtualMatch::Port {
            service,
            target_port,
        }) => {
            return Destination::Service {
                service: service.name.clone(),
                cluster: service.cluster.clone(),
                target_port,
            }
        }
        Some(VirtualMatch::NoSuchPort) => {
            // Kubernetes would refuse it too (no Service port there); passing it through keeps
            // that answer the network's.
            tracing::debug!(%dst, "outbound: a service's virtual address on a port it does not have; passed through");
            return Destination::Outside;
        }
        None => {}
    }
    match index.pod(dst.ip()) {
        Some(endpoint) => Destination::MeshPod {
            endpoint: endpoint.clone(),
        },
        None => Destination::Outside,
    }
}

/// Whether an accepted connection was really addressed to the listener itself (not redirected).
pub fn addressed_to_listener(dst: SocketAddr, listener: SocketAddr) -> bool {
    dst == listener
}

/// What the outbound side needs for transparent connections.
#[derive(Clone)]
pub struct Outbound {
    pub config: Arc<TransparentConfig>,
    pub store: SnapshotStore,
    pub tls: TlsContext,
    pub metrics: Arc<ProxyMetrics>,
    /// Keepalive and idle timeout of opaque streams.
    pub tunnel: opaque::Tunnel,
}

impl Outbound {
    fn dial(&self) -> opaque::Dial<'_> {
        opaque::Dial {
            tls: &self.tls,
            metrics: &self.metrics,
            tunnel: self.tunnel,
        }
    }
}

/// Serves one redirected outbound connection, holding its `place` in the listener's budget until
/// it ends (into a WebSocket upgrade too); `http` is the outbound HTTP stack.
pub async fn outbound<S>(
    (stream, place, owed): (TcpStream, Slot, Arc<Share>),
    ctx: Outbound,
    http: S,
    drain: DrainWatch,
    server: HttpServer,
) where
    S: tower::Service<http::Request<Incoming>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let (dst, local) = match (original_dst(&stream), local_addr(&stream)) {
        (Ok(dst), Ok(local)) => (dst, local),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "outbound: no original destination; connection refused");
            return;
        }
    };
    if addressed_to_listener(dst, local) {
        tracing::warn!(%dst, "outbound: connection to the proxy's own listener refused (loop)");
        return;
    }
    let destination = match on_demand::place(&ctx.store, dst).await {
        Ok(destination) => destination,
        Err(e) => {
            tracing::info!(%dst, error = %e, "outbound: the service at this destination is not available; connection refused");
            return;
        }
    };
    let protocol = if ctx.config.opaque_ports.contains(&dst.port()) {
        Protocol::Opaque
    } else {
        match peek_protocol(&stream, ctx.config.detect_timeout).await {
            Ok(Some(p)) => p,
            Ok(None) | Err(_) => return,
        }
    };
    tracing::debug!(%dst, ?protocol, mesh = !matches!(destination, Destination::Outside), "outbound connection");
    let result = match (destination, protocol) {
        (
            Destination::Mesh { cluster, .. } | Destination::Service { cluster, .. },
            Protocol::Http1 | Protocol::Http2,
        ) => {
            let http =
                tower::ServiceExt::map_request(http, move |mut req: http::Request<Incoming>| {
                    req.extensions_mut()
                        .insert(DestinationCluster(cluster.clone()));
                    req
                });
            let stream = Counted::new(stream, ctx.metrics.clone(), Direction::Outbound);
            serve_connection(stream, (place, owed), http, drain, server).await;
            Ok(())
        }
        (
            Destination::Service {
                service,
                cluster,
                target_port,
            },
            _,
        ) => to_service(stream, dst, (&service, &cluster), target_port, &ctx, drain).await,
        (Destination::Mesh { endpoint, .. } | Destination::MeshPod { endpoint }, _)
            if !endpoint.plaintext =>
        {
            let to = (endpoint.addr, endpoint.identity.as_str());
            opaque::to_mesh(stream, to, dst.port(), drain, ctx.dial()).await
        }
        _ => opaque::passthrough(stream, dst, drain, ctx.tunnel).await,
    };
    if let Err(e) = result {
        tracing::info!(%dst, error = %e, "outbound opaque connection failed");
    }
}

/// Opaque TCP (or the app's own TLS) to a service's virtual address: over mTLS to one endpoint
/// of the service's cluster, picked by the cluster's balancer (which skips ejected endpoints),
/// for the target port behind the port the app addressed. An endpoint with mTLS disabled gets
/// plain TCP at that port of its pod.
async fn to_service(
    stream: TcpStream,
    dst: SocketAddr,
    (service, cluster): (&str, &str),
    target_port: u16,
    ctx: &Outbound,
    drain: DrainWatch,
) -> Result<(), opaque::OpaqueError> {
    let endpoint = {
        let snapshot = ctx.store.load();
        (snapshot.clusters.get(cluster))
            .and_then(|c| crate::balance::pick(c, &http::HeaderMap::new(), None))
            .cloned()
    };
    let Some(endpoint) = endpoint else {
        tracing::info!(%dst, service, "outbound: the service has no endpoints; connection closed");
        return Ok(());
    };
    tracing::debug!(%dst, service, endpoint = %endpoint.addr, target_port, "outbound: to a service");
    if endpoint.plaintext {
        let pod = SocketAddr::new(endpoint.addr.ip(), target_port);
        return opaque::passthrough(stream, pod, drain, ctx.tunnel).await;
    }
    let to = (endpoint.addr, endpoint.identity.as_str());
    opaque::to_mesh(stream, to, target_port, drain, ctx.dial()).await
}

/// The app port for an inbound connection in transparent mode: the original destination's port,
/// or `None` when the peer addressed the inbound listener directly (the authority's port then
/// chooses, as in explicit mode).
pub fn inbound_target_port(stream: &TcpStream) -> std::io::Result<Option<TargetPort>> {
    let dst = original_dst(stream)?;
    let local = local_addr(stream)?;
    Ok((!addressed_to_listener(dst, local)).then_some(TargetPort(dst.port())))
}

/// How long the inbound side waits for a plaintext client's first bytes before deciding it is
/// not HTTP.
const INBOUND_DETECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether a plaintext inbound connection speaks HTTP (or closed before saying anything, which
/// the HTTP server handles).
pub async fn speaks_http(stream: &TcpStream) -> bool {
    matches!(
        peek_protocol(stream, INBOUND_DETECT_TIMEOUT).await,
        Ok(Some(Protocol::Http1 | Protocol::Http2) | None) | Err(_)
    )
}

/// The app port serving `target`: the configured one whose target port it is, else HTTP/1.1 on
/// that port.
pub fn app_port_for(policy: &InboundPolicy, TargetPort(port): TargetPort) -> AppPort {
    let configured = policy.ports.iter().find(|p| p.target_port == port);
    configured.copied().unwrap_or(AppPort {
        port,
        target_port: port,
        protocol: AppProtocol::Http1,
    })
}

mod on_demand;

#[cfg(test)]
mod tests;
