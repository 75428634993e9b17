//! The mesh YAML: its validated model, and the parsing that turns a file into it. Every error
//! names the file, line, column and field path, because the person fixing it is editing that file.
//! The serde shape (with source spans) lives in `config/raw.rs`; this file holds what the rest of
//! the control plane consumes: plain types with defaults applied and durations as `Duration`.
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

mod authz;
mod locate;
mod policy;
mod raw;

pub use authz::{Authorization, AuthzAction, AuthzRule, AuthzSource, AuthzTarget, Trust};
pub use policy::{
    Backend, CircuitBreaker, Fault, FaultAbort, FaultDelay, HashOn, HeaderMatch, HeaderValueMatch,
    LoadBalancer, OutlierDetection, PathMatch, Policy, Retry, RetryOn, Route, RouteMatch,
};

/// The validated mesh configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshConfig {
    pub trust_domain: String,
    pub cluster_domain: String,
    pub certificate_lifetime: Duration,
    pub services: Vec<Service>,
    /// Extra roots for the trust bundle (CA rotation).
    pub trust: Trust,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub mtls: MtlsMode,
    pub ports: Vec<Port>,
    /// Virtual IPs at which `ports` are reached (a Kubernetes Service's ClusterIPs), so that a
    /// transparent sidecar recognises a connection to one as a connection to this service.
    pub addresses: Vec<IpAddr>,
    pub endpoints: Vec<Endpoint>,
    pub policy: Policy,
    pub routes: Vec<Route>,
    /// None: every caller the mTLS mode admits.
    pub authorization: Option<Authorization>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MtlsMode {
    Strict,
    Permissive,
    Disabled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    H2c,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port {
    pub port: u16,
    pub target_port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub address: SocketAddr,
    pub weight: u32,
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// Nothing but whitespace, comments or a null document: almost always a file caught while
    /// being written (truncated, not yet filled), never a mesh someone meant to have no services,
    /// which is written `services: []`.
    #[error("{file}: the file is empty (no YAML document; write `services: []` for a mesh without services)")]
    Empty { file: String },
    /// Display: `"{file}:{line}:{column}: {path}: {reason}"`.
    #[error("{file}:{line}:{column}: {path}: {reason}")]
    Invalid {
        file: String,
        line: u64,
        column: u64,
        /// Field path such as `services[0].endpoints[1].address`.
        path: String,
        reason: String,
    },
}

/// Reads and validates the mesh configuration at `path`.
pub fn load(path: &Path) -> Result<MeshConfig, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: file.clone(),
        source,
    })?;
    parse(&file, &text)
}

/// Parses and validates `text`; `file_name` is only used in error messages.
pub fn parse(file_name: &str, text: &str) -> Result<MeshConfig, ConfigError> {
    if is_empty_document(text) {
        return Err(ConfigError::Empty {
            file: file_name.to_owned(),
        });
    }
    let mesh: raw::RawMesh = match serde_saphyr::from_str(text) {
        Ok(mesh) => mesh,
        Err(err) => return Err(syntax_error(file_name, text, &err)),
    };
    let base = Path::new(file_name).parent().unwrap_or(Path::new(""));
    mesh.validate(base).map_err(|e| ConfigError::Invalid {
        file: file_name.to_owned(),
        line: e.line,
        column: e.column,
        path: e.path,
        reason: e.reason,
    })
}

/// True when `text` holds no document or a null one (`""`, comments, `---`, `~`). A syntax error
/// is not "empty": it is reported by the real parse with its position.
fn is_empty_document(text: &str) -> bool {
    matches!(
        serde_saphyr::from_str::<Option<serde::de::IgnoredAny>>(text),
        Ok(None)
    )
}

/// Turns a serde-saphyr error (syntax, type, unknown field) into our format, finding the field
/// path from the error's position since serde-saphyr reports only the position.
fn syntax_error(file_name: &str, text: &str, err: &serde_saphyr::Error) -> ConfigError {
    use serde_saphyr::MessageFormatter as _;
    let inner = err.without_snippet();
    let reason = serde_saphyr::DefaultMessageFormatter
        .format_message(inner)
        .chars()
        // The message may quote input; keep it on one line for logs.
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let (line, column) = err
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((1, 1));
    ConfigError::Invalid {
        file: file_name.to_owned(),
        line,
        column,
        path: locate::path_at(text, line, column),
        reason,
    }
}

/// The policy, routes, mTLS mode and authorization of one service, given apart from the mesh file
/// (a Kubernetes `TrafficPolicy`), validated by the same rules as the mesh file's service fields.
#[derive(Debug, Clone, PartialEq)]
pub struct ServicePolicy {
    /// The target service's name, in the namespace the policy was given for.
    pub service: String,
    /// None: not given (the source's default applies).
    pub mtls: Option<MtlsMode>,
    pub policy: Policy,
    pub routes: Vec<Route>,
    pub authorization: Option<Authorization>,
}

/// Parses and validates `{"spec": {"service": .., "policy": .., "routes": [..]}}` (JSON is YAML,
/// so a Kubernetes object's spec can be passed as `serde_json` wrote it). `known` holds every
/// (namespace, service) of the mesh: the target and route backends must be among them. Errors name
/// the field path (`spec.policy.retry.attempts`); their line and column refer to `text`.
pub fn parse_service_policy(
    origin: &str,
    text: &str,
    namespace: &str,
    known: &HashSet<(String, String)>,
) -> Result<ServicePolicy, ConfigError> {
    parse_traffic_policy(origin, text, namespace, known, &HashMap::new())
}

/// As `parse_service_policy`, for a document that may also carry `mtls` and `authorization`:
/// `ports` gives each service's ports, which `authorization.rules[].to.ports` must be among (a
/// service missing from it has none, so any port named for it is refused).
pub fn parse_traffic_policy(
    origin: &str,
    text: &str,
    namespace: &str,
    known: &HashSet<(String, String)>,
    ports: &HashMap<(String, String), Vec<Port>>,
) -> Result<ServicePolicy, ConfigError> {
    let document: raw::RawPolicyDocument = match serde_saphyr::from_str(text) {
        Ok(document) => document,
        Err(err) => return Err(syntax_error(origin, text, &err)),
    };
    document
        .validate(namespace, known, ports)
        .map_err(|e| ConfigError::Invalid {
            file: origin.to_owned(),
            line: e.line,
            column: e.column,
            path: e.path,
            reason: e.reason,
        })
}

/// Parses a duration written as `<n>ms`, `<n>s`, `<n>m` or `<n>h`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let digits_end = text.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = text.split_at(digits_end);
    let n: u64 = digits.parse().ok()?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(millis_per_unit).map(Duration::from_millis)
}

#[cfg(test)]
mod tests;
