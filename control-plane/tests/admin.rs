//! The admin listener of an in-process control plane (gRPC and admin both on 127.0.0.1:0), driven
//! by tonic clients acting as proxies: `/ready` follows the server's life, and `/metrics` counts
//! streams, pushes, NACKs, reloads and certificates as they happen, in an exposition that
//! `promtool check metrics` accepts and a real Prometheus scrapes.
mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::{authorized, csr, write_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use trellis_api::discovery::aggregated_discovery_client::AggregatedDiscoveryClient;
use trellis_api::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, ErrorDetail, Node};
use trellis_api::identity::identity_client::IdentityClient;
use trellis_api::identity::CertifyRequest;
use trellis_api::type_url;
use trellis_control_plane::{ControlPlane, ControlPlaneConfig};

const MESH: &str = "\
services:
  - name: hello
    ports:
      - port: 80
    endpoints:
      - address: 127.0.0.1:4143
";
const HELLO_ID: &str = "spiffe://trellis.local/ns/default/sa/hello";
const WAIT: Duration = Duration::from_secs(5);

/// One HTTP/1.1 GET with `Connection: close`: (status, body).
async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .map_err(|_| std::io::Error::other("no answer within 5 s"))??;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no header end in {text:?}")))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {head:?}")))?;
    Ok((status, body.to_owned()))
}

async fn metrics(admin: SocketAddr) -> String {
    let (status, body) = get(admin, "/metrics").await.expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of the series written exactly as `series` (name and labels), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Scrapes until `series` has `want`; fails with the last exposition after 5 s.
async fn wait_for_value(admin: SocketAddr, series: &str, want: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = metrics(admin).await;
        if value(&text, series) == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} never became {want}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn endpoints(series: &str) -> String {
    format!("{series}{{type_url=\"{}\"}}", type_url::ENDPOINTS)
}

/// A discovery stream of one proxy subscribed to `default/hello`'s endpoints.
struct Proxy {
    requests: mpsc::Sender<DeltaDiscoveryRequest>,
    responses: tonic::Streaming<DeltaDiscoveryResponse>,
}

impl Proxy {
    async fn connect(channel: Channel, token: &str, node_id: &str) -> Proxy {
        let (requests, rx) = mpsc::channel(8);
        requests
            .send(DeltaDiscoveryRequest {
                node: Some(Node {
                    id: node_id.into(),
                    service: "hello".into(),
                    namespace: "default".into(),
                    identity: HELLO_ID.into(),
                    proxy_version: "test".into(),
                    admin_address: String::new(),
                }),
                type_url: type_url::ENDPOINTS.into(),
                resource_names_subscribe: vec!["default/hello".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        let responses = AggregatedDiscoveryClient::new(channel)
            .delta_resources(authorized(ReceiverStream::new(rx), token))
            .await
            .unwrap()
            .into_inner();
        Proxy {
            requests,
            responses,
        }
    }

    async fn next(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(WAIT, self.responses.message())
            .await
            .expect("a response within 5 s")
            .expect("stream ok")
            .expect("stream open")
    }

    async fn reply(&self, nonce: &str, error: Option<&str>) {
        self.requests
            .send(DeltaDiscoveryRequest {
                type_url: type_url::ENDPOINTS.into(),
                response_nonce: nonce.into(),
                error_detail: error.map(|message| ErrorDetail {
                    code: 3,
                    message: message.into(),
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

/// `promtool check metrics` on `text`; skipped with a note when promtool is missing (a failure
/// under CI).
async fn promtool_check(text: &str) {
    let Some(promtool) = require("promtool", "validates the metrics exposition") else {
        return;
    };
    let mut check = tokio::process::Command::new(promtool)
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
        "promtool check metrics failed:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The tool's path, or None after saying the test part is skipped. Panics under CI (`CI` set).
fn require(tool: &str, why: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(tool))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!("`{tool}` is required in CI ({why})");
        }
        eprintln!("SKIPPED: `{tool}` is not installed ({why})");
    }
    found
}

struct Running {
    _dir: tempfile::TempDir,
    config_path: PathBuf,
    addr: SocketAddr,
    admin: SocketAddr,
    ca_pem: String,
    token: String,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), trellis_control_plane::Error>>,
}

impl Running {
    async fn channel(&self) -> Channel {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name("localhost");
        Endpoint::from_shared(format!("https://{}", self.addr))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("stops within 5 s")
            .unwrap()
            .unwrap();
    }
}

/// Binds a control plane, checks `/live` and `/ready` before `run`, runs it, and waits for
/// `/ready`.
async fn start() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("mesh.yaml");
    write_config(&config_path, MESH);
    let mut cfg = ControlPlaneConfig::new(&config_path, dir.path().join("state"));
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.admin = Some("127.0.0.1:0".parse().unwrap());
    cfg.config_settle = Duration::ZERO;
    let plane = ControlPlane::bind(cfg).await.unwrap();
    let admin = plane.admin_addr().expect("admin listener");
    assert_ne!(admin.port(), 0);

    // Bound but not running yet: alive, with a config, but not serving discovery.
    assert_eq!(get(admin, "/live").await.unwrap().0, 200);
    let (status, body) = get(admin, "/ready").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not serving"), "{body}");

    let (addr, ca_pem) = (plane.local_addr(), plane.ca_pem());
    let token = plane.issue_token("default", "hello");
    let (stop, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(plane.run(async {
        let _ = stop_rx.await;
    }));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = get(admin, "/ready").await.unwrap();
        if status == 200 {
            assert_eq!(body, "ready\n");
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ready: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Running {
        _dir: dir,
        config_path,
        addr,
        admin,
        ca_pem,
        token,
        stop,
        task,
    }
}

#[tokio::test]
async fn metrics_follow_streams_pushes_nacks_reloads_and_certificates() {
    let cp = start().await;
    let admin = cp.admin;
    let text = metrics(admin).await;
    for (series, want) in [
        ("trellis_control_plane_connected_proxies", 0.0),
        ("trellis_control_plane_config_version", 1.0),
        (&endpoints("trellis_control_plane_pushes_total"), 0.0),
        (
            "trellis_control_plane_config_reloads_total{result=\"applied\"}",
            0.0,
        ),
        ("trellis_control_plane_certificates_issued_total", 0.0),
    ] {
        assert_eq!(value(&text, series), Some(want), "{series} in\n{text}");
    }
    // The issuing certificate (the state directory's intermediate) expires in the future.
    let expiry =
        value(&text, "trellis_control_plane_ca_expiry_timestamp_seconds").expect("CA expiry");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(expiry > now + 86_400.0, "{expiry} vs now {now}");

    let channel = cp.channel().await;

    // Certificates: one issued, one refused for asking another identity.
    let mut identity = IdentityClient::new(channel.clone());
    let certify = |id: &str| CertifyRequest {
        identity: id.into(),
        csr_der: csr(id),
    };
    identity
        .certify(authorized(certify(HELLO_ID), &cp.token))
        .await
        .unwrap();
    let other = "spiffe://trellis.local/ns/default/sa/admin";
    identity
        .certify(authorized(certify(other), &cp.token))
        .await
        .unwrap_err();
    identity
        .certify(authorized(certify(HELLO_ID), "not-a-token"))
        .await
        .unwrap_err();

    // Two proxies connect and each receives its endpoints.
    let mut a = Proxy::connect(channel.clone(), &cp.token, "hello-a").await;
    let mut b = Proxy::connect(channel.clone(), &cp.token, "hello-b").await;
    let first_a = a.next().await;
    let first_b = b.next().await;
    a.reply(&first_a.nonce, None).await;
    b.reply(&first_b.nonce, None).await;
    let text = metrics(admin).await;
    for (series, want) in [
        ("trellis_control_plane_connected_proxies", 2.0),
        (&endpoints("trellis_control_plane_pushes_total"), 2.0),
        ("trellis_control_plane_certificates_issued_total", 1.0),
        (
            "trellis_control_plane_certificate_requests_failed_total{reason=\"identity_mismatch\"}",
            1.0,
        ),
        (
            "trellis_control_plane_certificate_requests_failed_total{reason=\"unauthenticated\"}",
            1.0,
        ),
        // Responses to a stream's own requests are not pushes of a new version.
        ("trellis_control_plane_push_latency_seconds_count", 0.0),
    ] {
        assert_eq!(value(&text, series), Some(want), "{series} in\n{text}");
    }

    // A config change: a new version, pushed to both proxies, each push timed once.
    write_config(
        &cp.config_path,
        &format!("{MESH}      - address: 127.0.0.2:4143\n"),
    );
    let update_a = a.next().await;
    let update_b = b.next().await;
    assert_eq!(update_a.system_version_info, "2");
    assert_eq!(update_b.system_version_info, "2");
    let text = metrics(admin).await;
    for (series, want) in [
        ("trellis_control_plane_config_version", 2.0),
        (
            "trellis_control_plane_config_reloads_total{result=\"applied\"}",
            1.0,
        ),
        (&endpoints("trellis_control_plane_pushes_total"), 4.0),
        ("trellis_control_plane_push_latency_seconds_count", 2.0),
        (
            "trellis_control_plane_push_latency_seconds_bucket{le=\"+Inf\"}",
            2.0,
        ),
        (&endpoints("trellis_control_plane_nacks_total"), 0.0),
    ] {
        assert_eq!(value(&text, series), Some(want), "{series} in\n{text}");
    }
    let sum = value(&text, "trellis_control_plane_push_latency_seconds_sum").expect("sum");
    assert!(sum > 0.0 && sum < 5.0, "{sum}");

    // Proxy a rejects the update: one NACK of that type, and /status shows it.
    a.reply(&update_a.nonce, Some("bad endpoint")).await;
    b.reply(&update_b.nonce, None).await;
    wait_for_value(admin, &endpoints("trellis_control_plane_nacks_total"), 1.0).await;
    let text = metrics(admin).await;
    let clusters = format!(
        "trellis_control_plane_nacks_total{{type_url=\"{}\"}}",
        type_url::CLUSTERS
    );
    assert_eq!(value(&text, &clusters), Some(0.0), "{text}");
    let (status, body) = get(admin, "/status").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["ready"], true, "{body}");
    assert_eq!(doc["connectedProxies"], 2, "{body}");
    assert_eq!(doc["status"]["configVersion"], 2, "{body}");
    let nack = &doc["status"]["nacks"][0];
    assert_eq!(nack["nodeId"], "hello-a", "{body}");
    assert_eq!(nack["nonce"], update_a.nonce.as_str(), "{body}");
    assert_eq!(nack["message"], "bad endpoint", "{body}");

    // An invalid edit is rejected, counted once, and nothing is pushed.
    write_config(
        &cp.config_path,
        "services: [{name: hello, ports: [{port: 0}]}]\n",
    );
    wait_for_value(
        admin,
        "trellis_control_plane_config_reloads_total{result=\"rejected\"}",
        1.0,
    )
    .await;
    let text = metrics(admin).await;
    assert_eq!(
        value(&text, "trellis_control_plane_config_version"),
        Some(2.0)
    );
    assert_eq!(
        value(&text, &endpoints("trellis_control_plane_pushes_total")),
        Some(4.0)
    );

    // Proxy b goes away: the gauge follows.
    drop(b);
    wait_for_value(admin, "trellis_control_plane_connected_proxies", 1.0).await;

    promtool_check(&metrics(admin).await).await;

    drop(a);
    cp.stop().await;
    // The admin listener ends with the control plane.
    assert!(
        get(admin, "/live").await.is_err(),
        "the admin port still answers after run returned"
    );
}

/// A Prometheus server scraping the admin port every second, killed on drop.
struct Prometheus {
    _dir: tempfile::TempDir,
    _child: tokio::process::Child,
    addr: SocketAddr,
}

impl Prometheus {
    fn scraping(binary: PathBuf, target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: control-plane\n    \
             static_configs:\n      - targets: ['{target}']\n"
        );
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let child = tokio::process::Command::new(binary)
            .arg(format!("--config.file={}", config_file.display()))
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

    /// The value of `promql` when it returns exactly one series.
    async fn query_one(&self, promql: &str) -> Option<String> {
        let query: String = promql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (status, body) = get(self.addr, &format!("/api/v1/query?query={query}"))
            .await
            .ok()?;
        if status != 200 {
            return None;
        }
        let doc: serde_json::Value = serde_json::from_str(&body).ok()?;
        match doc["data"]["result"].as_array()?.as_slice() {
            [one] => one["value"][1].as_str().map(str::to_owned),
            _ => None,
        }
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_control_plane() {
    let Some(binary) = require("prometheus", "scrapes the control plane in this test") else {
        return;
    };
    let cp = start().await;
    let channel = cp.channel().await;
    let mut proxy = Proxy::connect(channel, &cp.token, "hello-p").await;
    let first = proxy.next().await;
    proxy.reply(&first.nonce, None).await;

    let prometheus = Prometheus::scraping(binary, cp.admin);
    let want = [
        ("trellis_control_plane_connected_proxies", "1"),
        ("up{job=\"control-plane\"}", "1"),
        (
            "sum(trellis_control_plane_pushes_total{type_url=\"trellis.config.v1.Endpoints\"})",
            "1",
        ),
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for (promql, value) in want {
        loop {
            let got = prometheus.query_one(promql).await;
            if got.as_deref() == Some(value) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{promql}: {got:?}, expected {value}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    drop(proxy);
    cp.stop().await;
}
