//! Forwarding to the mesh: pick an endpoint of the routed cluster, rewrite the request into its
//! HTTP/2 form, send it over that endpoint's mTLS connection and bound the wait for the response
//! headers by the route's timeout. The body streams both ways without buffering.

use super::body::Body;
use super::headers::{strip_hop_by_hop, CLIENT_ID};
use super::route::Target;
use crate::errors::ProxyError;
use http::{header, Request, Response, Uri, Version};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

#[derive(Clone, Debug, Default)]
pub struct ForwardToMesh;

impl tower::Service<Request<Body>> for ForwardToMesh {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        Box::pin(forward(req))
    }
}

async fn forward(mut req: Request<Body>) -> Result<Response<Body>, ProxyError> {
    let target = req
        .extensions_mut()
        .remove::<Target>()
        .ok_or(ProxyError::NotReady(
            "request reached forwarding without a route",
        ))?;
    let endpoint = target
        .cluster
        .pick()
        .cloned()
        .ok_or_else(|| ProxyError::NoEndpoints {
            cluster: target.cluster.name.clone(),
        })?;
    let app_version = req.version();
    to_mesh_form(&mut req)?;
    let addr = endpoint.addr;
    let timeout = target.timeout;
    let exchange = async {
        let mut sender = endpoint
            .conn
            .sender(target.cluster.policy.connect_timeout)
            .await?;
        sender
            .send_request(req)
            .await
            .map_err(|e| ProxyError::Upstream {
                addr,
                reason: e.to_string(),
            })
    };
    let mut rsp = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ProxyError::Timeout { after: timeout })??;
    strip_hop_by_hop(rsp.headers_mut());
    *rsp.version_mut() = app_version;
    Ok(rsp.map(Body::from))
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
    let mut parts = req.uri().clone().into_parts();
    parts.authority = Some(authority);
    if parts.scheme.is_none() {
        parts.scheme = Some(http::uri::Scheme::HTTP);
    }
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *req.uri_mut() =
        Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest("invalid request target"))?;
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
    fn mesh_form_moves_host_into_authority() {
        let mut req = Request::post("/path?q=1")
            .header("host", "hello:80")
            .header("connection", "close")
            .header(&CLIENT_ID, "spiffe://forged")
            .header("x-app", "1")
            .body(Body::Empty)
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
