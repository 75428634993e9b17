//! Golden tests for `trellis-injector inject`: each `tests/golden/NAME.in.yaml` is injected with
//! the default config and compared with `NAME.out.yaml`. `UPDATE_GOLDEN=1 cargo test -p
//! trellis-injector --test golden` rewrites the expected files. Every injected workload must also
//! parse as its k8s-openapi type.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Probe};
use serde_json::Value;
use std::path::PathBuf;
use trellis_injector::workload::inject_yaml;
use trellis_injector::InjectorConfig;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn check(name: &str) -> String {
    let input = std::fs::read_to_string(dir().join(format!("{name}.in.yaml"))).expect("input");
    let injected = inject_yaml(&input, &InjectorConfig::default()).expect("inject");
    assert_eq!(injected.errors, [], "{name}: no document may fail");
    let output = injected.output;
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
    let again = inject_yaml(&output, &InjectorConfig::default()).expect("re-inject");
    assert_eq!(
        again.output, output,
        "{name}: injecting twice changed the output"
    );
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
    assert!(out.contains("path: /app-health/web/readyz"));
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

/// The pod spec of the (single) workload in a golden output.
fn pod_spec(output: &str) -> PodSpec {
    let doc: Value = serde_saphyr::from_str(output).expect("one document");
    let spec = match doc["kind"].as_str() {
        Some("Pod") => &doc["spec"],
        _ => &doc["spec"]["template"]["spec"],
    };
    serde_json::from_value(spec.clone()).expect("PodSpec")
}

fn container<'a>(spec: &'a PodSpec, name: &str) -> &'a Container {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn app_probes(spec: &PodSpec) -> Option<Value> {
    let proxy = container(spec, "trellis-proxy");
    proxy
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "TRELLIS_APP_PROBES")
        .map(|e| serde_json::from_str(e.value.as_deref().expect("value")).expect("JSON"))
}

/// `(path, port)` of an httpGet probe.
fn http_target(probe: Option<&Probe>) -> (String, String) {
    let http = probe
        .and_then(|p| p.http_get.as_ref())
        .expect("an httpGet probe");
    let port = match &http.port {
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => n.to_string(),
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => s.clone(),
    };
    (http.path.clone().unwrap_or_default(), port)
}

#[test]
fn probes_move_to_the_admin_port() {
    let spec = pod_spec(&check("probes"));
    let web = container(&spec, "web");
    let ready = web.readiness_probe.as_ref().expect("readiness");
    assert_eq!(
        http_target(Some(ready)),
        ("/app-health/web/readyz".to_string(), "4191".to_string())
    );
    assert_eq!(
        (
            ready.initial_delay_seconds,
            ready.period_seconds,
            ready.timeout_seconds,
            ready.success_threshold,
            ready.failure_threshold
        ),
        (Some(3), Some(5), Some(2), Some(1), Some(4)),
        "timing is kept"
    );
    assert_eq!(
        http_target(web.liveness_probe.as_ref()).0,
        "/app-health/web/livez"
    );
    let startup = web.startup_probe.as_ref().expect("startup");
    assert_eq!(http_target(Some(startup)).0, "/app-health/web/startupz");
    assert!(startup.grpc.is_none());
    assert_eq!(startup.failure_threshold, Some(30));
    let cache = container(&spec, "cache");
    assert!(
        cache
            .liveness_probe
            .as_ref()
            .is_some_and(|p| p.exec.is_some()),
        "exec probes stay"
    );
    assert_eq!(
        http_target(cache.readiness_probe.as_ref()).0,
        "/app-health/cache/readyz"
    );
    let env = app_probes(&spec).expect("TRELLIS_APP_PROBES");
    let expected = serde_json::json!({
        "/app-health/web/readyz": {
            "httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP",
                        "httpHeaders": [{"name": "X-Probe", "value": "readiness"}]},
            "timeoutSeconds": 2
        },
        "/app-health/web/livez": {"tcpSocket": {"port": 9901}},
        "/app-health/web/startupz": {"grpc": {"port": 9090, "service": "shop.v1.Shop"}},
        "/app-health/cache/readyz": {"tcpSocket": {"port": 6379}}
    });
    assert_eq!(env, expected);
}

#[test]
fn probes_opt_out_keeps_them() {
    let spec = pod_spec(&check("probes-opt-out"));
    assert_eq!(
        http_target(container(&spec, "legacy").readiness_probe.as_ref()),
        ("/healthz".to_string(), "http".to_string())
    );
    assert!(app_probes(&spec).is_none());
}

#[test]
fn probes_fallback_mode_rewrites_the_app_containers_not_the_proxy() {
    let spec = pod_spec(&check("probes-fallback"));
    assert_eq!(spec.containers[0].name, "trellis-proxy");
    assert_eq!(
        http_target(spec.containers[0].readiness_probe.as_ref()).0,
        "/ready",
        "the proxy's own probe"
    );
    assert_eq!(
        http_target(container(&spec, "first").readiness_probe.as_ref()).0,
        "/app-health/first/readyz"
    );
    assert_eq!(
        http_target(container(&spec, "second").liveness_probe.as_ref()).0,
        "/app-health/second/livez"
    );
    let env = app_probes(&spec).expect("TRELLIS_APP_PROBES");
    assert_eq!(env["/app-health/first/readyz"]["httpGet"]["port"], 8080);
    assert_eq!(env["/app-health/second/livez"]["tcpSocket"]["port"], 9000);
}
