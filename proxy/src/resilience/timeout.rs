//! The overall request deadline: the route's timeout (or the cluster's request timeout), shortened
//! by the caller's `grpc-timeout` when present. It covers every attempt and backoff, so retries can
//! never stretch a request past it. The deadline rides on the request so that forwarding can pass
//! the remaining time on in `grpc-timeout`, as the gRPC spec asks of proxies.

use crate::errors::ProxyError;
use crate::http::route::Target;
use crate::http::Body;
use http::{HeaderValue, Request, Response};
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

pub static GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// When the request must be answered; `grpc` says whether the caller sent `grpc-timeout`.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    pub at: Instant,
    pub grpc: bool,
}

/// Parses `grpc-timeout`: at most 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &HeaderValue) -> Option<Duration> {
    let s = value.to_str().ok()?;
    let (digits, unit) = s.split_at(s.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Formats a duration for `grpc-timeout` in the finest unit that fits in 8 digits.
pub fn format_grpc_timeout(d: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let nanos = d.as_nanos();
    let (value, unit) = [
        (1, "n"),
        (1_000, "u"),
        (1_000_000, "m"),
        (1_000_000_000, "S"),
        (60_000_000_000, "M"),
    ]
    .iter()
    .map(|(div, unit)| (nanos.div_ceil(*div), *unit))
    .find(|(v, _)| *v <= MAX)
    .unwrap_or(((nanos / 3_600_000_000_000).min(MAX), "H"));
    HeaderValue::from_str(&format!("{value}{unit}"))
        .unwrap_or_else(|_| HeaderValue::from_static("1n"))
}

#[derive(Clone, Debug, Default)]
pub struct TimeoutLayer;

impl<S> tower::Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;
    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
}

impl<S> tower::Service<Request<Body>> for Timeout<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = ProxyError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let grpc = req
            .headers()
            .get(&GRPC_TIMEOUT)
            .and_then(parse_grpc_timeout);
        let Some(target) = req.extensions_mut().get_mut::<Target>() else {
            return TimeoutFuture::Passed {
                inner: self.inner.call(req),
            };
        };
        let configured = target
            .rule
            .timeout
            .unwrap_or(target.cluster.policy.request_timeout);
        let limit = grpc.map_or(configured, |g| g.min(configured));
        let at = Instant::now() + limit;
        target.deadline = Some(Deadline {
            at,
            grpc: grpc.is_some(),
        });
        let target = target.clone();
        TimeoutFuture::Limited {
            inner: tokio::time::timeout_at(at, self.inner.call(req)),
            target,
            limit,
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's answer within the deadline. Not boxed: it runs per request, and a box
    /// is an allocation, a move and a virtual call more (issue #15).
    #[project = TimeoutProj]
    pub enum TimeoutFuture<F> {
        Passed { #[pin] inner: F },
        Limited { #[pin] inner: tokio::time::Timeout<F>, target: Target, limit: Duration },
    }
}

impl<F> Future for TimeoutFuture<F>
where
    F: Future<Output = Result<Response<Body>, ProxyError>>,
{
    type Output = Result<Response<Body>, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            TimeoutProj::Passed { inner } => inner.poll(cx),
            TimeoutProj::Limited {
                inner,
                target,
                limit,
            } => Poll::Ready(match ready!(inner.poll(cx)) {
                Ok(result) => result,
                Err(_) => {
                    target.rule.stats.timeouts.inc();
                    target.cluster.state.stats.timeouts.inc();
                    Err(ProxyError::Timeout { after: *limit })
                }
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_parses_every_unit_and_refuses_junk() {
        let p = |s: &'static str| parse_grpc_timeout(&HeaderValue::from_static(s));
        assert_eq!(p("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(p("2M"), Some(Duration::from_secs(120)));
        assert_eq!(p("3S"), Some(Duration::from_secs(3)));
        assert_eq!(p("250m"), Some(Duration::from_millis(250)));
        assert_eq!(p("7u"), Some(Duration::from_micros(7)));
        assert_eq!(p("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "S", "123456789S", "1x", "-1S", "1.5S", "1 S"] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn grpc_timeout_formats_within_eight_digits() {
        assert_eq!(format_grpc_timeout(Duration::from_millis(250)), "250000u");
        assert_eq!(format_grpc_timeout(Duration::from_secs(5)), "5000000u");
        assert_eq!(format_grpc_timeout(Duration::from_secs(500_000)), "500000S");
        let round_trip = parse_grpc_timeout(&format_grpc_timeout(Duration::from_millis(1234)));
        assert_eq!(round_trip, Some(Duration::from_millis(1234)));
    }
}
