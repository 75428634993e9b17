//! `trellis check`: is the cluster ready for Trellis (`--pre`), and is the installed mesh healthy,
//! like `linkerd check`. Every check is one line, `√ name` or `× name: reason` followed by a
//! `hint:` line saying what to do; the exit status is 0 when every check passed and 1 otherwise,
//! for CI. Read-only: it only GETs, LISTs and asks SelfSubjectAccessReviews. The data plane is
//! judged from the API server's view of the pods (the sidecar's readiness, its image tag against
//! the control plane's) and from each proxy's `/metrics` (`trellis_certificate_expires_in_seconds`)
//! fetched through the API server's pod proxy, since the proxy's other admin endpoints answer
//! loopback callers only.
use std::path::PathBuf;

use anyhow::Result;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Container, ContainerStatus, Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use trellis_control_plane::kubernetes::crd;
use trellis_control_plane::manifests as control_plane;
use trellis_injector::manifests as injector;
use trellis_injector::sidecar;

use crate::pki;

/// A workload certificate with less than this left is failing to renew: proxies renew at half
/// of the lifetime (24 h by default).
const CERT_MIN_SECONDS: f64 = 3600.0;
/// At most this many objects are named in one failure.
const NAMED: usize = 5;
/// What `install` creates: (API group, resource, namespaced).
const INSTALL_KINDS: [(&str, &str, bool); 12] = [
    ("", "namespaces", false),
    ("apiextensions.k8s.io", "customresourcedefinitions", false),
    ("rbac.authorization.k8s.io", "clusterroles", false),
    ("rbac.authorization.k8s.io", "clusterrolebindings", false),
    (
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        false,
    ),
    ("", "serviceaccounts", true),
    ("", "secrets", true),
    ("", "configmaps", true),
    ("", "services", true),
    ("apps", "deployments", true),
    ("policy", "poddisruptionbudgets", true),
    ("cert-manager.io", "certificates", true),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Check that the cluster can take an install (API reachable, permissions, CRD), instead of
    /// checking an installed mesh.
    #[arg(long)]
    pub pre: bool,
    /// A kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The control plane's namespace.
    #[arg(long, default_value = control_plane::NAMESPACE)]
    pub namespace: String,
    /// `table` for people, `json` for scripts.
    #[arg(long, value_enum, default_value = "table")]
    pub output: Output,
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub failure: Option<Failure>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: String,
    pub hint: String,
}

impl Check {
    fn pass(name: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            failure: None,
        }
    }

    fn fail(name: impl Into<String>, reason: impl Into<String>, hint: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            failure: Some(Failure {
                reason: reason.into(),
                hint: hint.into(),
            }),
        }
    }

    fn from(name: &str, result: Result<(), Failure>) -> Check {
        Check {
            name: name.to_owned(),
            failure: result.err(),
        }
    }
}

fn failure(reason: impl Into<String>, hint: impl Into<String>) -> Failure {
    Failure {
        reason: reason.into(),
        hint: hint.into(),
    }
}

/// Runs the checks and prints them; true when all passed.
pub fn main(args: CheckArgs) -> Result<bool> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let checks = runtime.block_on(run(&args));
    let passed = checks.iter().all(|c| c.failure.is_none());
    let text = match args.output {
        Output::Table => table(&checks),
        Output::Json => json_report(&checks)?,
    };
    print!("{text}");
    Ok(passed)
}

pub fn table(checks: &[Check]) -> String {
    let mut out = String::new();
    for check in checks {
        match &check.failure {
            None => out.push_str(&format!("√ {}\n", check.name)),
            Some(f) => out.push_str(&format!(
                "× {}: {}\n    hint: {}\n",
                check.name, f.reason, f.hint
            )),
        }
    }
    let failed = checks.iter().filter(|c| c.failure.is_some()).count();
    if failed == 0 {
        out.push_str(&format!("\nall {} checks passed\n", checks.len()));
    } else {
        out.push_str(&format!("\n{failed} of {} checks failed\n", checks.len()));
    }
    out
}

fn json_report(checks: &[Check]) -> Result<String> {
    let items: Vec<_> = (checks.iter())
        .map(|c| match &c.failure {
            None => json!({"name": c.name, "success": true}),
            Some(f) => {
                json!({"name": c.name, "success": false, "reason": f.reason, "hint": f.hint})
            }
        })
        .collect();
    let success = checks.iter().all(|c| c.failure.is_none());
    Ok(serde_json::to_string_pretty(&json!({"success": success, "checks": items}))? + "\n")
}

const API: &str = "Kubernetes API is reachable";

async fn run(args: &CheckArgs) -> Vec<Check> {
    let client = match trellis_control_plane::kubernetes::client(args.kubeconfig.as_deref()).await {
        Ok(client) => client,
        Err(e) => {
            return vec![Check::fail(
                API,
                e.to_string(),
                "pass --kubeconfig FILE or set KUBECONFIG to a kubeconfig for the cluster",
            )]
        }
    };
    match client.apiserver_version().await {
        Ok(version) => {
            let name = format!("{API} ({})", version.git_version);
            let mut checks = vec![Check::pass(name)];
            if args.pre {
                checks.extend(pre_install(&client, &args.namespace).await);
            } else {
                checks.extend(installed(&client, &args.namespace).await);
            }
            checks
        }
        Err(e) => vec![Check::fail(
            API,
            format!("GET /version: {e}"),
            "check that the cluster is up and the kubeconfig's server and credentials are right \
             (kubectl version)",
        )],
    }
}

async fn pre_install(client: &kube::Client, namespace: &str) -> Vec<Check> {
    let mut checks = Vec::new();
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    for (group, resource, namespaced) in INSTALL_KINDS {
        let name = format!("can create {resource}");
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some(group.to_owned()),
                    resource: Some(resource.to_owned()),
                    verb: Some("create".to_owned()),
                    namespace: namespaced.then(|| namespace.to_owned()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let hint = if group == "cert-manager.io" {
            "only needed for `trellis install --cert-manager`; otherwise ignore this line"
                .to_owned()
        } else {
            format!(
                "`trellis install` creates {resource}: use an account allowed to (e.g. \
                 cluster-admin)"
            )
        };
        let check = match reviews.create(&PostParams::default(), &review).await {
            Ok(answer) => match answer.status {
                Some(status) if status.allowed => Check::pass(name),
                status => {
                    let mut reason = "not allowed".to_owned();
                    if let Some(why) = status.and_then(|s| s.reason).filter(|r| !r.is_empty()) {
                        reason = format!("{reason}: {why}");
                    }
                    Check::fail(name, reason, hint)
                }
            },
            Err(e) => Check::fail(
                name,
                format!("SelfSubjectAccessReview: {e}"),
                "the API server must serve authorization.k8s.io/v1",
            ),
        };
        checks.push(check);
    }
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = "TrafficPolicy CRD is absent or compatible";
    checks.push(match crds.get_opt(&crd_name()).await {
        Ok(None) => Check::pass(name),
        Ok(Some(crd)) => Check::from(name, compatible(&crd)),
        Err(e) => Check::fail(
            name,
            e.to_string(),
            "check the API server and your permissions",
        ),
    });
    checks
}

fn crd_name() -> String {
    format!("{}.{}", crd::PLURAL, crd::GROUP)
}

/// The installed CRD serves the version this control plane reads.
fn compatible(crd: &CustomResourceDefinition) -> Result<(), Failure> {
    let served: Vec<&str> = (crd.spec.versions.iter())
        .filter(|v| v.served)
        .map(|v| v.name.as_str())
        .collect();
    if served.contains(&crd::VERSION) {
        return Ok(());
    }
    Err(failure(
        format!(
            "customresourcedefinitions/{} serves {} but not {}",
            crd_name(),
            if served.is_empty() {
                "nothing".to_owned()
            } else {
                served.join(", ")
            },
            crd::VERSION
        ),
        "install the matching Trellis version, or delete the CRD (this deletes every \
         TrafficPolicy) and install again",
    ))
}

async fn installed(client: &kube::Client, namespace: &str) -> Vec<Check> {
    let mut checks = Vec::new();
    let install_hint = "trellis install | kubectl apply -f -";

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = "TrafficPolicy CRD is installed";
    checks.push(match crds.get_opt(&crd_name()).await {
        Ok(Some(crd)) => Check::from(name, compatible(&crd)),
        Ok(None) => Check::fail(
            name,
            format!("customresourcedefinitions/{} not found", crd_name()),
            install_hint,
        ),
        Err(e) => Check::fail(
            name,
            e.to_string(),
            "check the API server and your permissions",
        ),
    });

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let control_plane_deployment = deployments.get_opt(control_plane::NAME).await;
    let control_plane_image = match &control_plane_deployment {
        Ok(Some(d)) => d
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|s| s.containers.first())
            .and_then(|c| c.image.clone()),
        _ => None,
    };
    checks.push(Check::from(
        "control plane Deployment is available",
        available(namespace, control_plane::NAME, control_plane_deployment),
    ));
    checks.push(Check::from(
        "injector Deployment is available",
        available(
            namespace,
            injector::NAME,
            deployments.get_opt(injector::NAME).await,
        ),
    ));

    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    checks.push(Check::from(
        "mesh CA certificate is valid for more than 30 days",
        mesh_ca(namespace, secrets.get_opt(control_plane::CA_SECRET).await),
    ));

    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let bundle = match webhooks.get_opt(injector::NAME).await {
        Ok(Some(webhook)) => {
            checks.push(Check::pass("injector webhook is configured"));
            webhook
                .webhooks
                .and_then(|w| w.into_iter().next())
                .and_then(|w| w.client_config.ca_bundle)
                .map(|b| b.0)
        }
        Ok(None) => {
            checks.push(Check::fail(
                "injector webhook is configured",
                format!("mutatingwebhookconfigurations/{} not found", injector::NAME),
                install_hint,
            ));
            None
        }
        Err(e) => {
            checks.push(Check::fail(
                "injector webhook is configured",
                e.to_string(),
                "check the API server and your permissions",
            ));
            None
        }
    };
    let serving = secrets.get_opt(injector::TLS_SECRET).await;
    checks.extend(webhook_certificate(namespace, bundle, serving));

    let pods: Api<Pod> = Api::all(client.clone());
    match pods.list(&ListParams::default()).await {
        Ok(list) => {
            let meshed: Vec<Pod> = (list.items.into_iter())
                .filter(|p| proxy_container(p).is_some())
                .collect();
            checks.extend(data_plane(client, &meshed, control_plane_image.as_deref()).await);
        }
        Err(e) => checks.push(Check::fail(
            "data plane proxies are ready",
            format!("listing pods: {e}"),
            "check your permissions: list pods in all namespaces",
        )),
    }
    checks
}

fn available(
    namespace: &str,
    name: &str,
    deployment: Result<Option<Deployment>, kube::Error>,
) -> Result<(), Failure> {
    let describe = format!(
        "kubectl -n {namespace} describe deployment {name}; kubectl -n {namespace} logs \
         deployment/{name}"
    );
    let deployment = match deployment {
        Ok(Some(d)) => d,
        Ok(None) => {
            return Err(failure(
                format!("deployments/{name} not found in {namespace}"),
                "trellis install | kubectl apply -f -",
            ))
        }
        Err(e) => return Err(failure(e.to_string(), describe)),
    };
    let wanted = deployment.spec.and_then(|s| s.replicas).unwrap_or(1);
    let ready = (deployment.status.as_ref())
        .and_then(|s| s.available_replicas)
        .unwrap_or(0);
    if ready == 0 {
        return Err(failure(
            format!("{namespace}/{name}: 0 of {wanted} replicas available"),
            describe,
        ));
    }
    Ok(())
}

fn secret_pem(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
}

fn mesh_ca(namespace: &str, secret: Result<Option<Secret>, kube::Error>) -> Result<(), Failure> {
    let name = control_plane::CA_SECRET;
    let hint = "trellis install | kubectl apply -f -";
    let secret = match secret {
        Ok(Some(s)) => s,
        Ok(None) => {
            return Err(failure(
                format!("Secret {namespace}/{name} not found"),
                hint,
            ))
        }
        Err(e) => {
            return Err(failure(
                e.to_string(),
                "check your permissions: get secrets",
            ))
        }
    };
    let what = format!("Secret {namespace}/{name} tls.crt");
    let info = secret_pem(&secret, "tls.crt")
        .ok_or_else(|| failure(format!("{what} is missing"), hint))
        .and_then(|pem| {
            let der = pki::certificates(&what, &pem).map_err(|e| failure(e.to_string(), hint))?;
            pki::inspect(&what, &der[0]).map_err(|e| failure(e.to_string(), hint))
        })?;
    if pki::near_expiry(info.not_after) {
        return Err(failure(
            format!(
                "the mesh CA's issuing certificate expires in {} days",
                pki::days_left(info.not_after)
            ),
            "issue a new intermediate from the same root and install it with `trellis install \
             --ca-cert … --ca-key … --ca-root …`",
        ));
    }
    Ok(())
}

/// The caBundle verifies the injector's serving certificate, which names the Service and is not
/// near expiry.
fn webhook_certificate(
    namespace: &str,
    bundle: Option<Vec<u8>>,
    secret: Result<Option<Secret>, kube::Error>,
) -> Vec<Check> {
    const SIGNED: &str = "webhook caBundle verifies the injector's certificate";
    const FRESH: &str = "injector certificate is valid for more than 30 days";
    let secret_name = format!("Secret {namespace}/{}", injector::TLS_SECRET);
    let upgrade = "trellis upgrade | kubectl apply -f - (it re-emits the Secret and the caBundle \
                   together, renewing a certificate that does not match)";
    let both = |reason: String, hint: &str| {
        vec![
            Check::fail(SIGNED, reason.clone(), hint),
            Check::fail(FRESH, reason, hint),
        ]
    };
    let secret = match secret {
        Ok(Some(s)) => s,
        Ok(None) => return both(format!("{secret_name} not found"), upgrade),
        Err(e) => return both(e.to_string(), "check your permissions: get secrets"),
    };
    let what = format!("{secret_name} tls.crt");
    let leaf = match secret_pem(&secret, "tls.crt")
        .ok_or_else(|| anyhow::anyhow!("{what} is missing"))
        .and_then(|pem| pki::certificates(&what, &pem))
        .and_then(|ders| pki::inspect(&what, &ders[0]))
    {
        Ok(leaf) => leaf,
        Err(e) => return both(e.to_string(), upgrade),
    };
    let mut checks = Vec::new();
    let host = pki::webhook_names(injector::NAME, namespace).remove(0);
    let signed = match bundle {
        None => Err(failure(
            format!(
                "mutatingwebhookconfigurations/{} has no caBundle",
                injector::NAME
            ),
            upgrade,
        )),
        Some(bundle) => match pki::certificates("the caBundle", &bundle) {
            Err(e) => Err(failure(e.to_string(), upgrade)),
            Ok(cas) if pki::signer(&leaf.der, &cas).is_none() => Err(failure(
                format!(
                    "{what} is not signed by any CA in the caBundle of \
                     mutatingwebhookconfigurations/{}",
                    injector::NAME
                ),
                upgrade,
            )),
            Ok(_) if !leaf.dns_names.contains(&host) => {
                Err(failure(format!("{what} does not name {host}"), upgrade))
            }
            Ok(_) => Ok(()),
        },
    };
    checks.push(Check::from(SIGNED, signed));
    let fresh = if pki::near_expiry(leaf.not_after) {
        Err(failure(
            format!("{what} expires in {} days", pki::days_left(leaf.not_after)),
            format!(
                "trellis upgrade | kubectl apply -f - renews it; then kubectl -n {namespace} \
                 rollout restart deployment {}",
                injector::NAME
            ),
        ))
    } else {
        Ok(())
    };
    checks.push(Check::from(FRESH, fresh));
    checks
}

fn proxy_container(pod: &Pod) -> Option<&Container> {
    let spec = pod.spec.as_ref()?;
    (spec.init_containers.iter().flatten())
        .chain(spec.containers.iter())
        .find(|c| c.name == sidecar::PROXY_CONTAINER)
}

fn proxy_status(pod: &Pod) -> Option<&ContainerStatus> {
    let status = pod.status.as_ref()?;
    (status.init_container_statuses.iter().flatten())
        .chain(status.container_statuses.iter().flatten())
        .find(|c| c.name == sidecar::PROXY_CONTAINER)
}

fn pod_name(pod: &Pod) -> (String, String) {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

/// The tag of an image reference (`registry:5000/name:tag@digest` gives `tag`).
fn image_tag(image: &str) -> Option<&str> {
    let image = image.split('@').next().unwrap_or(image);
    let last = image.rsplit('/').next().unwrap_or(image);
    last.split_once(':').map(|(_, tag)| tag)
}

/// "a, b, c and 2 more"
fn named(items: &[String]) -> String {
    let shown = items
        .iter()
        .take(NAMED)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    match items.len().saturating_sub(NAMED) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

async fn data_plane(
    client: &kube::Client,
    pods: &[Pod],
    control_plane_image: Option<&str>,
) -> Vec<Check> {
    const READY: &str = "data plane proxies are ready";
    const VERSION: &str = "data plane proxies run the control plane's version";
    const CERTS: &str = "data plane certificates are not near expiry";
    let mut checks = Vec::new();

    let not_ready: Vec<&Pod> = (pods.iter())
        .filter(|p| !proxy_status(p).is_some_and(|s| s.ready))
        .collect();
    checks.push(match not_ready.first() {
        None => Check::pass(READY),
        Some(first) => {
            let (ns, name) = pod_name(first);
            let names: Vec<String> = not_ready
                .iter()
                .map(|p| {
                    let (ns, name) = pod_name(p);
                    format!("{ns}/{name}")
                })
                .collect();
            Check::fail(
                READY,
                format!("not ready: {}", named(&names)),
                format!(
                    "kubectl -n {ns} describe pod {name}; kubectl -n {ns} logs {name} -c {}",
                    sidecar::PROXY_CONTAINER
                ),
            )
        }
    });

    let wanted = control_plane_image.and_then(image_tag);
    checks.push(match wanted {
        None => Check::fail(
            VERSION,
            "the control plane's version is unknown (no Deployment or no image tag)",
            "install the control plane first: trellis install | kubectl apply -f -",
        ),
        Some(wanted) => {
            let stale: Vec<(String, String, String)> = (pods.iter())
                .filter_map(|p| {
                    let image = proxy_container(p)?.image.as_deref().unwrap_or_default();
                    let tag = image_tag(image).unwrap_or("none");
                    let (ns, name) = pod_name(p);
                    (tag != wanted).then(|| (ns, name, tag.to_owned()))
                })
                .collect();
            match stale.first() {
                None => Check::pass(format!("{VERSION} ({wanted})")),
                Some((ns, _, _)) => Check::fail(
                    format!("{VERSION} ({wanted})"),
                    named(
                        &(stale.iter())
                            .map(|(ns, name, tag)| format!("{ns}/{name} runs {tag}"))
                            .collect::<Vec<_>>(),
                    ),
                    format!(
                        "restart the workloads so the injector gives them the current proxy: \
                         kubectl -n {ns} rollout restart deployment"
                    ),
                ),
            }
        }
    });

    let mut expiring = Vec::new();
    let mut first_failing: Option<(String, String)> = None;
    for pod in pods
        .iter()
        .filter(|p| proxy_status(p).is_some_and(|s| s.ready))
    {
        let (ns, name) = pod_name(pod);
        let problem = match certificate_seconds(client, &ns, &name).await {
            Ok(Some(left)) if left >= CERT_MIN_SECONDS => None,
            Ok(Some(left)) if left <= 0.0 => Some("has no valid certificate".to_owned()),
            Ok(Some(left)) => Some(format!("expires in {}s", left as i64)),
            Ok(None) => Some("reports no trellis_certificate_expires_in_seconds".to_owned()),
            Err(e) => Some(format!("cannot read /metrics: {e}")),
        };
        if let Some(problem) = problem {
            expiring.push(format!("{ns}/{name} {problem}"));
            first_failing.get_or_insert((ns, name));
        }
    }
    checks.push(match first_failing {
        None => Check::pass(CERTS),
        Some((ns, name)) => Check::fail(
            CERTS,
            named(&expiring),
            format!(
                "the proxy cannot renew: kubectl -n {ns} logs {name} -c {}, and the control \
                 plane's log",
                sidecar::PROXY_CONTAINER
            ),
        ),
    });
    checks
}

/// The proxy's `trellis_certificate_expires_in_seconds`, read through the API server's pod proxy
/// (`/metrics` on the admin port answers any caller).
async fn certificate_seconds(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Option<f64>, kube::Error> {
    let path = format!(
        "/api/v1/namespaces/{namespace}/pods/{name}:{}/proxy/metrics",
        sidecar::ADMIN_PORT
    );
    let request = http::Request::get(path)
        .body(Vec::new())
        .map_err(kube::Error::HttpError)?;
    let text = client.request_text(request).await?;
    Ok(metric(&text, "trellis_certificate_expires_in_seconds"))
}

/// The value of an unlabelled sample in a Prometheus text exposition.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let value = rest.strip_prefix(' ')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_tags() {
        assert_eq!(
            image_tag("ghcr.io/trellis-mesh/trellis-proxy:0.1.0"),
            Some("0.1.0")
        );
        assert_eq!(image_tag("localhost:5000/proxy:dev@sha256:ab"), Some("dev"));
        assert_eq!(image_tag("localhost:5000/proxy"), None);
    }

    #[test]
    fn metric_values() {
        let text = "# HELP trellis_certificate_expires_in_seconds x\n\
                    trellis_certificate_expires_in_seconds_total 1\n\
                    trellis_certificate_expires_in_seconds 86000\n";
        assert_eq!(
            metric(text, "trellis_certificate_expires_in_seconds"),
            Some(86000.0)
        );
        assert_eq!(metric("", "trellis_certificate_expires_in_seconds"), None);
    }

    #[test]
    fn named_lists_are_cut() {
        let items: Vec<String> = (1..=7).map(|i| i.to_string()).collect();
        assert_eq!(named(&items), "1, 2, 3, 4, 5 and 2 more");
    }
}
