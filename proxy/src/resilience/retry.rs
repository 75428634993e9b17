//! Retries: whether a failed attempt is tried again, and when. The rules, in the order applied:
//! - only while attempts remain (`max_attempts` counts the first) and the overall deadline (an
//!   outer layer) has not passed;
//! - a request the endpoint provably never processed (connect failure, a stream refused by GOAWAY
//!   or REFUSED_STREAM, RFC 9113 §8.7) is safe to retry whatever its method, and gets up to
//!   `UNPROCESSED_RETRIES` extra attempts whatever the policy says, so that a draining endpoint
//!   during a rollout costs no request; anything else only for idempotent methods
//!   (RFC 9110 §9.2.2) unless the policy allows non-idempotent ones;
//! - the failure must be one the policy names (`retry_on`);
//! - the request body must still be replayable (see `replay`): a body past the replay buffer has
//!   streamed once and is never sent twice;
//! - the cluster's retry budget must allow it, and the circuit breaker's `max retries`;
//! - a response is only ever retried before anything of it reached the client;
//! - an upgrade (WebSocket, `http::upgrade`) is never retried nor replay-buffered.
//!
//! Between attempts: exponential backoff with full jitter, and the next attempt avoids the
//! endpoint that just failed. The first attempt carries the request's own extensions; a retry
//! carries only those the layers below read (`Target`, with the deadline, and `AvoidEndpoint`), so that no
//! request pays for copying its extension map (issue #15).

use super::breaker::{self, Limit};
use super::replay::ReplayBody;
use crate::config::RetryPolicy;
use crate::errors::ProxyError;
use crate::http::route::Target;
use crate::http::{Body, ResponseFuture};
use http::{Extensions, Method, Request, Response};
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::ServiceExt;

/// Asks the balancer to avoid this endpoint for the attempt.
#[derive(Debug, Clone, Copy)]
pub struct AvoidEndpoint(pub SocketAddr);

/// Set on responses that took more than one attempt: how many. A response without it took one
/// (nearly all: inserting it into every response's extensions cost an allocation; issue #15).
#[derive(Debug, Clone, Copy)]
pub struct Attempts(pub u32);

#[derive(Clone, Debug, Default)]
pub struct RetryLayer;

impl<S> tower::Layer<S> for RetryLayer {
    type Service = Retry<S>;
    fn layer(&self, inner: S) -> Retry<S> {
        Retry { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
}

impl<S> tower::Service<Request<Body>> for Retry<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        // Each attempt waits for readiness on its own clone (oneshot).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> ResponseFuture {
        Box::pin(attempts(self.inner.clone(), req))
    }
}

/// Extra attempts for a request the endpoint never processed, on top of the policy's and outside
/// its budget: a refusal costs the endpoint nothing, and two are enough to step past a draining
/// endpoint and a stale connection to another, yet too few to amplify an outage.
pub const UNPROCESSED_RETRIES: u32 = 2;

/// Why an attempt may deserve another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Done,
    /// Nothing was processed by the endpoint: safe for any method. `policy` says whether the
    /// route's policy also names the failure (once the free allowance is spent).
    Unprocessed {
        policy: bool,
    },
    Retryable,
}

pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

fn classify(result: &Result<Response<Body>, ProxyError>, policy: &RetryPolicy) -> Verdict {
    let on = &policy.retry_on;
    match result {
        Ok(rsp) => {
            let status = rsp.status().as_u16();
            // Looked up only when the policy names gRPC codes: the lookup hashes the name.
            let grpc = || {
                rsp.headers()
                    .get(&GRPC_STATUS)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u16>().ok())
            };
            if on.on_status(status)
                || (!on.grpc_codes.is_empty() && grpc().is_some_and(|c| on.grpc_codes.contains(&c)))
            {
                Verdict::Retryable
            } else {
                Verdict::Done
            }
        }
        Err(e) if e.is_unprocessed() => Verdict::Unprocessed {
            policy: on.connect_failure || on.reset || on.status_5xx || on.gateway_error,
        },
        Err(ProxyError::Upstream { .. }) if on.reset || on.status_5xx || on.gateway_error => {
            Verdict::Retryable
        }
        Err(ProxyError::PerTryTimeout { .. }) if on.reset || on.status_5xx || on.gateway_error => {
            Verdict::Retryable
        }
        Err(_) => Verdict::Done,
    }
}

/// Full jitter: uniform in [0, min(max, base × 2^(retry-1))].
fn backoff(policy: &RetryPolicy, retry: u32) -> Duration {
    let exp = policy
        .backoff_base
        .saturating_mul(1 << retry.saturating_sub(1).min(16));
    exp.min(policy.backoff_max).mul_f64(crate::random::unit())
}

/// How attempts get their body.
enum Bodies {
    /// Empty request: every attempt sends an empty body.
    Empty,
    Replay(ReplayBody),
    /// Neither empty nor replayable: one attempt only.
    Once(Option<Body>),
}

impl Bodies {
    fn next(&mut self) -> Option<Body> {
        match self {
            Bodies::Empty => Some(Body::empty()),
            Bodies::Replay(r) => r.replay().map(Body::replay),
            Bodies::Once(b) => b.take(),
        }
    }
}

/// What a retry's request carries of the original's extensions: what the layers below it read
/// (the breaker and `forward`); the upgrade extensions never get here (upgrades are not retried).
fn retry_extensions(target: &Target) -> Extensions {
    let mut extensions = Extensions::new();
    extensions.insert(target.clone());
    extensions
}

async fn attempts<S>(inner: S, req: Request<Body>) -> Result<Response<Body>, ProxyError>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = ProxyError> + Clone,
{
    let Some(target) = req.extensions().get::<Target>().cloned() else {
        return inner.oneshot(req).await;
    };
    let (cluster, rule) = (&target.cluster, &target.rule);
    cluster.state.budget.deposit();
    cluster.state.stats.requests.inc();
    rule.stats.requests.inc();
    if !matches!(crate::http::upgrade::classify(&req), Ok(None)) {
        // An upgrade is sent once and never buffered: its handshake has no body to replay, and
        // what follows a 101 is a connection, not a response (`http::upgrade`).
        return inner.oneshot(req).await;
    }
    let policy = rule.retry.as_ref().unwrap_or(&cluster.policy.retry);
    // Even without policy retries the body stays replayable (up to the buffer), for the
    // unprocessed allowance.
    let idempotent = is_idempotent(req.method()) || policy.non_idempotent;
    let (mut parts, mut body) = req.into_parts();
    let mut bodies = if http_body::Body::is_end_stream(&body) {
        Bodies::Empty
    } else if let Some(incoming) = body.take_incoming() {
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        // A body known to exceed the buffer is kept only until its first byte is read, which
        // still lets a connection failure (nothing sent) be retried.
        let limit = if declared.is_some_and(|n| n > policy.replay_buffer) {
            0
        } else {
            policy.replay_buffer
        };
        Bodies::Replay(ReplayBody::new(incoming, limit))
    } else {
        Bodies::Once(Some(body))
    };
    let mut own_extensions = Some(std::mem::take(&mut parts.extensions));
    let head = Request::from_parts(parts, ());
    // `attempt` counts against the policy; `tries` is every attempt made.
    let (mut attempt, mut tries, mut free) = (1, 1, UNPROCESSED_RETRIES);
    let mut avoid = None;
    // Whether this attempt is one of the policy's retries (which the breaker limits).
    let mut policy_retry_now = false;
    loop {
        let Some(body) = bodies.next() else {
            return Err(ProxyError::NotReady("request body cannot be replayed"));
        };
        let mut req = Request::new(body);
        *req.method_mut() = head.method().clone();
        *req.uri_mut() = head.uri().clone();
        *req.version_mut() = head.version();
        *req.headers_mut() = head.headers().clone();
        *req.extensions_mut() = match own_extensions.take() {
            Some(first) => first,
            None => retry_extensions(&target),
        };
        if let Some(addr) = avoid {
            req.extensions_mut().insert(AvoidEndpoint(addr));
        }
        let retry_slot = if policy_retry_now {
            Some(breaker::acquire(cluster, Limit::Retries)?)
        } else {
            None
        };
        let call = inner.clone().oneshot(req);
        let result = match policy.per_try_timeout {
            Some(limit) => tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
                rule.stats.per_try_timeouts.inc();
                Err(ProxyError::PerTryTimeout { after: limit })
            }),
            None => call.await,
        };
        drop(retry_slot);
        let verdict = classify(&result, policy);
        let replayable = match &bodies {
            Bodies::Replay(r) => r.can_replay(),
            Bodies::Empty => true,
            Bodies::Once(_) => false,
        };
        let finish = |result: Result<Response<Body>, ProxyError>| {
            result.map(|mut rsp| {
                if tries > 1 {
                    rsp.extensions_mut().insert(Attempts(tries));
                }
                rsp
            })
        };
        let free_retry = matches!(verdict, Verdict::Unprocessed { .. }) && free > 0;
        let policy_retry = attempt < policy.max_attempts
            && match verdict {
                Verdict::Done => false,
                Verdict::Unprocessed { policy } => policy,
                Verdict::Retryable => idempotent,
            };
        if !replayable || !(free_retry || policy_retry) {
            return finish(result);
        }
        policy_retry_now = !free_retry;
        if free_retry {
            free -= 1;
        } else if !cluster
            .state
            .budget
            .try_withdraw(policy.budget_ratio, policy.budget_min_per_second)
        {
            cluster.state.stats.budget_exhausted.inc();
            rule.stats.budget_exhausted.inc();
            return finish(result);
        } else {
            attempt += 1;
        }
        cluster.state.stats.retries.inc();
        rule.stats.retries.inc();
        avoid = match &result {
            Ok(rsp) => rsp.body().answered_by(),
            Err(e) => e.endpoint(),
        };
        drop(result);
        tokio::time::sleep(backoff(policy, tries)).await;
        tries += 1;
    }
}

#[cfg(test)]
mod tests;
