//! Circuit breaking: per-cluster limits on requests in flight, requests waiting for a connection,
//! and retries in flight. A request over a limit is answered at once (503 with the limit named)
//! instead of queueing, so a slow destination cannot make its callers pile up. Counters are
//! atomics; a `Permit` gives its slot back when dropped (for requests, when the response body
//! ends).

use crate::config::{BreakerLimits, Cluster};
use crate::errors::ProxyError;
use crate::http::Body;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

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
    type Future = crate::http::ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let Some(target) = req.extensions().get::<crate::http::route::Target>() else {
            return crate::http::boxed(self.inner.call(req));
        };
        let permit = match acquire(&target.cluster, Limit::Requests) {
            Ok(p) => p,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let rsp = fut.await?;
            Ok(rsp.map(|b| b.hold(permit)))
        })
    }
}
