//! The `TrafficPolicy` custom resource (`policy.trellis.io/v1alpha1`, namespaced): a service's
//! `mtls`, `policy`, `routes` and `authorization` exactly as in the mesh YAML, plus `service`, the
//! name of the Service in the same namespace it applies to. The spec is kept as JSON and validated
//! by the YAML model's own checks (`config::parse_traffic_policy`), so the two sources cannot drift
//! and one invalid object cannot stop the watch (a typed spec would fail to deserialize inside the
//! watcher). The CRD's schema is deliberately loose below the spec's fields for the same reason:
//! the control plane is the one validator, and it writes the field and reason back into the
//! object's `status.conditions` (`Accepted`), which is why the CRD has a status subresource.
use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition, CustomResourceDefinitionNames,
    CustomResourceDefinitionSpec, CustomResourceDefinitionVersion, CustomResourceSubresourceStatus,
    CustomResourceSubresources, CustomResourceValidation, JSONSchemaProps, JSONSchemaPropsOrArray,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::NamespaceResourceScope;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "policy.trellis.io";
pub const VERSION: &str = "v1alpha1";
pub const KIND: &str = "TrafficPolicy";
pub const PLURAL: &str = "trafficpolicies";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrafficPolicy {
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// `{service, mtls, policy, routes, authorization}`, checked when the mesh is built.
    #[serde(default)]
    pub spec: serde_json::Value,
    /// `{conditions: [...]}` as the control plane wrote it; JSON for the same reason as `spec`
    /// (whatever someone else wrote there must not break the watch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

impl kube::Resource for TrafficPolicy {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        KIND.into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        VERSION.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        PLURAL.into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

fn schema(type_: &str, description: &str) -> JSONSchemaProps {
    JSONSchemaProps {
        type_: Some(type_.to_owned()),
        description: Some(description.to_owned()),
        ..Default::default()
    }
}

/// An object whose fields the control plane validates (same rules as the mesh YAML).
fn open_object(description: &str) -> JSONSchemaProps {
    JSONSchemaProps {
        x_kubernetes_preserve_unknown_fields: Some(true),
        ..schema("object", description)
    }
}

fn properties(entries: Vec<(&str, JSONSchemaProps)>) -> Option<BTreeMap<String, JSONSchemaProps>> {
    Some(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    )
}

/// `status.conditions`: metav1.Condition entries keyed by `type` (the control plane writes
/// `Accepted`), so `kubectl wait --for=condition=Accepted` works.
fn status_schema() -> JSONSchemaProps {
    let string = |description: &str| schema("string", description);
    let condition = JSONSchemaProps {
        required: Some(
            ["type", "status", "reason", "message", "lastTransitionTime"]
                .map(str::to_owned)
                .to_vec(),
        ),
        properties: properties(vec![
            ("type", string("Accepted.")),
            ("status", string("True, False or Unknown.")),
            (
                "reason",
                string("Accepted, Invalid, Conflicted or RoutesOverridden."),
            ),
            (
                "message",
                string("Why, with the field path of what is wrong."),
            ),
            (
                "observedGeneration",
                JSONSchemaProps {
                    format: Some("int64".to_owned()),
                    ..schema("integer", "The metadata.generation the condition is about.")
                },
            ),
            (
                "lastTransitionTime",
                JSONSchemaProps {
                    format: Some("date-time".to_owned()),
                    ..string("When status last changed.")
                },
            ),
        ]),
        ..schema("object", "A metav1.Condition.")
    };
    JSONSchemaProps {
        properties: properties(vec![(
            "conditions",
            JSONSchemaProps {
                items: Some(JSONSchemaPropsOrArray::Schema(Box::new(condition))),
                x_kubernetes_list_type: Some("map".to_owned()),
                x_kubernetes_list_map_keys: Some(vec!["type".to_owned()]),
                ..schema("array", "Written by the control plane.")
            },
        )]),
        ..schema(
            "object",
            "Whether the control plane applies this policy, and why not.",
        )
    }
}

/// The CustomResourceDefinition installed by `deploy/control-plane.yaml`.
pub fn definition() -> CustomResourceDefinition {
    let label = JSONSchemaProps {
        max_length: Some(63),
        pattern: Some("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$".to_owned()),
        ..schema(
            "string",
            "The name of the Service (same namespace) this policy applies to.",
        )
    };
    let route = JSONSchemaProps {
        required: Some(vec!["name".to_owned()]),
        properties: properties(vec![(
            "name",
            schema("string", "Unique within the policy (a DNS-1123 label)."),
        )]),
        ..open_object(
            "One route: name, match {path, method, headers}, backends [{service, weight}], \
             timeout, retry, fault. See docs/policy.md.",
        )
    };
    let spec = JSONSchemaProps {
        required: Some(vec!["service".to_owned()]),
        properties: properties(vec![
            ("service", label),
            (
                "mtls",
                schema(
                    "string",
                    "strict (default), permissive or disabled, as a service's mtls in the mesh \
                     YAML. See docs/security.md.",
                ),
            ),
            (
                "policy",
                open_object(
                    "The service's policy as in the mesh YAML: loadBalancer, hashOn, \
                     connectTimeout, requestTimeout, idleTimeout, retry, circuitBreaker, \
                     outlierDetection. See docs/policy.md.",
                ),
            ),
            (
                "routes",
                JSONSchemaProps {
                    items: Some(JSONSchemaPropsOrArray::Schema(Box::new(route))),
                    ..schema("array", "Ordered; the first match wins.")
                },
            ),
            (
                "authorization",
                open_object(
                    "Who may call the service, as a service's authorization in the mesh YAML: \
                     default, rules [{name, action, from, to}]. See docs/security.md.",
                ),
            ),
        ]),
        ..schema("object", "The traffic policy of one Service.")
    };
    let root = JSONSchemaProps {
        required: Some(vec!["spec".to_owned()]),
        properties: properties(vec![
            ("apiVersion", schema("string", "policy.trellis.io/v1alpha1")),
            ("kind", schema("string", "TrafficPolicy")),
            ("metadata", schema("object", "Standard object metadata.")),
            ("spec", spec),
            ("status", status_schema()),
        ]),
        ..schema(
            "object",
            "Traffic policy and routes for one meshed Service.",
        )
    };
    let column = |name: &str, type_: &str, path: &str| CustomResourceColumnDefinition {
        name: name.to_owned(),
        type_: type_.to_owned(),
        json_path: path.to_owned(),
        ..Default::default()
    };
    CustomResourceDefinition {
        metadata: ObjectMeta {
            name: Some(format!("{PLURAL}.{GROUP}")),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/part-of".to_owned(),
                "trellis".to_owned(),
            )])),
            ..Default::default()
        },
        spec: CustomResourceDefinitionSpec {
            group: GROUP.to_owned(),
            names: CustomResourceDefinitionNames {
                kind: KIND.to_owned(),
                list_kind: Some(format!("{KIND}List")),
                plural: PLURAL.to_owned(),
                singular: Some("trafficpolicy".to_owned()),
                short_names: Some(vec!["tp".to_owned()]),
                categories: Some(vec!["trellis".to_owned()]),
            },
            scope: "Namespaced".to_owned(),
            versions: vec![CustomResourceDefinitionVersion {
                name: VERSION.to_owned(),
                served: true,
                storage: true,
                schema: Some(CustomResourceValidation {
                    open_api_v3_schema: Some(root),
                }),
                subresources: Some(CustomResourceSubresources {
                    status: Some(CustomResourceSubresourceStatus(serde_json::json!({}))),
                    scale: None,
                }),
                additional_printer_columns: Some(vec![
                    column("Service", "string", ".spec.service"),
                    column(
                        "Accepted",
                        "string",
                        ".status.conditions[?(@.type==\"Accepted\")].status",
                    ),
                    column("Age", "date", ".metadata.creationTimestamp"),
                ]),
                ..Default::default()
            }],
            ..Default::default()
        },
        status: None,
    }
}
