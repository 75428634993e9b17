//! Probe rewriting. Under strict mTLS the sidecar's inbound listener refuses plaintext, and the
//! kubelet's probes of the app's port are plaintext from outside the pod, so an injected pod
//! would never become ready (nor stay alive). As Istio does, each app container's liveness,
//! readiness and startup probe that is `httpGet`, `grpc` or `tcpSocket` becomes an `httpGet` of
//! `/app-health/<container>/<livez|readyz|startupz>` on the proxy's admin port (never captured
//! by the redirect), with its timing unchanged; the original probes go to the proxy in
//! `TRELLIS_APP_PROBES`, which performs them against the app from inside the pod
//! (proxy/src/probes.rs). `exec` probes run inside the container and need nothing.

use crate::inject::InjectError;
use crate::sidecar::ADMIN_PORT;
use json_patch::jsonptr::PointerBuf;
use json_patch::{PatchOperation, ReplaceOperation};
use k8s_openapi::api::core::v1::{Container, HTTPGetAction, PodSpec, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;
use std::collections::BTreeMap;

/// The proxy's environment variable holding the original probes (JSON).
pub const ENV: &str = "TRELLIS_APP_PROBES";
/// The admin-port path prefix the proxy serves them under.
pub const PATH_PREFIX: &str = "/app-health/";

/// The probe fields of a container, with the admin path suffix of each.
const KINDS: [(&str, &str); 3] = [
    ("livenessProbe", "livez"),
    ("readinessProbe", "readyz"),
    ("startupProbe", "startupz"),
];

/// The rewritten probes (as patch operations) and the value of [`ENV`], if any probe moved.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rewrite {
    pub ops: Vec<PatchOperation>,
    pub app_probes: Option<String>,
}

/// The admin-port path of one container's probe.
pub fn path(container: &str, kind: &str) -> String {
    format!("{PATH_PREFIX}{container}/{kind}")
}

/// Rewrites the probes of `spec`'s containers (the pod at JSON pointer `root`).
pub fn rewrite(spec: &PodSpec, root: &str) -> Result<Rewrite, InjectError> {
    let mut ops = Vec::new();
    let mut originals = BTreeMap::new();
    for (index, container) in spec.containers.iter().enumerate() {
        for (field, kind) in KINDS {
            let probe = match field {
                "livenessProbe" => container.liveness_probe.as_ref(),
                "readinessProbe" => container.readiness_probe.as_ref(),
                _ => container.startup_probe.as_ref(),
            };
            let Some(probe) = probe else { continue };
            let Some(original) = original(container, field, probe)? else {
                continue;
            };
            let path = path(&container.name, kind);
            originals.insert(path.clone(), canonical(&original)?);
            let mut pointer =
                PointerBuf::parse(root).map_err(|_| InjectError::Root(root.to_string()))?;
            for token in ["spec", "containers", &index.to_string(), field] {
                pointer.push_back(token);
            }
            ops.push(PatchOperation::Replace(ReplaceOperation {
                path: pointer,
                value: canonical(&to_admin(probe, path))?,
            }));
        }
    }
    let app_probes = if originals.is_empty() {
        None
    } else {
        Some(serde_json::to_string(&originals).map_err(|e| InjectError::Encode(e.to_string()))?)
    };
    Ok(Rewrite { ops, app_probes })
}

/// What the proxy performs for `probe`: its handler, named ports resolved to numbers, and its
/// timeout. `None` for a probe the kubelet runs without the network (`exec`, or no handler).
fn original(
    container: &Container,
    field: &str,
    probe: &Probe,
) -> Result<Option<Probe>, InjectError> {
    let port = |port: &IntOrString| resolve_port(container, field, port);
    let mut out = Probe {
        timeout_seconds: probe.timeout_seconds,
        ..Default::default()
    };
    if let Some(http) = &probe.http_get {
        out.http_get = Some(HTTPGetAction {
            port: IntOrString::Int(port(&http.port)?),
            ..http.clone()
        });
    } else if let Some(grpc) = &probe.grpc {
        if !(1..=65535).contains(&grpc.port) {
            return Err(bad_port(container, field, &grpc.port.to_string()));
        }
        out.grpc = Some(grpc.clone());
    } else if let Some(tcp) = &probe.tcp_socket {
        out.tcp_socket = Some(TCPSocketAction {
            port: IntOrString::Int(port(&tcp.port)?),
            ..tcp.clone()
        });
    } else {
        return Ok(None);
    }
    Ok(Some(out))
}

/// The kubelet's rule: a string port is a container port's name, else a number in a string.
fn resolve_port(
    container: &Container,
    field: &str,
    port: &IntOrString,
) -> Result<i32, InjectError> {
    let number = match port {
        IntOrString::Int(n) => Some(*n),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port)
            .or_else(|| name.parse().ok()),
    };
    match number {
        Some(n) if (1..=65535).contains(&n) => Ok(n),
        _ => Err(bad_port(
            container,
            field,
            &match port {
                IntOrString::Int(n) => n.to_string(),
                IntOrString::String(s) => format!("{s:?}"),
            },
        )),
    }
}

fn bad_port(container: &Container, field: &str, port: &str) -> InjectError {
    InjectError::ProbePort {
        container: container.name.clone(),
        probe: field.to_string(),
        port: port.to_string(),
    }
}

/// The kubelet's new probe: GET the admin path, with the original's timing.
fn to_admin(probe: &Probe, path: String) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path),
            port: IntOrString::Int(i32::from(ADMIN_PORT)),
            ..Default::default()
        }),
        initial_delay_seconds: probe.initial_delay_seconds,
        period_seconds: probe.period_seconds,
        timeout_seconds: probe.timeout_seconds,
        success_threshold: probe.success_threshold,
        failure_threshold: probe.failure_threshold,
        termination_grace_period_seconds: probe.termination_grace_period_seconds,
        ..Default::default()
    }
}

/// Sorted keys, so the env value is the same text whatever serde_json features are unified.
fn canonical(probe: &Probe) -> Result<Value, InjectError> {
    serde_json::to_value(probe)
        .map(crate::yaml::canonical)
        .map_err(|e| InjectError::Encode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerPort, ExecAction, GRPCAction, HTTPHeader};

    fn container(name: &str) -> Container {
        Container {
            name: name.to_string(),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    fn spec(containers: Vec<Container>) -> PodSpec {
        PodSpec {
            containers,
            ..Default::default()
        }
    }

    fn env(rewrite: &Rewrite) -> Value {
        serde_json::from_str(rewrite.app_probes.as_deref().expect("probes")).expect("JSON")
    }

    #[test]
    fn http_grpc_and_tcp_probes_move_to_the_admin_port() {
        let mut app = container("app");
        app.readiness_probe = Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/healthz".into()),
                port: IntOrString::String("http".into()),
                host: Some("localhost".into()),
                scheme: Some("HTTPS".into()),
                http_headers: Some(vec![HTTPHeader {
                    name: "X-Probe".into(),
                    value: "yes".into(),
                }]),
            }),
            period_seconds: Some(7),
            timeout_seconds: Some(3),
            failure_threshold: Some(4),
            initial_delay_seconds: Some(2),
            ..Default::default()
        });
        app.liveness_probe = Some(Probe {
            grpc: Some(GRPCAction {
                port: 9090,
                service: Some("live".into()),
            }),
            ..Default::default()
        });
        app.startup_probe = Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String("5432".into()),
                host: None,
            }),
            ..Default::default()
        });
        let rewrite = rewrite(&spec(vec![app]), "/spec/template").expect("rewrite");
        assert_eq!(rewrite.ops.len(), 3);
        let PatchOperation::Replace(op) = &rewrite.ops[1] else {
            panic!("replace expected: {:?}", rewrite.ops[1]);
        };
        assert_eq!(
            op.path.as_str(),
            "/spec/template/spec/containers/0/readinessProbe"
        );
        let probe: Probe = serde_json::from_value(op.value.clone()).expect("a Probe");
        assert_eq!(
            probe
                .http_get
                .as_ref()
                .map(|h| (h.path.as_deref(), &h.port)),
            Some((Some("/app-health/app/readyz"), &IntOrString::Int(4191)))
        );
        assert_eq!(
            (
                probe.period_seconds,
                probe.timeout_seconds,
                probe.failure_threshold
            ),
            (Some(7), Some(3), Some(4))
        );
        assert_eq!(probe.initial_delay_seconds, Some(2));
        assert!(probe.grpc.is_none() && probe.tcp_socket.is_none());
        let env = env(&rewrite);
        let ready = &env["/app-health/app/readyz"];
        assert_eq!(ready["httpGet"]["port"], 8080, "named port resolved: {env}");
        assert_eq!(ready["httpGet"]["scheme"], "HTTPS");
        assert_eq!(ready["httpGet"]["host"], "localhost");
        assert_eq!(ready["httpGet"]["httpHeaders"][0]["name"], "X-Probe");
        assert_eq!(ready["timeoutSeconds"], 3);
        assert!(
            ready.get("periodSeconds").is_none(),
            "timing stays with the kubelet"
        );
        assert_eq!(env["/app-health/app/livez"]["grpc"]["service"], "live");
        assert_eq!(env["/app-health/app/startupz"]["tcpSocket"]["port"], 5432);
    }

    #[test]
    fn exec_probes_and_probeless_containers_are_left_alone() {
        let mut app = container("app");
        app.liveness_probe = Some(Probe {
            exec: Some(ExecAction {
                command: Some(vec!["true".into()]),
            }),
            ..Default::default()
        });
        let rewrite = rewrite(&spec(vec![container("plain"), app]), "").expect("rewrite");
        assert_eq!(rewrite, Rewrite::default());
    }

    #[test]
    fn an_unknown_named_port_is_refused_by_name() {
        let mut app = container("web");
        app.readiness_probe = Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String("metrics".into()),
                host: None,
            }),
            ..Default::default()
        });
        let err = rewrite(&spec(vec![app]), "").expect_err("unknown port");
        assert_eq!(
            err.to_string(),
            "container \"web\" readinessProbe: port \"metrics\" is neither a named port of the \
             container nor a number 1-65535"
        );
    }

    #[test]
    fn every_container_is_addressed_by_its_own_index_and_name() {
        let probe = || Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(80),
                host: None,
            }),
            ..Default::default()
        };
        let mut a = container("a");
        a.readiness_probe = Some(probe());
        let mut b = container("b");
        b.readiness_probe = Some(probe());
        let rewrite = rewrite(&spec(vec![a, b]), "").expect("rewrite");
        let paths: Vec<String> = rewrite
            .ops
            .iter()
            .map(|op| match op {
                PatchOperation::Replace(r) => r.path.to_string(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            paths,
            [
                "/spec/containers/0/readinessProbe",
                "/spec/containers/1/readinessProbe"
            ]
        );
        let env = env(&rewrite);
        assert!(
            env.get("/app-health/a/readyz").is_some() && env.get("/app-health/b/readyz").is_some()
        );
    }
}
