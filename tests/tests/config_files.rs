//! The mesh YAML written the common way (truncate, then write, here in two pieces with pauses)
//! while traffic flows: the control plane applies a change only once the file has been stable for
//! the settle time, so neither the empty nor the half-written file is ever applied and no request
//! fails; the finished change applies once, whole. A file left empty is refused with an error
//! naming the file and the config version kept, and the mesh keeps serving.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use trellis_tests::mesh::{wait_until, Mesh};
use trellis_tests::traffic::SteadyTraffic;
use trellis_tests::{Service, TestClient};

/// Writes `text` the way many tools do: truncate (the file is empty), pause, the first half,
/// pause, the rest. Every pause is shorter than the settle time (500 ms).
async fn truncate_and_write(path: &Path, text: &str, empty_for: Duration, half_for: Duration) {
    let mut file = std::fs::File::create(path).expect("truncate");
    tokio::time::sleep(empty_for).await;
    let (first, rest) = text.split_at(text.len() / 2);
    file.write_all(first.as_bytes()).expect("first half");
    file.flush().expect("flush");
    tokio::time::sleep(half_for).await;
    file.write_all(rest.as_bytes()).expect("rest");
    file.flush().expect("flush");
}

/// Which app answered `path` on `hello`.
async fn answered_by(client: &TestClient, path: &str) -> Option<String> {
    let (rsp, _) = client.get("hello", path).await.ok()?;
    if rsp.status() != 200 {
        return None;
    }
    rsp.headers()
        .get("x-echo-server")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

const ROUTE_TO_V2: &str = "\
routes:
  - name: to-v2
    match:
      path: {prefix: /v2}
    backends:
      - {service: hello-v2}
";

#[tokio::test]
async fn truncate_then_write_under_load_applies_nothing_half_written_and_fails_no_request() {
    let mut mesh = Mesh::builder()
        .service(Service::http1("client"))
        .service(Service::http1("hello"))
        .service(Service::http1("hello-v2"))
        .start()
        .await
        .expect("mesh starts");
    let client = mesh.client("client", false);
    let hello_app = mesh.workload("hello").app.name.clone();
    let v2_app = mesh.workload("hello-v2").app.name.clone();
    let version_before = mesh.control_plane_status().config_version;
    assert_eq!(answered_by(&client, "/v2/x").await, Some(hello_app.clone()));

    // The status after every round: a parsed empty or partial file would show as an error or a
    // new version (an error stays until the next version clears it).
    let (mut versions, mut errors) = (Vec::new(), Vec::new());
    let load = SteadyTraffic::start(client.clone(), "hello", Duration::from_millis(5));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Ten rewrites of the same content, each empty for 100-300 ms and half-written for 150 ms.
    let same = mesh.render_config();
    let started = Instant::now();
    for round in 0..10u64 {
        let empty_for = Duration::from_millis(100 + (round % 5) * 50);
        truncate_and_write(
            &mesh.config_path,
            &same,
            empty_for,
            Duration::from_millis(150),
        )
        .await;
        let status = mesh.control_plane_status();
        versions.push(status.config_version);
        errors.extend(status.last_error);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("10 truncate-pause-write rounds in {:?}", started.elapsed());
    // Let a settle time pass: had anything been pending, it would apply now.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let status = mesh.control_plane_status();
    assert!(
        versions.iter().all(|v| *v == version_before),
        "the same content never became a new version: {versions:?}"
    );
    assert!(
        errors.is_empty(),
        "nothing half-written was parsed: {errors:?}"
    );
    assert_eq!(status.config_version, version_before);
    assert_eq!(status.last_error, None);

    // A real change, written the same way: it applies once, whole, after settling.
    let hello = mesh
        .services
        .iter_mut()
        .find(|s| s.name == "hello")
        .expect("hello service");
    *hello = hello.clone().yaml(ROUTE_TO_V2);
    let changed = mesh.render_config();
    let written = Instant::now();
    truncate_and_write(
        &mesh.config_path,
        &changed,
        Duration::from_millis(300),
        Duration::from_millis(200),
    )
    .await;
    let took = wait_until(Duration::from_secs(10), || async {
        answered_by(&client, "/v2/x").await == Some(v2_app.clone())
    })
    .await
    .expect("the finished change applies");
    let status = mesh.control_plane_status();
    assert_eq!(
        status.config_version,
        version_before + 1,
        "one new version: nothing in between was applied"
    );
    assert_eq!(status.last_error, None);
    let applied_after = written.elapsed();
    println!("the change applied {applied_after:?} after the truncate ({took:?} after the write)");
    assert!(
        applied_after >= Duration::from_millis(500),
        "not before the writer finished and the settle time passed: {applied_after:?}"
    );

    let counts = load.finish().await;
    let (ok, failed) = (counts.ok(), counts.failed);
    println!("{ok} requests succeeded, {failed} failed while the file was rewritten");
    assert_eq!(failed, 0, "no request failed");
    assert!(ok > 100, "traffic flowed: {ok} requests");
}

#[tokio::test]
async fn a_file_left_empty_is_refused_naming_the_file_and_the_version_kept() {
    let mesh = Mesh::client_and(Service::http1("hello")).await;
    let client = mesh.client("client", false);
    let first_version = mesh.control_plane_status().config_version;
    let file = mesh.config_path.display().to_string();

    let cases = [
        ("empty", ""),
        ("comments only", "# being rewritten\n\n   \n"),
    ];
    for (restored, (what, content)) in (0u64..).zip(cases) {
        // Each case ends by restoring the file, which applies as the next version.
        let version = first_version + restored;
        std::fs::write(&mesh.config_path, content).expect("write");
        wait_until(Duration::from_secs(5), || async {
            mesh.control_plane_status().last_error.is_some()
        })
        .await
        .unwrap_or_else(|_| panic!("{what}: an error is reported"));
        let status = mesh.control_plane_status();
        let error = status.last_error.clone().unwrap_or_default();
        println!("{what}: {error}");
        assert!(
            error.starts_with(&format!("{file}: the file is empty"))
                && error.ends_with(&format!("; keeping config version {version}")),
            "{what}: {error}"
        );
        assert_eq!(status.config_version, version, "{what}: nothing applied");
        // Still serving the kept config.
        let mut ok = 0;
        for _ in 0..20 {
            if let Ok((rsp, _)) = client.get("hello", "/").await {
                ok += u32::from(rsp.status() == 200);
            }
        }
        assert_eq!(ok, 20, "{what}: the mesh keeps serving");

        // The real file back: applied as the next version, the error cleared.
        mesh.write_config().expect("write config");
        wait_until(Duration::from_secs(5), || async {
            mesh.control_plane_status().config_version == version + 1
        })
        .await
        .unwrap_or_else(|_| panic!("{what}: the restored file applies"));
        assert_eq!(mesh.control_plane_status().last_error, None);
    }
}
