//! The request service of every data-plane connection, wrapped around the listener's stack. It
//! polices what only the connection as a whole can see:
//!
//! - HTTP/1 findings of `h1_guard`: a refused head is answered with its status (400, 501) and
//!   `Connection: close` instead of being served; a request whose body was malformed (400) or
//!   stalled past `Limits::body_idle_timeout` (408) gets that status instead of the 502 its
//!   failed forward produced, since the fault was the client's.
//! - Abandoned requests (HTTP/2 rapid reset, CVE-2023-44487): h2 bounds streams reset before they
//!   are accepted, but a client that waits until each stream is accepted (so its request is
//!   already forwarded) and then resets it costs upstream work per stream with nothing in
//!   flight for long. Like Envoy, once a connection has carried `ABUSE_MIN_REQUESTS` requests
//!   and at least half of them were abandoned before their response began, the connection is
//!   closed (`Findings::abusive`).
//!
//! Per request this is one atomic increment, one atomic load, and one reference-count increment
//! on the connection's shared state; the future is a plain enum, not boxed.

use super::h1_guard::Findings;
use super::h1_scan::{Problem, Refusal};
use crate::http::headers::PROXY_ERROR;
use crate::http::Body;
use http::{header, HeaderValue, Request, Response, StatusCode};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

/// Requests a connection carries before its abandon rate is judged (Envoy's default, 500).
pub const ABUSE_MIN_REQUESTS: u64 = 500;

#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    findings: Arc<Findings>,
}

impl<S> Guarded<S> {
    pub fn new(inner: S, findings: Arc<Findings>) -> Self {
        Guarded { inner, findings }
    }
}

impl<S, B> tower::Service<Request<B>> for Guarded<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = GuardedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let request = self.findings.served.fetch_add(1, Ordering::AcqRel);
        if let Some(Problem::Head(refusal)) = self.findings.about(request) {
            tracing::info!(
                status = refusal.status,
                reason = refusal.reason,
                "request refused"
            );
            return GuardedFuture::Refused {
                response: Some(refusal_response(refusal)),
            };
        }
        GuardedFuture::Served {
            inner: self.inner.call(req),
            watch: Abandon(Some(self.findings.clone())),
            request,
        }
    }
}

/// Counts the request as abandoned if its future is dropped before the response began.
struct Abandon(Option<Arc<Findings>>);

impl Drop for Abandon {
    fn drop(&mut self) {
        let Some(findings) = self.0.take() else {
            return;
        };
        let abandoned = findings.abandoned.fetch_add(1, Ordering::AcqRel) + 1;
        let served = findings.served.load(Ordering::Acquire);
        if served >= ABUSE_MIN_REQUESTS && abandoned * 2 >= served {
            findings.abusive.notify_one();
        }
    }
}

pin_project_lite::pin_project! {
    #[project = GuardedProj]
    pub enum GuardedFuture<F> {
        Refused { response: Option<Response<Body>> },
        Served {
            #[pin]
            inner: F,
            watch: Abandon,
            request: u64,
        },
    }
}

impl<F> Future for GuardedFuture<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            GuardedProj::Refused { response } => {
                Poll::Ready(Ok(response.take().unwrap_or_default()))
            }
            GuardedProj::Served {
                inner,
                watch,
                request,
            } => {
                let rsp = ready!(inner.poll(cx))?;
                let problem = watch.0.take().and_then(|f| f.about(*request));
                Poll::Ready(Ok(blame_the_client(rsp, problem)))
            }
        }
    }
}

/// A proxy error caused by the client's own broken or stalled body is answered as the client's
/// fault; an answer from upstream is left alone.
fn blame_the_client(rsp: Response<Body>, problem: Option<Problem>) -> Response<Body> {
    let refusal = match problem {
        Some(Problem::MalformedBody(reason)) => Refusal {
            status: 400,
            reason,
        },
        Some(Problem::StalledBody) => Refusal {
            status: 408,
            reason: "request body idle timeout",
        },
        _ => return rsp,
    };
    if !(rsp.status().is_server_error() && rsp.headers().contains_key(&PROXY_ERROR)) {
        return rsp;
    }
    tracing::info!(
        status = refusal.status,
        reason = refusal.reason,
        "request body failed"
    );
    refusal_response(refusal)
}

fn refusal_response(refusal: Refusal) -> Response<Body> {
    let mut rsp = Response::new(Body::full(format!("{}\n", refusal.reason)));
    *rsp.status_mut() = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::BAD_REQUEST);
    let headers = rsp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    headers.insert(
        PROXY_ERROR.clone(),
        HeaderValue::from_static(refusal.reason),
    );
    rsp
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Service, ServiceExt};

    #[tokio::test]
    async fn half_abandoned_requests_past_the_minimum_mark_the_connection_abusive() {
        let findings = Arc::new(Findings::default());
        let never = tower::service_fn(|_req: Request<()>| {
            std::future::pending::<Result<Response<Body>, Infallible>>()
        });
        let mut guarded = Guarded::new(never, findings.clone());
        let abusive = findings.abusive();
        tokio::pin!(abusive);
        for i in 0..ABUSE_MIN_REQUESTS {
            let svc = guarded.ready().await.unwrap_or_else(|e| match e {});
            drop(svc.call(Request::new(())));
            let signalled = futures_util::poll!(abusive.as_mut()).is_ready();
            assert_eq!(
                signalled,
                i + 1 == ABUSE_MIN_REQUESTS,
                "after {} requests",
                i + 1
            );
        }
    }

    #[tokio::test]
    async fn finished_requests_are_not_abandoned() {
        let findings = Arc::new(Findings::default());
        let ok = tower::service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Body::empty()))
        });
        let guarded = Guarded::new(ok, findings.clone());
        for _ in 0..ABUSE_MIN_REQUESTS * 2 {
            let rsp = guarded.clone().oneshot(Request::new(())).await;
            assert!(rsp.is_ok());
        }
        assert_eq!(findings.abandoned.load(Ordering::Acquire), 0);
    }
}
