//! Prometheus metrics as operators consume them: the exposition passes `promtool check metrics`,
//! and a real Prometheus server scraping a sidecar answers a PromQL query with the request counts
//! the test sent, by route and status class.

use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use trellis_tests::prometheus::Prometheus;
use trellis_tests::tools::require;
use trellis_tests::{Mesh, Service};

async fn mesh() -> Mesh {
    Mesh::client_and(Service::http1("hello")).await
}

#[tokio::test]
async fn metrics_text_passes_promtool_and_names_the_expected_series() {
    let mesh = mesh().await;
    let client = mesh.client("client", false);
    for _ in 0..3 {
        client.get("hello", "/").await.expect("get");
    }
    let (status, text) = mesh.admin_get(0, "/metrics").await.expect("metrics");
    assert_eq!(status, 200);
    for series in [
        "trellis_requests_total{direction=\"outbound\",dst_service=\"default/hello\",route=\"default\",status_class=\"2xx\",peer_identity=\"spiffe://trellis.local/ns/default/sa/hello\"} 3",
        "trellis_request_duration_seconds_count{direction=\"outbound\",dst_service=\"default/hello\",route=\"default\"} 3",
        "trellis_control_plane_connected 1",
        "trellis_tcp_connections_opened_total{direction=\"outbound\"}",
        "trellis_retries_total{dst_service=\"default/hello\"} 0",
        "trellis_certificate_expiry_timestamp_seconds ",
    ] {
        assert!(text.contains(series), "missing {series:?} in\n{text}");
    }
    // The server side counts the same requests, by caller.
    let hello = mesh
        .workloads
        .iter()
        .position(|w| w.service == "hello")
        .expect("hello");
    let (_, server_text) = mesh.admin_get(hello, "/metrics").await.expect("metrics");
    assert!(server_text.contains("trellis_requests_total{direction=\"inbound\",dst_service=\"default/hello\",route=\"inbound\",status_class=\"2xx\",peer_identity=\"spiffe://trellis.local/ns/default/sa/client\"} 3"), "{server_text}");

    let Some(promtool) = require("promtool", "validates the metrics exposition") else {
        return;
    };
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("promtool starts");
    let mut stdin = check.stdin.take().expect("stdin");
    stdin.write_all(text.as_bytes()).await.expect("write");
    drop(stdin);
    let out = check.wait_with_output().await.expect("promtool ran");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_sidecar_and_promql_returns_the_counts() {
    let Some(binary) = require("prometheus", "scrapes a sidecar in this test") else {
        return;
    };
    let mesh = mesh().await;
    let client = mesh.client("client", false);
    for _ in 0..7 {
        client.get("hello", "/").await.expect("get");
    }
    mesh.workload("hello").app.fail_next(3, 500);
    for _ in 0..3 {
        client.get("hello", "/").await.expect("get");
    }
    let admin = mesh.workload("client").admin.to_string();
    let prometheus = Prometheus::scraping(&binary, &[admin]).expect("prometheus starts");
    let promql = r#"sum by (route, status_class) (trellis_requests_total{direction="outbound",dst_service="default/hello"})"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut last = Vec::new();
    while std::time::Instant::now() < deadline {
        last = (prometheus.query(promql).await.unwrap_or_default().iter())
            .map(|r| {
                let value = r["value"][1].as_str().unwrap_or_default();
                (r["metric"].clone(), value.to_string())
            })
            .collect::<Vec<_>>();
        if last.len() == 2
            && last
                .iter()
                .map(|(_, v)| v.parse::<u64>().unwrap_or(0))
                .sum::<u64>()
                == 10
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let value = |class: &str| {
        last.iter()
            .find(|(m, _)| m["status_class"] == class && m["route"] == "default")
            .map(|(_, v)| v.clone())
    };
    assert_eq!(value("2xx").as_deref(), Some("7"));
    assert_eq!(value("5xx").as_deref(), Some("3"));
}
