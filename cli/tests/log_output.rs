//! What the binaries write to a log that is not a terminal (a pod's log, a file): plain text
//! without escape codes, or one JSON object per line with `--log-format json`. The sidecar runs
//! as a real `trellis proxy` process against a harness mesh; the control plane as a real
//! `trellis control-plane serve` process on a YAML file.

mod sidecar;

use sidecar::SidecarProcess;
use std::process::Stdio;
use std::time::{Duration, Instant};
use trellis_tests::{Mesh, Service};

const BIN: &str = env!("CARGO_BIN_EXE_trellis");
const ESC: char = '\u{1b}';

/// Every non-empty line is a JSON object with a level, a message and a timestamp.
fn assert_json_lines(log: &str) {
    let mut lines = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\n{log}"));
        for key in ["timestamp", "level", "message"] {
            assert!(value.get(key).is_some(), "no {key:?} in {line}");
        }
        lines += 1;
    }
    assert!(lines >= 2, "a start-up writes several lines:\n{log}");
}

#[tokio::test]
async fn the_sidecar_logs_plain_text_without_escape_codes_or_json_lines() {
    let mesh = Mesh::client_and(Service::http1("hello")).await;
    let plain = SidecarProcess::start(&mesh, &[]).await;
    let log = plain.log();
    assert!(log.contains("trellis-proxy starting"), "{log}");
    assert!(!log.contains(ESC), "escape codes in a log file:\n{log:?}");
    drop(plain);

    let json = SidecarProcess::start(&mesh, &["--log-format", "json"]).await;
    let log = json.log();
    assert!(!log.contains(ESC), "{log:?}");
    assert_json_lines(&log);
    assert!(
        log.lines()
            .any(|l| l.contains("\"message\":\"trellis-proxy starting\"")),
        "{log}"
    );
}

/// `trellis control-plane serve` with `extra` flags until it has logged `until`; its log.
fn control_plane_log(extra: &[&str], until: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("mesh.yaml");
    std::fs::write(&config, "trustDomain: trellis.local\nservices: []\n").expect("mesh.yaml");
    let log = dir.path().join("cp.log");
    let out = std::fs::File::create(&log).expect("log file");
    let mut child = std::process::Command::new(BIN)
        .args(["control-plane", "serve", "--listen", "127.0.0.1:0"])
        .args(["--admin", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(extra)
        .stdout(Stdio::from(out.try_clone().expect("log file")))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("start the control plane");
    let started = Instant::now();
    let mut text = String::new();
    while started.elapsed() < Duration::from_secs(20) {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(until) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.contains(until), "never logged {until:?}:\n{text}");
    text
}

#[test]
fn the_control_plane_logs_plain_text_without_escape_codes_or_json_lines() {
    let plain = control_plane_log(&[], "listening");
    assert!(
        !plain.contains(ESC),
        "escape codes in a log file:\n{plain:?}"
    );
    let json = control_plane_log(&["--log-format", "json"], "listening");
    assert_json_lines(&json);
}
