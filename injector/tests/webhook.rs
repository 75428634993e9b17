//! The webhook's review handling with AdmissionReviews shaped as the API server sends them (the
//! fixture follows the Kubernetes "Dynamic Admission Control" example, for a Pod CREATE): the
//! returned JSON Patch is applied with the json-patch crate and the result checked as a
//! k8s-openapi Pod.

use base64::Engine;
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{json, Value};
use trellis_injector::review::respond;
use trellis_injector::InjectorConfig;

fn fixture() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/review-pod.json"
    ))
    .expect("fixture");
    serde_json::from_str(&text).expect("fixture JSON")
}

fn review(input: &Value) -> Value {
    respond(
        &serde_json::to_vec(input).expect("encode"),
        &InjectorConfig::default(),
    )
    .expect("a review")
}

fn response(out: &Value) -> &Value {
    out.get("response").expect("response")
}

/// The patch of a response, decoded from base64; `None` when there is none.
fn patch(out: &Value) -> Option<json_patch::Patch> {
    let encoded = response(out).get("patch")?;
    let text = encoded.as_str().expect("patch is a base64 string");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64");
    Some(serde_json::from_slice(&bytes).expect("JSON Patch"))
}

/// The fixture's pod with the webhook's patch applied.
fn injected(input: &Value) -> (Value, Pod) {
    let out = review(input);
    assert_eq!(response(&out)["allowed"], true, "{out}");
    let ops = patch(&out).expect("a patch");
    let mut pod = input["request"]["object"].clone();
    json_patch::patch(&mut pod, &ops).expect("patch applies");
    let typed: Pod = serde_json::from_value(pod.clone()).expect("parses as Pod");
    (pod, typed)
}

fn with_annotations(pairs: &[(&str, &str)]) -> Value {
    let mut input = fixture();
    let map: serde_json::Map<String, Value> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Value::from(*v)))
        .collect();
    input["request"]["object"]["metadata"]["annotations"] = Value::Object(map);
    input
}

fn named<'a>(containers: &'a [Container], name: &str) -> &'a Container {
    containers
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn env(container: &Container) -> Vec<(String, String)> {
    container
        .env
        .iter()
        .flatten()
        .map(|e| {
            let value = match (&e.value, &e.value_from) {
                (Some(v), _) => v.clone(),
                (None, Some(from)) => format!(
                    "fieldRef:{}",
                    from.field_ref.as_ref().expect("fieldRef").field_path
                ),
                (None, None) => String::new(),
            };
            (e.name.clone(), value)
        })
        .collect()
}

#[test]
fn response_echoes_uid_and_carries_a_base64_json_patch() {
    let out = review(&fixture());
    assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(out["kind"], "AdmissionReview");
    let response = response(&out);
    assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    assert!(response["patch"].is_string(), "patch must be base64 text");
    assert!(patch(&out).is_some());
}

#[test]
fn kube_core_alone_would_send_the_patch_as_numbers() {
    // Why review.rs rewrites the field: if this starts failing, kube-core encodes base64 itself
    // and the workaround can go.
    let request: kube_core::admission::AdmissionReview<kube_core::DynamicObject> =
        serde_json::from_value(fixture()).expect("review");
    let request: kube_core::admission::AdmissionRequest<_> = request.try_into().expect("request");
    let response = kube_core::admission::AdmissionResponse::from(&request)
        .with_patch(json_patch::Patch(vec![]))
        .expect("patch");
    let value = serde_json::to_value(response.into_review()).expect("encode");
    assert!(value["response"]["patch"].is_array());
}

#[test]
fn injected_pod_has_the_init_step_then_the_native_sidecar() {
    let (_, pod) = injected(&fixture());
    let spec = pod.spec.expect("spec");
    let init = spec.init_containers.clone().expect("init containers");
    let names: Vec<&str> = init.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["trellis-init", "trellis-proxy"]);
    assert_eq!(spec.containers.len(), 1, "the app is untouched");
    assert_eq!(spec.containers[0].name, "web");

    let step = &init[0];
    let security = step.security_context.as_ref().expect("securityContext");
    let caps = security.capabilities.as_ref().expect("capabilities");
    assert_eq!(
        caps.add.as_deref(),
        Some(&["NET_ADMIN".to_string(), "NET_RAW".to_string()][..])
    );
    assert_eq!(security.run_as_user, Some(0));
    assert_eq!(security.run_as_non_root, Some(false));
    let args = step.args.clone().expect("args").join(" ");
    assert!(args.starts_with("redirect --proxy-uid 2102 --inbound-port 4143 --outbound-port 4140"));
    assert!(args.contains("--skip-inbound-ports 4191"), "{args}");
    assert_eq!(step.image, init[1].image, "one image for both");

    let proxy = &init[1];
    assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
    let security = proxy.security_context.as_ref().expect("securityContext");
    assert_eq!(security.run_as_user, Some(2102));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        let get = p
            .as_ref()
            .and_then(|p| p.http_get.clone())
            .expect("httpGet");
        (get.path.expect("path"), format!("{:?}", get.port))
    };
    assert_eq!(probe_path(&proxy.readiness_probe).0, "/ready");
    assert_eq!(probe_path(&proxy.liveness_probe).0, "/live");
    assert_eq!(probe_path(&proxy.startup_probe).0, "/ready");
    assert_eq!(probe_path(&proxy.readiness_probe).1, "Int(4191)");
    let requests = proxy
        .resources
        .as_ref()
        .and_then(|r| r.requests.clone())
        .expect("requests");
    assert_eq!(requests["cpu"].0, "10m");
    assert_eq!(requests["memory"].0, "20Mi");
}

#[test]
fn injected_proxy_env_and_volumes() {
    let (_, pod) = injected(&fixture());
    let spec = pod.spec.expect("spec");
    let init = spec.init_containers.expect("init");
    let env = env(named(&init, "trellis-proxy"));
    let get = |name: &str| {
        env.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no env {name}"))
    };
    assert_eq!(get("TRELLIS_NODE_ID"), "fieldRef:metadata.name");
    assert_eq!(get("TRELLIS_NAMESPACE"), "fieldRef:metadata.namespace");
    assert_eq!(
        get("TRELLIS_SERVICE_ACCOUNT"),
        "fieldRef:spec.serviceAccountName"
    );
    assert_eq!(get("TRELLIS_POD_IP"), "fieldRef:status.podIP");
    assert_eq!(get("TRELLIS_SERVICE"), "web");
    assert_eq!(
        get("TRELLIS_CONTROL_PLANE_CA"),
        "/var/run/trellis/ca/ca.pem"
    );
    assert_eq!(get("TRELLIS_TOKEN_FILE"), "/var/run/trellis/tokens/token");
    assert_eq!(get("TRELLIS_INBOUND"), "0.0.0.0:4143,[::]:4143");
    assert_eq!(get("TRELLIS_OUTBOUND"), "127.0.0.1:4140,[::1]:4140");
    assert_eq!(get("TRELLIS_ADMIN"), "0.0.0.0:4191,[::]:4191");
    assert!(get("TRELLIS_CONTROL_PLANE").starts_with("https://"));

    let volumes = spec.volumes.expect("volumes");
    let names: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(
        names,
        ["kube-api-access-x7k2p", "trellis-ca", "trellis-token"]
    );
    assert_eq!(
        volumes[1].config_map.as_ref().map(|c| c.name.as_str()),
        Some("trellis-ca")
    );
    let token = volumes[2]
        .projected
        .as_ref()
        .and_then(|p| p.sources.as_ref())
        .and_then(|s| s[0].service_account_token.clone())
        .expect("projected token");
    assert_eq!(token.audience.as_deref(), Some("trellis"));
    assert_eq!(token.expiration_seconds, Some(3600));
}

#[test]
fn injecting_twice_changes_nothing() {
    let mut input = fixture();
    let (pod, _) = injected(&input);
    input["request"]["object"] = pod;
    let out = review(&input);
    assert_eq!(response(&out)["allowed"], true);
    assert!(patch(&out).is_none(), "no patch the second time: {out}");
}

#[test]
fn opt_out_annotation_host_network_and_control_plane_are_skipped() {
    let out = review(&with_annotations(&[("trellis.io/inject", "disabled")]));
    assert_eq!(response(&out)["allowed"], true);
    assert!(patch(&out).is_none());

    let mut input = fixture();
    input["request"]["object"]["spec"]["hostNetwork"] = json!(true);
    let out = review(&input);
    assert_eq!(response(&out)["allowed"], true);
    assert!(patch(&out).is_none());

    let mut input = fixture();
    input["request"]["namespace"] = json!("trellis-system");
    assert!(patch(&review(&input)).is_none());
}

#[test]
fn bad_annotations_are_denied_by_name_and_value() {
    for (name, value) in [
        ("trellis.io/skip-outbound-ports", "80,http"),
        ("trellis.io/skip-inbound-ports", "70000"),
        ("trellis.io/skip-outbound-cidrs", "10.0.0.0/40"),
        ("trellis.io/proxy-memory-request", "lots"),
        ("trellis.io/proxy-log-level", "loud"),
        ("trellis.io/inject", "maybe"),
        ("trellis.io/native-sidecar", "sometimes"),
    ] {
        let out = review(&with_annotations(&[(name, value)]));
        let response = response(&out);
        assert_eq!(response["allowed"], false, "{name}");
        assert!(response.get("patch").is_none());
        let message = response["status"]["message"].as_str().expect("message");
        assert!(message.contains(name), "{message}");
        assert!(message.contains(value), "{message}");
        assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    }
}

#[test]
fn request_above_limit_and_missing_service_are_denied() {
    let out = review(&with_annotations(&[
        ("trellis.io/proxy-cpu-request", "2"),
        ("trellis.io/proxy-cpu-limit", "1"),
    ]));
    let message = response(&out)["status"]["message"]
        .as_str()
        .expect("message");
    assert!(
        message.contains("trellis.io/proxy-cpu-request"),
        "{message}"
    );

    let mut input = fixture();
    input["request"]["object"]["metadata"]["labels"] = json!({"tier": "web"});
    let out = review(&input);
    assert_eq!(response(&out)["allowed"], false);
    let message = response(&out)["status"]["message"]
        .as_str()
        .expect("message");
    assert!(message.contains("trellis.io/service"), "{message}");
}

#[test]
fn annotations_shape_the_sidecar() {
    let input = with_annotations(&[
        ("trellis.io/skip-outbound-ports", "5432, 6379-6380"),
        ("trellis.io/skip-inbound-ports", "9090"),
        ("trellis.io/skip-outbound-cidrs", "169.254.169.254"),
        ("trellis.io/proxy-cpu-limit", "5m"),
        ("trellis.io/proxy-memory-limit", "64Mi"),
        ("trellis.io/proxy-log-level", "debug"),
        ("trellis.io/service", "storefront"),
    ]);
    let (_, pod) = injected(&input);
    let init = pod.spec.expect("spec").init_containers.expect("init");
    let args = named(&init, "trellis-init")
        .args
        .clone()
        .expect("args")
        .join(" ");
    assert!(
        args.contains("--skip-outbound-ports 5432,6379-6380"),
        "{args}"
    );
    assert!(args.contains("--skip-inbound-ports 4191,9090"), "{args}");
    assert!(
        args.contains("--skip-outbound-cidrs 169.254.169.254/32"),
        "{args}"
    );
    let proxy = named(&init, "trellis-proxy");
    let resources = proxy.resources.clone().expect("resources");
    let limits = resources.limits.expect("limits");
    assert_eq!(limits["cpu"].0, "5m");
    assert_eq!(limits["memory"].0, "64Mi");
    // The default request (10m) is above the 5m limit: lowered to it, not denied.
    assert_eq!(resources.requests.expect("requests")["cpu"].0, "5m");
    let env = env(proxy);
    assert!(env.contains(&("TRELLIS_LOG".to_string(), "debug".to_string())));
    assert!(env.contains(&("TRELLIS_SERVICE".to_string(), "storefront".to_string())));
}

#[test]
fn fallback_puts_the_proxy_first_and_holds_the_app() {
    let (_, pod) = injected(&with_annotations(&[("trellis.io/native-sidecar", "false")]));
    let spec = pod.spec.expect("spec");
    let init = spec.init_containers.expect("init");
    assert_eq!(init.len(), 1);
    assert_eq!(init[0].name, "trellis-init");
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["trellis-proxy", "web"]);
    let proxy = &spec.containers[0];
    assert_eq!(proxy.restart_policy, None);
    let hook = proxy
        .lifecycle
        .as_ref()
        .and_then(|l| l.post_start.as_ref())
        .and_then(|h| h.exec.as_ref())
        .and_then(|e| e.command.clone())
        .expect("postStart exec");
    assert!(hook.join(" ").contains("wait-ready"));
}

#[test]
fn existing_init_containers_run_after_the_proxy() {
    let mut input = fixture();
    input["request"]["object"]["spec"]["initContainers"] =
        json!([{"name": "migrate", "image": "example/web:1"}]);
    let (_, pod) = injected(&input);
    let init = pod.spec.expect("spec").init_containers.expect("init");
    let names: Vec<&str> = init.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["trellis-init", "trellis-proxy", "migrate"]);
}

#[test]
fn pod_without_volumes_gets_the_volumes_list() {
    let mut input = fixture();
    let spec = input["request"]["object"]["spec"]
        .as_object_mut()
        .expect("spec");
    spec.remove("volumes");
    let (_, pod) = injected(&input);
    assert_eq!(pod.spec.expect("spec").volumes.expect("volumes").len(), 2);
}

#[test]
fn other_kinds_and_operations_pass_untouched() {
    let mut input = fixture();
    input["request"]["operation"] = json!("UPDATE");
    let out = review(&input);
    assert_eq!(response(&out)["allowed"], true);
    assert!(patch(&out).is_none());

    let mut input = fixture();
    input["request"]["kind"] = json!({"group": "autoscaling", "version": "v1", "kind": "Scale"});
    input["request"]["subResource"] = json!("scale");
    assert!(patch(&review(&input)).is_none());
}

#[test]
fn unusable_pods_are_denied_not_panicked_on() {
    let mut input = fixture();
    input["request"]["object"]["spec"]["containers"] = json!("not a list");
    let out = review(&input);
    assert_eq!(response(&out)["allowed"], false);
    assert!(response(&out)["status"]["message"]
        .as_str()
        .expect("message")
        .contains("not a Pod"));

    let mut input = fixture();
    input["request"]["object"]["spec"]["containers"] = json!([]);
    let out = review(&input);
    assert_eq!(response(&out)["allowed"], false);
}

#[test]
fn bad_input_is_a_bad_request() {
    let config = InjectorConfig::default();
    let err = respond(b"{not json", &config).expect_err("not JSON");
    assert!(err.to_string().contains("not JSON"), "{err}");

    let mut wrong_kind = fixture();
    wrong_kind["kind"] = json!("Pod");
    let err = respond(&serde_json::to_vec(&wrong_kind).expect("encode"), &config)
        .expect_err("wrong kind");
    assert!(err.to_string().contains("AdmissionReview"), "{err}");

    let mut old = fixture();
    old["apiVersion"] = json!("admission.k8s.io/v1beta1");
    assert!(respond(&serde_json::to_vec(&old).expect("encode"), &config).is_err());

    let mut no_request = fixture();
    no_request
        .as_object_mut()
        .expect("object")
        .remove("request");
    let err = respond(&serde_json::to_vec(&no_request).expect("encode"), &config)
        .expect_err("no request");
    assert!(err.to_string().contains("no request"), "{err}");

    let mut no_uid = fixture();
    no_uid["request"]
        .as_object_mut()
        .expect("object")
        .remove("uid");
    assert!(respond(&serde_json::to_vec(&no_uid).expect("encode"), &config).is_err());
}
