//! Live configuration changes: the control plane watches the YAML, pushes what changed, refuses
//! invalid edits with file/line/field while the old config keeps serving, and the proxy swaps
//! snapshots without disturbing requests in flight.

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use std::time::{Duration, Instant};
use trellis_tests::client::collect;
use trellis_tests::mesh::wait_until;
use trellis_tests::{Mesh, Service};

#[tokio::test]
async fn an_added_endpoint_takes_traffic_within_2s_and_a_streaming_request_survives() {
    let mut mesh = Mesh::client_and(Service::http1("hello")).await;
    let client = mesh.client("client", false);

    // A request whose body is still streaming while the config changes.
    let (mut tx, body) =
        http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(1);
    let req = Request::post("http://hello/stream")
        .body(body.map_err(|never| match never {}).boxed())
        .expect("request");
    let streaming = {
        let client = client.clone();
        tokio::spawn(async move { collect(client.send(req).await?).await })
    };
    tx.send_data(Bytes::from_static(b"before-"))
        .await
        .expect("first chunk");

    let new = mesh.add_workload("hello").await.expect("second hello");
    let new_name = mesh.workloads[new].app.name.clone();
    mesh.write_config().expect("config written");
    let changed = Instant::now();
    let mut seen_new = false;
    while changed.elapsed() < Duration::from_secs(2) {
        let (rsp, _) = client
            .get("hello", "/")
            .await
            .expect("request during change");
        assert_eq!(rsp.status(), 200, "no request fails during the change");
        if rsp
            .headers()
            .get("x-echo-server")
            .is_some_and(|v| v.as_bytes() == new_name.as_bytes())
        {
            seen_new = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        seen_new,
        "the new endpoint got no request within 2 s of the edit"
    );

    tx.send_data(Bytes::from_static(b"after"))
        .await
        .expect("last chunk");
    drop(tx);
    let (rsp, echoed) = streaming.await.expect("join").expect("streaming request");
    assert_eq!(rsp.status(), 200);
    assert_eq!(echoed, Bytes::from_static(b"before-after"));
}

#[tokio::test]
async fn an_invalid_edit_is_reported_with_file_line_field_and_the_old_config_serves() {
    let mesh = Mesh::client_and(Service::http1("hello")).await;
    let client = mesh.client("client", false);
    // The client has called hello (on demand, the sidecar holds only what its app calls).
    let (rsp, _) = client.get("hello", "/").await.expect("request");
    assert_eq!(rsp.status(), 200);
    let before = mesh.admin_get(0, "/config").await.expect("config").1;
    let version_before = mesh.control_plane_status().config_version;

    let good = mesh.render_config();
    let hello_inbound = mesh.workload("hello").inbound.to_string();
    let broken = good.replace(&hello_inbound, "127.0.0.1:not-a-port");
    let line = broken
        .lines()
        .position(|l| l.contains("not-a-port"))
        .expect("edited line")
        + 1;
    mesh.write_raw_config(&broken).expect("write");

    wait_until(Duration::from_secs(3), || async {
        mesh.control_plane_status().last_error.is_some()
    })
    .await
    .expect("the control plane reports the error");
    let status = mesh.control_plane_status();
    let error = status.last_error.unwrap_or_default();
    assert!(
        error.contains(&format!("mesh.yaml:{line}:")),
        "file and line in: {error}"
    );
    assert!(
        error.contains("services[1].endpoints[0].address"),
        "field in: {error}"
    );
    assert_eq!(
        status.config_version, version_before,
        "the invalid config was not applied"
    );

    for _ in 0..10 {
        let (rsp, _) = client.get("hello", "/").await.expect("request");
        assert_eq!(rsp.status(), 200, "the old config keeps serving");
    }
    let after = mesh.admin_get(0, "/config").await.expect("config").1;
    let endpoints = |doc: &str| -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(doc)
            .map(|v| v["config"]["clusters"]["default/hello"]["endpoints"].clone())
            .unwrap_or_default()
    };
    assert_eq!(endpoints(&before), endpoints(&after));
    assert!(endpoints(&after).as_array().is_some_and(|a| a.len() == 1));

    // Fixing the file applies again and clears the error.
    mesh.write_config().expect("write");
    wait_until(Duration::from_secs(3), || async {
        mesh.control_plane_status().last_error.is_none()
    })
    .await
    .expect("fixed config accepted");
}

#[tokio::test]
async fn an_invalid_policy_is_refused_and_the_old_policy_keeps_serving() {
    let mesh = Mesh::builder()
        .service(Service::http1("client"))
        .service(Service::http1("hello").yaml(
            "policy:\n  retry:\n    attempts: 3\n    retryOn: [5xx]\n    backoff: {base: 1ms, max: 2ms}\n",
        ))
        .start()
        .await
        .expect("mesh starts");
    let good = mesh.render_config();
    for (bad, field) in [
        (
            good.replace("attempts: 3", "attempts: 3\n        budget: {ratio: 1.5}"),
            "services[1].policy.retry.budget.ratio",
        ),
        (
            good.replace("retryOn: [5xx]", "retryOn: [5xx, sometimes]"),
            "services[1].policy.retry.retryOn[1]",
        ),
        (
            good.replace("      retry:", "      requestTimeout: -1s\n      retry:"),
            "services[1].policy.requestTimeout",
        ),
    ] {
        let line = bad
            .lines()
            .position(|l| l.contains("1.5") || l.contains("sometimes") || l.contains("-1s"))
            .expect("line")
            + 1;
        mesh.write_raw_config(&bad).expect("write");
        wait_until(Duration::from_secs(3), || async {
            mesh.control_plane_status()
                .last_error
                .is_some_and(|e| e.contains(field))
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{field} refused; status: {:?}",
                mesh.control_plane_status().last_error
            )
        });
        let error = mesh.control_plane_status().last_error.unwrap_or_default();
        assert!(
            error.contains(&format!("mesh.yaml:{line}:")),
            "line {line} in {error}"
        );

        // The old policy (3 attempts on 5xx) is still the one applied.
        let app = &mesh.workload("hello").app;
        let before = app.requests();
        app.fail_next(2, 503);
        let (rsp, _) = mesh
            .client("client", false)
            .get("hello", "/")
            .await
            .expect("get");
        assert_eq!(rsp.status(), 200);
        assert_eq!(app.requests() - before, 3);
    }
}
