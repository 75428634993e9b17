//! The admin port: graceful shutdown on request, the JSON access log, and the log-level endpoint
//! refusing politely where the process fixed its logging.

use bytes::Bytes;
use http::Request;
use std::time::Duration;
use trellis_tests::client::{collect, full};
use trellis_tests::mesh::wait_until;
use trellis_tests::{Mesh, Service, TestClient};

#[tokio::test]
async fn post_shutdown_drains_and_stops_the_sidecar() {
    let mut mesh = Mesh::client_and(Service::http1("hello")).await;
    let index = mesh
        .workloads
        .iter()
        .position(|w| w.service == "client")
        .expect("client");
    let admin = mesh.workloads[index].admin;
    let task = mesh.take_sidecar_task(index).expect("running");
    let admin_client = TestClient::new(admin, false);
    let get = Request::get("http://localhost/shutdown")
        .body(full(Bytes::new()))
        .expect("request");
    let (rsp, _) = collect(admin_client.send(get).await.expect("sent"))
        .await
        .expect("body");
    assert_eq!(rsp.status(), 405, "shutdown needs POST");
    let post = Request::post("http://localhost/shutdown")
        .body(full(Bytes::new()))
        .expect("request");
    let (rsp, _) = collect(admin_client.send(post).await.expect("sent"))
        .await
        .expect("body");
    assert_eq!(rsp.status(), 202);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the sidecar exits after draining")
        .expect("join");
}

#[tokio::test]
async fn the_access_log_has_one_json_line_per_request() {
    let dir = tempfile::tempdir().expect("dir");
    let log = dir.path().join("access.log");
    let mesh = Mesh::builder()
        .telemetry(trellis_proxy::TelemetryConfig {
            access_log: Some(log.display().to_string()),
            ..Default::default()
        })
        .service(Service::http1("client"))
        .service(Service::http1("hello"))
        .start()
        .await
        .expect("mesh starts");
    let client = mesh.client("client", false);
    let req = Request::get("http://hello/logged?x=1")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .header("x-request-id", "req-42")
        .body(full(Bytes::new()))
        .expect("request");
    let (rsp, _) = collect(client.send(req).await.expect("sent"))
        .await
        .expect("body");
    assert_eq!(rsp.status(), 200);
    // Both sidecars write to the same file here: one outbound and one inbound line.
    wait_until(Duration::from_secs(5), || async {
        std::fs::read_to_string(&log)
            .map(|t| t.lines().count() >= 2)
            .unwrap_or(false)
    })
    .await
    .expect("two lines");
    let text = std::fs::read_to_string(&log).expect("log");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    let outbound = lines
        .iter()
        .find(|l| l["direction"] == "outbound")
        .expect("outbound line");
    assert_eq!(outbound["status"], 200);
    assert_eq!(outbound["method"], "GET");
    assert_eq!(outbound["path"], "/logged");
    assert_eq!(outbound["authority"], "hello");
    assert_eq!(outbound["trace_id"], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(outbound["request_id"], "req-42");
    assert_eq!(
        outbound["peer_identity"],
        "spiffe://trellis.local/ns/default/sa/hello"
    );
    let inbound = lines
        .iter()
        .find(|l| l["direction"] == "inbound")
        .expect("inbound line");
    assert_eq!(
        inbound["peer_identity"],
        "spiffe://trellis.local/ns/default/sa/client"
    );
    assert_eq!(inbound["trace_id"], "0af7651916cd43dd8448eb211c80319c");
}

#[tokio::test]
async fn log_level_changes_are_refused_when_the_process_owns_logging() {
    let mesh = Mesh::client_and(Service::http1("hello")).await;
    let admin = TestClient::new(mesh.workload("client").admin, false);
    let put = Request::put("http://localhost/log-level")
        .body(full("debug"))
        .expect("request");
    let (rsp, body) = collect(admin.send(put).await.expect("sent"))
        .await
        .expect("body");
    assert_eq!(rsp.status(), 501, "{}", String::from_utf8_lossy(&body));
}
