//! The control plane killed and restarted under traffic: sidecars keep serving with the last
//! config and their certificates (mTLS between them keeps working, identities unchanged), retry
//! the discovery stream with a jittered backoff while it is down, and pick up a config changed
//! during the outage once it is back, without a restart. A sidecar that starts while the control
//! plane is down becomes ready once it returns.

use std::time::{Duration, Instant};
use trellis_tests::mesh::{wait_until, Mesh};
use trellis_tests::traffic::SteadyTraffic;
use trellis_tests::{Service, TestClient};

/// Which app answered `path` on `hello`, and the caller identity its sidecar reported.
async fn answered_by(client: &TestClient, path: &str) -> Option<(String, String)> {
    let (rsp, _) = client.get("hello", path).await.ok()?;
    if rsp.status() != 200 {
        return None;
    }
    let header = |name: &str| {
        rsp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    Some((
        header("x-echo-server"),
        header("x-echo-h-trellis-client-id"),
    ))
}

const ROUTE_TO_V2: &str = "\
routes:
  - name: to-v2
    match:
      path: {prefix: /v2}
    backends:
      - {service: hello-v2}
";

#[tokio::test]
async fn sidecars_serve_through_a_control_plane_outage_and_resync_when_it_returns() {
    let mut mesh = Mesh::builder()
        .service(Service::http1("client"))
        .service(Service::http1("hello"))
        .service(Service::http1("hello-v2"))
        .start()
        .await
        .expect("mesh starts");
    let client = mesh.client("client", false);
    let hello_app = mesh.workload("hello").app.name.clone();
    let v2_app = mesh.workload("hello-v2").app.name.clone();
    let client_id = mesh.service_spiffe_id("client").expect("id");
    let serials_before: Vec<serde_json::Value> = {
        let mut v = Vec::new();
        for i in 0..mesh.workloads.len() {
            v.push(mesh.config_doc(i).await["identity"]["serial"].clone());
        }
        v
    };
    assert!(
        serials_before.iter().all(|s| s.is_string()),
        "{serials_before:?}"
    );
    assert_eq!(
        answered_by(&client, "/v2/x").await,
        Some((hello_app.clone(), client_id.clone())),
        "no route yet: /v2 goes to hello"
    );

    let load = SteadyTraffic::start(client.clone(), "hello", Duration::from_millis(5));
    tokio::time::sleep(Duration::from_millis(300)).await;

    mesh.stop_control_plane().await;
    let down_at = Instant::now();
    // While it is down every sidecar notices, keeps trying (two or more failed streams, spaced
    // by the backoff rather than a tight loop), and stays ready.
    wait_until(Duration::from_secs(10), || async {
        let mut all = true;
        for i in 0..mesh.workloads.len() {
            let doc = mesh.config_doc(i).await;
            all &= doc["controlPlaneConnected"] == false
                && doc["discoveryFailures"]["total"].as_u64().unwrap_or(0) >= 2;
        }
        all
    })
    .await
    .expect("every sidecar retries the discovery stream while the control plane is down");
    let doc = mesh.config_doc(0).await;
    let attempts = doc["discoveryFailures"]["total"].as_u64().unwrap_or(0);
    let elapsed = down_at.elapsed();
    // Backoff steps are >= 200 ms: n failures need at least (n - 1) * 200 ms.
    assert!(
        elapsed >= Duration::from_millis(200) * (attempts.saturating_sub(1) as u32),
        "{attempts} failed streams in {elapsed:?}: too many for a backoff"
    );
    for i in 0..mesh.workloads.len() {
        assert_eq!(mesh.admin_get(i, "/ready").await.expect("ready").0, 200);
    }

    // The config changes while nobody can deliver it.
    let hello = mesh
        .services
        .iter_mut()
        .find(|s| s.name == "hello")
        .expect("hello service");
    *hello = hello.clone().yaml(ROUTE_TO_V2);
    mesh.write_config().expect("write config");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        answered_by(&client, "/v2/x").await,
        Some((hello_app.clone(), client_id.clone())),
        "the last config keeps serving while the control plane is down"
    );

    let outage = down_at.elapsed();
    mesh.restart_control_plane(None).await.expect("restart");
    let back_at = Instant::now();
    let resynced = wait_until(Duration::from_secs(20), || async {
        answered_by(&client, "/v2/x")
            .await
            .map(|(server, _)| server)
            == Some(v2_app.clone())
    })
    .await
    .expect("the new route applies after the control plane returns, without a restart");
    // One backoff step is at most 10 s; the outage was shorter, so the step was smaller.
    assert!(
        resynced < Duration::from_secs(15),
        "resynced after {resynced:?}"
    );
    println!(
        "outage {outage:?}, resynced {resynced:?} after the restart ({attempts}+ failed streams)"
    );

    wait_until(Duration::from_secs(10), || async {
        let mut all = true;
        for i in 0..mesh.workloads.len() {
            let doc = mesh.config_doc(i).await;
            all &= doc["controlPlaneConnected"] == true
                && doc["discoveryFailures"]["consecutive"] == 0;
        }
        all
    })
    .await
    .expect("every sidecar reconnects");
    assert_eq!(
        answered_by(&client, "/v2/x").await,
        Some((v2_app, client_id.clone())),
        "mTLS with the same identity after the resync"
    );
    for (i, before) in serials_before.iter().enumerate() {
        let now = mesh.config_doc(i).await["identity"]["serial"].clone();
        assert_eq!(&now, before, "workload {i} kept its certificate");
    }

    let counts = load.finish().await;
    let (ok, failed) = (counts.ok(), counts.failed);
    println!(
        "{ok} requests succeeded, {failed} failed across the outage ({:?})",
        back_at.elapsed()
    );
    assert_eq!(
        failed, 0,
        "no request fails because the control plane is away"
    );
    assert!(ok >= 20, "traffic flowed during the outage ({ok} requests)");
}

#[tokio::test]
async fn a_sidecar_started_while_the_control_plane_is_down_becomes_ready_when_it_returns() {
    let mut mesh = Mesh::client_and(Service::http1("hello")).await;
    mesh.stop_control_plane().await;
    let mut sidecar = mesh.standalone_sidecar("client").await.expect("sidecar");
    sidecar.start().expect("start");
    wait_until(Duration::from_secs(10), || async {
        let Ok((_, body)) = sidecar.admin_get("/config").await else {
            return false;
        };
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        doc["discoveryFailures"]["total"].as_u64().unwrap_or(0) >= 2
    })
    .await
    .expect("the new sidecar keeps trying");
    let (status, why) = sidecar.admin_get("/ready").await.expect("ready");
    assert_eq!(status, 503, "not ready without a control plane: {why}");

    mesh.restart_control_plane(None).await.expect("restart");
    let took = wait_until(Duration::from_secs(20), || async {
        sidecar.admin_get("/ready").await.map(|r| r.0).ok() == Some(200)
    })
    .await
    .expect("ready once the control plane is back");
    println!("ready {took:?} after the control plane returned");
    let (rsp, _) = TestClient::new(sidecar.outbound, false)
        .get("hello", "/")
        .await
        .expect("request through the new sidecar");
    assert_eq!(rsp.status(), 200);
}
