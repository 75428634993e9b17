//! `trellis check` against the FAKE API server (`support/`): a healthy mesh (the objects of a real
//! `trellis install` stream with statuses added, an injected pod whose proxy reports a fresh
//! certificate on `/metrics`) passes every check with exit status 0; each broken fixture (CRD
//! missing, a sidecar not ready, a certificate near expiry, a webhook caBundle from another CA,
//! an old proxy image, a permission missing before an install) fails exactly its line, with its
//! hint, and exit status 1.
mod support;

use serde_json::{json, Value};
use support::{documents, stderr, stdout, trellis, FakeApiServer};

const METRICS: &str = "/api/v1/namespaces/shop/pods/web-1:4191/proxy/metrics";
const CRD: &str =
    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/trafficpolicies.policy.trellis.io";
const WEBHOOK: &str =
    "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/trellis-injector";
const PODS: &str = "/api/v1/pods";

const HEALTHY: &str = "\
√ Kubernetes API is reachable (v1.33.1)
√ TrafficPolicy CRD is installed
√ control plane Deployment is available
√ injector Deployment is available
√ mesh CA certificate is valid for more than 30 days
√ injector webhook is configured
√ webhook caBundle verifies the injector's certificate
√ injector certificate is valid for more than 30 days
√ data plane proxies are ready
√ data plane proxies run the control plane's version (0.1.0)
√ data plane certificates are not near expiry

all 11 checks passed
";

fn pod(name: &str, proxy_image: &str, ready: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}")},
        "spec": {
            "initContainers": [{"name": "trellis-proxy", "image": proxy_image,
                                "restartPolicy": "Always"}],
            "containers": [{"name": "web", "image": "example.com/web:1"}]
        },
        "status": {
            "phase": "Running", "podIP": "10.244.1.10",
            "initContainerStatuses": [{
                "name": "trellis-proxy", "image": proxy_image, "imageID": "", "ready": ready,
                "restartCount": 0, "started": true, "state": {"running": {}}
            }],
            "containerStatuses": [{
                "name": "web", "image": "example.com/web:1", "imageID": "", "ready": ready,
                "restartCount": 0, "state": {"running": {}}
            }]
        }
    })
}

fn pods(items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "7"},
           "items": items})
}

/// A fake holding a healthy install: `trellis install`'s own objects, Deployments available, one
/// injected pod (ready, current proxy, fresh certificate) and one pod outside the mesh.
async fn healthy() -> (FakeApiServer, Vec<Value>) {
    let output = trellis(&["install"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let docs = documents(&stdout(&output));
    let fake = FakeApiServer::start().await;
    for mut doc in docs.clone() {
        if doc["kind"] == "Deployment" {
            doc["status"] = json!({"replicas": 2, "readyReplicas": 2, "availableReplicas": 2});
        }
        fake.put_object(doc);
    }
    let outside = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "coredns-1", "namespace": "kube-system"},
        "spec": {"containers": [{"name": "coredns", "image": "coredns:1.11"}]},
        "status": {"phase": "Running"}
    });
    fake.put(
        PODS,
        pods(vec![
            pod("web-1", "ghcr.io/trellis-mesh/trellis-proxy:0.1.0", true),
            outside,
        ]),
    );
    fake.put_text(
        METRICS,
        "# HELP trellis_certificate_expires_in_seconds Seconds until the workload certificate \
         expires.\n# TYPE trellis_certificate_expires_in_seconds gauge\n\
         trellis_certificate_expires_in_seconds 80000\n",
    );
    (fake, docs)
}

async fn check(fake: &FakeApiServer, extra: &[&str]) -> (String, Option<i32>) {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = fake.kubeconfig(dir.path());
    let mut args = vec!["check", "--kubeconfig", kubeconfig.to_str().unwrap()];
    args.extend_from_slice(extra);
    let output = trellis(&args).await;
    assert_eq!(stderr(&output), "");
    (stdout(&output), output.status.code())
}

/// The healthy report with `line` (a check's name) replaced by `replacement`.
fn healthy_but(line: &str, replacement: &str, failed: usize) -> String {
    let wanted = format!("√ {line}\n");
    assert!(HEALTHY.contains(&wanted), "no line {line}");
    HEALTHY.replace(&wanted, replacement).replace(
        "all 11 checks passed",
        &format!("{failed} of 11 checks failed"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_mesh_passes_every_check() {
    let (fake, _) = healthy().await;
    let (out, code) = check(&fake, &[]).await;
    assert_eq!(out, HEALTHY);
    assert_eq!(code, Some(0));
    // The proxy's certificate came from its /metrics, through the API server's pod proxy.
    assert!(
        (fake.requests().iter()).any(|r| r == &format!("GET {METRICS}")),
        "{:?}",
        fake.requests()
    );

    let (out, code) = check(&fake, &["--output", "json"]).await;
    assert_eq!(code, Some(0));
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["success"], true);
    assert_eq!(report["checks"].as_array().unwrap().len(), 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_crd_fails_its_line() {
    let (fake, _) = healthy().await;
    fake.remove(CRD);
    let (out, code) = check(&fake, &[]).await;
    let expected = healthy_but(
        "TrafficPolicy CRD is installed",
        "× TrafficPolicy CRD is installed: customresourcedefinitions/trafficpolicies.policy.trellis.io not found\n    \
         hint: trellis install | kubectl apply -f -\n",
        1,
    );
    assert_eq!(out, expected);
    assert_eq!(code, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_not_ready_fails_its_line() {
    let (fake, _) = healthy().await;
    fake.put(
        PODS,
        pods(vec![pod(
            "web-1",
            "ghcr.io/trellis-mesh/trellis-proxy:0.1.0",
            false,
        )]),
    );
    let (out, code) = check(&fake, &[]).await;
    let expected = healthy_but(
        "data plane proxies are ready",
        "× data plane proxies are ready: not ready: shop/web-1\n    \
         hint: kubectl -n shop describe pod web-1; kubectl -n shop logs web-1 -c trellis-proxy\n",
        1,
    );
    assert_eq!(out, expected);
    assert_eq!(code, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_near_expiry_fails_its_line() {
    let (fake, _) = healthy().await;
    fake.put_text(METRICS, "trellis_certificate_expires_in_seconds 300\n");
    let (out, code) = check(&fake, &[]).await;
    let expected = healthy_but(
        "data plane certificates are not near expiry",
        "× data plane certificates are not near expiry: shop/web-1 expires in 300s\n    \
         hint: the proxy cannot renew: kubectl -n shop logs web-1 -c trellis-proxy, and the \
         control plane's log\n",
        1,
    );
    assert_eq!(out, expected);
    assert_eq!(code, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_ca_bundle_from_another_ca_fails_its_line() {
    let (fake, _) = healthy().await;
    let other = documents(&stdout(&trellis(&["install"]).await));
    let other_webhook = (other.iter())
        .find(|d| d["kind"] == "MutatingWebhookConfiguration")
        .unwrap();
    let mut webhook = fake.object(WEBHOOK);
    webhook["webhooks"][0]["clientConfig"]["caBundle"] =
        other_webhook["webhooks"][0]["clientConfig"]["caBundle"].clone();
    fake.put(WEBHOOK, webhook);
    let (out, code) = check(&fake, &[]).await;
    let expected = healthy_but(
        "webhook caBundle verifies the injector's certificate",
        "× webhook caBundle verifies the injector's certificate: Secret \
         trellis-system/trellis-injector-tls tls.crt is not signed by any CA in the caBundle of \
         mutatingwebhookconfigurations/trellis-injector\n    \
         hint: trellis upgrade | kubectl apply -f - (it re-emits the Secret and the caBundle \
         together, renewing a certificate that does not match)\n",
        1,
    );
    assert_eq!(out, expected);
    assert_eq!(code, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_proxy_fails_the_version_line() {
    let (fake, _) = healthy().await;
    fake.put(
        PODS,
        pods(vec![pod(
            "web-1",
            "ghcr.io/trellis-mesh/trellis-proxy:0.0.9",
            true,
        )]),
    );
    let (out, code) = check(&fake, &[]).await;
    let expected = healthy_but(
        "data plane proxies run the control plane's version (0.1.0)",
        "× data plane proxies run the control plane's version (0.1.0): shop/web-1 runs 0.0.9\n    \
         hint: restart the workloads so the injector gives them the current proxy: kubectl -n \
         shop rollout restart deployment\n",
        1,
    );
    assert_eq!(out, expected);
    assert_eq!(code, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_install_checks_permissions_and_the_crd() {
    let fake = FakeApiServer::start().await;
    let (out, code) = check(&fake, &["--pre"]).await;
    let kinds = [
        "namespaces",
        "customresourcedefinitions",
        "clusterroles",
        "clusterrolebindings",
        "mutatingwebhookconfigurations",
        "serviceaccounts",
        "secrets",
        "configmaps",
        "services",
        "deployments",
        "poddisruptionbudgets",
        "certificates",
    ];
    let mut expected = "√ Kubernetes API is reachable (v1.33.1)\n".to_owned();
    for kind in kinds {
        expected.push_str(&format!("√ can create {kind}\n"));
    }
    expected.push_str("√ TrafficPolicy CRD is absent or compatible\n\nall 14 checks passed\n");
    assert_eq!(out, expected);
    assert_eq!(code, Some(0));
    // The namespaced kinds are asked about in the control plane's namespace.
    let posts = (fake.requests().iter())
        .filter(|r| r.starts_with("POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews"))
        .count();
    assert_eq!(posts, kinds.len());

    fake.deny("secrets");
    let mut crd: Value =
        serde_json::to_value(trellis_control_plane::kubernetes::crd::definition()).unwrap();
    crd["spec"]["versions"][0]["name"] = "v1beta1".into();
    fake.put(CRD, crd);
    let (out, code) = check(&fake, &["--pre"]).await;
    let expected = expected
        .replace(
            "√ can create secrets\n",
            "× can create secrets: not allowed: RBAC: no rule allows it\n    \
             hint: `trellis install` creates secrets: use an account allowed to (e.g. \
             cluster-admin)\n",
        )
        .replace(
            "√ TrafficPolicy CRD is absent or compatible\n",
            "× TrafficPolicy CRD is absent or compatible: \
             customresourcedefinitions/trafficpolicies.policy.trellis.io serves v1beta1 but not \
             v1alpha1\n    \
             hint: install the matching Trellis version, or delete the CRD (this deletes every \
             TrafficPolicy) and install again\n",
        )
        .replace("all 14 checks passed", "2 of 14 checks failed");
    assert_eq!(out, expected);
    assert_eq!(code, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_server_fails_the_first_line() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
             clusters: [{{name: c, cluster: {{server: \"http://127.0.0.1:{port}\"}}}}]\n\
             users: [{{name: u, user: {{}}}}]\n\
             contexts: [{{name: c, context: {{cluster: c, user: u}}}}]\n"
        ),
    )
    .unwrap();
    let output = trellis(&["check", "--kubeconfig", kubeconfig.to_str().unwrap()]).await;
    assert_eq!(output.status.code(), Some(1));
    let out = stdout(&output);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("× Kubernetes API is reachable: GET /version: "),
        "{out}"
    );
    assert_eq!(
        lines[1],
        "    hint: check that the cluster is up and the kubeconfig's server and credentials are \
         right (kubectl version)"
    );
    assert_eq!(lines[3], "1 of 1 checks failed");
}
