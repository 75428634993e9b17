//! Helpers shared by the fault suites that run the real `trellis-control-plane` binary and talk to
//! it as a proxy would (token, TLS, discovery stream). Every process started here is killed by a
//! guard, also when an assertion fails. Not every suite uses every helper.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc as tokio_mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::Request;
use trellis_api::discovery::aggregated_discovery_client::AggregatedDiscoveryClient;
use trellis_api::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node};
use trellis_api::type_url;

pub const BIN: &str = env!("CARGO_BIN_EXE_trellis-control-plane");

/// Kills and reaps the child when dropped.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Waits for the exit and returns what it printed (small outputs: stdout is read first).
    pub fn output(&mut self) -> std::process::Output {
        use std::io::Read;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        if let Some(mut pipe) = self.0.stdout.take() {
            pipe.read_to_end(&mut stdout).expect("read stdout");
        }
        if let Some(mut pipe) = self.0.stderr.take() {
            pipe.read_to_end(&mut stderr).expect("read stderr");
        }
        let status = self.0.wait().expect("wait");
        std::process::Output {
            status,
            stdout,
            stderr,
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `serve` process that printed its address and CA path.
pub struct Served {
    pub child: ChildGuard,
    pub addr: std::net::SocketAddr,
    pub ca_pem: String,
    /// Everything it printed (stdout, where the logs go, and stderr), collected by threads.
    pub output: std::sync::Arc<std::sync::Mutex<String>>,
}

/// Starts `program args…` (the binary, possibly behind `prlimit`) and waits until it serves.
pub fn start_serve(mut command: Command) -> Served {
    let child = command
        .env("RUST_LOG", "info")
        // Plain log lines (no colour codes between field names and values).
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn trellis-control-plane");
    let mut guard = ChildGuard(child);
    let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    if let Some(pipe) = guard.0.stderr.take() {
        let sink = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut all = sink.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
    }
    let (tx, lines) = mpsc::channel();
    let stdout = guard.0.stdout.take().expect("stdout piped");
    let sink = output.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            {
                let mut all = sink.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
            let _ = tx.send(line);
        }
    });
    let start = Instant::now();
    let (mut addr, mut ca) = (None, None);
    while addr.is_none() || ca.is_none() {
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(50)) {
            if let Some(a) = line.strip_prefix("listening on ") {
                addr = Some(a.trim().parse().expect("address"));
            }
            if let Some(p) = line.strip_prefix("CA certificate: ") {
                ca = Some(PathBuf::from(p.trim()));
            }
        }
        if let Some(status) = guard.0.try_wait().expect("try_wait") {
            // Let the reader threads take the last lines.
            std::thread::sleep(Duration::from_millis(100));
            let all = output.lock().unwrap().clone();
            panic!("serve exited {status}: {all}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "serve did not start within 20 s"
        );
    }
    let ca_pem = std::fs::read_to_string(ca.expect("ca path")).expect("read CA");
    Served {
        child: guard,
        addr: addr.expect("addr"),
        ca_pem,
        output,
    }
}

/// `serve --listen 127.0.0.1:0 --config … --state-dir …` plus `extra`.
pub fn serve_command(config: &Path, state_dir: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(config)
        .arg("--state-dir")
        .arg(state_dir)
        .args(extra);
    command
}

/// Runs `token` and returns what it printed.
pub fn token(state_dir: &Path, service_account: &str) -> String {
    let out = Command::new(BIN)
        .args(["token", "--namespace", "default", "--service-account"])
        .arg(service_account)
        .arg("--state-dir")
        .arg(state_dir)
        .output()
        .expect("run token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

pub fn authorized<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    let value = format!("Bearer {token}").parse().expect("header value");
    request.metadata_mut().insert("authorization", value);
    request
}

/// A TLS channel to the control plane, trusting `ca_pem`.
pub async fn connect(
    addr: std::net::SocketAddr,
    ca_pem: &str,
) -> Result<Channel, tonic::transport::Error> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// An open discovery stream: keep `requests` to keep it open.
pub struct Stream {
    pub requests: tokio_mpsc::Sender<DeltaDiscoveryRequest>,
    pub responses: tonic::Streaming<DeltaDiscoveryResponse>,
}

impl Stream {
    /// The next response within `limit`.
    pub async fn next(&mut self, limit: Duration) -> DeltaDiscoveryResponse {
        tokio::time::timeout(limit, self.responses.message())
            .await
            .expect("a response in time")
            .expect("stream ok")
            .expect("stream open")
    }

    pub async fn ack(&self, nonce: &str) {
        self.requests
            .send(DeltaDiscoveryRequest {
                type_url: type_url::ENDPOINTS.into(),
                response_nonce: nonce.into(),
                ..Default::default()
            })
            .await
            .expect("stream open");
    }
}

/// Opens a discovery stream subscribed to the endpoints of `default/<service>`.
pub async fn open_stream(
    channel: Channel,
    token: &str,
    node_id: &str,
    service: &str,
) -> Result<Stream, tonic::Status> {
    let (tx, rx) = tokio_mpsc::channel(8);
    tx.send(DeltaDiscoveryRequest {
        node: Some(Node {
            id: node_id.into(),
            service: service.into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        type_url: type_url::ENDPOINTS.into(),
        resource_names_subscribe: vec![format!("default/{service}")],
        ..Default::default()
    })
    .await
    .expect("fresh channel");
    let mut client = AggregatedDiscoveryClient::new(channel);
    let responses = client
        .delta_resources(authorized(ReceiverStream::new(rx), token))
        .await?
        .into_inner();
    Ok(Stream {
        requests: tx,
        responses,
    })
}

/// The endpoint addresses of an ENDPOINTS response.
pub fn addresses(response: &DeltaDiscoveryResponse) -> Vec<String> {
    use prost::Message;
    response
        .resources
        .iter()
        .flat_map(|r| {
            trellis_api::config::Endpoints::decode(r.payload.as_slice())
                .expect("endpoints")
                .endpoints
        })
        .map(|e| e.address)
        .collect()
}

/// A CSR for a key made here, with `uri` as its only SAN (what a proxy sends to Certify).
pub fn csr(uri: &str) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().expect("a URI SAN"))];
    params.serialize_request(&key).expect("CSR").der().to_vec()
}

/// Replaces the file atomically so the poller never sees a half-written file.
pub fn write_config(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write temp config");
    std::fs::rename(&tmp, path).expect("rename config");
}
