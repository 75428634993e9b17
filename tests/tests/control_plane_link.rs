//! The control-plane link under the failures seen in clusters, not clean kills:
//! - the connection goes silent without closing (a partition, a load balancer black-holing the old
//!   backend while new connections reach a healthy one): the sidecar's keepalive finds it and
//!   replaces it within the default 30 s, the next config change arrives, and the certificate is
//!   renewed before it expires;
//! - the control plane comes back with a CA the sidecars do not trust: each sidecar says so (the
//!   cause in `/config`, a metric by cause), keeps serving with what it holds, and recovers as
//!   soon as a control plane it trusts is back.
//!
//! Both run under steady traffic and assert that no request fails.

use std::time::{Duration, Instant};
use trellis_control_plane::ca::{
    CaSource, CertificateAuthority, CERT_FILE, ISSUER_CERT_FILE, ISSUER_KEY_FILE,
};
use trellis_tests::mesh::wait_until;
use trellis_tests::traffic::SteadyTraffic;
use trellis_tests::{Mesh, Service};

/// The mesh YAML with one more service, which every sidecar then lists among its clusters.
fn with_marker_service(mesh: &Mesh, name: &str) -> String {
    format!(
        "{}  - name: {name}\n    ports: [{{port: 80}}]\n    endpoints: []\n",
        mesh.render_config()
    )
}

fn holds_cluster(doc: &serde_json::Value, name: &str) -> bool {
    doc["config"]["clusters"]
        .get(format!("default/{name}"))
        .is_some()
}

#[tokio::test]
async fn a_silent_control_plane_connection_is_replaced_within_30s_and_certificates_still_renew() {
    // 40 s certificates: renewal comes due ~20 s in, while the frozen link is being replaced.
    // Wildcard: the change that must arrive is a new service, which only a wildcard subscriber
    // holds without calling it.
    let mesh = Mesh::builder()
        .wildcard_discovery()
        .mesh_yaml("certificateLifetime: 40s")
        .control_plane_relay()
        .service(Service::http1("client"))
        .service(Service::http1("hello"))
        .start()
        .await
        .expect("mesh starts");
    let relay = mesh.control_plane_relay().expect("relay");
    let before = mesh.config_doc(0).await;
    let first_serial = before["identity"]["serial"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let first_expiry = before["identity"]["notAfter"]
        .as_str()
        .and_then(trellis_proxy::identity::parse_rfc3339)
        .unwrap_or_default();
    assert!(!first_serial.is_empty() && first_expiry > 0, "{before}");
    assert!(!holds_cluster(&before, "marker"));
    let connections_before = relay.connections();

    let traffic = SteadyTraffic::start(
        mesh.client("client", false),
        "hello",
        Duration::from_millis(10),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Both sidecars' connections go silent; new connections still reach the control plane.
    relay.freeze_open_connections();
    let frozen_at = Instant::now();
    wait_until(Duration::from_secs(2), || async { relay.frozen() >= 2 })
        .await
        .expect("both sidecars' connections frozen");

    mesh.write_raw_config(&with_marker_service(&mesh, "marker"))
        .expect("config written");
    let took = wait_until(Duration::from_secs(30), || async {
        holds_cluster(&mesh.config_doc(0).await, "marker")
    })
    .await
    .expect("the config change reaches the sidecar within 30 s of the link going silent");
    eprintln!(
        "config change arrived {:?} after the freeze",
        frozen_at.elapsed()
    );
    assert!(
        relay.connections() > connections_before,
        "a new connection was dialled"
    );

    // The certificate is renewed over the new connection before the old one expires.
    wait_until(Duration::from_secs(40), || async {
        let doc = mesh.config_doc(0).await;
        doc["identity"]["serial"]
            .as_str()
            .is_some_and(|s| s != first_serial)
    })
    .await
    .expect("certificate renewed");
    let renewed_at = trellis_proxy::identity::unix_now();
    assert!(
        renewed_at < first_expiry,
        "renewed at {renewed_at}, after the old certificate expired at {first_expiry}"
    );

    let doc = mesh.config_doc(0).await;
    assert_eq!(doc["controlPlaneConnected"], true, "{doc}");
    assert!(
        doc["discoveryFailures"]["total"].as_u64() >= Some(1),
        "the stream on the silent connection was given up: {doc}"
    );
    let (status, _) = mesh.admin_get(0, "/ready").await.expect("ready");
    assert_eq!(status, 200);
    let counts = traffic.finish().await;
    eprintln!(
        "silent link: {counts:?}; config after {took:?}, frozen {}",
        relay.frozen()
    );
    assert!(counts.sent > 500, "{counts:?}");
    assert_eq!(
        counts.failed, 0,
        "no request fails while the link is replaced"
    );
}

#[tokio::test]
async fn a_control_plane_with_an_untrusted_ca_is_reported_while_traffic_flows() {
    let mut mesh = Mesh::builder()
        .service(Service::http1("client"))
        .service(Service::http1("hello"))
        .start()
        .await
        .expect("mesh starts");
    // The client called hello before the control plane changes (on demand, a first call needs
    // the control plane).
    let (rsp, _) = (mesh.client("client", false).get("hello", "/").await).expect("request");
    assert_eq!(rsp.status(), 200);
    let traffic = SteadyTraffic::start(
        mesh.client("client", false),
        "hello",
        Duration::from_millis(10),
    );

    // A control plane rebuilt with a fresh CA that no sidecar was given.
    let other = tempfile::tempdir().expect("dir");
    CertificateAuthority::load(&CaSource::StateDir(other.path().to_owned())).expect("other CA");
    mesh.restart_control_plane(Some((
        other.path().join(ISSUER_CERT_FILE),
        other.path().join(ISSUER_KEY_FILE),
        other.path().join(CERT_FILE),
    )))
    .await
    .expect("control plane with another CA");

    let reported = wait_until(Duration::from_secs(15), || async {
        mesh.config_doc(0).await["controlPlane"]["lastError"]["problem"] == "untrusted"
    })
    .await
    .expect("the sidecar reports an untrusted control plane");
    // A while on the untrusted control plane: retries keep failing, traffic keeps flowing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let doc = mesh.config_doc(0).await;
    let cause = doc["controlPlane"]["lastError"]["cause"]
        .as_str()
        .unwrap_or_default();
    assert!(
        cause.contains("UnknownIssuer") || cause.contains("BadSignature"),
        "the cause names the certificate problem: {doc}"
    );
    assert_eq!(doc["controlPlaneConnected"], false, "{doc}");
    let (_, metrics) = mesh.admin_get(0, "/metrics").await.expect("metrics");
    let untrusted = metrics
        .lines()
        .find(|l| l.starts_with("trellis_control_plane_errors_total{problem=\"untrusted\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok());
    assert!(untrusted >= Some(2), "retried and failed again: {metrics}");
    assert!(
        metrics.contains("trellis_certificate_expires_in_seconds "),
        "{metrics}"
    );
    // Serving with what it holds: the certificate is still valid, so the sidecar stays ready.
    let (status, _) = mesh.admin_get(0, "/ready").await.expect("ready");
    assert_eq!(status, 200);

    // The trusted control plane returns: the link recovers and the error clears.
    mesh.restart_control_plane(None)
        .await
        .expect("original control plane");
    let back = Instant::now();
    let recovered = wait_until(Duration::from_secs(20), || async {
        let doc = mesh.config_doc(0).await;
        doc["controlPlaneConnected"] == true && doc["controlPlane"]["lastError"].is_null()
    })
    .await
    .expect("the link recovers");
    let counts = traffic.finish().await;
    eprintln!(
        "untrusted CA: reported after {reported:?}, recovered {recovered:?} ({:?}) after the \
         trusted control plane returned; {counts:?}",
        back.elapsed()
    );
    assert!(counts.sent > 100, "{counts:?}");
    assert_eq!(
        counts.failed, 0,
        "no request fails while the control plane is untrusted"
    );
}
