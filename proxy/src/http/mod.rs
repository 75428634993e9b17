//! HTTP request handling, as small tower layers composed by the listeners. Outbound:
//! `rescue` (errors to responses) → `resilience::shed` (load shedding) → `route` (authority, path, method, headers to a route and a
//! backend cluster) → `fault` (injected delays and aborts) → `resilience::timeout` →
//! `resilience::retry` → `resilience::breaker` → `forward` (balance, then send to an endpoint over
//! the mesh). The inbound side uses `app` to reach the local app. `upgrade` carries WebSockets
//! (HTTP/1.1 `Upgrade`) over the mesh as RFC 8441 extended CONNECT.

pub mod app;
pub mod app_conn;
pub mod body;
pub mod fault;
pub mod forward;
pub mod headers;
pub mod rescue;
pub mod route;
pub mod synthetic;
pub mod upgrade;

pub use body::Body;

use crate::errors::ProxyError;
use http::{Request, Response};
use std::future::Future;
use std::pin::Pin;

/// The future every layer returns.
pub type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>;

/// Host (lower case, no port) and port of a request's authority: the URI's authority when present
/// (HTTP/2, absolute-form), otherwise the Host header (RFC 9112 §3.2).
pub fn authority<B>(req: &Request<B>) -> Option<(String, Option<u16>)> {
    if let Some(a) = req.uri().authority() {
        return Some((a.host().to_ascii_lowercase(), a.port_u16()));
    }
    let host = req.headers().get(http::header::HOST)?.to_str().ok()?;
    let parsed: http::uri::Authority = host.parse().ok()?;
    Some((parsed.host().to_ascii_lowercase(), parsed.port_u16()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_from_uri_or_host() {
        let req = Request::get("http://Web.Default:8080/x")
            .body(())
            .unwrap_or_default();
        assert_eq!(authority(&req), Some(("web.default".into(), Some(8080))));
        let req = Request::get("/x")
            .header("host", "hello")
            .body(())
            .unwrap_or_default();
        assert_eq!(authority(&req), Some(("hello".into(), None)));
        let req = Request::get("/x")
            .header("host", "bad host")
            .body(())
            .unwrap_or_default();
        assert_eq!(authority(&req), None);
    }
}
