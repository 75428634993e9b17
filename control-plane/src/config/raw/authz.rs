//! A service's `authorization` block and the mesh's `trust` block as written, and their
//! validation: rule names are unique labels, identities are SPIFFE IDs (exact, `prefix*`) or `*`,
//! namespaces are labels, ports are the service's own, paths start with `/`, methods are upper
//! case, header matches give exactly one of exact, prefix, present; extra roots are readable PEM
//! files (relative to the config file) holding CA certificates.
use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::{fail, header_name, is_token, label, FieldError, S};
use crate::config::authz::{
    Authorization, AuthzAction, AuthzRule, AuthzSource, AuthzTarget, Trust,
};
use crate::config::{HeaderMatch, HeaderValueMatch, PathMatch, Port};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(in crate::config) struct RawAuthorization {
    default: Option<S<String>>,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRule {
    name: S<String>,
    action: S<String>,
    from: Option<RawFrom>,
    to: Option<RawTo>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawFrom {
    #[serde(default)]
    identities: Vec<S<String>>,
    #[serde(default)]
    namespaces: Vec<S<String>>,
    unauthenticated: Option<S<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawTo {
    #[serde(default)]
    ports: Vec<S<i64>>,
    #[serde(default)]
    paths: Vec<S<RawPath>>,
    #[serde(default)]
    methods: Vec<S<String>>,
    #[serde(default)]
    headers: Vec<RawHeader>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPath {
    exact: Option<S<String>>,
    prefix: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawHeader {
    name: S<String>,
    exact: Option<S<String>>,
    prefix: Option<S<String>>,
    present: Option<S<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(in crate::config) struct RawTrust {
    #[serde(default)]
    extra_roots: Vec<S<String>>,
}

fn action(v: &S<String>, path: String) -> Result<AuthzAction, FieldError> {
    match v.value.as_str() {
        "allow" => Ok(AuthzAction::Allow),
        "deny" => Ok(AuthzAction::Deny),
        other => fail(v, path, format!("{other:?} is not one of allow, deny")),
    }
}

impl RawAuthorization {
    pub(in crate::config) fn validate(
        &self,
        at: &str,
        ports: &[Port],
    ) -> Result<Authorization, FieldError> {
        let default = match &self.default {
            Some(v) => action(v, format!("{at}.default"))?,
            None => AuthzAction::Allow,
        };
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut rules = Vec::with_capacity(self.rules.len());
        for (i, raw) in self.rules.iter().enumerate() {
            let at = format!("{at}.rules[{i}]");
            let name = label(&raw.name, &format!("{at}.name"))?;
            if name == "default" {
                // Decisions and per-rule stats say "default" for the policy's default action.
                return fail(
                    &raw.name,
                    format!("{at}.name"),
                    "\"default\" names the policy's default action; choose another name",
                );
            }
            if let Some(first) = names.insert(&raw.name.value, i) {
                return fail(
                    &raw.name,
                    format!("{at}.name"),
                    format!("rule \"{name}\" repeats rules[{first}]"),
                );
            }
            let from = match &raw.from {
                Some(f) => f.validate(&format!("{at}.from"))?,
                None => AuthzSource::default(),
            };
            let to = match &raw.to {
                Some(t) => t.validate(&format!("{at}.to"), ports)?,
                None => AuthzTarget::default(),
            };
            rules.push(AuthzRule {
                name,
                action: action(&raw.action, format!("{at}.action"))?,
                from,
                to,
            });
        }
        Ok(Authorization { default, rules })
    }
}

impl RawFrom {
    fn validate(&self, at: &str) -> Result<AuthzSource, FieldError> {
        let mut identities = Vec::with_capacity(self.identities.len());
        for (i, id) in self.identities.iter().enumerate() {
            let v = id.value.as_str();
            let body = v.strip_suffix('*').unwrap_or(v);
            let ok = v == "*" || (body.starts_with("spiffe://") && !body.contains('*'));
            if !ok {
                return fail(
                    id,
                    format!("{at}.identities[{i}]"),
                    format!("{v:?} is not a SPIFFE ID, a \"spiffe://…*\" prefix or \"*\""),
                );
            }
            identities.push(v.to_owned());
        }
        let namespaces = (self.namespaces.iter().enumerate())
            .map(|(i, ns)| label(ns, &format!("{at}.namespaces[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let unauthenticated = self.unauthenticated.as_ref().map(|u| u.value);
        if let Some(u) = &self.unauthenticated {
            if u.value && !(identities.is_empty() && namespaces.is_empty()) {
                return fail(
                    u,
                    format!("{at}.unauthenticated"),
                    "an unauthenticated caller has no identity or namespace to match",
                );
            }
        }
        Ok(AuthzSource {
            identities,
            namespaces,
            unauthenticated,
        })
    }
}

impl RawTo {
    fn validate(&self, at: &str, service_ports: &[Port]) -> Result<AuthzTarget, FieldError> {
        let mut ports = Vec::with_capacity(self.ports.len());
        for (i, p) in self.ports.iter().enumerate() {
            match service_ports
                .iter()
                .find(|sp| i64::from(sp.port) == p.value)
            {
                Some(sp) => ports.push(sp.port),
                None => {
                    return fail(
                        p,
                        format!("{at}.ports[{i}]"),
                        format!("{} is not one of this service's ports", p.value),
                    )
                }
            }
        }
        let mut paths = Vec::with_capacity(self.paths.len());
        for (i, p) in self.paths.iter().enumerate() {
            let path = format!("{at}.paths[{i}]");
            let (value, exact) = match (&p.value.exact, &p.value.prefix) {
                (Some(v), None) => (v, true),
                (None, Some(v)) => (v, false),
                _ => return fail(p, path, "give exactly one of exact, prefix"),
            };
            if !value.value.starts_with('/') {
                let field = if exact { "exact" } else { "prefix" };
                return fail(
                    value,
                    format!("{path}.{field}"),
                    format!("{:?} must start with \"/\"", value.value),
                );
            }
            paths.push(if exact {
                PathMatch::Exact(value.value.clone())
            } else {
                PathMatch::Prefix(value.value.clone())
            });
        }
        let mut methods = Vec::with_capacity(self.methods.len());
        for (i, m) in self.methods.iter().enumerate() {
            if !is_token(&m.value) || m.value.bytes().any(|b| b.is_ascii_lowercase()) {
                return fail(
                    m,
                    format!("{at}.methods[{i}]"),
                    format!("{:?} is not an upper-case HTTP method such as GET", m.value),
                );
            }
            methods.push(m.value.clone());
        }
        let headers = (self.headers.iter().enumerate())
            .map(|(i, h)| h.validate(&format!("{at}.headers[{i}]")))
            .collect::<Result<_, _>>()?;
        Ok(AuthzTarget {
            ports,
            paths,
            methods,
            headers,
        })
    }
}

impl RawHeader {
    fn validate(&self, at: &str) -> Result<HeaderMatch, FieldError> {
        let name = header_name(&self.name, &format!("{at}.name"))?;
        let text = |v: &S<String>, field: &str| {
            if !(v.value.chars()).all(|c| c == '\t' || (c.is_ascii() && !c.is_ascii_control())) {
                return fail(
                    v,
                    format!("{at}.{field}"),
                    format!("{:?} is not a valid header value (visible ASCII)", v.value),
                );
            }
            Ok(v.value.clone())
        };
        let value = match (&self.exact, &self.prefix, &self.present) {
            (Some(v), None, None) => HeaderValueMatch::Exact(text(v, "exact")?),
            (None, Some(v), None) => HeaderValueMatch::Prefix(text(v, "prefix")?),
            (None, None, Some(v)) => HeaderValueMatch::Present(v.value),
            _ => return fail(&self.name, at, "give exactly one of exact, prefix, present"),
        };
        Ok(HeaderMatch { name, value })
    }
}

impl RawTrust {
    /// Reads every extra root; relative paths are relative to `base` (the config file's folder).
    pub(in crate::config) fn validate(&self, base: &Path) -> Result<Trust, FieldError> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::CertificateDer;
        let mut extra_roots_der = Vec::new();
        for (i, file) in self.extra_roots.iter().enumerate() {
            let at = format!("trust.extraRoots[{i}]");
            let path = base.join(&file.value);
            let pem = match std::fs::read(&path) {
                Ok(pem) => pem,
                Err(e) => return fail(file, at, format!("cannot read {}: {e}", path.display())),
            };
            let mut found = 0;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let der = match cert {
                    Ok(der) => der,
                    Err(e) => return fail(file, at, format!("{}: {e}", path.display())),
                };
                if !is_ca(&der) {
                    return fail(
                        file,
                        at,
                        format!("{}: certificate {found} is not a CA", path.display()),
                    );
                }
                extra_roots_der.push(der.to_vec());
                found += 1;
            }
            if found == 0 {
                return fail(file, at, format!("{}: no PEM certificate", path.display()));
            }
        }
        Ok(Trust { extra_roots_der })
    }
}

fn is_ca(der: &[u8]) -> bool {
    use x509_parser::prelude::{FromDer, X509Certificate};
    X509Certificate::from_der(der)
        .ok()
        .and_then(|(_, c)| c.basic_constraints().ok().flatten().map(|b| b.value.ca))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests;
