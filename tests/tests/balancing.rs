//! Load balancing and route matching, end to end: P2C over peak-EWMA steers away from a slow
//! endpoint, weights and consistent hashing behave as configured, weighted splits hold, and
//! header/path matches pick the right backend.

use http::Request;
use std::collections::HashMap;
use std::time::Duration;
use trellis_tests::client::{collect, full};
use trellis_tests::{Mesh, Service};

fn server(rsp: &http::Response<()>) -> String {
    rsp.headers()
        .get("x-echo-server")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn p2c_ewma_sends_under_20_percent_to_a_10x_slower_endpoint() {
    let mesh = Mesh::builder()
        .service(Service::http1("client"))
        .service(
            Service::http1("hello")
                .replicas(2)
                .yaml("policy:\n  loadBalancer: p2cEwma\n"),
        )
        .start()
        .await
        .expect("mesh starts");
    let mut apps = mesh.workloads_of("hello").map(|w| &w.app);
    let (slow, fast) = (apps.next().expect("slow"), apps.next().expect("fast"));
    // 10× the fast endpoint's latency as measured through the mesh (its 5 ms plus the proxies').
    slow.delay(Duration::from_millis(100));
    fast.delay(Duration::from_millis(5));
    let client = mesh.client("client", false);
    let batches = |n: usize| {
        let client = client.clone();
        async move {
            for _ in 0..n {
                let batch: Vec<_> = (0..4).map(|_| client.get("hello", "/")).collect();
                for r in futures_util::future::join_all(batch).await {
                    assert_eq!(r.expect("get").0.status(), 200);
                }
            }
        }
    };
    // Warm-up: the pooled connections to both endpoints are opened (their handshakes, slow on a
    // busy host, would otherwise be part of the first latency samples), then the share is counted.
    batches(5).await;
    let (slow_before, fast_before) = (slow.requests(), fast.requests());
    let total = 200;
    batches(total / 4).await;
    let slow_share = slow.requests() - slow_before;
    let share = slow_share as f64 / total as f64;
    assert!(
        share < 0.2,
        "slow endpoint got {:.1}% of requests",
        share * 100.0
    );
    assert_eq!(slow_share + fast.requests() - fast_before, total);
}

#[tokio::test]
async fn weights_and_consistent_hashing_behave_as_configured() {
    let mesh = Mesh::builder()
        .service(Service::http1("client"))
        .service(
            Service::http1("weighted")
                .replicas(2)
                .weights(&[3, 1])
                .yaml("policy:\n  loadBalancer: roundRobin\n"),
        )
        .service(
            Service::http1("sticky")
                .replicas(3)
                .yaml("policy:\n  loadBalancer: consistentHash\n  hashOn: {header: x-user}\n"),
        )
        .start()
        .await
        .expect("mesh starts");
    let client = mesh.client("client", false);
    for _ in 0..400 {
        client.get("weighted", "/").await.expect("get");
    }
    let counts: Vec<usize> = mesh
        .workloads_of("weighted")
        .map(|w| w.app.requests())
        .collect();
    assert_eq!(counts, vec![300, 100], "weights 3:1");

    let mut homes: HashMap<u32, String> = HashMap::new();
    for round in 0..3 {
        for user in 0..30u32 {
            let req = Request::get("http://sticky/")
                .header("x-user", user.to_string())
                .body(full(""))
                .expect("request");
            let (rsp, _) = collect(client.send(req).await.expect("get"))
                .await
                .expect("body");
            let srv = server(&rsp);
            if round == 0 {
                homes.insert(user, srv);
            } else {
                assert_eq!(
                    homes.get(&user),
                    Some(&srv),
                    "user {user} stays on one endpoint"
                );
            }
        }
    }
    let distinct: std::collections::HashSet<&String> = homes.values().collect();
    assert_eq!(
        distinct.len(),
        3,
        "30 users spread over all three endpoints"
    );
}

#[tokio::test]
async fn a_90_10_split_and_header_and_path_matches_route_as_configured() {
    let routes = "routes:\n  - name: api\n    match:\n      path: {prefix: /api}\n    backends:\n      - {service: api, weight: 1}\n  - name: canary-header\n    match:\n      headers:\n        - {name: x-canary, exact: \"always\"}\n    backends:\n      - {service: web-canary, weight: 1}\n  - name: split\n    backends:\n      - {service: web, weight: 90}\n      - {service: web-canary, weight: 10}\n";
    let mesh = Mesh::builder()
        .service(Service::http1("client"))
        .service(Service::http1("web").yaml(routes))
        .service(Service::http1("web-canary"))
        .service(Service::http1("api"))
        .start()
        .await
        .expect("mesh starts");
    let client = mesh.client("client", false);
    let mut canary = 0;
    let total = 2000;
    for _ in 0..total {
        let (rsp, _) = client.get("web", "/").await.expect("get");
        if server(&rsp).starts_with("web-canary") {
            canary += 1;
        }
    }
    let share = canary as f64 / total as f64;
    assert!(
        (0.07..=0.13).contains(&share),
        "canary share {:.1}%",
        share * 100.0
    );

    let (rsp, _) = client.get("web", "/api/users").await.expect("get");
    assert!(
        server(&rsp).starts_with("api"),
        "path prefix /api → api, got {}",
        server(&rsp)
    );
    let req = Request::get("http://web/")
        .header("x-canary", "always")
        .body(full(""))
        .expect("request");
    let (rsp, _) = collect(client.send(req).await.expect("get"))
        .await
        .expect("body");
    assert!(
        server(&rsp).starts_with("web-canary"),
        "header match → canary, got {}",
        server(&rsp)
    );
}
