//! Control-plane replicas (issue 14, item 5): two control planes serve one mesh (the same YAML,
//! the same CA and token key, as replicas mounting the same Secret), behind one address that gives
//! each new connection to a replica that accepts it (a Kubernetes Service). One replica is
//! killed under load; the sidecars that were on it reconnect to the other, and nothing is lost:
//! no request fails, the next config change reaches every sidecar, and every certificate is
//! renewed by the survivor (peers keep trusting each other: one CA).

use std::time::Duration;
use trellis_tests::mesh::wait_until;
use trellis_tests::traffic::SteadyTraffic;
use trellis_tests::{Mesh, Service};

fn holds_cluster(doc: &serde_json::Value, name: &str) -> bool {
    doc["config"]["clusters"]
        .get(format!("default/{name}"))
        .is_some()
}

fn serial(doc: &serde_json::Value) -> String {
    doc["identity"]["serial"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn killing_one_replica_under_load_loses_no_request_config_or_identity() {
    // Short certificates: every sidecar renews (about half-way) after the kill.
    // Wildcard: the change every sidecar must get is a new service, which only a wildcard
    // subscriber holds without calling it.
    let mut mesh = Mesh::builder()
        .wildcard_discovery()
        .mesh_yaml("certificateLifetime: 30s")
        .control_plane_replicas(2)
        .service(Service::http1("client"))
        .service(Service::http1("hello").replicas(2))
        .start()
        .await
        .expect("mesh starts");
    let sidecars = mesh.workloads.len();
    let relay = mesh.control_plane_relay().expect("relay");
    let before = (relay.connections_to(0), relay.connections_to(1));
    assert!(
        before.0 >= 1 && before.1 >= 1,
        "the sidecars are spread over both replicas: {before:?}"
    );
    let mut serials = Vec::new();
    for i in 0..sidecars {
        serials.push(serial(&mesh.config_doc(i).await));
    }
    assert!(serials.iter().all(|s| !s.is_empty()), "{serials:?}");

    let traffic = SteadyTraffic::start(
        mesh.client("client", false),
        "hello",
        Duration::from_millis(10),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    mesh.stop_control_plane_replica(0).await;

    // A config change after the kill reaches every sidecar (all on the survivor now).
    let config = format!(
        "{}  - name: marker\n    ports: [{{port: 80}}]\n    endpoints: []\n",
        mesh.render_config()
    );
    mesh.write_raw_config(&config).expect("config written");
    for i in 0..sidecars {
        let took = wait_until(Duration::from_secs(20), || async {
            holds_cluster(&mesh.config_doc(i).await, "marker")
        })
        .await;
        assert!(took.is_ok(), "sidecar {i} never got the change");
    }
    let relay = mesh.control_plane_relay().expect("relay");
    assert!(
        relay.connections_to(1) > before.1,
        "the sidecars of the dead replica dialled the other: {} -> {}",
        before.1,
        relay.connections_to(1)
    );

    // Every certificate is renewed by the survivor and still trusted by the peers.
    for (i, first) in serials.iter().enumerate() {
        let renewed = wait_until(Duration::from_secs(25), || async {
            let now = serial(&mesh.config_doc(i).await);
            !now.is_empty() && &now != first
        })
        .await;
        assert!(renewed.is_ok(), "sidecar {i} kept certificate {first}");
    }
    let status = mesh.control_plane_replica_status(1);
    assert!(
        status.config_version > 0 && status.last_error.is_none(),
        "{status:?}"
    );

    let counts = traffic.finish().await;
    eprintln!("one replica killed: {counts:?}");
    assert!(counts.sent > 500, "{counts:?}");
    assert_eq!(counts.failed, 0, "no request fails when a replica dies");
}
