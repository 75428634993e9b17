//! The `trellis-injector` binary as a user meets it: one bad document in a stream costs only
//! itself (named on stderr, passed through, exit 1 unless `--on-error=skip`), errors are one
//! `error: …` line without a backtrace even with `RUST_BACKTRACE=1`, and `manifests` works
//! without `--image` and writes nothing when it fails.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_trellis-injector");

const GOOD_DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: example/web:1}]
";

/// Starts on line 13 of the stream (after the Deployment and a `---`).
const BROKEN_YAML: &str = "apiVersion: v1
kind: Pod
metadata:
  name: broken
spec:
  containers: [{name: app, image: example/app:1
";

/// Parses, but the injector refuses it (an invalid annotation).
const REFUSED: &str = "apiVersion: v1
kind: Pod
metadata:
  name: refused
  labels: {app: refused}
  annotations:
    trellis.io/skip-outbound-ports: \"80,http\"
spec:
  containers: [{name: app, image: example/app:1}]
";

const SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {ports: [{port: 80}]}
";

fn stream() -> String {
    [GOOD_DEPLOYMENT, BROKEN_YAML, REFUSED, SERVICE].join("---\n")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LIB_BACKTRACE", "1")
        .output()
        .expect("run trellis-injector")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_no_backtrace(stderr: &str) {
    for needle in [
        "stack backtrace",
        "Stack backtrace",
        "panicked",
        "Error {",
        "Os {",
    ] {
        assert!(!stderr.contains(needle), "{needle:?} in stderr:\n{stderr}");
    }
}

#[test]
fn one_bad_document_leaves_the_others_injected() {
    let dir = tempdir();
    let file = write(dir.path(), "stream.yaml", &stream());
    let out = run(&["inject", "-f", file.to_str().expect("utf-8")]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(1),
        "a bad document fails the run:\n{stderr}"
    );
    assert_no_backtrace(&stderr);
    // The good Deployment is injected, the Service passes, the bad two are there verbatim.
    assert_eq!(stdout.matches("name: trellis-proxy").count(), 1, "{stdout}");
    assert!(stdout.contains("kind: Service"), "{stdout}");
    assert!(
        stdout.contains(BROKEN_YAML.trim_end()),
        "broken text kept:\n{stdout}"
    );
    assert!(
        stdout.contains(REFUSED.trim_end()),
        "refused text kept:\n{stdout}"
    );
    assert_eq!(
        stdout.matches("---\n").count(),
        4,
        "four documents:\n{stdout}"
    );
    // Each good document still parses; the injected one is a valid Deployment.
    for doc in stdout.split("---\n").filter(|d| !d.trim().is_empty()) {
        if doc.contains("name: broken") {
            continue;
        }
        let value: Value = serde_saphyr::from_str(doc).expect("a good document parses");
        if value["kind"] == "Deployment" {
            serde_json::from_value::<k8s_openapi::api::apps::v1::Deployment>(value)
                .expect("a Deployment");
        }
    }
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert!(
        lines[0].starts_with("error: document 2 (Pod/broken, line 13): invalid YAML: "),
        "{stderr}"
    );
    assert_eq!(
        lines[1],
        "error: document 3 (Pod/refused, line 20): invalid annotation \
         trellis.io/skip-outbound-ports=\"80,http\": \"http\" is not a port (1-65535) or a range \
         low-high"
    );
    assert!(lines[2].contains("2 documents"), "{stderr}");
    assert!(stderr.contains("Deployment \"web\": injected"), "{stderr}");
}

#[test]
fn on_error_skip_exits_zero_with_the_same_output() {
    let dir = tempdir();
    let file = write(dir.path(), "stream.yaml", &stream());
    let file = file.to_str().expect("utf-8");
    let failing = run(&["inject", "-f", file]);
    let skipping = run(&["inject", "-f", file, "--on-error", "skip"]);
    assert_eq!(
        skipping.status.code(),
        Some(0),
        "{}",
        text(&skipping.stderr)
    );
    assert_eq!(text(&skipping.stdout), text(&failing.stdout));
    let stderr = text(&skipping.stderr);
    assert!(
        stderr.contains("warning: document 2 (Pod/broken"),
        "{stderr}"
    );
    assert!(!stderr.contains("error:"), "{stderr}");
}

#[test]
fn a_clean_stream_exits_zero() {
    let dir = tempdir();
    let file = write(
        dir.path(),
        "ok.yaml",
        &[GOOD_DEPLOYMENT, SERVICE].join("---\n"),
    );
    let out = run(&["inject", "-f", file.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).matches("name: trellis-proxy").count(), 1);
}

#[test]
fn errors_are_one_line_without_a_backtrace_and_nothing_on_stdout() {
    let dir = tempdir();
    let missing = dir.path().join("missing.yaml");
    let missing = missing.to_str().expect("utf-8");
    let bad_config = write(dir.path(), "config.yaml", "proxyImage: [\n");
    let cases: [(Vec<&str>, &str); 3] = [
        (vec!["inject", "-f", missing], "error: reading "),
        (
            vec![
                "inject",
                "-f",
                "-",
                "--config",
                bad_config.to_str().expect("utf-8"),
            ],
            "error: ",
        ),
        (vec!["manifests", "--ca-bundle", missing], "error: reading "),
    ];
    for (args, start) in cases {
        let out = run(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} wrote to stdout");
        assert!(stderr.starts_with(start), "{args:?}: {stderr}");
        assert_no_backtrace(&stderr);
    }
}

#[test]
fn manifests_default_image_matches_the_committed_file() {
    let dir = tempdir();
    let out = run(&["manifests"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let committed = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/injector.yaml"),
    )
    .expect("deploy/injector.yaml");
    assert_eq!(
        text(&out.stdout),
        committed,
        "--image defaults to the committed image"
    );

    // `--ca-bundle` alone (the README's command) works and fills caBundle.
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let ca = write(dir.path(), "ca.crt", pem);
    let out = run(&["manifests", "--ca-bundle", ca.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("image: ghcr.io/trellis-mesh/trellis-injector:0.1.0"));
    let docs: Vec<Value> = serde_saphyr::from_multiple(&stdout).expect("YAML");
    let hook = docs
        .iter()
        .find(|d| d["kind"] == "MutatingWebhookConfiguration")
        .expect("webhook config");
    assert!(
        hook["webhooks"][0]["clientConfig"]["caBundle"]
            .as_str()
            .is_some_and(|b| !b.is_empty()),
        "caBundle filled: {hook}"
    );
}

/// A temporary directory removed on drop (the crate has no tempfile dependency).
struct TempDir(PathBuf);

impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> TempDir {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "trellis-injector-cli-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).expect("mkdir");
    TempDir(dir)
}
