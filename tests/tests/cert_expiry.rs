//! A connection ends when its peer's certificate expires, so an expired identity carries no new
//! request (issue 12): with renewal working, traffic over the one long-lived connection keeps
//! flowing while that connection is retired and replaced every certificate lifetime; with the
//! control plane gone (no renewal), requests fail with a TLS error from the expiry on instead of
//! riding the old connection.
//!
//! Over HTTP/1.1 between sidecars (the default for HTTP/1.x apps) the client side retires each
//! pooled connection itself, at the peer's expiry or a second before its own certificate's (the
//! peer would close it then, and HTTP/1.1 has no GOAWAY to spare the request caught in between),
//! so every retirement is counted as outbound; the other tests here run over HTTP/2, the shared
//! connection whose retirement at either end they are about.
//!
//! Workload 0 is `client`, 1 is `hello`. Certificates live 6 s (renewed at about 3 s).

use std::time::Duration;
use trellis_proxy::transport::Http1ToPeers;
use trellis_tests::traffic::SteadyTraffic;
use trellis_tests::{Mesh, Service};

const CLIENT: usize = 0;
const HELLO: usize = 1;

/// Wildcard discovery: `without_renewal_…` opens its connections (and so makes its first
/// requests) after the control plane stopped, which an on-demand sidecar could not route.
async fn mesh(way: Http1ToPeers) -> Mesh {
    trellis_tests::init_logging();
    Mesh::builder()
        .http1_to_peers(way)
        .wildcard_discovery()
        .mesh_yaml("certificateLifetime: 6s")
        .service(Service::http1("client"))
        .service(Service::http1("hello"))
        .start()
        .await
        .expect("mesh starts")
}

/// The value of a `/metrics` series (0 if absent).
async fn metric(mesh: &Mesh, index: usize, series: &str) -> u64 {
    let (_, text) = mesh.admin_get(index, "/metrics").await.expect("metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

fn expired_closes(direction: &str) -> String {
    format!("trellis_tls_peer_expired_closes_total{{direction=\"{direction}\"}}")
}

/// Connections retired because the peer's certificate expired, over both sidecars: (inbound,
/// outbound).
async fn retired(mesh: &Mesh) -> (u64, u64) {
    let mut totals = (0, 0);
    for i in [CLIENT, HELLO] {
        totals.0 += metric(mesh, i, &expired_closes("inbound")).await;
        totals.1 += metric(mesh, i, &expired_closes("outbound")).await;
    }
    totals
}

/// mTLS connections a workload's sidecar has accepted (from the other one).
async fn accepted(mesh: &Mesh, index: usize) -> u64 {
    let opened = "trellis_tcp_connections_opened_total{direction=\"inbound\"}";
    metric(mesh, index, opened).await
}

/// The workload certificate's notAfter, from `/config`.
async fn not_after(mesh: &Mesh, index: usize) -> i64 {
    let (_, body) = mesh.admin_get(index, "/config").await.expect("config");
    let doc: serde_json::Value = serde_json::from_str(&body).expect("json");
    doc["identity"]["notAfter"]
        .as_str()
        .and_then(trellis_proxy::identity::parse_rfc3339)
        .expect("notAfter")
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Requests from `from`'s app to `to`, every 10 ms for `run`: (succeeded, failed).
async fn traffic(mesh: &Mesh, from: &str, to: &str, run: Duration) -> (u64, u64) {
    let traffic = SteadyTraffic::start(mesh.client(from, false), to, Duration::from_millis(10));
    tokio::time::sleep(run).await;
    let counts = traffic.finish().await;
    (counts.ok(), counts.failed)
}

/// Traffic both ways (client → hello and hello → client), so that each expiry retires one
/// connection at its inbound end and the other at its outbound end, whichever certificate
/// expires first: both directions of the retirement are exercised every lifetime.
#[tokio::test]
async fn traffic_across_several_lifetimes_never_fails_and_each_connection_ends_at_expiry() {
    across_several_lifetimes(Http1ToPeers::H2).await;
}

#[tokio::test]
async fn pooled_http1_connections_retire_before_either_expiry_without_failing_a_request() {
    across_several_lifetimes(Http1ToPeers::Http1).await;
}

async fn across_several_lifetimes(way: Http1ToPeers) {
    let mesh = mesh(way).await;
    for (from, to) in [("client", "hello"), ("hello", "client")] {
        let (rsp, _) = mesh
            .client(from, false)
            .get(to, "/")
            .await
            .expect("first request");
        assert_eq!(rsp.status(), 200);
    }
    assert_eq!(
        accepted(&mesh, HELLO).await,
        1,
        "one connection each way to start with"
    );
    assert_eq!(accepted(&mesh, CLIENT).await, 1);

    // A little over three lifetimes.
    let run = Duration::from_secs(20);
    let ((ok_a, failed_a), (ok_b, failed_b)) = tokio::join!(
        traffic(&mesh, "client", "hello", run),
        traffic(&mesh, "hello", "client", run)
    );
    let connections = [accepted(&mesh, HELLO).await, accepted(&mesh, CLIENT).await];
    let (inbound, outbound) = retired(&mesh).await;
    println!(
        "client -> hello: {ok_a} succeeded, {failed_a} failed; hello -> client: {ok_b} succeeded, \
         {failed_b} failed; over {run:?}; connections {connections:?}; \
         expiry closes: {inbound} inbound, {outbound} outbound"
    );
    assert_eq!(
        (failed_a, failed_b),
        (0, 0),
        "no request fails while connections are retired"
    );
    assert!(ok_a > 300 && ok_b > 300, "traffic flowed: {ok_a}, {ok_b}");
    // A connection lives at most one lifetime (6 s) from its handshake, so 20 s take at least
    // four each way; without retirement the first would carry everything.
    for n in connections {
        assert!(n >= 4, "{connections:?} connections in {run:?}");
    }
    // Every connection but the two open ones was retired by an expiry, at one end or the other.
    assert!(
        inbound + outbound >= connections[0] + connections[1] - 2,
        "{connections:?} connections but {inbound} + {outbound} expiry closes"
    );
    if way == Http1ToPeers::Http1 {
        assert_eq!(inbound, 0, "the client side retired every connection first");
        return;
    }
    assert!(inbound >= 1, "a connection retired at its client's expiry");
    assert!(
        outbound >= 1,
        "a connection retired at its server's expiry (counted once the proxy hands its metrics \
         to the connector: MeshConnector::with_metrics)"
    );
}

/// Expiry closes at one sidecar: (inbound, outbound).
async fn retired_at(mesh: &Mesh, index: usize) -> (u64, u64) {
    (
        metric(mesh, index, &expired_closes("inbound")).await,
        metric(mesh, index, &expired_closes("outbound")).await,
    )
}

/// Without renewal the certificates in use are known, so is each retirement: the connections
/// (one each way, opened after the control plane stopped) end at the first of the two
/// certificates' expiry, client → hello at one end and hello → client at the other.
#[tokio::test]
async fn without_renewal_requests_fail_with_a_tls_error_from_the_expiry_on() {
    let mut mesh = mesh(Http1ToPeers::H2).await;
    mesh.stop_control_plane().await;
    let (client_expiry, hello_expiry) = (
        not_after(&mesh, CLIENT).await,
        not_after(&mesh, HELLO).await,
    );
    let expiry = client_expiry.min(hello_expiry) as f64;
    let left = expiry - unix_now();
    assert!(left > 1.5, "the certificates expire in {left:.1} s");
    let ways = [("client", "hello"), ("hello", "client")];

    // Until just before then, one connection each way carries every request.
    let (mut ok, mut failed) = (0u64, 0u64);
    while unix_now() < expiry - 0.5 {
        for (from, to) in ways {
            match mesh.client(from, false).get(to, "/").await {
                Ok((rsp, _)) if rsp.status() == 200 => ok += 1,
                _ => failed += 1,
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(failed, 0, "no failure before the expiry ({ok} succeeded)");
    assert!(ok > 50, "{ok} requests before the expiry");
    assert_eq!(
        accepted(&mesh, HELLO).await,
        1,
        "all on one connection each way"
    );
    assert_eq!(accepted(&mesh, CLIENT).await, 1);

    // From the expiry on, no request succeeds: the connections were retired, and the
    // handshakes that would replace them refuse the expired certificate.
    tokio::time::sleep(Duration::from_secs_f64(
        (expiry - unix_now()).max(0.0) + 0.05,
    ))
    .await;
    let mut errors = std::collections::BTreeSet::new();
    while unix_now() < expiry + 2.5 {
        for (from, to) in ways {
            let (rsp, _) = mesh
                .client(from, false)
                .get(to, "/")
                .await
                .expect("an answer from the sidecar");
            let error = (rsp.headers().get("trellis-error"))
                .map_or(String::new(), |v| v.to_str().unwrap_or("").to_lowercase());
            assert!(
                matches!(rsp.status().as_u16(), 502 | 503),
                "{from} -> {to}, {:.2} s after the expiry: {} {error:?}",
                unix_now() - expiry,
                rsp.status()
            );
            assert!(
                ["tls", "certificate"].iter().any(|w| error.contains(w)),
                "{from} -> {to}: the error names TLS or the certificate: {error}"
            );
            errors.insert(format!("{from} -> {to}: {error}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let at_client = retired_at(&mesh, CLIENT).await;
    let at_hello = retired_at(&mesh, HELLO).await;
    println!(
        "{ok} requests before the expiry (client's {client_expiry}, hello's {hello_expiry}); \
         after it, refused with {errors:#?}; expiry closes (inbound, outbound): client \
         {at_client:?}, hello {at_hello:?}"
    );
    // Whose certificate expires first decides which end retires each connection.
    match client_expiry.cmp(&hello_expiry) {
        // hello retires client -> hello (inbound); hello's own hello -> client (outbound).
        std::cmp::Ordering::Less => assert_eq!((at_client, at_hello), ((0, 0), (1, 1))),
        // The client's sidecar retires both, the mirror image.
        std::cmp::Ordering::Greater => assert_eq!((at_client, at_hello), ((1, 1), (0, 0))),
        // The same second: each connection is retired at one end at least.
        std::cmp::Ordering::Equal => {
            let (inbound, outbound) = (at_client.0 + at_hello.0, at_client.1 + at_hello.1);
            assert!(inbound + outbound >= 2 && inbound <= 2 && outbound <= 2);
        }
    }
}
