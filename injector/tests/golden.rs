//! Golden tests for `trellis-injector inject`: each `tests/golden/NAME.in.yaml` is injected with
//! the default config and compared with `NAME.out.yaml`. `UPDATE_GOLDEN=1 cargo test -p
//! trellis-injector --test golden` rewrites the expected files. Every injected workload must also
//! parse as its k8s-openapi type.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;
use std::path::PathBuf;
use trellis_injector::workload::inject_yaml;
use trellis_injector::InjectorConfig;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn check(name: &str) -> String {
    let input = std::fs::read_to_string(dir().join(format!("{name}.in.yaml"))).expect("input");
    let (output, _) = inject_yaml(&input, &InjectorConfig::default()).expect("inject");
    let expected_path = dir().join(format!("{name}.out.yaml"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&expected_path, &output).expect("write golden");
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_else(|_| {
        panic!(
            "{} missing: run with UPDATE_GOLDEN=1",
            expected_path.display()
        )
    });
    assert_eq!(
        output, expected,
        "{name}: output differs from the golden file (UPDATE_GOLDEN=1 to accept)"
    );
    // Idempotent: injecting the output again changes nothing.
    let (again, _) = inject_yaml(&output, &InjectorConfig::default()).expect("re-inject");
    assert_eq!(again, output, "{name}: injecting twice changed the output");
    for doc in serde_saphyr::from_multiple::<Value>(&output).expect("output parses") {
        parses_as_its_type(&doc);
    }
    output
}

fn parses_as_its_type(doc: &Value) {
    let kind = doc["kind"].as_str().unwrap_or_default();
    let ok = match kind {
        "Pod" => serde_json::from_value::<Pod>(doc.clone()).map(drop),
        "Deployment" => serde_json::from_value::<Deployment>(doc.clone()).map(drop),
        "StatefulSet" => serde_json::from_value::<StatefulSet>(doc.clone()).map(drop),
        "DaemonSet" => serde_json::from_value::<DaemonSet>(doc.clone()).map(drop),
        "ReplicaSet" => serde_json::from_value::<ReplicaSet>(doc.clone()).map(drop),
        "Job" => serde_json::from_value::<Job>(doc.clone()).map(drop),
        "CronJob" => serde_json::from_value::<CronJob>(doc.clone()).map(drop),
        _ => Ok(()),
    };
    if let Err(e) = ok {
        panic!("{kind} does not parse: {e}");
    }
}

#[test]
fn pod() {
    let out = check("pod");
    let init = out.find("initContainers:").expect("initContainers");
    let step = out.find("name: trellis-init").expect("init step");
    let proxy = out.find("name: trellis-proxy").expect("proxy");
    assert!(init < step && step < proxy);
}

#[test]
fn deployment() {
    let out = check("deployment");
    assert!(out.contains("- 5432,6379"));
    let init = out.find("name: trellis-init").expect("init");
    let proxy = out.find("name: trellis-proxy").expect("proxy");
    let migrate = out.find("name: migrate").expect("user init");
    assert!(init < proxy && proxy < migrate);
}

#[test]
fn statefulset() {
    assert!(check("statefulset").contains("- 4191,5432"));
}

#[test]
fn daemonset() {
    assert!(check("daemonset").contains("value: node-agent"));
}

#[test]
fn replicaset() {
    check("replicaset");
}

#[test]
fn job_fallback() {
    let out = check("job");
    assert!(out.contains("postStart"));
    assert!(!out.contains("restartPolicy: Always"));
}

#[test]
fn cronjob() {
    assert!(check("cronjob").contains("restartPolicy: Always"));
}

#[test]
fn multi_document() {
    let out = check("multi");
    assert_eq!(
        out.matches("name: trellis-proxy").count(),
        1,
        "only the List's Deployment"
    );
    assert!(out.contains("kind: Service"));
    assert!(out.contains("mode: \"true\""), "strings stay strings");
}
