//! Retries and timeouts with real upstreams that fail on purpose; attempt counts are what the
//! upstream apps actually received.

use bytes::Bytes;
use http::Request;
use std::time::{Duration, Instant};
use trellis_tests::client::{collect, full};
use trellis_tests::{Mesh, Service};

const NO_OUTLIERS: &str = "  outlierDetection:\n    consecutiveGatewayErrors: 0\n";

async fn mesh_with(policy: &str) -> Mesh {
    Mesh::builder()
        .service(Service::http1("client"))
        .service(Service::http1("hello").yaml(&format!("policy:\n{policy}{NO_OUTLIERS}")))
        .start()
        .await
        .expect("mesh starts")
}

async fn stats(mesh: &Mesh) -> serde_json::Value {
    let (_, body) = mesh.admin_get(0, "/stats").await.expect("stats");
    serde_json::from_str(&body).expect("json")
}

#[tokio::test]
async fn get_failing_twice_succeeds_on_the_third_attempt_and_post_is_not_retried() {
    let mesh = mesh_with(
        "  retry:\n    attempts: 3\n    retryOn: [5xx]\n    backoff: {base: 5ms, max: 20ms}\n",
    )
    .await;
    let client = mesh.client("client", false);
    let app = &mesh.workload("hello").app;

    app.fail_next(2, 503);
    let (rsp, _) = client.get("hello", "/").await.expect("get");
    assert_eq!(rsp.status(), 200);
    assert_eq!(app.requests(), 3, "exactly three attempts");

    app.fail_next(2, 503);
    let req = Request::post("http://hello/pay")
        .body(full("once"))
        .expect("request");
    let (rsp, _) = collect(client.send(req).await.expect("post"))
        .await
        .expect("body");
    assert_eq!(rsp.status(), 503, "the POST gets the upstream's answer");
    assert_eq!(app.requests(), 4, "one attempt for the POST");
    let s = stats(&mesh).await;
    assert_eq!(s["clusters"]["default/hello"]["retries"], 2);
}

#[tokio::test]
async fn a_route_can_make_post_retryable() {
    let routes = "routes:\n  - name: payments\n    match:\n      method: POST\n    retry:\n      attempts: 3\n      retryOn: [5xx]\n      nonIdempotent: true\n      backoff: {base: 5ms, max: 20ms}\n";
    let mesh = Mesh::builder()
        .service(Service::http1("client"))
        .service(Service::http1("hello").yaml(&format!("policy:\n{NO_OUTLIERS}{routes}")))
        .start()
        .await
        .expect("mesh starts");
    let app = &mesh.workload("hello").app;
    app.fail_next(2, 503);
    let req = Request::post("http://hello/pay")
        .body(full("body"))
        .expect("request");
    let (rsp, body) = collect(mesh.client("client", false).send(req).await.expect("post"))
        .await
        .expect("body");
    assert_eq!(rsp.status(), 200);
    assert_eq!(
        body,
        Bytes::from_static(b"body"),
        "the replayed body arrives whole"
    );
    assert_eq!(app.requests(), 3);
}

#[tokio::test]
async fn retries_stay_within_the_budget_under_total_failure() {
    let mesh = mesh_with("  retry:\n    attempts: 3\n    retryOn: [5xx]\n    backoff: {base: 1ms, max: 2ms}\n    budget: {ratio: 0.2, minPerSecond: 1}\n").await;
    let client = mesh.client("client", false);
    let app = &mesh.workload("hello").app;
    app.always(503);
    let requests = 100;
    for _ in 0..requests {
        let (rsp, _) = client.get("hello", "/").await.expect("get");
        assert_eq!(rsp.status(), 503);
    }
    let attempts = app.requests();
    // 20% of the requests plus 1/s over the 10 s window.
    let budget = requests / 5 + 10;
    assert!(attempts > requests, "some retries happened ({attempts})");
    assert!(
        attempts <= requests + budget,
        "{attempts} attempts exceed {requests} + budget {budget}"
    );
    let s = stats(&mesh).await;
    assert!(
        s["clusters"]["default/hello"]["budgetExhausted"]
            .as_u64()
            .unwrap_or(0)
            > 0
    );
}

#[tokio::test]
async fn per_try_timeout_moves_to_a_fast_endpoint_and_overall_timeout_ends_with_504() {
    let mesh = Mesh::builder()
        .service(Service::http1("client"))
        .service(
            Service::http1("hello")
                .replicas(2)
                .yaml(&format!("policy:\n  loadBalancer: roundRobin\n  requestTimeout: 3s\n  retry:\n    attempts: 2\n    retryOn: [gateway-error]\n    perTryTimeout: 200ms\n    backoff: {{base: 1ms, max: 2ms}}\n{NO_OUTLIERS}")),
        )
        .start()
        .await
        .expect("mesh starts");
    let client = mesh.client("client", false);
    let slow = &mesh.workloads_of("hello").next().expect("first").app;
    slow.delay(Duration::from_secs(2));
    for _ in 0..6 {
        let started = Instant::now();
        let (rsp, _) = client.get("hello", "/").await.expect("get");
        assert_eq!(rsp.status(), 200);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "answered by the fast endpoint: {:?}",
            started.elapsed()
        );
    }
    assert!(slow.requests() >= 1, "the slow endpoint was tried");

    // Both slow: the overall timeout ends the request, whatever retries remain.
    for w in mesh.workloads_of("hello") {
        w.app.delay(Duration::from_secs(5));
    }
    let started = Instant::now();
    let (rsp, _) = client.get("hello", "/").await.expect("get");
    let took = started.elapsed();
    assert_eq!(rsp.status(), 504);
    assert!(
        took < Duration::from_millis(1500),
        "per-try timeouts bound each attempt: {took:?}"
    );
}

#[tokio::test]
async fn overall_timeout_answers_504_with_a_reason_on_time() {
    let mesh = mesh_with("  requestTimeout: 300ms\n").await;
    mesh.workload("hello").app.delay(Duration::from_secs(3));
    let started = Instant::now();
    let (rsp, body) = mesh
        .client("client", false)
        .get("hello", "/")
        .await
        .expect("get");
    let took = started.elapsed();
    assert_eq!(rsp.status(), 504);
    assert_eq!(
        rsp.headers()
            .get("trellis-error")
            .and_then(|v| v.to_str().ok()),
        Some("request timeout after 300ms")
    );
    assert!(String::from_utf8_lossy(&body).contains("request timeout after 300ms"));
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(900),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_body_over_the_replay_buffer_is_delivered_once_and_not_retried() {
    let mesh = mesh_with("  retry:\n    attempts: 3\n    retryOn: [5xx]\n    nonIdempotent: true\n    replayBuffer: 64KiB\n").await;
    let app = &mesh.workload("hello").app;
    app.fail_next(1, 503);
    let payload = Bytes::from(vec![7u8; 100 * 1024]);
    let req = Request::put("http://hello/upload")
        .body(full(payload.clone()))
        .expect("request");
    let (rsp, _) = collect(mesh.client("client", false).send(req).await.expect("put"))
        .await
        .expect("body");
    assert_eq!(
        rsp.status(),
        503,
        "not retried: the body streamed past the buffer"
    );
    assert_eq!(
        rsp.headers()
            .get("x-echo-body-len")
            .and_then(|v| v.to_str().ok()),
        Some("102400"),
        "delivered intact"
    );
    assert_eq!(app.requests(), 1);

    // Under the buffer the same failure is retried, and the replay is intact too.
    app.fail_next(1, 503);
    let small = Bytes::from(vec![9u8; 1024]);
    let req = Request::put("http://hello/upload")
        .body(full(small.clone()))
        .expect("request");
    let (rsp, body) = collect(mesh.client("client", false).send(req).await.expect("put"))
        .await
        .expect("body");
    assert_eq!(rsp.status(), 200);
    assert_eq!(body, small);
    assert_eq!(app.requests(), 3);
}
