//! A full root rotation under constant traffic, with no failed request: add the new root to the
//! trust bundle, restart the control plane with the new CA (its intermediate and root; the root
//! key stays offline), let every sidecar renew under it, then remove the old root.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use trellis_control_plane::ca::{
    CaSource, CertificateAuthority, CERT_FILE, ISSUER_CERT_FILE, ISSUER_KEY_FILE, KEY_FILE,
};
use trellis_tests::mesh::wait_until;
use trellis_tests::{Mesh, Service};

async fn roots_everywhere(mesh: &Mesh, want: &str) -> bool {
    for i in 0..mesh.workloads.len() {
        if mesh.config_doc(i).await["config"]["trust"]["rootsDer"] != want {
            return false;
        }
    }
    true
}

#[tokio::test]
async fn root_rotation_under_traffic_fails_no_request() {
    // The new CA, made ahead of time; its root key is then taken offline.
    let next = tempfile::tempdir().expect("dir");
    CertificateAuthority::load(&CaSource::StateDir(next.path().to_owned())).expect("new CA");
    std::fs::remove_file(next.path().join(KEY_FILE)).expect("root key offline");
    let new_root_pem = std::fs::read_to_string(next.path().join(CERT_FILE)).expect("new root");

    let mut mesh = Mesh::builder()
        .mesh_yaml("certificateLifetime: 4s")
        // Bootstrap config of every sidecar trusts the new root for the control plane too.
        .control_plane_ca_extra(&new_root_pem)
        .service(Service::http1("client"))
        .service(Service::http1("hello").replicas(2))
        .start()
        .await
        .expect("mesh starts");
    let old_root = mesh.state_dir.join(CERT_FILE);

    let stop = Arc::new(AtomicU64::new(0));
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let traffic = {
        let (client, stop, counts) = (mesh.client("client", false), stop.clone(), counts.clone());
        tokio::spawn(async move {
            while stop.load(Ordering::Relaxed) == 0 {
                let ok = matches!(client.get("hello", "/").await, Ok((r, _)) if r.status() == 200);
                counts[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // 1. Add the new root.
    mesh.mesh_yaml = format!(
        "certificateLifetime: 4s\ntrust:\n  extraRoots: [{}]\n",
        next.path().join(CERT_FILE).display()
    );
    mesh.write_config().expect("config");
    wait_until(Duration::from_secs(10), || {
        roots_everywhere(&mesh, "2 root(s)")
    })
    .await
    .expect("both roots trusted everywhere");

    // 2. Sign with the new CA (intermediate + root certificate only), still trusting the old
    //    root, and wait until every sidecar renewed under it.
    let before: Vec<serde_json::Value> = {
        let mut v = Vec::new();
        for i in 0..mesh.workloads.len() {
            v.push(mesh.config_doc(i).await["identity"]["serial"].clone());
        }
        v
    };
    mesh.mesh_yaml = format!(
        "certificateLifetime: 4s\ntrust:\n  extraRoots: [{}]\n",
        old_root.display()
    );
    mesh.write_config().expect("config");
    mesh.restart_control_plane(Some((
        next.path().join(ISSUER_CERT_FILE),
        next.path().join(ISSUER_KEY_FILE),
        next.path().join(CERT_FILE),
    )))
    .await
    .expect("control plane with the new CA");
    wait_until(Duration::from_secs(20), || async {
        for (i, old) in before.iter().enumerate() {
            if mesh.config_doc(i).await["identity"]["serial"] == *old {
                return false;
            }
        }
        true
    })
    .await
    .expect("every sidecar re-issued under the new CA");

    // 3. Remove the old root.
    mesh.mesh_yaml = "certificateLifetime: 4s\n".into();
    mesh.write_config().expect("config");
    wait_until(Duration::from_secs(10), || {
        roots_everywhere(&mesh, "1 root(s)")
    })
    .await
    .expect("old root removed everywhere");
    // Keep going through another renewal under the new root only.
    tokio::time::sleep(Duration::from_secs(4)).await;

    stop.store(1, Ordering::Relaxed);
    traffic.await.expect("traffic");
    let (ok, failed) = (
        counts[0].load(Ordering::Relaxed),
        counts[1].load(Ordering::Relaxed),
    );
    println!("rotation: {ok} requests succeeded, {failed} failed");
    assert_eq!(failed, 0);
    assert!(ok > 100, "{ok}");
    // A new connection now needs the new root: a fresh sidecar joins and is reachable.
    let index = mesh.add_workload("hello").await.expect("new workload");
    assert_eq!(mesh.admin_get(index, "/ready").await.expect("ready").0, 200);
}
