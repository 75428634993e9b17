//! The policy and routes of one service given apart from the mesh file: the `spec` of a
//! Kubernetes `TrafficPolicy` (`{service, policy, routes}`). It reuses the mesh file's `policy` and
//! `routes` types and checks, so a policy means the same whichever source it comes from.
use std::collections::HashSet;

use serde::Deserialize;

use super::policy::RawPolicy;
use super::route::{routes, RawRoute, Scope};
use super::{fail, label, FieldError, S};
use crate::config::{Policy, ServicePolicy};

/// `{"spec": {...}}`: the wrapper makes every field path start with `spec.`, as users see it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawPolicyDocument {
    spec: RawServicePolicy,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawServicePolicy {
    service: S<String>,
    policy: Option<RawPolicy>,
    #[serde(default)]
    routes: Vec<RawRoute>,
}

impl RawPolicyDocument {
    /// `namespace` is the object's own; `known` is every (namespace, name) in the mesh, which the
    /// target and the route backends must be part of.
    pub(in crate::config) fn validate(
        self,
        namespace: &str,
        known: &HashSet<(String, String)>,
    ) -> Result<ServicePolicy, FieldError> {
        let spec = self.spec;
        let service = label(&spec.service, "spec.service")?;
        if !known.contains(&(namespace.to_owned(), service.clone())) {
            return fail(
                &spec.service,
                "spec.service",
                format!("no meshed service {service:?} in namespace {namespace:?}"),
            );
        }
        let policy = match &spec.policy {
            Some(p) => p.validate("spec.policy")?,
            None => Policy::default(),
        };
        let scope = Scope {
            namespace,
            service: &service,
            known,
        };
        let routes = routes(&spec.routes, "spec.routes", &scope)?;
        Ok(ServicePolicy {
            service,
            policy,
            routes,
        })
    }
}
