//! The request service of every data-plane connection, wrapped around the listener's stack. It
//! polices what only the connection as a whole can see:
//!
//! - HTTP/1 findings of `h1_guard`: a refused head is answered with its status (400, 501) and
//!   `Connection: close` instead of being served; so is a request whose body is already known to
//!   be malformed when hyper hands it over (the scanner reads ahead of hyper), which therefore
//!   never reaches the app. A chunked request is held until the scanner has read its first
//!   chunk-size line (hyper reads the first chunk without being asked, except under
//!   `Expect: 100-continue`, which is not held): the race in which the head was forwarded while
//!   the broken first line was still unread is gone. A body found malformed (400) or stalled
//!   past `Limits::body_idle_timeout` (408) after the request was forwarded is aborted upstream
//!   (`h1_guard` fails hyper's read), and the 502 the failed forward produced becomes that
//!   status, since the fault was the client's.
//! - Abandoned requests (HTTP/2 rapid reset, CVE-2023-44487): h2 bounds streams reset before they
//!   are accepted, but a client that waits until each stream is accepted (so its request is
//!   already forwarded) and then resets it costs upstream work per stream with nothing in
//!   flight for long. Like Envoy, once a connection has carried `ABUSE_MIN_REQUESTS` requests
//!   and at least half of them were abandoned before their response began, the connection is
//!   closed (`Findings::abusive`).
//!
//! Per request this is one atomic increment, two atomic loads, and one reference-count increment
//! on the connection's shared state; the future is a plain enum, not boxed. A held request also
//! costs a clone of the service stack (reference counts) and a waker registration.

use super::h1_guard::Findings;
use super::h1_scan::{Problem, Refusal};
use crate::http::headers::PROXY_ERROR;
use crate::http::synthetic::ProxyMade;
use crate::http::Body;
use http::{header, HeaderValue, Request, Response, StatusCode};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tower::Service;

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

impl<S, B> Service<Request<B>> for Guarded<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible> + Clone,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = GuardedFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let request = self.findings.served.fetch_add(1, Ordering::AcqRel);
        if let Some(problem) = self.findings.about(request) {
            return GuardedFuture::refused(problem);
        }
        let watch = Abandon(Some(self.findings.clone()));
        if self.findings.is_cleared(request) || expects_continue(&req) {
            return GuardedFuture::Served {
                inner: self.inner.call(req),
                watch,
                request,
            };
        }
        // The service was made ready; the future takes that one, the clone stays behind.
        let ready = self.inner.clone();
        GuardedFuture::Held {
            service: Some(std::mem::replace(&mut self.inner, ready)),
            req: Some(req),
            watch,
            request,
        }
    }
}

/// hyper reads no body under `Expect: 100-continue` until the body is asked for, so such a
/// request cannot wait for its first chunk-size line.
fn expects_continue<B>(req: &Request<B>) -> bool {
    (req.headers().get(header::EXPECT))
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
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
            findings.mark_abusive();
        }
    }
}

pin_project_lite::pin_project! {
    #[project = GuardedProj]
    pub enum GuardedFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        Refused { response: Option<Response<Body>> },
        /// A chunked request waiting until its first chunk-size line was read.
        Held {
            service: Option<S>,
            req: Option<Request<B>>,
            watch: Abandon,
            request: u64,
        },
        Served {
            #[pin]
            inner: S::Future,
            watch: Abandon,
            request: u64,
        },
    }
}

impl<S: Service<Request<B>>, B> GuardedFuture<S, B> {
    fn refused(problem: Problem) -> Self {
        let refusal = refusal_for(problem);
        tracing::info!(
            status = refusal.status,
            reason = refusal.reason,
            "request refused"
        );
        GuardedFuture::Refused {
            response: Some(refusal_response(refusal)),
        }
    }
}

impl<S, B> Future for GuardedFuture<S, B>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project() {
                GuardedProj::Refused { response } => {
                    return Poll::Ready(Ok(response.take().unwrap_or_default()))
                }
                GuardedProj::Held {
                    service,
                    req,
                    watch,
                    request,
                } => {
                    let findings = watch.0.as_ref().map(Arc::clone);
                    if let Some(findings) = &findings {
                        ready!(findings.poll_cleared(*request, cx));
                    }
                    let problem = findings.and_then(|f| f.about(*request));
                    match (problem, service.take(), req.take()) {
                        (Some(problem), _, _) => {
                            // Refused before anything was sent on: not an abandon.
                            watch.0 = None;
                            GuardedFuture::refused(problem)
                        }
                        (None, Some(mut service), Some(req)) => GuardedFuture::Served {
                            inner: service.call(req),
                            watch: Abandon(watch.0.take()),
                            request: *request,
                        },
                        // Polled again after it moved on: cannot happen.
                        _ => GuardedFuture::Refused { response: None },
                    }
                }
                GuardedProj::Served {
                    inner,
                    watch,
                    request,
                } => {
                    let rsp = ready!(inner.poll(cx))?;
                    let findings = watch.0.take();
                    if let Some(findings) = &findings {
                        findings.answered(*request, rsp.status());
                    }
                    let problem = findings.and_then(|f| f.about(*request));
                    return Poll::Ready(Ok(blame_the_client(rsp, problem)));
                }
            };
            self.set(next);
        }
    }
}

fn refusal_for(problem: Problem) -> Refusal {
    match problem {
        Problem::Head(refusal) => refusal,
        Problem::MalformedBody(reason) => Refusal {
            status: 400,
            reason,
        },
        Problem::StalledBody => Refusal {
            status: 408,
            reason: "request body idle timeout",
        },
    }
}

/// A proxy error caused by the client's own broken or stalled body is answered as the client's
/// fault; an answer from upstream is left alone.
fn blame_the_client(rsp: Response<Body>, problem: Option<Problem>) -> Response<Body> {
    let refusal = match problem {
        Some(p @ (Problem::MalformedBody(_) | Problem::StalledBody)) => refusal_for(p),
        _ => return rsp,
    };
    // Only our own answers: an upstream 5xx (even one carrying `trellis-error`) is left alone.
    let ours = rsp.extensions().get::<ProxyMade>().is_some();
    if !(rsp.status().is_server_error() && ours) {
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
    rsp.extensions_mut().insert(ProxyMade);
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
