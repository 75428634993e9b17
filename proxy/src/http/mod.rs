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
use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

/// The future every layer returns.
pub type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>;

/// `fut` as a `ResponseFuture`: boxed, unless it already is one. A layer that passes its inner
/// service's future on unchanged (the router, once the route is found) would otherwise box the
/// box: an allocation, a move and a virtual call more per request (issue #15). The check is a
/// comparison of type ids, decided when the function is compiled. (Fault, timeout and breaker
/// name their own futures instead, unboxed.)
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
/// (HTTP/2, absolute-form), otherwise the Host header (RFC 9112 §3.2). `None` when there is none
/// or it is not an authority.
pub fn authority<B>(req: &Request<B>) -> Option<(String, Option<u16>)> {
    host_and_port(req).map(|(host, port)| (host.into_owned(), port))
}

/// `authority`, borrowing the host from the request when it is already lower case (nearly
/// always): the router resolves every request with it, and the owned host and the parsed copy
/// of the Host header cost two allocations and ~600 instructions per request (issue #15).
pub fn host_and_port<B>(req: &Request<B>) -> Option<(Cow<'_, str>, Option<u16>)> {
    let (host, port) = host_and_port_as_written(req)?;
    let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    };
    Some((host, port))
}

/// Puts the request's target in absolute form (`scheme://authority/path`) with `authority`, as
/// HTTP/2 wants it: the scheme stays if the target had one, else `http`; the path `/` if it had
/// none. Shared by the mesh's HTTP/2 form and the inbound's requests to an h2c app.
pub fn set_absolute_target<B>(
    req: &mut Request<B>,
    authority: http::uri::Authority,
) -> Result<(), ProxyError> {
    let mut parts = req.uri().clone().into_parts();
    parts.authority = Some(authority);
    if parts.scheme.is_none() {
        parts.scheme = Some(http::uri::Scheme::HTTP);
    }
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *req.uri_mut() = http::Uri::from_parts(parts)
        .map_err(|_| ProxyError::BadRequest("invalid request target"))?;
    Ok(())
}

/// The port of the request's authority, as `authority` finds it, without the host: callers that
/// want only the port (the inbound side, twice per request) spared the host's lower-casing.
pub fn authority_port<B>(req: &Request<B>) -> Option<u16> {
    host_and_port_as_written(req)?.1
}

/// Host (as written) and port of the URI's authority, else of the Host header.
fn host_and_port_as_written<B>(req: &Request<B>) -> Option<(&str, Option<u16>)> {
    match req.uri().authority() {
        Some(a) => Some((a.host(), a.port_u16())),
        None => split_authority(host_header(req)?),
    }
}

/// The request's authority as the client wrote it (the URI's, else the Host header), for
/// showing; `None` when there is neither.
pub fn authority_text<B>(req: &Request<B>) -> Option<&str> {
    match req.uri().authority() {
        Some(a) => Some(a.as_str()),
        None => host_header(req),
    }
}

fn host_header<B>(req: &Request<B>) -> Option<&str> {
    req.headers().get(http::header::HOST)?.to_str().ok()
}

/// `host[:port]` of a Host header (RFC 3986 §3.2.2: a registered name, an IPv4 address, or an IP
/// literal in brackets), or `None` if it is not one: no user info, path, spaces or stray
/// brackets and colons, a port that fits in 16 bits (an empty one is no port).
pub fn split_authority(text: &str) -> Option<(&str, Option<u16>)> {
    const ALLOWED: &[u8] = b"-._~!$&'()*+,;=%:[]";
    if text.is_empty()
        || !text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || ALLOWED.contains(&b))
    {
        return None;
    }
    let (host, port) = match text.strip_prefix('[') {
        Some(rest) => {
            let close = rest.find(']')?;
            let (literal, after) = text.split_at(close + 2);
            let port = match after {
                "" => None,
                after => Some(after.strip_prefix(':')?),
            };
            if literal.len() == 2 || literal[1..literal.len() - 1].contains(['[', ']']) {
                return None;
            }
            (literal, port)
        }
        None => match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        },
    };
    if host.is_empty() || (!host.starts_with('[') && host.contains(['[', ']', ':'])) {
        return None;
    }
    let port = match port {
        None | Some("") => None,
        Some(digits) if digits.bytes().all(|b| b.is_ascii_digit()) => Some(digits.parse().ok()?),
        Some(_) => return None,
    };
    Some((host, port))
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

    #[test]
    fn authority_text_comes_from_the_uri_or_the_host_header() {
        let absolute = Request::get("http://api:81/x").body(()).unwrap_or_default();
        assert_eq!(authority_text(&absolute), Some("api:81"));
        let origin = Request::get("/x")
            .header("host", "web")
            .body(())
            .unwrap_or_default();
        assert_eq!(authority_text(&origin), Some("web"));
        let none = Request::get("/x").body(()).unwrap_or_default();
        assert_eq!(authority_text(&none), None);
    }

    #[test]
    fn host_headers_split_like_an_authority_and_borrow_lower_case_hosts() {
        for (text, want) in [
            ("hello", Some(("hello", None))),
            ("hello:8080", Some(("hello", Some(8080)))),
            ("hello:", Some(("hello", None))),
            ("10.0.0.1:80", Some(("10.0.0.1", Some(80)))),
            ("[::1]", Some(("[::1]", None))),
            ("[fd00::7]:4143", Some(("[fd00::7]", Some(4143)))),
            (
                "web.default.svc.cluster.local:80",
                Some(("web.default.svc.cluster.local", Some(80))),
            ),
            ("", None),
            (":80", None),
            ("bad host", None),
            ("user@hello", None),
            ("hello/x", None),
            ("hello:80:81", None),
            ("hello:99999", None),
            ("hello:8x", None),
            ("[::1", None),
            ("[]", None),
            ("[::1]x", None),
            ("::1", None),
            ("a]b", None),
        ] {
            assert_eq!(split_authority(text), want, "{text:?}");
            // Where http's own parser takes it, both agree.
            if let (Some((host, port)), Ok(a)) = (want, text.parse::<http::uri::Authority>()) {
                assert_eq!((a.host(), a.port_u16()), (host, port), "{text:?}");
            }
        }
        let lower = Request::get("/")
            .header("host", "hello:80")
            .body(())
            .unwrap_or_default();
        assert!(matches!(
            host_and_port(&lower),
            Some((Cow::Borrowed("hello"), Some(80)))
        ));
        let upper = Request::get("/")
            .header("host", "Hello")
            .body(())
            .unwrap_or_default();
        assert_eq!(
            host_and_port(&upper),
            Some((Cow::Owned("hello".into()), None))
        );
    }
}
