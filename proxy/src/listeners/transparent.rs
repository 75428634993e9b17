//! Transparent mode (`--transparent`): connections arrive through the iptables `REDIRECT` of
//! `trellis-proxy redirect`, and the original destination (`original_dst`) says where they were
//! going. This module decides what to do with them:
//!
//! - outbound: refuse a connection whose original destination is the outbound listener itself
//!   (that would be a loop); otherwise detect the protocol (`crate::detect`, skipped for ports
//!   configured as opaque). To a mesh destination (an endpoint address of some cluster) HTTP
//!   goes through the outbound HTTP stack, routed by Host or, failing that, by the destination's
//!   cluster; TLS and opaque TCP go over mTLS to that endpoint (`opaque::to_mesh`), as does
//!   anything to another port of a meshed pod (an endpoint's IP). Anything to a destination
//!   outside the mesh passes through as plain TCP.
//! - inbound: the app port is the original destination's port (`TargetPort`), unless the peer
//!   addressed the inbound listener directly; a plaintext client (permissive or disabled mTLS)
//!   that does not speak HTTP is carried to the app as opaque TCP.

use super::opaque;
use super::original_dst::original_dst;
use super::{serve_connection, HttpServer};
use crate::config::{AppPort, AppProtocol, Endpoint, InboundPolicy, MeshSnapshot, SnapshotStore};
use crate::detect::{peek_protocol, Protocol};
use crate::drain::DrainWatch;
use crate::http::route::DestinationCluster;
use crate::http::Body;
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
    /// Another port of a meshed pod (an endpoint's IP): opaque TCP over mTLS to that endpoint,
    /// whatever the protocol, since no service names the port.
    MeshPod { endpoint: Arc<Endpoint> },
    /// Not a mesh address: plain TCP to it.
    Outside,
}

/// Finds the mesh endpoint with address `dst`, else one with its IP.
pub fn classify(snapshot: &MeshSnapshot, dst: SocketAddr) -> Destination {
    let mut same_pod = None;
    for (name, cluster) in &snapshot.clusters {
        for endpoint in &cluster.endpoints {
            if endpoint.addr == dst {
                return Destination::Mesh {
                    cluster: name.clone(),
                    endpoint: endpoint.clone(),
                };
            }
            if endpoint.addr.ip() == dst.ip() && same_pod.is_none() {
                same_pod = Some(endpoint.clone());
            }
        }
    }
    match same_pod {
        Some(endpoint) => Destination::MeshPod { endpoint },
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
}

/// Serves one redirected outbound connection; `http` is the outbound HTTP stack.
pub async fn outbound<S>(
    stream: TcpStream,
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
    let (dst, local) = match (original_dst(&stream), stream.local_addr()) {
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
    let destination = classify(&ctx.store.load(), dst);
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
        (Destination::Mesh { cluster, .. }, Protocol::Http1 | Protocol::Http2) => {
            let http =
                tower::ServiceExt::map_request(http, move |mut req: http::Request<Incoming>| {
                    req.extensions_mut()
                        .insert(DestinationCluster(cluster.clone()));
                    req
                });
            let stream = Counted::new(stream, ctx.metrics.clone(), Direction::Outbound);
            serve_connection(stream, http, drain, server).await;
            Ok(())
        }
        (Destination::Mesh { endpoint, .. } | Destination::MeshPod { endpoint }, _)
            if !endpoint.plaintext =>
        {
            opaque::to_mesh(
                stream,
                endpoint.addr,
                &endpoint.identity,
                dst.port(),
                &ctx.tls,
                drain,
                &ctx.metrics,
            )
            .await
        }
        _ => opaque::passthrough(stream, dst, drain).await,
    };
    if let Err(e) = result {
        tracing::info!(%dst, error = %e, "outbound opaque connection failed");
    }
}

/// The app port for an inbound connection in transparent mode: the original destination's port,
/// or `None` when the peer addressed the inbound listener directly (the authority's port then
/// chooses, as in explicit mode).
pub fn inbound_target_port(stream: &TcpStream) -> std::io::Result<Option<TargetPort>> {
    let dst = original_dst(stream)?;
    let local = stream.local_addr()?;
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

#[cfg(test)]
mod tests;
