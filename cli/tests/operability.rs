//! The operator commands against a real local mesh: `trellis stat`, `tap` and `explain` run as
//! the real binary against the harness's sidecars' admin ports, and a `trellis proxy` process's
//! log for config changes and ejections. Numbers and text are asserted, never speed.

mod sidecar;

use serde_json::Value;
use sidecar::SidecarProcess;
use std::time::{Duration, Instant};
use trellis_tests::mesh::wait_until;
use trellis_tests::{Mesh, Service};

const BIN: &str = env!("CARGO_BIN_EXE_trellis");

/// Runs `trellis args…` to the end (async: the mesh runs on this test's runtime); its stdout.
async fn trellis(args: &[&str]) -> String {
    let out = tokio::process::Command::new(BIN)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("run trellis");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "trellis {args:?}: {stderr}\n{stdout}");
    stdout
}

fn row<'a>(rows: &'a Value, service: &str) -> &'a Value {
    (rows.as_array().into_iter().flatten())
        .find(|r| r["service"].as_str().is_some_and(|s| s.ends_with(service)))
        .unwrap_or_else(|| panic!("no row for {service}: {rows}"))
}

#[tokio::test]
async fn stat_reports_requests_success_rate_and_latency_per_service_and_route() {
    let mesh = Mesh::client_and(Service::http1("hello")).await;
    let client = mesh.client("client", false);
    mesh.workload("hello").app.fail_next(5, 500);
    for _ in 0..20 {
        client.get("hello", "/stat").await.expect("request");
    }
    let caller = mesh.workload("client").admin.to_string();
    let server = mesh.workload("hello").admin.to_string();

    let json = trellis(&[
        "stat", "--admin", &caller, "--window", "0s", "--output", "json",
    ])
    .await;
    let rows: Value = serde_json::from_str(&json).expect("json");
    let hello = row(&rows, "hello");
    assert_eq!(hello["requests"], 20.0, "{rows}");
    assert_eq!(hello["successRate"], 0.75, "{rows}");
    assert_eq!(hello["rps"], Value::Null, "no rate from one scrape");
    for q in ["p50", "p95", "p99"] {
        let ms = hello["latencyMs"][q].as_f64().unwrap_or_default();
        assert!(ms > 0.0 && ms < 33_000.0, "{q}: {rows}");
    }

    // The server side sees the same 20 from its sidecar, and both sidecars add up.
    let both = [
        "stat", "--admin", &caller, "--admin", &server, "--window", "0s",
    ];
    let inbound = [&both[..], &["--direction", "inbound", "--output", "json"]].concat();
    let rows: Value = serde_json::from_str(&trellis(&inbound).await).expect("json");
    assert_eq!(row(&rows, "hello")["requests"], 20.0, "{rows}");

    let table = trellis(&[&both[..], &["--by", "route"]].concat()).await;
    let line = (table.lines())
        .find(|l| l.contains("hello"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(line.contains(" 20 ") && line.contains("75.00%"), "{table}");
    assert!(table.starts_with("SERVICE"), "{table}");

    // Over a window with no traffic: a rate of zero, not a stale one.
    let idle = [
        "stat", "--admin", &caller, "--window", "1s", "--output", "json",
    ];
    let rows: Value = serde_json::from_str(&trellis(&idle).await).expect("json");
    assert_eq!(row(&rows, "hello")["requests"], 0.0, "{rows}");
    assert_eq!(row(&rows, "hello")["rps"], 0.0, "{rows}");
}

#[tokio::test]
async fn stat_finds_every_sidecar_through_the_control_plane() {
    let mesh = Mesh::client_and(Service::http1("hello")).await;
    let client = mesh.client("client", false);
    for _ in 0..12 {
        client.get("hello", "/found").await.expect("request");
    }
    let control_plane =
        (mesh.control_plane_admin_addr()).expect("the harness's control plane has an admin port");
    let (rsp, listed) = trellis_tests::client::TestClient::new(control_plane, false)
        .get("localhost", "/proxies")
        .await
        .expect("GET /proxies");
    assert_eq!(rsp.status(), 200);
    let doc: Value = serde_json::from_slice(&listed).expect("json");
    let control_plane = control_plane.to_string();
    let mut admins: Vec<String> = (doc["proxies"].as_array().into_iter().flatten())
        .map(|p| p["adminAddress"].as_str().unwrap_or_default().to_string())
        .collect();
    admins.sort();
    let mut want = vec![
        mesh.workload("client").admin.to_string(),
        mesh.workload("hello").admin.to_string(),
    ];
    want.sort();
    assert_eq!(admins, want, "{doc}");

    // Both sides add up without naming a sidecar; one that is gone is reported, not fatal.
    let out = tokio::process::Command::new(BIN)
        .args(["stat", "--control-plane-admin", &control_plane])
        .args([
            "--admin",
            "127.0.0.1:1",
            "--window",
            "0s",
            "--output",
            "json",
        ])
        .args(["--direction", "inbound"])
        .kill_on_drop(true)
        .output()
        .await
        .expect("run trellis");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}\n{stdout}");
    assert!(
        stderr.contains("the sidecar at 127.0.0.1:1 did not answer"),
        "{stderr}"
    );
    let rows: Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(row(&rows, "hello")["requests"], 12.0, "{rows}");
    assert_eq!(row(&rows, "hello")["successRate"], 1.0, "{rows}");

    let other = tokio::process::Command::new(BIN)
        .args(["stat", "--control-plane-admin", &control_plane])
        .args(["--namespace", "nowhere", "--window", "0s"])
        .output()
        .await
        .expect("run trellis");
    assert!(!other.status.success());
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(
        stderr.contains("lists no proxy") && stderr.contains("nowhere"),
        "{stderr}"
    );
}

/// Starts `trellis tap` and sends requests until it has printed `max` of them; its stdout.
async fn tap_while_sending(mesh: &Mesh, admin: &str, path: &str, extra: &[&str]) -> String {
    let args = [&["tap", "--admin", admin, "--seconds", "30"], extra].concat();
    run_while_sending(mesh, &args, path).await
}

/// Runs `trellis args…` while sending requests to hello's `path` from the client; its stdout.
async fn run_while_sending(mesh: &Mesh, args: &[&str], path: &str) -> String {
    let child = tokio::process::Command::new(BIN)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start trellis tap");
    let client = mesh.client("client", false);
    let sending = async {
        loop {
            let _ = client.get("hello", path).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let out = tokio::select! {
        out = child.wait_with_output() => out.expect("tap output"),
        _ = sending => unreachable!(),
    };
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn tap_streams_bounded_summaries_with_identities_on_both_sides() {
    let mesh = Mesh::client_and(Service::http1("hello")).await;
    let client_id = mesh.service_spiffe_id("client").expect("id");
    let hello_id = mesh.service_spiffe_id("hello").expect("id");
    let caller = mesh.workload("client").admin.to_string();
    let started = Instant::now();
    let out = tap_while_sending(
        &mesh,
        &caller,
        "/tapped",
        &["--max", "3", "--output", "json"],
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "ended by --max"
    );
    let lines: Vec<Value> = (out.lines())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 3, "{out}");
    for l in &lines {
        assert_eq!(
            (&l["method"], &l["authority"], &l["path"], &l["status"]),
            (
                &"GET".into(),
                &"hello".into(),
                &"/tapped".into(),
                &200.into()
            ),
            "{l}"
        );
        assert_eq!(l["direction"], "outbound");
        assert_eq!(l["source"], client_id.as_str());
        assert_eq!(l["destination"], hello_id.as_str());
        assert_eq!(l["attempts"], 1);
        assert!(l["duration_ms"].as_f64().unwrap_or_default() > 0.0, "{l}");
    }

    // The server's sidecar sees the caller as the source.
    let server = mesh.workload("hello").admin.to_string();
    let text = tap_while_sending(&mesh, &server, "/in", &["--max", "1"]).await;
    let row = text.lines().nth(1).unwrap_or_else(|| panic!("{text}"));
    assert!(row.starts_with("inbound  GET"), "{text}");
    assert!(row.contains("/in") && row.contains(" 200 "), "{text}");
    assert!(
        row.ends_with(&format!("{client_id} -> {hello_id}")),
        "{text}"
    );
}

const HELLO: &str = "\
routes:
  - name: api
    match:
      path: {prefix: /api}
    backends:
      - {service: hello, weight: 1}
authorization:
  default: deny
  rules:
    - name: client-get
      action: allow
      from: {identities: [\"spiffe://trellis.local/ns/default/sa/client\"]}
      to: {methods: [GET]}
";

#[tokio::test]
async fn explain_names_the_route_policy_endpoints_decision_and_recent_requests() {
    let mesh = Mesh::client_and(Service::http1("hello").yaml(HELLO)).await;
    let client_id = mesh.service_spiffe_id("client").expect("id");
    let caller = mesh.workload("client").admin.to_string();
    let server = mesh.workload("hello").admin.to_string();
    let endpoint = mesh.workload("hello").inbound;
    tap_while_sending(
        &mesh,
        &caller,
        "/api/items",
        &["--max", "2", "--route", "api"],
    )
    .await;
    // Remembered without a tap too.
    let client = mesh.client("client", false);
    for _ in 0..3 {
        client.get("hello", "/api/quiet").await.expect("request");
    }

    let text = trellis(&[
        "explain",
        "--admin",
        &caller,
        "--authority",
        "hello",
        "--path",
        "/api/items",
        "--destination-admin",
        &server,
        "-H",
        "x-team: blue",
    ])
    .await;
    for want in [
        "request   GET hello/api/items",
        "          x-team: blue",
        &format!("sidecar   {client_id}"),
        "  ✓ api: matched",
        "; up to 2 attempts (retry policy from cluster)\n",
        "retry budget: 0 of ",
        &format!("  endpoint {endpoint} "),
        " ok, 0 outstanding",
        &format!("authorization at {server}: ALLOW by rule client-get (caller {client_id})"),
        "GET /api/items -> 200 in ",
        ", 1 attempt(s)",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    assert!(text.contains("route     api in "), "{text}");
    let count = |line: &str| text.lines().filter(|l| l.contains(line)).count();
    assert!(count("GET /api/items -> 200") >= 2, "{text}");
    assert_eq!(count("GET /api/quiet -> 200"), 3, "{text}");

    let json = trellis(&[
        "explain",
        "--admin",
        &caller,
        "--authority",
        "hello",
        "--path",
        "/home",
        "--method",
        "POST",
        "--destination-admin",
        &server,
        "--output",
        "json",
    ])
    .await;
    let doc: Value = serde_json::from_str(&json).expect("json");
    assert_eq!(doc["routes"][0]["name"], "api");
    assert_eq!(
        doc["routes"][0]["why"],
        "path /home does not match prefix /api"
    );
    assert_eq!(doc["routes"][1]["matched"], true);
    assert_eq!(doc["backends"][0]["policy"]["retriesApply"], false, "POST");
    assert_eq!(doc["authorization"]["action"], "deny");
    assert_eq!(doc["authorization"]["rule"], "default");
    assert_eq!(doc["recent"], serde_json::json!([]));

    // --watch taps the sidecar while it waits, so recent requests show without a separate tap.
    let watched = run_while_sending(
        &mesh,
        &[
            "explain",
            "--admin",
            &caller,
            "--authority",
            "hello",
            "--path",
            "/api/watched",
            "--watch",
            "1s",
            "--output",
            "json",
        ],
        "/api/watched",
    )
    .await;
    let doc: Value = serde_json::from_str(&watched).expect("json");
    let recent = doc["recent"].as_array().cloned().unwrap_or_default();
    assert!(!recent.is_empty(), "{doc}");
    // A request still in flight when the window closed has no outcome (no attempts) yet.
    assert!(
        (recent.iter())
            .all(|r| r["route"] == "api" && (r["attempts"] == 1 || r["inFlight"] == true)),
        "{doc}"
    );
    assert!((recent.iter()).any(|r| r["attempts"] == 1), "{doc}");
    assert!(recent.iter().any(|r| r["path"] == "/api/watched"), "{doc}");

    let none = trellis(&["explain", "--admin", &caller, "--authority", "nowhere:81"]).await;
    assert!(
        none.contains("route     none: no route config names nowhere:81"),
        "{none}"
    );
}

#[tokio::test]
async fn the_sidecar_log_says_what_config_changed_and_which_endpoint_was_ejected() {
    let mesh = Mesh::client_and(Service::http1("hello")).await;
    let proxy = SidecarProcess::start(&mesh, &[]).await;
    let client = trellis_tests::TestClient::new(proxy.outbound, false);
    // On demand, the sidecar subscribes to hello on the app's first call to it.
    let (rsp, _) = client.get("hello", "/").await.expect("request");
    assert_eq!(rsp.status(), 200);
    let added = wait_until(Duration::from_secs(5), || async {
        (proxy.log().lines())
            .any(|l| l.contains("config applied: Cluster added ") && l.contains("default/hello"))
    })
    .await;
    assert!(added.is_ok(), "no addition logged:\n{}", proxy.log());

    // A policy edit is logged as a change of that resource, with its versions.
    let edited = mesh.render_config() + "    policy:\n      requestTimeout: 7s\n";
    mesh.write_raw_config(&edited).expect("write the config");
    let changed = wait_until(Duration::from_secs(10), || async {
        (proxy.log().lines()).any(|l| l.contains("config applied: Cluster changed default/hello ("))
    })
    .await;
    assert!(changed.is_ok(), "no change logged:\n{}", proxy.log());

    // Gateway errors in a row (7 by default) eject the endpoint, and the log names it.
    mesh.workload("hello").app.always(503);
    let endpoint = mesh.workload("hello").inbound;
    let wanted = format!("endpoint {endpoint} ejected by outlier detection");
    let ejected = wait_until(Duration::from_secs(10), || async {
        let _ = client.get("hello", "/fail").await;
        proxy.log().contains(&wanted)
    })
    .await;
    assert!(ejected.is_ok(), "{wanted:?} not in\n{}", proxy.log());
    assert!(proxy.log().contains("duration=30s"), "{}", proxy.log());
}
