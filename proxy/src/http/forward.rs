//! Forwarding to the mesh: pick an endpoint of the routed cluster (see `balance`), take a
//! connection to it (opening one counts against the circuit breaker's pending and connection
//! limits), rewrite the request into its HTTP/2 form, and send it. The outcome feeds the
//! endpoint's latency estimate and outlier detection. Bodies stream both ways without buffering.
//! An upgrade (WebSocket) is recognised before the hop-by-hop headers go and sent as an RFC 8441
//! extended CONNECT on the same connection; `upgrade` answers the client and splices the streams.

use super::app_pool::Pooled;
use super::body::Body;
use super::headers::{strip_hop_by_hop, CLIENT_ID};
use super::route::Target;
use super::upgrade;
use super::ResponseFuture;
use crate::balance::{self, LoadGuard};
use crate::config::{Cluster, Endpoint};
use crate::errors::ProxyError;
use crate::resilience::breaker::{self, Limit};
use crate::resilience::outlier::Outcome;
use crate::resilience::retry::AvoidEndpoint;
use crate::resilience::timeout::{format_grpc_timeout, GRPC_TIMEOUT};
use crate::transport::{Blame, Http1Sent};
use http::{header, Request, Response, Uri, Version};
use hyper::client::conn::http2::SendRequest;
use std::sync::Arc;
use std::task::{Context, Poll};

#[derive(Clone, Debug, Default)]
pub struct ForwardToMesh {
    /// How long a WebSocket may stay silent both ways (`Limits::tunnel_idle_timeout`).
    tunnel_idle_timeout: std::time::Duration,
}

impl ForwardToMesh {
    pub fn new(limits: &crate::Limits) -> Self {
        ForwardToMesh {
            tunnel_idle_timeout: limits.tunnel_idle_timeout,
        }
    }
}

impl tower::Service<Request<Body>> for ForwardToMesh {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> ResponseFuture {
        Box::pin(forward(req, self.tunnel_idle_timeout))
    }
}

async fn forward(
    mut req: Request<Body>,
    tunnel_idle_timeout: std::time::Duration,
) -> Result<Response<Body>, ProxyError> {
    // Before hop-by-hop headers go: an upgrade travels as extended CONNECT (`upgrade`).
    let asked = upgrade::classify(&req)?;
    let target = req
        .extensions_mut()
        .remove::<Target>()
        .ok_or(ProxyError::NotReady(
            "request reached forwarding without a route",
        ))?;
    let avoid = req.extensions().get::<AvoidEndpoint>().map(|a| a.0);
    let endpoint = balance::pick(&target.cluster, req.headers(), avoid)
        .cloned()
        .ok_or_else(|| ProxyError::NoEndpoints {
            cluster: target.cluster.name.clone(),
        })?;
    let app_version = req.version();
    // HTTP/1.x stays HTTP/1.1 on a pooled connection to the peer (`transport::http1`), unless it
    // asks for an upgrade (extended CONNECT on the HTTP/2 connection) or is not idempotent. A
    // peer that drains closes its idle HTTP/1.1 connections, and a request written as one closes
    // cannot tell whether the peer read it: an idempotent one is retried (RFC 9112 §9.3.1), a
    // POST would be lost (a 502 in a rolling restart). On HTTP/2 the peer's GOAWAY names the
    // last stream it took, so a request it never processed is retried whatever its method.
    let keep_http1 = asked.is_none()
        && app_version <= Version::HTTP_11
        && req.method().is_idempotent()
        && endpoint.state.conn.carries_http1();
    if keep_http1 {
        to_peer_http1_form(&mut req)?;
    } else {
        to_mesh_form(&mut req)?;
    }
    let upgrading = match &asked {
        Some(asked) => Some(upgrade::to_extended_connect(&mut req, asked)?),
        None => None,
    };
    if let Some(deadline) = target.deadline.filter(|d| d.grpc) {
        let remaining = deadline
            .at
            .saturating_duration_since(tokio::time::Instant::now());
        req.headers_mut()
            .insert(&GRPC_TIMEOUT, format_grpc_timeout(remaining));
    }
    let cluster = &target.cluster;
    let record = |outcome| {
        endpoint.state.outlier.record(
            outcome,
            &cluster.policy.outlier,
            &cluster.endpoints,
            &cluster.state.stats,
        );
    };
    let mut load = LoadGuard::start(&endpoint.state);
    let addr = endpoint.addr;
    let sent = if keep_http1 {
        let sent = send_http1(cluster, &endpoint, req, &mut load).await;
        sent.map(|(rsp, pooled)| (rsp, Some(pooled)))
    } else {
        match connection(cluster, &endpoint).await {
            Ok(mut sender) => {
                load.sent();
                let sent = crate::transport::send_judged(&mut sender, req, addr).await;
                let sent = match upgrading {
                    Some(_) => sent.map_err(|(e, blame)| (upgrade::connect_failed(e), blame)),
                    None => sent,
                };
                sent.map(|rsp| (rsp, None))
            }
            // Opening a connection failed: the endpoint's fault when it could not be reached;
            // a circuit breaker's refusal is not.
            Err(e) if e.is_connect_failure() => Err((e, Blame::Endpoint)),
            Err(e) => Err((e, Blame::Local)),
        }
    };
    let (mut rsp, pooled) = match sent {
        Ok(sent) => sent,
        Err((e, blame)) => {
            if e.is_connect_failure() {
                cluster.state.stats.connect_failures.inc();
            }
            // A stream refused by a draining peer, one this side reset for its client, or one the
            // peer ended because this side's clients reset too much, says nothing about the
            // endpoint's health (`transport::Blame`).
            if blame == Blame::Endpoint {
                record(Outcome::GatewayError);
            }
            return Err(e);
        }
    };
    load.headers_received();
    record(Outcome::of_status(rsp.status().as_u16()));
    if let Some(client) = upgrading {
        let mut rsp = upgrade::answer_client(rsp, client, addr, load, tunnel_idle_timeout)?;
        *rsp.version_mut() = app_version;
        return Ok(rsp);
    }
    strip_hop_by_hop(rsp.headers_mut());
    *rsp.version_mut() = app_version;
    Ok(rsp.map(|b| {
        let body = Body::from(b).hold_load(load);
        match pooled {
            Some(pooled) => body.pooled(pooled),
            None => body,
        }
    }))
}

/// An HTTP/1.x request on a pooled HTTP/1.1 connection to the endpoint: an idle one, else a new
/// one (boxed: the connecting future is large and only the requests that open one pay for it).
/// `load` is marked sent when the request goes out on a connection, so a handshake is no part
/// of the endpoint's latency, as on HTTP/2.
async fn send_http1(
    cluster: &Arc<Cluster>,
    endpoint: &Endpoint,
    req: Request<Body>,
    load: &mut LoadGuard,
) -> Result<(Response<hyper::body::Incoming>, Pooled), (ProxyError, Blame)> {
    load.sent();
    match endpoint.state.conn.send_http1_on_idle(req).await {
        Http1Sent::Answered(rsp, pooled) => Ok((rsp, pooled)),
        Http1Sent::Failed(e) => Err(e),
        Http1Sent::NoneIdle(req) => Box::pin(open_http1(cluster, endpoint, req, load)).await,
    }
}

/// A connection to the endpoint: the live one, or a new one if the breaker allows it.
async fn connection(
    cluster: &Arc<Cluster>,
    endpoint: &Endpoint,
) -> Result<SendRequest<Body>, ProxyError> {
    if let Some(live) = endpoint.state.conn.live() {
        return Ok(live);
    }
    // Opening a connection (TCP, TLS, HTTP/2 handshake under a timeout) is a large future;
    // inline, it would make every request's future that large, and every request pays for
    // moving it into its box (callgrind: ~9,000 instructions of memcpy per request). Boxed, only
    // the requests that open a connection pay.
    Box::pin(open_connection(cluster, endpoint)).await
}

/// `connection`'s cold path: a new connection, if the breaker allows it.
async fn open_connection(
    cluster: &Arc<Cluster>,
    endpoint: &Endpoint,
) -> Result<SendRequest<Body>, ProxyError> {
    let _pending = breaker::acquire(cluster, Limit::Pending)?;
    below_max_connections(cluster)?;
    endpoint
        .state
        .conn
        .sender(cluster.policy.connect_timeout)
        .await
}

/// An HTTP/1.1 request that found no idle pooled connection: a new one, if the breaker allows it
/// (opening it is a pending request, and it counts against `max connections`).
async fn open_http1(
    cluster: &Arc<Cluster>,
    endpoint: &Endpoint,
    req: Request<Body>,
    load: &mut LoadGuard,
) -> Result<(Response<hyper::body::Incoming>, Pooled), (ProxyError, Blame)> {
    let admitted = breaker::acquire(cluster, Limit::Pending).and_then(|pending| {
        below_max_connections(cluster)?;
        Ok(pending)
    });
    let pending = admitted.map_err(|e| (e, Blame::Local))?;
    let conn = (endpoint.state.conn)
        .open_http1(cluster.policy.connect_timeout)
        .await
        .map_err(|e| (e, Blame::Endpoint))?;
    // Pending until it has a connection, as on HTTP/2.
    drop(pending);
    load.sent();
    endpoint.state.conn.send_http1_on_new(conn, req).await
}

/// Refuses a new connection when the cluster's endpoints have `max connections` open: HTTP/2
/// connections (one per endpoint at most) and pooled HTTP/1.1 ones.
fn below_max_connections(cluster: &Cluster) -> Result<(), ProxyError> {
    let max = cluster.policy.breaker.max_connections;
    let open: usize = (cluster.endpoints.iter())
        .map(|e| usize::from(e.state.conn.is_live()) + e.state.conn.http1_open())
        .sum();
    if open >= max as usize {
        cluster.state.stats.overflow_connections.inc();
        return Err(ProxyError::Overflow {
            cluster: cluster.name.clone(),
            limit: "max connections",
            max,
        });
    }
    Ok(())
}

/// HTTP/1.1 form for a peer: the authority in the Host header (from an absolute-form target if
/// the app sent one; a request without either is refused, as in HTTP/2 form), origin-form target,
/// no hop-by-hop headers, no client-identity header. Most requests already have their Host and
/// an origin-form target, and are left as they are but for the headers removed.
fn to_peer_http1_form(req: &mut Request<Body>) -> Result<(), ProxyError> {
    if let Some(authority) = req.uri().authority() {
        let host = header::HeaderValue::from_str(authority.as_str())
            .map_err(|_| ProxyError::BadRequest("missing or invalid authority"))?;
        let path = (req.uri().path_and_query().cloned())
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        req.headers_mut().insert(header::HOST, host);
        *req.uri_mut() = Uri::from(path);
    } else if !req.headers().contains_key(header::HOST) {
        return Err(ProxyError::BadRequest("missing or invalid authority"));
    }
    *req.version_mut() = Version::HTTP_11;
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    headers.remove(&CLIENT_ID);
    Ok(())
}

/// HTTP/2 form: absolute URI carrying the authority (which becomes `:authority`), no Host header,
/// no hop-by-hop headers, and no client-identity header (only the inbound sidecar may set it).
fn to_mesh_form(req: &mut Request<Body>) -> Result<(), ProxyError> {
    let authority = match req.uri().authority() {
        Some(a) => a.clone(),
        None => req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse().ok())
            .ok_or(ProxyError::BadRequest("missing or invalid authority"))?,
    };
    super::set_absolute_target(req, authority)?;
    *req.version_mut() = Version::HTTP_2;
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    headers.remove(header::HOST);
    headers.remove(&CLIENT_ID);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_http1_form_keeps_host_and_drops_hop_by_hop_and_identity() {
        let mut req = Request::get("/path?q=1")
            .header("host", "hello:80")
            .header("connection", "close")
            .header(&CLIENT_ID, "spiffe://forged")
            .header("x-app", "1")
            .version(Version::HTTP_10)
            .body(Body::empty())
            .unwrap_or_default();
        assert!(to_peer_http1_form(&mut req).is_ok());
        assert_eq!(req.uri().to_string(), "/path?q=1");
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers()["host"], "hello:80");
        assert!(req.headers().get("connection").is_none());
        assert!(req.headers().get(&CLIENT_ID).is_none());
        assert!(req.headers().get("x-app").is_some());
    }

    #[test]
    fn peer_http1_form_moves_an_absolute_target_into_host() {
        let mut req = Request::get("http://hello:8080/x")
            .header("host", "other")
            .body(Body::empty())
            .unwrap_or_default();
        assert!(to_peer_http1_form(&mut req).is_ok());
        assert_eq!(req.uri().to_string(), "/x");
        assert_eq!(req.headers()["host"], "hello:8080");
        let mut no_host = Request::get("/x").body(Body::empty()).unwrap_or_default();
        assert!(matches!(
            to_peer_http1_form(&mut no_host),
            Err(ProxyError::BadRequest(_))
        ));
    }

    #[test]
    fn mesh_form_moves_host_into_authority() {
        let mut req = Request::post("/path?q=1")
            .header("host", "hello:80")
            .header("connection", "close")
            .header(&CLIENT_ID, "spiffe://forged")
            .header("x-app", "1")
            .body(Body::empty())
            .unwrap_or_default();
        assert!(to_mesh_form(&mut req).is_ok());
        assert_eq!(req.uri().to_string(), "http://hello:80/path?q=1");
        assert_eq!(req.version(), Version::HTTP_2);
        assert!(req.headers().get("host").is_none());
        assert!(req.headers().get("connection").is_none());
        assert!(req.headers().get(&CLIENT_ID).is_none());
        assert!(req.headers().get("x-app").is_some());
    }
}
