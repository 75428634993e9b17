//! `inject` for manifests: finds the pod template in each YAML document (Pod, Deployment,
//! StatefulSet, DaemonSet, ReplicaSet, Job, CronJob, and the items of a List), runs the same
//! `inject::plan` as the webhook on it, and applies the resulting JSON Patch. Other kinds pass
//! through unchanged (re-serialised, so comments are not kept).

use crate::config::InjectorConfig;
use crate::inject::{plan, Outcome};
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("parsing the YAML: {0}")]
    Yaml(String),
    #[error("document {index} ({kind} {name}): {reason}")]
    Document {
        index: usize,
        kind: String,
        name: String,
        reason: String,
    },
    #[error("writing the YAML: {0}")]
    Write(String),
}

/// One document's fate, for the report on stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub index: usize,
    pub kind: String,
    pub name: String,
    /// `None`: injected; `Some(reason)`: left alone.
    pub skipped: Option<String>,
}

/// Where a kind keeps its pod template (`None`: not a workload).
pub fn template_root(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// Injects every workload in a multi-document YAML stream and returns the new stream.
pub fn inject_yaml(
    input: &str,
    config: &InjectorConfig,
) -> Result<(String, Vec<Report>), ManifestError> {
    let mut docs: Vec<Value> =
        serde_saphyr::from_multiple(input).map_err(|e| ManifestError::Yaml(e.to_string()))?;
    docs.retain(|d| !d.is_null());
    let mut reports = Vec::new();
    for (index, doc) in docs.iter_mut().enumerate() {
        inject_document(doc, index + 1, config, &mut reports)?;
    }
    let out = crate::yaml::stream(&docs).map_err(|e| ManifestError::Write(e.to_string()))?;
    Ok((out, reports))
}

fn inject_document(
    doc: &mut Value,
    index: usize,
    config: &InjectorConfig,
    reports: &mut Vec<Report>,
) -> Result<(), ManifestError> {
    let text = |v: &Value, p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let kind = text(doc, "/kind");
    let name = text(doc, "/metadata/name");
    let fail = |reason: String| ManifestError::Document {
        index,
        kind: kind.clone(),
        name: name.clone(),
        reason,
    };
    if kind == "List" {
        if let Some(Value::Array(items)) = doc.get_mut("items") {
            for item in items {
                inject_document(item, index, config, reports)?;
            }
        }
        return Ok(());
    }
    let Some(root) = template_root(&kind) else {
        return Ok(());
    };
    let namespace = match text(doc, "/metadata/namespace") {
        ns if ns.is_empty() => "default".to_string(),
        ns => ns,
    };
    let template = doc
        .pointer(root)
        .ok_or_else(|| fail(format!("no pod template at {root}")))?;
    let meta: ObjectMeta = match template.get("metadata") {
        Some(m) => {
            serde_json::from_value(m.clone()).map_err(|e| fail(format!("{root}/metadata: {e}")))?
        }
        None => ObjectMeta::default(),
    };
    let spec: PodSpec = serde_json::from_value(template.get("spec").cloned().unwrap_or_default())
        .map_err(|e| fail(format!("{root}/spec: {e}")))?;
    let skipped = match plan(&meta, &spec, &namespace, config, root) {
        Ok(Outcome::Skipped(why)) => Some(why),
        Ok(Outcome::Patched(ops)) => {
            json_patch::patch(doc, &ops).map_err(|e| fail(format!("applying the patch: {e}")))?;
            None
        }
        Err(e) => return Err(fail(e.to_string())),
    };
    reports.push(Report {
        index,
        kind,
        name,
        skipped,
    });
    Ok(())
}
