//! `deploy/control-plane.yaml` is the output of `trellis-control-plane manifests` (it must not
//! drift), every document parses as its k8s-openapi type, and the RBAC is least privilege.
use std::path::PathBuf;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;
use trellis_control_plane::manifests::{render, DEFAULT_IMAGE};

fn committed() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/control-plane.yaml");
    std::fs::read_to_string(path).expect("deploy/control-plane.yaml")
}

#[test]
fn committed_manifests_match_the_generator() {
    assert_eq!(
        committed(),
        render(DEFAULT_IMAGE).unwrap(),
        "deploy/control-plane.yaml drifted: run `cargo run -p trellis-control-plane -- manifests \
         > deploy/control-plane.yaml`"
    );
}

#[test]
fn every_document_parses_as_its_type() {
    let docs: Vec<Value> = serde_saphyr::from_multiple(&committed()).expect("YAML");
    let mut kinds = Vec::new();
    for doc in docs.into_iter().filter(|d| !d.is_null()) {
        let kind = doc["kind"].as_str().expect("kind").to_string();
        let parsed = match kind.as_str() {
            "CustomResourceDefinition" => serde_json::from_value::<CustomResourceDefinition>(doc)
                .map(|crd| {
                    assert_eq!(crd.spec.group, "policy.trellis.io");
                    assert_eq!(crd.spec.scope, "Namespaced");
                    let version = &crd.spec.versions[0];
                    assert_eq!(version.name, "v1alpha1");
                    let schema = version
                        .schema
                        .as_ref()
                        .and_then(|s| s.open_api_v3_schema.as_ref());
                    let spec = &schema
                        .expect("openAPIV3Schema")
                        .properties
                        .as_ref()
                        .unwrap()["spec"];
                    assert_eq!(spec.required.as_deref(), Some(&["service".to_string()][..]));
                }),
            "ServiceAccount" => serde_json::from_value::<ServiceAccount>(doc).map(drop),
            "ClusterRole" => serde_json::from_value::<ClusterRole>(doc).map(|role| {
                let mut grants: Vec<String> = Vec::new();
                for rule in role.rules.unwrap() {
                    for group in rule.api_groups.unwrap() {
                        for resource in rule.resources.clone().unwrap() {
                            grants.push(format!("{group}/{resource}: {}", rule.verbs.join(",")));
                        }
                    }
                }
                grants.sort();
                assert_eq!(
                    grants,
                    [
                        "/configmaps: get,create,patch",
                        "/namespaces: get,list,watch",
                        "/pods: get,list,watch",
                        "/services: get,list,watch",
                        "authentication.k8s.io/tokenreviews: create",
                        "discovery.k8s.io/endpointslices: get,list,watch",
                        "gateway.networking.k8s.io/grpcroutes/status: patch",
                        "gateway.networking.k8s.io/grpcroutes: get,list,watch",
                        "gateway.networking.k8s.io/httproutes/status: patch",
                        "gateway.networking.k8s.io/httproutes: get,list,watch",
                        "policy.trellis.io/trafficpolicies/status: patch",
                        "policy.trellis.io/trafficpolicies: get,list,watch",
                    ]
                );
            }),
            "ClusterRoleBinding" => serde_json::from_value::<ClusterRoleBinding>(doc).map(drop),
            "Service" => serde_json::from_value::<Service>(doc).map(|svc| {
                assert_eq!(svc.spec.unwrap().ports.unwrap()[0].port, 8090);
            }),
            "Deployment" => serde_json::from_value::<Deployment>(doc).map(|d| {
                let spec = d.spec.unwrap();
                assert_eq!(spec.replicas, Some(2), "two replicas");
                let pod = spec.template.spec.unwrap();
                let args = pod.containers[0].args.clone().unwrap().join(" ");
                assert!(args.starts_with("serve --source kubernetes"), "{args}");
                // Spread over nodes: one node's loss never takes both replicas.
                let spread = pod
                    .affinity
                    .and_then(|a| a.pod_anti_affinity)
                    .and_then(|a| a.preferred_during_scheduling_ignored_during_execution);
                let term = &spread.expect("anti-affinity")[0].pod_affinity_term;
                assert_eq!(term.topology_key, "kubernetes.io/hostname");
            }),
            "PodDisruptionBudget" => serde_json::from_value::<PodDisruptionBudget>(doc).map(|p| {
                let spec = p.spec.unwrap();
                assert!(spec.min_available.is_some() || spec.max_unavailable.is_some());
            }),
            other => panic!("unexpected kind {other} in deploy/control-plane.yaml"),
        };
        parsed.unwrap_or_else(|e| panic!("{kind}: {e}"));
        kinds.push(kind);
    }
    // No Namespace: deploy/injector.yaml creates trellis-system.
    assert_eq!(
        kinds,
        [
            "CustomResourceDefinition",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Service",
            "Deployment",
            "PodDisruptionBudget"
        ]
    );
}
