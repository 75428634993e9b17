//! End to end: a control plane on 127.0.0.1:0 with a temp state dir, driven by a tonic client over
//! TLS the way a proxy would: certify with a token, subscribe on the discovery stream, and see
//! config edits (valid and invalid) reach it or not.
mod common;

use std::time::Duration;

use common::{authorized, csr, write_config};
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request};
use trellis_api::discovery::aggregated_discovery_client::AggregatedDiscoveryClient;
use trellis_api::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, ErrorDetail, Node};
use trellis_api::identity::identity_client::IdentityClient;
use trellis_api::identity::CertifyRequest;
use trellis_api::{config as pb, type_url};
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

async fn next(rx: &mut tonic::Streaming<DeltaDiscoveryResponse>) -> DeltaDiscoveryResponse {
    tokio::time::timeout(Duration::from_secs(2), rx.message())
        .await
        .expect("a response within 2 s")
        .expect("stream ok")
        .expect("stream open")
}

fn ack(nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url::ENDPOINTS.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

fn addresses(response: &DeltaDiscoveryResponse) -> Vec<String> {
    let endpoints = pb::Endpoints::decode(response.resources[0].payload.as_slice()).unwrap();
    endpoints.endpoints.into_iter().map(|e| e.address).collect()
}

#[tokio::test]
async fn certify_discover_and_reload() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("mesh.yaml");
    write_config(&config_path, MESH);
    let mut cfg = ControlPlaneConfig::new(&config_path, dir.path().join("state"));
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    let plane = ControlPlane::bind(cfg).await.unwrap();
    let addr = plane.local_addr();
    let token = plane.issue_token("default", "hello");
    let mut status = plane.status();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(plane.ca_pem()))
        .domain_name("localhost");
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let running = tokio::spawn(plane.run(async {
        let _ = stop_rx.await;
    }));
    let channel: Channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();

    // Identity: the granted identity gets a certificate, another one is refused.
    let mut identity = IdentityClient::new(channel.clone());
    let certify = |id: &str| CertifyRequest {
        identity: id.into(),
        csr_der: csr(id),
    };
    let issued = identity
        .certify(authorized(certify(HELLO_ID), &token))
        .await
        .unwrap();
    let issued = issued.into_inner();
    assert_eq!(issued.chain_der.len(), 2, "leaf and intermediate");
    assert_eq!(issued.trust_anchors_der.len(), 1);
    let other = "spiffe://trellis.local/ns/default/sa/admin";
    let denied = identity
        .certify(authorized(certify(other), &token))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(denied.message().contains(other) && denied.message().contains(HELLO_ID));
    let anonymous = identity
        .certify(Request::new(certify(HELLO_ID)))
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);

    // Discovery: subscribe to our endpoints and receive them.
    let (tx, rx) = mpsc::channel(8);
    tx.send(DeltaDiscoveryRequest {
        node: Some(Node {
            id: "hello-abc12".into(),
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
    let mut discovery = AggregatedDiscoveryClient::new(channel.clone());
    let mut responses = discovery
        .delta_resources(authorized(ReceiverStream::new(rx), &token))
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut responses).await;
    assert_eq!(first.type_url, type_url::ENDPOINTS);
    assert_eq!(addresses(&first), ["127.0.0.1:4143"]);
    tx.send(ack(&first.nonce)).await.unwrap();

    // A valid edit arrives as an update.
    let edited = format!("{MESH}      - address: 127.0.0.2:4143\n");
    write_config(&config_path, &edited);
    let update = next(&mut responses).await;
    assert_eq!(addresses(&update), ["127.0.0.1:4143", "127.0.0.2:4143"]);
    assert_ne!(update.nonce, first.nonce);
    assert_ne!(update.resources[0].version, first.resources[0].version);
    assert_eq!(update.system_version_info, "2");

    // A NACK is recorded in the status.
    tx.send(DeltaDiscoveryRequest {
        error_detail: Some(ErrorDetail {
            code: 3,
            message: "bad endpoint".into(),
        }),
        ..ack(&update.nonce)
    })
    .await
    .unwrap();
    let nacked = tokio::time::timeout(
        Duration::from_secs(2),
        status.wait_for(|s| !s.nacks.is_empty()),
    )
    .await
    .unwrap()
    .unwrap()
    .nacks[0]
        .clone();
    assert_eq!(
        (nacked.node_id.as_str(), nacked.nonce.as_str()),
        ("hello-abc12", update.nonce.as_str())
    );

    // An invalid edit is reported and nothing is sent.
    write_config(
        &config_path,
        &edited.replace("127.0.0.2:4143", "127.0.0.2:x"),
    );
    let error = tokio::time::timeout(
        Duration::from_secs(2),
        status.wait_for(|s| s.last_error.is_some()),
    )
    .await
    .unwrap()
    .unwrap()
    .last_error
    .clone()
    .unwrap();
    assert!(
        error.contains("mesh.yaml:7:18: services[0].endpoints[1].address"),
        "{error}"
    );
    assert_eq!(status.borrow().config_version, 2);
    let quiet = tokio::time::timeout(Duration::from_millis(600), responses.message()).await;
    assert!(
        quiet.is_err(),
        "no response after an invalid edit: {quiet:?}"
    );

    // Shutdown ends the stream and the server.
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(3), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn discovery_refuses_a_foreign_identity_and_bad_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("mesh.yaml");
    write_config(&config_path, MESH);
    let mut cfg = ControlPlaneConfig::new(&config_path, dir.path().join("state"));
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    let plane = ControlPlane::bind(cfg).await.unwrap();
    let addr = plane.local_addr();
    let token = plane.issue_token("default", "hello");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(plane.ca_pem()))
        .domain_name("localhost");
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let running = tokio::spawn(plane.run(async {
        let _ = stop_rx.await;
    }));
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut discovery = AggregatedDiscoveryClient::new(channel);

    let first = DeltaDiscoveryRequest {
        node: Some(Node {
            id: "imposter".into(),
            identity: "spiffe://trellis.local/ns/default/sa/admin".into(),
            ..Default::default()
        }),
        type_url: type_url::ENDPOINTS.into(),
        resource_names_subscribe: vec!["*".into()],
        ..Default::default()
    };
    let stream = tokio_stream::iter(vec![first.clone()]);
    let mut responses = discovery
        .delta_resources(authorized(stream, &token))
        .await
        .unwrap()
        .into_inner();
    let refused = responses.message().await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);

    let stream = tokio_stream::iter(vec![first]);
    let forged = format!("{token}00");
    let refused = discovery
        .delta_resources(authorized(stream, &forged))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);

    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(3), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn invalid_initial_config_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("mesh.yaml");
    write_config(&config_path, &MESH.replace("port: 80", "port: 0"));
    let cfg = ControlPlaneConfig::new(&config_path, dir.path().join("state"));
    let err = ControlPlane::bind(cfg).await.err().unwrap().to_string();
    assert!(
        err.contains("mesh.yaml:4:15: services[0].ports[0].port"),
        "{err}"
    );
}

#[tokio::test]
async fn an_empty_config_is_refused_at_start_by_serve_and_check() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("mesh.yaml");
    let file = config_path.display().to_string();
    for content in ["", "# nothing yet\n", "---\n"] {
        write_config(&config_path, content);
        let cfg = ControlPlaneConfig::new(&config_path, dir.path().join("state"));
        let err = ControlPlane::bind(cfg).await.err().unwrap().to_string();
        assert!(
            err.starts_with(&format!("{file}: the file is empty")),
            "{content:?}: {err}"
        );
        let check = std::process::Command::new(env!("CARGO_BIN_EXE_trellis-control-plane"))
            .args(["check", "--config"])
            .arg(&config_path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&check.stderr);
        assert_eq!(check.status.code(), Some(1), "{content:?}: {stderr}");
        assert!(
            stderr.contains(&format!("{file}: the file is empty")),
            "{content:?}: {stderr}"
        );
    }
    // Written on purpose, an empty mesh is valid.
    write_config(&config_path, "services: []\n");
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_trellis-control-plane"))
        .args(["check", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    assert!(check.status.success());
    assert_eq!(String::from_utf8_lossy(&check.stdout).trim(), "OK");
}
