//! `deploy/injector.yaml` is the output of `trellis-injector manifests` (it must not drift), and
//! each of its documents parses as its k8s-openapi type.

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde_json::Value;
use std::path::PathBuf;
use trellis_injector::manifests::{render, Options};
use trellis_injector::InjectorConfig;

/// The image the committed file was generated with (see its header).
const IMAGE: &str = "ghcr.io/trellis-mesh/trellis-injector:0.1.0";

fn committed() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/injector.yaml");
    std::fs::read_to_string(path).expect("deploy/injector.yaml")
}

fn generated() -> String {
    render(&Options {
        image: IMAGE.to_string(),
        ca_bundle: None,
        config: InjectorConfig::default(),
    })
    .expect("render")
}

#[test]
fn committed_manifests_match_the_generator() {
    assert_eq!(
        committed(),
        generated(),
        "deploy/injector.yaml drifted: run `cargo run -p trellis-injector -- manifests --image \
         {IMAGE} > deploy/injector.yaml`"
    );
}

#[test]
fn every_document_parses_as_its_type() {
    let docs: Vec<Value> = serde_saphyr::from_multiple(&committed()).expect("YAML");
    let mut kinds = Vec::new();
    for doc in docs.into_iter().filter(|d| !d.is_null()) {
        let kind = doc["kind"].as_str().expect("kind").to_string();
        let parsed = match kind.as_str() {
            "Namespace" => serde_json::from_value::<Namespace>(doc).map(drop),
            "ServiceAccount" => serde_json::from_value::<ServiceAccount>(doc).map(drop),
            "ConfigMap" => serde_json::from_value::<ConfigMap>(doc.clone()).map(|cm| {
                let yaml = &cm.data.expect("data")["injector.yaml"];
                InjectorConfig::from_yaml(yaml).expect("the ConfigMap holds a valid config");
            }),
            "Service" => serde_json::from_value::<Service>(doc).map(drop),
            "Deployment" => serde_json::from_value::<Deployment>(doc).map(drop),
            "PodDisruptionBudget" => serde_json::from_value::<PodDisruptionBudget>(doc).map(drop),
            "MutatingWebhookConfiguration" => {
                serde_json::from_value::<MutatingWebhookConfiguration>(doc.clone()).map(|config| {
                    let hook = &config.webhooks.expect("webhooks")[0];
                    assert_eq!(hook.side_effects, "None");
                    assert_eq!(hook.admission_review_versions, ["v1"]);
                    assert_eq!(hook.failure_policy.as_deref(), Some("Fail"));
                    let ns = hook.namespace_selector.as_ref().expect("namespaceSelector");
                    assert_eq!(
                        ns.match_labels.as_ref().expect("labels")["trellis.io/inject"],
                        "enabled"
                    );
                    assert!(hook.object_selector.is_some());
                    assert!(hook.timeout_seconds.is_some());
                })
            }
            other => panic!("unexpected kind {other} in deploy/injector.yaml"),
        };
        parsed.unwrap_or_else(|e| panic!("{kind}: {e}"));
        kinds.push(kind);
    }
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "ConfigMap",
            "Service",
            "Deployment",
            "PodDisruptionBudget",
            "MutatingWebhookConfiguration"
        ]
    );
}
