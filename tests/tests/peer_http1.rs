//! How the app's HTTP/1.x requests travel between sidecars (`--http1-to-peers`): by default as
//! HTTP/1.1 on pooled mutual-TLS connections, one per concurrent request and reused afterwards;
//! with `h2`, as streams of one shared HTTP/2 connection. Counted where the connections arrive:
//! the destination sidecar's inbound listener.

use std::time::Duration;
use trellis_proxy::transport::Http1ToPeers;
use trellis_tests::client::{collect, full};
use trellis_tests::{Mesh, Service, TestClient};

const HELLO: usize = 1;
const OPENED: &str = "trellis_tcp_connections_opened_total{direction=\"inbound\"}";

async fn mesh(way: Http1ToPeers, limits: trellis_proxy::Limits) -> Mesh {
    Mesh::builder()
        .service(Service::http1("client"))
        .service(Service::http1("hello"))
        .http1_to_peers(way)
        .limits(limits)
        .start()
        .await
        .expect("mesh starts")
}

async fn metric(mesh: &Mesh, index: usize, series: &str) -> u64 {
    let (status, text) = mesh.admin_get(index, "/metrics").await.expect("metrics");
    assert_eq!(status, 200);
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// `n` requests at once, each on its own client connection; every one must answer 200 (a
/// failure in between would show as a 502 or 503) with the version the app spoke.
async fn burst(mesh: &Mesh, n: usize) {
    let clients: Vec<TestClient> = (0..n).map(|_| mesh.client("client", false)).collect();
    let calls = clients.iter().map(|c| c.get("hello", "/burst"));
    for (i, result) in futures_util::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        let (rsp, _) = result.unwrap_or_else(|e| panic!("request {i}: {e:#}"));
        assert_eq!(rsp.status(), 200, "request {i}");
        assert_eq!(rsp.headers()["x-echo-version"], "HTTP/1.1", "request {i}");
    }
}

#[tokio::test]
async fn each_concurrent_http1_request_gets_a_pooled_connection_that_later_requests_reuse() {
    let mesh = mesh(Http1ToPeers::Http1, trellis_proxy::Limits::default()).await;
    // Slow answers keep the six requests of a burst in flight together.
    mesh.workload("hello").app.delay(Duration::from_millis(300));
    let before = metric(&mesh, HELLO, OPENED).await;
    let answered_before = mesh.workload("hello").app.requests();
    burst(&mesh, 6).await;
    assert_eq!(
        metric(&mesh, HELLO, OPENED).await - before,
        6,
        "one per request"
    );
    burst(&mesh, 6).await;
    let client = mesh.client("client", false);
    for _ in 0..4 {
        let (rsp, _) = client.get("hello", "/one").await.expect("sent");
        assert_eq!(rsp.status(), 200);
    }
    assert_eq!(
        metric(&mesh, HELLO, OPENED).await - before,
        6,
        "the second burst and the sequence reused the pool"
    );
    assert_eq!(mesh.workload("hello").app.requests() - answered_before, 16);
}

#[tokio::test]
async fn with_h2_concurrent_http1_requests_share_one_connection() {
    let mesh = mesh(Http1ToPeers::H2, trellis_proxy::Limits::default()).await;
    mesh.workload("hello").app.delay(Duration::from_millis(300));
    let before = metric(&mesh, HELLO, OPENED).await;
    burst(&mesh, 6).await;
    burst(&mesh, 6).await;
    assert_eq!(metric(&mesh, HELLO, OPENED).await - before, 1);
}

/// The peer's inbound closes an HTTP/1.1 connection idle for one to two header read timeouts
/// (here 1 s; `listeners::head_wait`), before the pool's own 4 s: the pool notices the close and
/// the next requests open new connections without an error reaching the app.
#[tokio::test]
async fn connections_the_peer_closed_while_pooled_are_replaced_without_errors() {
    let limits = trellis_proxy::Limits {
        header_read_timeout: Duration::from_secs(1),
        ..trellis_proxy::Limits::default()
    };
    let mesh = mesh(Http1ToPeers::Http1, limits).await;
    mesh.workload("hello").app.delay(Duration::from_millis(200));
    let before = metric(&mesh, HELLO, OPENED).await;
    burst(&mesh, 3).await;
    tokio::time::sleep(Duration::from_millis(2600)).await;
    burst(&mesh, 3).await;
    assert_eq!(metric(&mesh, HELLO, OPENED).await - before, 6);
}

/// A connection waiting on a slow response is not waiting for a head: an answer that takes
/// longer than two header read timeouts still arrives, on the client's connection to its sidecar
/// and on the sidecars' own, and the kept connection carries the next request.
#[tokio::test]
async fn a_response_slower_than_the_header_read_timeout_is_not_cut() {
    let limits = trellis_proxy::Limits {
        header_read_timeout: Duration::from_millis(500),
        ..trellis_proxy::Limits::default()
    };
    let mesh = mesh(Http1ToPeers::Http1, limits).await;
    mesh.workload("hello")
        .app
        .delay(Duration::from_millis(1600));
    let before = metric(&mesh, HELLO, OPENED).await;
    burst(&mesh, 1).await;
    mesh.workload("hello").app.delay(Duration::ZERO);
    burst(&mesh, 1).await;
    assert_eq!(metric(&mesh, HELLO, OPENED).await - before, 1);
}

/// POST is not idempotent: it takes the peer's HTTP/2 connection, whose GOAWAY tells a request
/// the draining peer took from one it never read (an HTTP/1.1 connection closed as the request
/// goes out cannot; `rollout.rs` lost POSTs that way). Six at once share that one connection,
/// and the app still hears HTTP/1.1 with the body intact.
#[tokio::test]
async fn post_requests_share_the_http2_connection_in_http1_mode() {
    let mesh = mesh(Http1ToPeers::Http1, trellis_proxy::Limits::default()).await;
    mesh.workload("hello").app.delay(Duration::from_millis(300));
    let before = metric(&mesh, HELLO, OPENED).await;
    let clients: Vec<TestClient> = (0..6).map(|_| mesh.client("client", false)).collect();
    let calls = clients.iter().enumerate().map(|(i, c)| {
        let req = http::Request::post("http://hello/echo")
            .body(full(format!("post {i}")))
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        c.send(req)
    });
    for (i, result) in futures_util::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        let rsp = result.unwrap_or_else(|e| panic!("request {i}: {e:#}"));
        let (head, body) = collect(rsp)
            .await
            .unwrap_or_else(|e| panic!("body {i}: {e:#}"));
        assert_eq!(head.status(), 200, "request {i}");
        assert_eq!(head.headers()["x-echo-version"], "HTTP/1.1", "request {i}");
        assert_eq!(body, format!("post {i}").as_bytes(), "request {i}");
    }
    assert_eq!(
        metric(&mesh, HELLO, OPENED).await - before,
        1,
        "one HTTP/2 connection"
    );
}
