//! The error "rescue": the outermost layer turns every failure of the layers below into a response
//! the caller can act on, with a `trellis-error` header (and, for gRPC callers, `grpc-status` and
//! `grpc-message`) saying why. Nothing below it needs to build error responses itself; what the
//! answer says, and to whom, is decided in `synthetic`.
//!
//! An answer to HEAD has no content (RFC 9110 §9.3.2): hyper's HTTP/1 server drops the body for
//! HEAD itself, but over HTTP/2 the body would go out as DATA, which the client must treat as a
//! malformed response. So for HEAD the body is dropped here, and `content-length` says what a
//! GET would have got.

use super::body::Body;
use super::synthetic::{Audience, Synthetic};
use crate::errors::ProxyError;
use http::{header, HeaderValue, Method, Request, Response, Version};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

#[derive(Clone, Debug, Default)]
pub struct RescueLayer;

impl<S> tower::Layer<S> for RescueLayer {
    type Service = Rescue<S>;
    fn layer(&self, inner: S) -> Rescue<S> {
        Rescue { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Rescue<S> {
    inner: S,
}

impl<S> tower::Service<Request<Body>> for Rescue<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = ProxyError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = RescueFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The inner services are always ready (they queue nothing); an error here would have no
        // request to answer, so readiness errors are surfaced per request instead.
        match self.inner.poll_ready(cx) {
            Poll::Ready(_) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let grpc = is_grpc(&req);
        let head = req.method() == Method::HEAD;
        let version = req.version();
        let audience = (req.extensions().get::<Audience>().copied()).unwrap_or_default();
        RescueFuture {
            inner: self.inner.call(req),
            asked: Asked {
                grpc,
                head,
                version,
                audience,
            },
        }
    }
}

/// What the error answer depends on, taken from the request before it goes down the stack.
#[derive(Clone, Copy)]
struct Asked {
    grpc: bool,
    head: bool,
    version: Version,
    audience: Audience,
}

pin_project_lite::pin_project! {
    /// The inner service's answer, or the error made into one. Not boxed: it runs per request,
    /// and a box is an allocation and a virtual call more (issue #15).
    pub struct RescueFuture<F> {
        #[pin]
        inner: F,
        asked: Asked,
    }
}

impl<F> Future for RescueFuture<F>
where
    F: Future<Output = Result<Response<Body>, ProxyError>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let asked = *this.asked;
        Poll::Ready(Ok(match ready!(this.inner.poll(cx)) {
            Ok(rsp) => rsp,
            Err(err) => {
                let rsp =
                    Synthetic::of(&err).into_response(asked.grpc, asked.audience, asked.version);
                if asked.head {
                    without_content(rsp)
                } else {
                    rsp
                }
            }
        }))
    }
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"))
}

/// The answer to HEAD for a response made here: the same status and headers, no body.
fn without_content(rsp: Response<Body>) -> Response<Body> {
    let (mut parts, body) = rsp.into_parts();
    if let Some(len) = http_body::Body::size_hint(&body).exact() {
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    Response::from_parts(parts, Body::empty())
}

/// The response for an error, to a trusted caller over HTTP/1.1 (tests and callers outside a
/// request path).
pub fn error_response(err: &ProxyError, grpc: bool) -> Response<Body> {
    Synthetic::of(err).into_response(grpc, Audience::Trusted, Version::HTTP_11)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::headers::PROXY_ERROR;
    use http::StatusCode;
    use tower::{Service, ServiceExt};

    fn failing() -> impl Service<
        Request<Body>,
        Response = Response<Body>,
        Error = ProxyError,
        Future = std::future::Ready<Result<Response<Body>, ProxyError>>,
    > + Clone {
        tower::service_fn(|_req: Request<Body>| {
            std::future::ready(Err(ProxyError::NoRoute {
                authority: "nowhere".into(),
            }))
        })
    }

    #[tokio::test]
    async fn http_errors_get_status_and_reason_header() {
        let svc = tower::Layer::layer(&RescueLayer, failing());
        let rsp = svc
            .oneshot(Request::new(Body::empty()))
            .await
            .unwrap_or_else(|e| match e {});
        assert_eq!(rsp.status(), StatusCode::NOT_FOUND);
        let why = rsp
            .headers()
            .get(&PROXY_ERROR)
            .and_then(|v| v.to_str().ok());
        assert_eq!(why, Some("no route for authority \"nowhere\""));
    }

    #[tokio::test]
    async fn head_gets_the_status_and_headers_without_the_body() {
        let svc = tower::Layer::layer(&RescueLayer, failing());
        let req = Request::head("/").body(Body::empty()).unwrap_or_default();
        let rsp = svc.oneshot(req).await.unwrap_or_else(|e| match e {});
        assert_eq!(rsp.status(), StatusCode::NOT_FOUND);
        let get_body = "no route for authority \"nowhere\"\n";
        let length = rsp.headers().get(header::CONTENT_LENGTH).cloned();
        assert_eq!(length, Some(HeaderValue::from(get_body.len())));
        assert!(rsp.headers().contains_key(&PROXY_ERROR));
        assert!(http_body::Body::is_end_stream(rsp.body()));
    }

    #[tokio::test]
    async fn grpc_errors_are_trailers_only() {
        let svc = tower::Layer::layer(&RescueLayer, failing());
        let req = Request::builder()
            .header(header::CONTENT_TYPE, "application/grpc+proto")
            .body(Body::empty())
            .unwrap_or_default();
        let rsp = svc.oneshot(req).await.unwrap_or_else(|e| match e {});
        assert_eq!(rsp.status(), StatusCode::OK);
        assert_eq!(
            rsp.headers().get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"12"[..])
        );
    }
}
