//! The injection rules, in one function used by the webhook and the `inject` command: given a
//! pod's metadata and spec (a Pod, or a workload's pod template), decide whether to inject and
//! return the JSON Patch operations that do it, rooted at a JSON pointer so the same operations
//! serve an admitted Pod (root "") and a Deployment's template (root "/spec/template").

use crate::annotations::{self, InvalidValue, Overrides};
use crate::config::InjectorConfig;
use crate::probes;
use crate::quantity;
use crate::sidecar::{self, Resources, INIT_CONTAINER, PROXY_CONTAINER};
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation};
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use std::collections::BTreeMap;

/// What the injector decided for one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Left alone, with the reason (already injected, hostNetwork, opted out, ...).
    Skipped(String),
    /// The operations that add the sidecar.
    Patched(Vec<PatchOperation>),
}

/// A pod the injector cannot handle; the webhook denies it with this message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InjectError {
    #[error("invalid annotation {0}")]
    Annotation(#[from] InvalidValue),
    #[error("the pod has no containers")]
    NoContainers,
    #[error("the pod already has a {kind} named {name:?}, which the injector needs")]
    NameTaken { kind: &'static str, name: String },
    #[error(
        "cannot tell which service the pod belongs to: set the annotation {} or the label \
         app.kubernetes.io/name",
        annotations::SERVICE
    )]
    NoService,
    #[error("{request}={request_value:?} is above {limit}={limit_value:?}")]
    RequestAboveLimit {
        request: &'static str,
        request_value: String,
        limit: &'static str,
        limit_value: String,
    },
    #[error(
        "container {container:?} {probe}: port {port} is neither a named port of the container \
         nor a number 1-65535"
    )]
    ProbePort {
        container: String,
        probe: String,
        port: String,
    },
    #[error("encoding the patch: {0}")]
    Encode(String),
    #[error("bad patch root {0:?}")]
    Root(String),
}

/// Decides for one pod. `namespace` is where the pod lives (the request's namespace in the
/// webhook, the manifest's or "default" in `inject`); `root` is the JSON pointer of the object
/// holding `metadata` and `spec`.
pub fn plan(
    meta: &ObjectMeta,
    spec: &PodSpec,
    namespace: &str,
    config: &InjectorConfig,
    root: &str,
) -> Result<Outcome, InjectError> {
    let empty = BTreeMap::new();
    let annotations = meta.annotations.as_ref().unwrap_or(&empty);
    let init = spec.init_containers.as_deref().unwrap_or_default();
    if init
        .iter()
        .chain(&spec.containers)
        .any(|c| c.name == PROXY_CONTAINER)
    {
        return Ok(Outcome::Skipped(format!(
            "already injected (has a {PROXY_CONTAINER} container)"
        )));
    }
    if spec.host_network == Some(true) {
        return Ok(Outcome::Skipped("hostNetwork pod".to_string()));
    }
    if namespace == config.control_plane_namespace {
        return Ok(Outcome::Skipped(format!(
            "in the control plane's namespace {namespace}"
        )));
    }
    if annotations::inject(annotations)? == Some(false) {
        return Ok(Outcome::Skipped(format!(
            "annotation {}=disabled",
            annotations::INJECT
        )));
    }
    let overrides = annotations::overrides(annotations)?;
    if spec.containers.is_empty() {
        return Err(InjectError::NoContainers);
    }
    if init
        .iter()
        .chain(&spec.containers)
        .any(|c| c.name == INIT_CONTAINER)
    {
        return Err(InjectError::NameTaken {
            kind: "container",
            name: INIT_CONTAINER.to_string(),
        });
    }
    if let Some(volume) = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == sidecar::CA_VOLUME || v.name == sidecar::TOKEN_VOLUME)
    {
        return Err(InjectError::NameTaken {
            kind: "volume",
            name: volume.name.clone(),
        });
    }
    let service = service_name(meta).ok_or(InjectError::NoService)?;
    let resources = resources(config, &overrides)?;
    let log_level = overrides
        .log_level
        .clone()
        .unwrap_or_else(|| config.log_level.clone());
    let native = overrides.native_sidecar.unwrap_or(config.native_sidecar);
    let probes = if overrides.rewrite_probes.unwrap_or(true) {
        probes::rewrite(spec, root)?
    } else {
        probes::Rewrite::default()
    };
    let proxy = sidecar::proxy_container(
        config,
        &service,
        &log_level,
        &resources,
        native,
        probes.app_probes.as_deref(),
    );
    let init_step = sidecar::init_container(config, &overrides);

    // The probes first: their paths use the containers' indices before the fallback mode
    // inserts the proxy at index 0.
    let mut ops = probes.ops;
    // The redirect step first, then (native) the proxy, then the pod's own init containers, which
    // so run with the proxy ready and their traffic meshed.
    let mut front = vec![value(&init_step)?];
    if native {
        front.push(value(&proxy)?);
    }
    if spec.init_containers.is_none() {
        ops.push(add(root, &["spec", "initContainers"], front.into())?);
    } else {
        for (i, container) in front.into_iter().enumerate() {
            ops.push(add(
                root,
                &["spec", "initContainers", &i.to_string()],
                container,
            )?);
        }
    }
    if !native {
        ops.push(add(root, &["spec", "containers", "0"], value(&proxy)?)?);
    }
    let volumes = sidecar::volumes();
    if spec.volumes.is_none() {
        ops.push(add(root, &["spec", "volumes"], value(&volumes)?)?);
    } else {
        for volume in &volumes {
            ops.push(add(root, &["spec", "volumes", "-"], value(volume)?)?);
        }
    }
    Ok(Outcome::Patched(ops))
}

/// The service: the `trellis.io/service` annotation, else the `app.kubernetes.io/name` or `app`
/// label.
pub fn service_name(meta: &ObjectMeta) -> Option<String> {
    let annotation = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(annotations::SERVICE));
    let labels = meta.labels.as_ref();
    let label = |key: &str| labels.and_then(|l| l.get(key));
    annotation
        .or_else(|| label("app.kubernetes.io/name"))
        .or_else(|| label("app"))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Annotations over config. A request above its limit is refused when the request was asked
/// for; a default request above an annotated limit is lowered to the limit.
fn resources(config: &InjectorConfig, overrides: &Overrides) -> Result<Resources, InjectError> {
    let mut merged = Resources {
        cpu_request: overrides
            .cpu_request
            .clone()
            .unwrap_or_else(|| config.cpu_request.clone()),
        memory_request: overrides
            .memory_request
            .clone()
            .unwrap_or_else(|| config.memory_request.clone()),
        cpu_limit: overrides
            .cpu_limit
            .clone()
            .or_else(|| config.cpu_limit.clone()),
        memory_limit: overrides
            .memory_limit
            .clone()
            .or_else(|| config.memory_limit.clone()),
    };
    let pairs = [
        (
            &mut merged.cpu_request,
            &merged.cpu_limit,
            overrides.cpu_request.is_some(),
            annotations::PROXY_CPU_REQUEST,
            annotations::PROXY_CPU_LIMIT,
        ),
        (
            &mut merged.memory_request,
            &merged.memory_limit,
            overrides.memory_request.is_some(),
            annotations::PROXY_MEMORY_REQUEST,
            annotations::PROXY_MEMORY_LIMIT,
        ),
    ];
    for (request, limit, explicit, request_name, limit_name) in pairs {
        let Some(limit) = limit else { continue };
        let (Some(r), Some(l)) = (quantity::parse(request), quantity::parse(limit)) else {
            continue;
        };
        if r > l {
            if explicit {
                return Err(InjectError::RequestAboveLimit {
                    request: request_name,
                    request_value: request.clone(),
                    limit: limit_name,
                    limit_value: limit.clone(),
                });
            }
            *request = limit.clone();
        }
    }
    Ok(merged)
}

fn value(item: &impl Serialize) -> Result<serde_json::Value, InjectError> {
    serde_json::to_value(item).map_err(|e| InjectError::Encode(e.to_string()))
}

fn add(
    root: &str,
    tokens: &[&str],
    value: serde_json::Value,
) -> Result<PatchOperation, InjectError> {
    let mut path = PointerBuf::parse(root).map_err(|_| InjectError::Root(root.to_string()))?;
    for token in tokens {
        path.push_back(*token);
    }
    Ok(PatchOperation::Add(AddOperation { path, value }))
}
