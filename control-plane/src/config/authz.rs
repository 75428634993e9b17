//! The validated model of the access parts of the mesh YAML: a service's `authorization` policy
//! and the mesh's `trust` section (extra roots in the trust bundle, for CA rotation). The YAML
//! shape and its checks live in `raw/authz.rs`.
use super::{HeaderMatch, PathMatch};

/// Who may call a service. Deny rules win over allow rules; no match gets `default`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub default: AuthzAction,
    pub rules: Vec<AuthzRule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthzAction {
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzRule {
    pub name: String,
    pub action: AuthzAction,
    pub from: AuthzSource,
    pub to: AuthzTarget,
}

/// Every condition given must hold; a list holds when any entry matches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthzSource {
    /// SPIFFE IDs: exact, `prefix*`, or `*`.
    pub identities: Vec<String>,
    pub namespaces: Vec<String>,
    pub unauthenticated: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthzTarget {
    pub ports: Vec<u16>,
    /// Exact or prefix only.
    pub paths: Vec<PathMatch>,
    pub methods: Vec<String>,
    /// Exact, prefix or present only.
    pub headers: Vec<HeaderMatch>,
}

/// The mesh's `trust` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trust {
    /// DER root certificates trusted in addition to the CA's own root (from `extraRoots`).
    pub extra_roots_der: Vec<Vec<u8>>,
}
