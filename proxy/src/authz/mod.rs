//! Authorization of inbound traffic: the workload's policy (a default action and ordered allow and
//! deny rules on who calls and what they ask for) and the one function that decides. The decision
//! takes plain attributes, not an HTTP request, so the connection-level check for TCP traffic uses
//! the same rules: `Attributes::http` is `None` there, an allow rule that needs HTTP attributes
//! does not match a connection, and a deny rule that needs them does (fail closed).
//!
//! Order: any matching deny rule refuses, whatever the allow rules say; then any matching allow
//! rule admits; otherwise the default action applies. `layer.rs` enforces this on HTTP requests,
//! `stats.rs` counts the outcomes per rule, `decode.rs` builds the policy from the protocol.

mod decode;
mod layer;
pub mod stats;

pub use decode::decode_policy;
pub use layer::{Authorize, AuthzLayer};
pub use stats::AuthzStats;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde::Serialize;

/// The name decisions made by the default action are reported under.
pub const DEFAULT_RULE: &str = "default";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

/// A workload's authorization policy. `Policy::default()` allows everything.
#[derive(Debug, Clone, Serialize)]
pub struct Policy {
    pub default: Action,
    pub rules: Vec<Rule>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            default: Action::Allow,
            rules: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Rule {
    pub name: String,
    pub action: Action,
    pub from: Source,
    pub to: Target,
}

/// Conditions on the caller. Every condition given must hold; a list holds if any entry matches.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Source {
    pub identities: Vec<IdentityMatch>,
    pub namespaces: Vec<String>,
    /// `Some(true)`: only unauthenticated callers; `Some(false)`: only authenticated ones.
    pub unauthenticated: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentityMatch {
    /// `*`: any authenticated caller.
    Any,
    Prefix(String),
    Exact(String),
}

/// Conditions on what is asked for.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Target {
    pub ports: Vec<u16>,
    pub paths: Vec<PathRule>,
    #[serde(serialize_with = "ser_methods")]
    pub methods: Vec<Method>,
    pub headers: Vec<HeaderRule>,
}

impl Target {
    fn needs_http(&self) -> bool {
        !(self.paths.is_empty() && self.methods.is_empty() && self.headers.is_empty())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PathRule {
    Exact(String),
    Prefix(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct HeaderRule {
    #[serde(serialize_with = "crate::config::ser_display")]
    pub name: HeaderName,
    pub value: HeaderRuleValue,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HeaderRuleValue {
    Exact(String),
    Prefix(String),
    /// true: present; false: absent.
    Present(bool),
}

/// Who is calling: the SPIFFE ID proven by a client certificate, or none for a plaintext caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    pub identity: Option<String>,
}

impl Peer {
    pub fn authenticated(identity: impl Into<String>) -> Peer {
        Peer {
            identity: Some(identity.into()),
        }
    }
    pub fn unauthenticated() -> Peer {
        Peer { identity: None }
    }
    /// The namespace in `spiffe://<td>/ns/<namespace>/sa/<account>`.
    fn namespace(&self) -> Option<&str> {
        let id = self.identity.as_deref()?.strip_prefix("spiffe://")?;
        let mut parts = id.split('/').skip(1);
        match (parts.next(), parts.next()) {
            (Some("ns"), Some(ns)) => Some(ns),
            _ => None,
        }
    }
}

/// What is asked for. `http` is `None` for a connection-level (TCP) check.
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    pub port: Option<u16>,
    pub http: Option<HttpAttributes<'a>>,
}

#[derive(Debug, Clone, Copy)]
pub struct HttpAttributes<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub headers: &'a HeaderMap<HeaderValue>,
}

/// The outcome and the rule (or `default`) that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    pub rule: String,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        self.action == Action::Allow
    }
}

impl Policy {
    /// Decides one request (or connection): deny rules first, then allow rules, then the default.
    pub fn decide(&self, peer: &Peer, attrs: &Attributes<'_>) -> Decision {
        for wanted in [Action::Deny, Action::Allow] {
            let hit = self
                .rules
                .iter()
                .filter(|r| r.action == wanted)
                .find(|r| r.matches(peer, attrs));
            if let Some(rule) = hit {
                return Decision {
                    action: wanted,
                    rule: rule.name.clone(),
                };
            }
        }
        Decision {
            action: self.default,
            rule: DEFAULT_RULE.to_string(),
        }
    }
}

impl Rule {
    fn matches(&self, peer: &Peer, attrs: &Attributes<'_>) -> bool {
        if !self.from.matches(peer) || !any_or_empty(&self.to.ports, |p| Some(*p) == attrs.port) {
            return false;
        }
        match &attrs.http {
            Some(http) => self.to.matches_http(http),
            // Cannot be evaluated on a connection: fail closed.
            None => !self.to.needs_http() || self.action == Action::Deny,
        }
    }
}

impl Source {
    fn matches(&self, peer: &Peer) -> bool {
        if let Some(want) = self.unauthenticated {
            if want != peer.identity.is_none() {
                return false;
            }
        }
        let identity_ok = self.identities.is_empty()
            || peer
                .identity
                .as_deref()
                .is_some_and(|id| self.identities.iter().any(|m| m.matches(id)));
        let namespace_ok = self.namespaces.is_empty()
            || peer
                .namespace()
                .is_some_and(|ns| self.namespaces.iter().any(|n| n == ns));
        identity_ok && namespace_ok
    }
}

impl IdentityMatch {
    /// Parses `*`, `prefix*` or an exact ID.
    pub fn parse(pattern: &str) -> IdentityMatch {
        match pattern.strip_suffix('*') {
            Some("") => IdentityMatch::Any,
            Some(prefix) => IdentityMatch::Prefix(prefix.to_string()),
            None => IdentityMatch::Exact(pattern.to_string()),
        }
    }
    fn matches(&self, id: &str) -> bool {
        match self {
            IdentityMatch::Any => true,
            IdentityMatch::Prefix(p) => id.starts_with(p.as_str()),
            IdentityMatch::Exact(e) => id == e,
        }
    }
}

impl Target {
    fn matches_http(&self, http: &HttpAttributes<'_>) -> bool {
        any_or_empty(&self.paths, |p| match p {
            PathRule::Exact(e) => http.path == e,
            PathRule::Prefix(pre) => http.path.starts_with(pre.as_str()),
        }) && any_or_empty(&self.methods, |m| m == http.method)
            && self.headers.iter().all(|h| h.matches(http.headers))
    }
}

impl HeaderRule {
    fn matches(&self, headers: &HeaderMap<HeaderValue>) -> bool {
        let mut values = headers.get_all(&self.name).iter();
        match &self.value {
            HeaderRuleValue::Present(want) => values.next().is_some() == *want,
            HeaderRuleValue::Exact(v) => values.any(|x| x.as_bytes() == v.as_bytes()),
            HeaderRuleValue::Prefix(p) => values.any(|x| x.as_bytes().starts_with(p.as_bytes())),
        }
    }
}

fn any_or_empty<T>(list: &[T], f: impl FnMut(&T) -> bool) -> bool {
    list.is_empty() || list.iter().any(f)
}

fn ser_methods<S: serde::Serializer>(methods: &[Method], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(methods.iter().map(Method::as_str))
}

#[cfg(test)]
mod tests;
