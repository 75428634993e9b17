//! The `TrafficPolicy` custom resource (`policy.trellis.io/v1alpha1`, namespaced): a service's
//! `policy` and `routes` exactly as in the mesh YAML, plus `service`, the name of the Service in
//! the same namespace it applies to. The spec is kept as JSON and validated by the YAML model's
//! own checks (`config::parse_service_policy`), so the two sources cannot drift and one invalid
//! object cannot stop the watch (a typed spec would fail to deserialize inside the watcher). The
//! CRD's schema is deliberately loose below `policy` and `routes` for the same reason: the control
//! plane is the one validator, and it names the field and reason in its log.
use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition, CustomResourceDefinitionNames,
    CustomResourceDefinitionSpec, CustomResourceDefinitionVersion, CustomResourceValidation,
    JSONSchemaProps, JSONSchemaPropsOrArray,
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
    /// `{service, policy, routes}`, checked when the mesh is built.
    #[serde(default)]
    pub spec: serde_json::Value,
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
                additional_printer_columns: Some(vec![
                    column("Service", "string", ".spec.service"),
                    column("Age", "date", ".metadata.creationTimestamp"),
                ]),
                ..Default::default()
            }],
            ..Default::default()
        },
        status: None,
    }
}
