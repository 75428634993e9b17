//! Prometheus metrics as operators consume them: the exposition passes `promtool check metrics`,
//! and a real Prometheus server scraping a sidecar answers a PromQL query with the request counts
//! the test sent, by route and status class.

use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use trellis_tests::tools::{require, urlencode};
use trellis_tests::{Mesh, Service, TestClient};

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

/// A Prometheus server in a temporary directory, killed on drop.
struct Prometheus {
    _dir: tempfile::TempDir,
    _child: tokio::process::Child,
    addr: std::net::SocketAddr,
}

impl Prometheus {
    async fn scraping(binary: std::path::PathBuf, target: std::net::SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().expect("dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: sidecar\n    static_configs:\n      - targets: ['{target}']\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("config");
        let child = Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("prometheus starts");
        Prometheus {
            _dir: dir,
            _child: child,
            addr,
        }
    }

    /// The single value of an instant query, if there is exactly one series.
    async fn query(&self, promql: &str) -> Vec<(serde_json::Value, String)> {
        let path = format!("/api/v1/query?query={}", urlencode(promql));
        let Ok((_, body)) = TestClient::new(self.addr, false)
            .get(&self.addr.to_string(), &path)
            .await
        else {
            return Vec::new();
        };
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        doc["data"]["result"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .map(|r| {
                        (
                            r["metric"].clone(),
                            r["value"][1].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
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
    let admin = mesh.workload("client").admin;
    let prometheus = Prometheus::scraping(binary, admin).await;
    let promql = r#"sum by (route, status_class) (trellis_requests_total{direction="outbound",dst_service="default/hello"})"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut last = Vec::new();
    while std::time::Instant::now() < deadline {
        last = prometheus.query(promql).await;
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
