//! Circuit breaking: per-cluster limits on requests in flight, requests waiting for a connection,
//! and retries in flight. A request over a limit is answered at once (503 with the limit named)
//! instead of queueing, so a slow destination cannot make its callers pile up. Counters are
//! atomics; a `Permit` gives its slot back when dropped (for requests, when the response body
//! ends).

use crate::config::{BreakerLimits, Cluster};
use crate::errors::ProxyError;
use crate::http::Body;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

#[derive(Debug, Default)]
pub struct BreakerState {
    requests: AtomicU32,
    pending: AtomicU32,
    retries: AtomicU32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Requests,
    Pending,
    Retries,
}

impl Limit {
    pub fn describe(self) -> &'static str {
        match self {
            Limit::Requests => "max requests",
            Limit::Pending => "max pending requests",
            Limit::Retries => "max retries",
        }
    }
}

/// A held slot; released on drop.
#[derive(Debug)]
pub struct Permit {
    cluster: Arc<Cluster>,
    limit: Limit,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.cluster
            .state
            .breaker
            .counter(self.limit)
            .fetch_sub(1, Ordering::AcqRel);
    }
}

impl BreakerState {
    fn counter(&self, limit: Limit) -> &AtomicU32 {
        match limit {
            Limit::Requests => &self.requests,
            Limit::Pending => &self.pending,
            Limit::Retries => &self.retries,
        }
    }

    pub fn in_use(&self, limit: Limit) -> u32 {
        self.counter(limit).load(Ordering::Acquire)
    }
}

fn max_of(limits: &BreakerLimits, limit: Limit) -> u32 {
    match limit {
        Limit::Requests => limits.max_requests,
        Limit::Pending => limits.max_pending_requests,
        Limit::Retries => limits.max_retries,
    }
}

/// Takes a slot of `limit` on `cluster`, or the overflow error naming the limit.
pub fn acquire(cluster: &Arc<Cluster>, limit: Limit) -> Result<Permit, ProxyError> {
    let max = max_of(&cluster.policy.breaker, limit);
    let counter = cluster.state.breaker.counter(limit);
    let taken = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
        (n < max).then_some(n + 1)
    });
    match taken {
        Ok(_) => Ok(Permit {
            cluster: cluster.clone(),
            limit,
        }),
        Err(_) => {
            let stats = &cluster.state.stats;
            match limit {
                Limit::Requests => stats.overflow_requests.inc(),
                Limit::Pending => stats.overflow_pending.inc(),
                Limit::Retries => stats.overflow_retries.inc(),
            }
            Err(ProxyError::Overflow {
                cluster: cluster.name.clone(),
                limit: limit.describe(),
                max,
            })
        }
    }
}

/// The tower layer enforcing `max requests`; the permit rides on the response body.
#[derive(Clone, Debug, Default)]
pub struct BreakerLayer;

impl<S> tower::Layer<S> for BreakerLayer {
    type Service = Breaker<S>;
    fn layer(&self, inner: S) -> Breaker<S> {
        Breaker { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Breaker<S> {
    inner: S,
}

impl<S> tower::Service<http::Request<Body>> for Breaker<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = ProxyError>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = ProxyError;
    type Future = BreakerFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let Some(target) = req.extensions().get::<crate::http::route::Target>() else {
            return BreakerFuture::Passed {
                inner: self.inner.call(req),
            };
        };
        let permit = match acquire(&target.cluster, Limit::Requests) {
            Ok(p) => p,
            Err(e) => return BreakerFuture::Refused { error: Some(e) },
        };
        BreakerFuture::Held {
            inner: self.inner.call(req),
            permit: Some(permit),
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's answer, its body holding the request's permit; or the refusal. Not
    /// boxed: it runs per request, and a box is an allocation, a move and a virtual call more
    /// (issue #15).
    #[project = BreakerProj]
    pub enum BreakerFuture<F> {
        Passed { #[pin] inner: F },
        Held { #[pin] inner: F, permit: Option<Permit> },
        Refused { error: Option<ProxyError> },
    }
}

impl<F> Future for BreakerFuture<F>
where
    F: Future<Output = Result<http::Response<Body>, ProxyError>>,
{
    type Output = Result<http::Response<Body>, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            BreakerProj::Passed { inner } => inner.poll(cx),
            BreakerProj::Held { inner, permit } => {
                let result = ready!(inner.poll(cx));
                // On an error the permit goes now, as the request is over.
                let permit = permit.take();
                Poll::Ready(result.map(|rsp| match permit {
                    Some(permit) => rsp.map(|b| b.hold(permit)),
                    None => rsp,
                }))
            }
            BreakerProj::Refused { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or(ProxyError::NotReady("breaker future polled after it ended")))),
        }
    }
}
