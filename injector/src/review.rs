//! AdmissionReview v1 handling, without any networking: request bytes in, response JSON out (or a
//! 400 for input that is not an AdmissionReview). Parsing and the response shape come from
//! kube-core; the one thing done by hand is the patch encoding: kube-core 5 serialises
//! `AdmissionResponse.patch` (a `Vec<u8>`) as a JSON array of numbers, while the API server's
//! `[]byte` field is base64 in JSON, so the serialised response gets `patch` replaced by base64.

use crate::config::InjectorConfig;
use crate::inject::{plan, Outcome};
use base64::Engine;
use k8s_openapi::api::core::v1::Pod;
use kube_core::admission::{
    AdmissionRequest, AdmissionResponse, AdmissionReview, Operation, META_API_VERSION_V1, META_KIND,
};
use kube_core::DynamicObject;
use serde_json::Value;

/// Input that is not a usable AdmissionReview: answered with HTTP 400 and this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadReview(pub String);

/// Answers one review. `Ok` is the AdmissionReview to send back with 200 (allowed, patched or
/// denied); `Err` is a request that is not an AdmissionReview v1 at all.
pub fn respond(body: &[u8], config: &InjectorConfig) -> Result<Value, BadReview> {
    let raw: Value = serde_json::from_slice(body)
        .map_err(|e| BadReview(format!("the body is not JSON: {e}")))?;
    let field = |name: &str| raw.get(name).and_then(Value::as_str).unwrap_or("");
    if field("kind") != META_KIND || field("apiVersion") != META_API_VERSION_V1 {
        return Err(BadReview(format!(
            "expected kind {META_KIND} with apiVersion {META_API_VERSION_V1}, got kind {:?} \
             apiVersion {:?}",
            field("kind"),
            field("apiVersion")
        )));
    }
    let object = match raw.get("request") {
        None | Some(Value::Null) => {
            return Err(BadReview("the AdmissionReview has no request".to_string()))
        }
        Some(request) => request.get("object").cloned(),
    };
    let review: AdmissionReview<DynamicObject> = serde_json::from_value(raw)
        .map_err(|e| BadReview(format!("malformed AdmissionReview request: {e}")))?;
    let request: AdmissionRequest<DynamicObject> = review
        .try_into()
        .map_err(|_| BadReview("the AdmissionReview has no request".to_string()))?;
    let response = decide(&request, object, config);
    encode(response)
}

/// The decision for a well-formed request.
fn decide(
    request: &AdmissionRequest<DynamicObject>,
    object: Option<Value>,
    config: &InjectorConfig,
) -> AdmissionResponse {
    let allowed = AdmissionResponse::from(request);
    let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
    if !is_pod || request.sub_resource.is_some() || request.operation != Operation::Create {
        // Only pod creation is registered; anything else passes untouched.
        return allowed;
    }
    let Some(object) = object.filter(|o| !o.is_null()) else {
        return allowed.deny("trellis-injector: the request has no object");
    };
    let pod: Pod = match serde_json::from_value(object) {
        Ok(pod) => pod,
        Err(e) => return allowed.deny(format!("trellis-injector: the object is not a Pod: {e}")),
    };
    let Some(spec) = pod.spec.as_ref() else {
        return allowed.deny("trellis-injector: the pod has no spec");
    };
    let namespace = request
        .namespace
        .as_deref()
        .or(pod.metadata.namespace.as_deref())
        .unwrap_or("default");
    match plan(&pod.metadata, spec, namespace, config, "") {
        Ok(Outcome::Skipped(why)) => {
            tracing::debug!(uid = %request.uid, %namespace, %why, "not injected");
            allowed
        }
        Ok(Outcome::Patched(ops)) => {
            tracing::info!(uid = %request.uid, %namespace, "injecting");
            match allowed.clone().with_patch(json_patch::Patch(ops)) {
                Ok(patched) => patched,
                Err(e) => allowed.deny(format!("trellis-injector: {e}")),
            }
        }
        Err(e) => {
            tracing::info!(uid = %request.uid, %namespace, error = %e, "denied");
            allowed.deny(format!("trellis-injector: {e}"))
        }
    }
}

/// Serialises the review, writing `response.patch` as base64 (see the module comment).
fn encode(response: AdmissionResponse) -> Result<Value, BadReview> {
    let patch = response.patch.clone();
    let mut out = serde_json::to_value(response.into_review())
        .map_err(|e| BadReview(format!("encoding the response: {e}")))?;
    if let (Some(bytes), Some(slot)) = (patch, out.pointer_mut("/response/patch")) {
        *slot = Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    Ok(out)
}
