//! On-demand discovery (`--discovery-mode on-demand`): a sidecar holds only the services its app
//! calls. The first request to a service it does not hold waits for the service's resources and
//! succeeds; a name the control plane does not know gets a quick 404 naming it; concurrent first
//! requests share one subscription; an idle service is unsubscribed; changes still reach the
//! subscriber, across a control-plane restart too; and wildcard mode is unchanged.

use http::Request;
use serde_json::Value;
use std::time::{Duration, Instant};
use trellis_proxy::discovery::{DiscoveryMode, DiscoverySettings};
use trellis_tests::client::{collect, full};
use trellis_tests::mesh::wait_until;
use trellis_tests::{Mesh, Service};

const ROUTES: &str = "trellis.config.v1.RouteConfig";

fn on_demand(idle: Duration) -> DiscoverySettings {
    DiscoverySettings {
        mode: DiscoveryMode::OnDemand,
        wait: Duration::from_secs(3),
        idle,
    }
}

async fn mesh(discovery: DiscoverySettings) -> Mesh {
    Mesh::builder()
        .discovery(discovery)
        .service(Service::http1("client"))
        .service(Service::http1("hello"))
        .service(Service::http1("other"))
        .start()
        .await
        .expect("mesh starts")
}

/// The client sidecar's `config.discovery` and the route tables it holds.
async fn discovery_of(mesh: &Mesh) -> (Value, Vec<String>) {
    let doc = mesh.config_doc(0).await;
    let config = &doc["config"];
    let routes = (config["routes"].as_object())
        .map(|r| r.keys().cloned().collect())
        .unwrap_or_default();
    (config["discovery"].clone(), routes)
}

fn subscribed(discovery: &Value, type_url: &str) -> Vec<String> {
    (discovery["subscriptions"][type_url].as_array())
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// POSTs `body` to `authority` through the client's sidecar: status and the echoed bytes.
async fn post(mesh: &Mesh, authority: &str, body: &'static str) -> (u16, String) {
    let req = Request::post(format!("http://{authority}/echo"))
        .body(full(body))
        .expect("request");
    let rsp = mesh
        .client("client", false)
        .send(req)
        .await
        .expect("response");
    let (rsp, bytes) = collect(rsp).await.expect("body");
    (
        rsp.status().as_u16(),
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

#[tokio::test]
async fn a_sidecar_subscribes_only_to_what_its_app_calls_and_the_first_request_succeeds() {
    let mesh = mesh(on_demand(Duration::from_secs(600))).await;
    let (discovery, routes) = discovery_of(&mesh).await;
    assert_eq!(discovery["mode"], "on-demand", "{discovery}");
    assert!(subscribed(&discovery, ROUTES).is_empty(), "{discovery}");
    assert!(
        routes.is_empty(),
        "nothing held before the app calls: {routes:?}"
    );

    let started = Instant::now();
    let (status, body) = post(&mesh, "hello", "first-ping").await;
    assert_eq!((status, body.as_str()), (200, "first-ping"));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    let (discovery, routes) = discovery_of(&mesh).await;
    assert_eq!(
        subscribed(&discovery, ROUTES),
        ["default/hello"],
        "{discovery}"
    );
    for t in ["trellis.config.v1.Cluster", "trellis.config.v1.Endpoints"] {
        assert_eq!(subscribed(&discovery, t), ["default/hello"], "{discovery}");
    }
    assert_eq!(routes, ["default/hello"], "only the service called");

    // Eight concurrent first requests to another service: one subscription (one change per
    // type), and every request succeeds.
    let changes_before = discovery["subscriptionChanges"]
        .as_u64()
        .unwrap_or_default();
    let requests = (0..8).map(|_| post(&mesh, "other.default.svc.cluster.local", "x"));
    for (status, body) in futures_util::future::join_all(requests).await {
        assert_eq!((status, body.as_str()), (200, "x"));
    }
    let (discovery, routes) = discovery_of(&mesh).await;
    let changes = discovery["subscriptionChanges"]
        .as_u64()
        .unwrap_or_default();
    assert_eq!(changes - changes_before, 3, "{discovery}");
    assert_eq!(routes, ["default/hello", "default/other"]);
}

#[tokio::test]
async fn an_unknown_service_gets_a_quick_404_naming_it() {
    let mesh = mesh(on_demand(Duration::from_secs(600))).await;
    let client = mesh.client("client", false);
    for attempt in 0..2 {
        let started = Instant::now();
        let (rsp, body) = client.get("nope", "/").await.expect("answer");
        let took = started.elapsed();
        assert_eq!(rsp.status(), 404, "attempt {attempt}");
        let said = (rsp.headers().get("trellis-error"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(said.contains("default/nope"), "{said}");
        assert!(String::from_utf8_lossy(&body).contains("default/nope"));
        // Well under the 3 s wait bound: the control plane's answer, not the timeout.
        assert!(
            took < Duration::from_millis(1500),
            "attempt {attempt}: {took:?}"
        );
    }
    let (discovery, _) = discovery_of(&mesh).await;
    assert_eq!(
        discovery["unknownServices"][0], "default/nope",
        "{discovery}"
    );
}

#[tokio::test]
async fn an_idle_service_is_unsubscribed_and_subscribed_again_when_called() {
    let mesh = mesh(on_demand(Duration::from_millis(1000))).await;
    assert_eq!(post(&mesh, "hello", "a").await, (200, "a".into()));
    let (discovery, _) = discovery_of(&mesh).await;
    assert_eq!(subscribed(&discovery, ROUTES), ["default/hello"]);

    let dropped = wait_until(Duration::from_secs(6), || async {
        let (discovery, routes) = discovery_of(&mesh).await;
        subscribed(&discovery, ROUTES).is_empty() && routes.is_empty()
    })
    .await;
    let after = dropped.expect("unsubscribed and forgotten after 1 s idle");
    assert!(
        after >= Duration::from_millis(500),
        "not before it was idle: {after:?}"
    );

    assert_eq!(post(&mesh, "hello", "b").await, (200, "b".into()));
    let (discovery, _) = discovery_of(&mesh).await;
    assert_eq!(subscribed(&discovery, ROUTES), ["default/hello"]);
}

#[tokio::test]
async fn endpoint_changes_reach_an_on_demand_subscriber_also_after_a_control_plane_restart() {
    let mut mesh = mesh(on_demand(Duration::from_secs(600))).await;
    assert_eq!(post(&mesh, "hello", "a").await, (200, "a".into()));

    mesh.restart_control_plane(None).await.expect("restart");
    // The sidecar reconnects with its subscription set and versions; then an endpoint is added.
    wait_until(Duration::from_secs(10), || async {
        mesh.config_doc(0).await["controlPlaneConnected"] == true
    })
    .await
    .expect("reconnected");
    let failures = &mesh.config_doc(0).await["discoveryFailures"]["total"];
    assert!(
        failures.as_u64() >= Some(1),
        "the stream was lost: {failures}"
    );
    let new = mesh.add_workload("hello").await.expect("second hello");
    let new_name = mesh.workloads[new].app.name.clone();
    mesh.write_config().expect("config written");
    let client = mesh.client("client", false);
    let seen = wait_until(Duration::from_secs(5), || async {
        let (rsp, _) = client.get("hello", "/").await.expect("request");
        assert_eq!(rsp.status(), 200);
        let server = rsp.headers().get("x-echo-server");
        server.is_some_and(|v| v.as_bytes() == new_name.as_bytes())
    })
    .await;
    seen.expect("the new endpoint takes traffic");
    let (discovery, routes) = discovery_of(&mesh).await;
    assert_eq!(
        subscribed(&discovery, ROUTES),
        ["default/hello"],
        "{discovery}"
    );
    assert_eq!(routes, ["default/hello"]);
}

#[tokio::test]
async fn wildcard_mode_holds_every_service_from_the_start() {
    let wildcard = DiscoverySettings {
        mode: DiscoveryMode::Wildcard,
        ..DiscoverySettings::default()
    };
    let mesh = mesh(wildcard).await;
    let (discovery, routes) = discovery_of(&mesh).await;
    assert_eq!(discovery["mode"], "wildcard", "{discovery}");
    assert_eq!(
        routes,
        ["default/client", "default/hello", "default/other"],
        "every service before any request"
    );
    assert_eq!(post(&mesh, "hello", "w").await, (200, "w".into()));
    let (rsp, _) = mesh
        .client("client", false)
        .get("nope", "/")
        .await
        .expect("answer");
    assert_eq!(rsp.status(), 404);
}

#[tokio::test]
async fn a_split_to_another_service_subscribes_that_backend_too() {
    let routes = "routes:\n  - name: to-v2\n    match:\n      path: {prefix: /v2}\n    backends:\n      - {service: hello-v2}\n";
    let mesh = Mesh::builder()
        .discovery(on_demand(Duration::from_secs(600)))
        .service(Service::http1("client"))
        .service(Service::http1("hello").yaml(routes))
        .service(Service::http1("hello-v2"))
        .start()
        .await
        .expect("mesh starts");
    let client = mesh.client("client", false);
    // The very first request takes the route to the other service's backend.
    let (rsp, _) = client.get("hello", "/v2/x").await.expect("answer");
    assert_eq!(rsp.status(), 200);
    let server = rsp
        .headers()
        .get("x-echo-server")
        .map(|v| v.as_bytes().to_vec());
    let v2 = mesh.workload("hello-v2").app.name.clone();
    assert_eq!(server, Some(v2.into_bytes()));
    let (discovery, routes) = discovery_of(&mesh).await;
    assert_eq!(
        subscribed(&discovery, ROUTES),
        ["default/hello"],
        "{discovery}"
    );
    let clusters = subscribed(&discovery, "trellis.config.v1.Cluster");
    assert_eq!(
        clusters,
        ["default/hello", "default/hello-v2"],
        "{discovery}"
    );
    assert_eq!(routes, ["default/hello"]);
}

#[tokio::test]
async fn a_service_added_after_its_404_is_pushed_to_the_subscriber() {
    let mut mesh = mesh(on_demand(Duration::from_secs(600))).await;
    let client = mesh.client("client", false);
    let (rsp, _) = client.get("late", "/").await.expect("answer");
    assert_eq!(rsp.status(), 404);

    // The name stays subscribed: once the service exists, the control plane sends it unasked.
    let black_hole: std::net::SocketAddr = "127.0.0.1:9".parse().expect("address");
    mesh.services.push(Service::external("late", &[black_hole]));
    mesh.write_config().expect("config written");
    wait_until(Duration::from_secs(5), || async {
        discovery_of(&mesh)
            .await
            .1
            .contains(&"default/late".to_string())
    })
    .await
    .expect("the new service arrives without another request");
    let (discovery, _) = discovery_of(&mesh).await;
    assert_eq!(
        discovery["unknownServices"],
        serde_json::json!([]),
        "{discovery}"
    );
    // Routed now (its one endpoint refuses connections): no longer the unknown-service 404.
    let (rsp, _) = client.get("late", "/").await.expect("answer");
    assert_ne!(rsp.status(), 404);
}
