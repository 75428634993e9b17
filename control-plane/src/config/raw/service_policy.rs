//! The policy and routes of one service given apart from the mesh file: the `spec` of a
//! Kubernetes `TrafficPolicy` (`{service, mtls, policy, routes, authorization}`). It reuses the
//! mesh file's `mtls`, `policy`, `routes` and `authorization` types and checks, so a policy means
//! the same whichever source it comes from.
use std::collections::{HashMap, HashSet};

use serde::Deserialize;

use super::authz::RawAuthorization;
use super::policy::RawPolicy;
use super::route::{routes, RawRoute, Scope};
use super::{fail, label, mtls_mode, FieldError, S};
use crate::config::{Policy, Port, ServicePolicy};

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
    mtls: Option<S<String>>,
    policy: Option<RawPolicy>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    authorization: Option<RawAuthorization>,
}

impl RawPolicyDocument {
    /// `namespace` is the object's own; `known` is every (namespace, name) in the mesh, which the
    /// target and the route backends must be part of. `ports` holds the services' ports where
    /// known: authorization rules may only name the target's own ports.
    pub(in crate::config) fn validate(
        self,
        namespace: &str,
        known: &HashSet<(String, String)>,
        ports: &HashMap<(String, String), Vec<Port>>,
    ) -> Result<ServicePolicy, FieldError> {
        let spec = self.spec;
        let service = label(&spec.service, "spec.service")?;
        let key = (namespace.to_owned(), service.clone());
        if !known.contains(&key) {
            return fail(
                &spec.service,
                "spec.service",
                format!("no meshed service {service:?} in namespace {namespace:?}"),
            );
        }
        let mtls = match &spec.mtls {
            Some(v) => Some(mtls_mode(v, "spec.mtls")?),
            None => None,
        };
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
        let target_ports = ports.get(&key).map_or(&[][..], Vec::as_slice);
        let authorization = match &spec.authorization {
            Some(a) => Some(a.validate("spec.authorization", target_ports)?),
            None => None,
        };
        Ok(ServicePolicy {
            service,
            mtls,
            policy,
            routes,
            authorization,
        })
    }
}
