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
        deadline: None,
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

/// An upstream whose first `refusals` calls fail with `error(addr)`, then 200; records the
/// endpoint each attempt was asked to avoid.
fn refusing(
    refusals: usize,
    error: fn(SocketAddr) -> ProxyError,
    calls: Arc<AtomicUsize>,
    avoided: Arc<std::sync::Mutex<Vec<Option<SocketAddr>>>>,
) -> impl tower::Service<
    Request<Body>,
    Response = Response<Body>,
    Error = ProxyError,
    Future = ResponseFuture,
> + Clone
       + Send
       + 'static {
    tower::service_fn(move |req: Request<Body>| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        let avoid = req.extensions().get::<AvoidEndpoint>().map(|a| a.0);
        if let Ok(mut list) = avoided.lock() {
            list.push(avoid);
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], 1000 + n as u16));
        let fut: ResponseFuture = Box::pin(async move {
            if n < refusals {
                Err(error(addr))
            } else {
                Ok(Response::new(Body::empty()))
            }
        });
        fut
    })
}

fn refused(addr: SocketAddr) -> ProxyError {
    ProxyError::Unprocessed {
        addr,
        reason: "GOAWAY".into(),
    }
}

fn lost_mid_request(addr: SocketAddr) -> ProxyError {
    ProxyError::Upstream {
        addr,
        reason: "connection reset".into(),
    }
}

/// No retries in the policy, no budget, and a POST: a refused stream still goes elsewhere.
fn no_retries() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 1,
        budget_ratio: 0.0,
        budget_min_per_second: 0,
        ..policy(1)
    }
}

#[tokio::test]
async fn unprocessed_requests_are_retried_whatever_the_policy_and_method() {
    let (calls, avoided) = (Arc::new(AtomicUsize::new(0)), Arc::default());
    let t = target(no_retries());
    let upstream = refusing(2, refused, calls.clone(), Arc::clone(&avoided));
    let rsp = attempts(upstream, request(Method::POST, &t)).await;
    assert_eq!(rsp.as_ref().map(|r| r.status().as_u16()).ok(), Some(200));
    assert_eq!(
        rsp.ok()
            .and_then(|r| r.extensions().get::<Attempts>().map(|a| a.0)),
        Some(3)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(t.cluster.state.stats.budget_exhausted.get(), 0);
    let avoided = avoided.lock().map(|l| l.clone()).unwrap_or_default();
    assert_eq!(
        avoided,
        [
            None,
            Some(SocketAddr::from(([127, 0, 0, 1], 1000))),
            Some(SocketAddr::from(([127, 0, 0, 1], 1001)))
        ],
        "each retry avoids the endpoint that refused"
    );
}

#[tokio::test]
async fn the_unprocessed_allowance_is_bounded() {
    let (calls, avoided) = (Arc::new(AtomicUsize::new(0)), Arc::default());
    let t = target(no_retries());
    let upstream = refusing(usize::MAX, refused, calls.clone(), avoided);
    let rsp = attempts(upstream, request(Method::POST, &t)).await;
    assert!(matches!(rsp, Err(ProxyError::Unprocessed { .. })));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1 + UNPROCESSED_RETRIES as usize
    );

    // With a policy that names connect failures, its attempts come on top (budget permitting).
    let (calls, avoided) = (Arc::new(AtomicUsize::new(0)), Arc::default());
    let t = target(RetryPolicy {
        retry_on: RetryOn {
            connect_failure: true,
            ..RetryOn::default()
        },
        ..policy(2)
    });
    let upstream = refusing(usize::MAX, refused, calls.clone(), avoided);
    let rsp = attempts(upstream, request(Method::POST, &t)).await;
    assert!(rsp.is_err());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2 + UNPROCESSED_RETRIES as usize
    );
}

#[tokio::test]
async fn a_post_lost_mid_request_is_not_retried() {
    let (calls, avoided) = (Arc::new(AtomicUsize::new(0)), Arc::default());
    let t = target(RetryPolicy {
        retry_on: RetryOn {
            reset: true,
            ..RetryOn::default()
        },
        ..policy(3)
    });
    let upstream = refusing(1, lost_mid_request, calls.clone(), avoided);
    let rsp = attempts(upstream, request(Method::POST, &t)).await;
    assert!(matches!(rsp, Err(ProxyError::Upstream { .. })), "{rsp:?}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "it may have been processed"
    );

    // An idempotent request lost the same way follows the policy.
    let (calls, avoided) = (Arc::new(AtomicUsize::new(0)), Arc::default());
    let upstream = refusing(1, lost_mid_request, calls.clone(), avoided);
    let rsp = attempts(upstream, request(Method::GET, &t)).await;
    assert_eq!(rsp.map(|r| r.status().as_u16()).ok(), Some(200));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// A 5xx from an endpoint: the retry avoids that endpoint, which the response names through the
/// load it holds (`Body::answered_by`), as forwarding attaches it.
#[tokio::test]
async fn a_retry_after_a_5xx_avoids_the_endpoint_that_answered() {
    let t = target(policy(3));
    let (calls, avoided) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(std::sync::Mutex::new(Vec::new())),
    );
    let cluster = t.cluster.clone();
    let upstream = tower::service_fn({
        let (calls, avoided) = (calls.clone(), avoided.clone());
        move |req: Request<Body>| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut list) = avoided.lock() {
                list.push(req.extensions().get::<AvoidEndpoint>().map(|a| a.0));
            }
            let endpoint = &cluster.endpoints[n % cluster.endpoints.len()];
            let load = crate::balance::LoadGuard::start(&endpoint.state);
            let fut: ResponseFuture = Box::pin(async move {
                let mut rsp = Response::new(Body::empty().hold_load(load));
                *rsp.status_mut() = if n == 0 {
                    http::StatusCode::SERVICE_UNAVAILABLE
                } else {
                    http::StatusCode::OK
                };
                Ok(rsp)
            });
            fut
        }
    });
    let rsp = attempts(upstream, request(Method::GET, &t)).await;
    assert_eq!(rsp.map(|r| r.status().as_u16()).ok(), Some(200));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let avoided = avoided.lock().map(|l| l.clone()).unwrap_or_default();
    assert_eq!(avoided, [None, Some(t.cluster.endpoints[0].addr)]);
}
