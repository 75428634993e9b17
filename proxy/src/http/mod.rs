//! HTTP request handling, as small tower layers composed by the listeners. Outbound:
//! `rescue` (errors to responses) → `resilience::shed` (load shedding) → `route` (authority, path, method, headers to a route and a
//! backend cluster) → `fault` (injected delays and aborts) → `resilience::timeout` →
//! `resilience::retry` → `resilience::breaker` → `forward` (balance, then send to an endpoint over
//! the mesh). The inbound side uses `app` to reach the local app. `upgrade` carries WebSockets
//! (HTTP/1.1 `Upgrade`) over the mesh as RFC 8441 extended CONNECT.

pub mod app;
pub mod app_conn;
pub mod app_pool;
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

/// `fut` as a `ResponseFuture`: boxed, unless it already is one. A layer that passes its inner
/// service's future on unchanged (no fault to inject, no route target) would otherwise box the
/// box: an allocation, a move and a virtual call more per request (issue #15). The check is a
/// comparison of type ids, decided when the function is compiled.
pub fn boxed<F>(fut: F) -> ResponseFuture
where
    F: Future<Output = Result<Response<Body>, ProxyError>> + Send + 'static,
{
    let mut fut = Some(fut);
    let any: &mut dyn std::any::Any = &mut fut;
    if let Some(already) = any.downcast_mut::<Option<ResponseFuture>>() {
        if let Some(already) = already.take() {
            return already;
        }
    }
    match fut {
        Some(fut) => Box::pin(fut),
        // Taken only above, and then returned.
        None => Box::pin(std::future::ready(Err(ProxyError::NotReady(
            "future taken",
        )))),
    }
}

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

/// The port of the request's authority, as `authority` finds it, without making the lowercase
/// host `authority` returns: callers that want only the port (the inbound side, twice per
/// request) spared an allocation and ~600 instructions each (callgrind, issue #15).
pub fn authority_port<B>(req: &Request<B>) -> Option<u16> {
    match req.uri().authority() {
        Some(a) => a.port_u16(),
        None => authority(req).and_then(|(_, port)| port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn boxed_passes_a_boxed_future_on_and_boxes_others() {
        let inner: ResponseFuture = Box::pin(async { Ok(Response::new(Body::empty())) });
        let at = &*inner as *const _ as *const u8;
        let same = boxed(inner);
        assert_eq!(&*same as *const _ as *const u8, at);
        assert!(same.await.is_ok());
        let made = boxed(std::future::ready(Ok(Response::new(Body::empty()))));
        assert!(made.await.is_ok());
    }

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
        assert_eq!(authority_port(&req), None);
        let req = Request::get("http://Web.Default:8080/x")
            .header("host", "other:9090")
            .body(())
            .unwrap_or_default();
        assert_eq!(authority_port(&req), Some(8080));
        let req = Request::get("/x")
            .header("host", "hello:9090")
            .body(())
            .unwrap_or_default();
        assert_eq!(authority_port(&req), Some(9090));
        let req = Request::get("http://hello/x").body(()).unwrap_or_default();
        assert_eq!(authority_port(&req), None);
    }
}
