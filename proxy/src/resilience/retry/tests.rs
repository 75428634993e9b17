use super::*;
use crate::balance::tests_support::cluster;
use crate::config::{LbPolicy, RetryOn, RouteRule};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// An upstream that answers the first `failures` calls with `status`, then 200; counts calls.
fn upstream(
    failures: usize,
    status: u16,
    calls: Arc<AtomicUsize>,
) -> impl tower::Service<
    Request<Body>,
    Response = Response<Body>,
    Error = ProxyError,
    Future = ResponseFuture,
> + Clone
       + Send
       + 'static {
    tower::service_fn(move |_req: Request<Body>| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        let fut: ResponseFuture = Box::pin(async move {
            let mut rsp = Response::new(Body::empty());
            *rsp.status_mut() = http::StatusCode::from_u16(if n < failures { status } else { 200 })
                .unwrap_or_default();
            Ok(rsp)
        });
        fut
    })
}

fn target(policy: RetryPolicy) -> Target {
    let cluster = cluster(LbPolicy::RoundRobin, &[1, 1]);
    let mut rule = RouteRule::catch_all("r".into(), "c".into(), Arc::default());
    rule.retry = Some(policy);
    Target {
        rule: Arc::new(rule),
        cluster,
    }
}

fn policy(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts: attempts,
        retry_on: RetryOn {
            status_5xx: true,
            ..RetryOn::default()
        },
        backoff_base: Duration::from_millis(1),
        backoff_max: Duration::from_millis(2),
        ..RetryPolicy::default()
    }
}

fn request(method: Method, target: &Target) -> Request<Body> {
    let mut req = Request::builder()
        .method(method)
        .uri("http://web/")
        .body(Body::empty())
        .unwrap_or_default();
    req.extensions_mut().insert(target.clone());
    req
}

#[tokio::test]
async fn get_failing_twice_succeeds_on_the_third_attempt() {
    let calls = Arc::new(AtomicUsize::new(0));
    let t = target(policy(3));
    let rsp = attempts(upstream(2, 503, calls.clone()), request(Method::GET, &t)).await;
    assert_eq!(rsp.map(|r| r.status().as_u16()).ok(), Some(200));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(t.rule.stats.retries.get(), 2);
}

#[tokio::test]
async fn post_is_not_retried_unless_allowed() {
    let calls = Arc::new(AtomicUsize::new(0));
    let t = target(policy(3));
    let rsp = attempts(upstream(2, 503, calls.clone()), request(Method::POST, &t)).await;
    assert_eq!(rsp.map(|r| r.status().as_u16()).ok(), Some(503));
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let calls = Arc::new(AtomicUsize::new(0));
    let t = target(RetryPolicy {
        non_idempotent: true,
        ..policy(3)
    });
    let rsp = attempts(upstream(2, 503, calls.clone()), request(Method::POST, &t)).await;
    assert_eq!(rsp.map(|r| r.status().as_u16()).ok(), Some(200));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn statuses_outside_retry_on_are_returned_at_once() {
    let calls = Arc::new(AtomicUsize::new(0));
    let t = target(RetryPolicy {
        retry_on: RetryOn {
            gateway_error: true,
            ..RetryOn::default()
        },
        ..policy(3)
    });
    let rsp = attempts(upstream(5, 500, calls.clone()), request(Method::GET, &t)).await;
    assert_eq!(rsp.map(|r| r.status().as_u16()).ok(), Some(500));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "500 is not a gateway error"
    );
}

#[tokio::test]
async fn an_exhausted_budget_stops_retries() {
    let calls = Arc::new(AtomicUsize::new(0));
    let t = target(RetryPolicy {
        budget_ratio: 0.0,
        budget_min_per_second: 0,
        ..policy(3)
    });
    let rsp = attempts(upstream(5, 503, calls.clone()), request(Method::GET, &t)).await;
    assert_eq!(rsp.map(|r| r.status().as_u16()).ok(), Some(503));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(t.cluster.state.stats.budget_exhausted.get(), 1);
}

#[tokio::test]
async fn connect_failures_are_retried_even_for_post() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let failing_connect = tower::service_fn(move |_req: Request<Body>| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let fut: ResponseFuture = Box::pin(async move {
            if n == 0 {
                Err(ProxyError::Connect {
                    addr: SocketAddr::from(([127, 0, 0, 1], 1)),
                    reason: "refused".into(),
                })
            } else {
                Ok(Response::new(Body::empty()))
            }
        });
        fut
    });
    let t = target(RetryPolicy {
        retry_on: RetryOn {
            connect_failure: true,
            ..RetryOn::default()
        },
        ..policy(2)
    });
    let rsp = attempts(failing_connect, request(Method::POST, &t)).await;
    assert_eq!(rsp.map(|r| r.status().as_u16()).ok(), Some(200));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn backoff_is_capped_and_jittered() {
    let p = RetryPolicy {
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(40),
        ..RetryPolicy::default()
    };
    for retry in 1..10 {
        assert!(backoff(&p, retry) <= Duration::from_millis(40));
    }
}
