//! Circuit breaking and outlier ejection: overflow answers at once with the limit named; an
//! endpoint that keeps failing is taken out of rotation for a while, never more than the allowed
//! share of the cluster.

use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use trellis_tests::{Mesh, Service};

#[tokio::test]
async fn requests_over_max_pending_are_refused_at_once_with_503() {
    // A black hole: accepts TCP but never answers the TLS handshake, so connections stay pending.
    let hole = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let hole_addr = hole.local_addr().expect("addr");
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            sockets.push(s);
        }
    });
    let mesh = Mesh::builder()
        .service(Service::http1("client"))
        .service(Service::external("stuck", &[hole_addr]).yaml(
            "policy:\n  connectTimeout: 5s\n  requestTimeout: 10s\n  retry:\n    attempts: 1\n  circuitBreaker:\n    maxPendingRequests: 3\n",
        ))
        .start()
        .await
        .expect("mesh starts");
    let client = mesh.client("client", false);
    let waiting: Vec<_> = (0..3)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.get("stuck", "/").await.map(|(r, _)| r.status()) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let (rsp, _) = client.get("stuck", "/").await.expect("fourth request");
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "refused at once: {:?}",
        started.elapsed()
    );
    assert_eq!(rsp.status(), 503);
    let why = rsp
        .headers()
        .get("trellis-error")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        why.contains("max pending requests (3)") && why.contains("default/stuck"),
        "{why}"
    );
    for w in &waiting {
        assert!(!w.is_finished(), "the first three are still pending");
    }
    for w in waiting {
        w.abort();
    }
    held.abort();
}

#[tokio::test]
async fn an_endpoint_returning_5xx_is_ejected_then_comes_back() {
    let mesh = Mesh::builder()
        .service(Service::http1("client"))
        .service(Service::http1("hello").replicas(2).yaml(
            "policy:\n  loadBalancer: roundRobin\n  retry:\n    attempts: 1\n  outlierDetection:\n    consecutive5xx: 3\n    consecutiveGatewayErrors: 0\n    baseEjectionTime: 1s\n    maxEjectionPercent: 50\n",
        ))
        .start()
        .await
        .expect("mesh starts");
    let client = mesh.client("client", false);
    let mut apps = mesh.workloads_of("hello").map(|w| &w.app);
    let (bad, good) = (apps.next().expect("bad"), apps.next().expect("good"));
    bad.always(500);
    for _ in 0..10 {
        let _ = client.get("hello", "/").await.expect("get");
    }
    assert_eq!(bad.requests(), 3, "ejected after three 5xx in a row");
    let ejected_at = Instant::now();
    for _ in 0..10 {
        let (rsp, _) = client.get("hello", "/").await.expect("get");
        assert_eq!(
            rsp.status(),
            200,
            "only the good endpoint serves while the bad one is out"
        );
    }
    assert_eq!(bad.requests(), 3);
    assert!(good.requests() >= 13);

    // After the base ejection time it gets traffic again (and, still failing, is ejected again).
    let wait = Duration::from_millis(1200).saturating_sub(ejected_at.elapsed());
    tokio::time::sleep(wait).await;
    for _ in 0..4 {
        let _ = client.get("hello", "/").await.expect("get");
    }
    assert_eq!(bad.requests(), 4, "one probe, then ejected again at once");

    // Max ejection percent: with both failing, only one of two (50%) is ever out.
    good.always(500);
    for _ in 0..20 {
        let _ = client.get("hello", "/").await.expect("get");
    }
    let (_, body) = mesh.admin_get(0, "/stats").await.expect("stats");
    let stats: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(stats["clusters"]["default/hello"]["ejectedNow"], 1);
}
