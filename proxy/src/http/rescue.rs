//! The error "rescue": the outermost layer turns every failure of the layers below into a response
//! the caller can act on, with a `trellis-error` header (and, for gRPC callers, `grpc-status` and
//! `grpc-message`) saying why. Nothing below it needs to build error responses itself.

use super::body::Body;
use super::headers::PROXY_ERROR;
use crate::errors::ProxyError;
use http::{header, HeaderValue, Request, Response};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

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
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

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
        let fut = self.inner.call(req);
        Box::pin(async move {
            Ok(match fut.await {
                Ok(rsp) => rsp,
                Err(err) => error_response(&err, grpc),
            })
        })
    }
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"))
}

/// Builds the response for an error: HTTP status and a short text body, or for gRPC a
/// trailers-only response (HTTP 200 with grpc-status), as gRPC clients expect.
pub fn error_response(err: &ProxyError, grpc: bool) -> Response<Body> {
    let reason = err.to_string();
    tracing::debug!(error = %reason, "answering with a proxy error");
    let reason_header =
        HeaderValue::from_str(&reason).unwrap_or_else(|_| HeaderValue::from_static("proxy error"));
    let mut rsp = if grpc {
        let mut rsp = Response::new(Body::empty());
        let headers = rsp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from(err.grpc_code()));
        headers.insert("grpc-message", reason_header.clone());
        rsp
    } else {
        let mut rsp = Response::new(Body::full(format!("{reason}\n")));
        *rsp.status_mut() = err.status();
        rsp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        rsp
    };
    rsp.headers_mut().insert(PROXY_ERROR.clone(), reason_header);
    rsp
}

#[cfg(test)]
mod tests {
    use super::*;
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
