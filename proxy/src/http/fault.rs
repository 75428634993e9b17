//! Fault injection for chaos drills: the route's configured share of requests is delayed and/or
//! answered with an error status by the proxy itself, before anything is sent upstream.

use super::route::Target;
use super::{Body, ResponseFuture};
use crate::errors::ProxyError;
use crate::random;
use http::{Request, Response};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

#[derive(Clone, Debug, Default)]
pub struct FaultLayer;

impl<S> tower::Layer<S> for FaultLayer {
    type Service = Faults<S>;
    fn layer(&self, inner: S) -> Faults<S> {
        Faults { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Faults<S> {
    inner: S,
}

fn roll(permille: u32) -> bool {
    random::below(1000) < u64::from(permille)
}

impl<S> tower::Service<Request<Body>> for Faults<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = FaultFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let fault = req
            .extensions()
            .get::<Target>()
            .and_then(|t| t.rule.fault.clone().map(|f| (f, t.rule.stats.clone())));
        let Some((fault, stats)) = fault else {
            return FaultFuture::Passed {
                inner: self.inner.call(req),
            };
        };
        let delay = fault
            .delay
            .filter(|(_, permille)| roll(*permille))
            .map(|(d, _)| d);
        let abort = fault
            .abort
            .filter(|(_, permille)| roll(*permille))
            .map(|(s, _)| s);
        if delay.is_none() && abort.is_none() {
            return FaultFuture::Passed {
                inner: self.inner.call(req),
            };
        }
        stats.faults_injected.inc();
        let inner = self.inner.clone();
        FaultFuture::Injected {
            inner: Box::pin(async move {
                if let Some(d) = delay {
                    tokio::time::sleep(d).await;
                }
                match abort {
                    Some(status) => Err(ProxyError::FaultAbort { status }),
                    None => tower::ServiceExt::oneshot(inner, req).await,
                }
            }),
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's answer, unboxed (nearly every request: a box is an allocation, a move
    /// and a virtual call more, issue #15); or an injected fault's, boxed (rare).
    #[project = FaultProj]
    pub enum FaultFuture<F> {
        Passed { #[pin] inner: F },
        Injected { inner: ResponseFuture },
    }
}

impl<F> Future for FaultFuture<F>
where
    F: Future<Output = Result<Response<Body>, ProxyError>>,
{
    type Output = Result<Response<Body>, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            FaultProj::Passed { inner } => inner.poll(cx),
            FaultProj::Injected { inner } => inner.as_mut().poll(cx),
        }
    }
}
