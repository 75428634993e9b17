//! The mesh YAML exactly as written, with source spans on every value we validate, and the
//! validation that turns it into the plain model. Enums and durations are read as strings so that
//! a bad value gets our message and its precise field path rather than a generic serde one.
//! The traffic-policy blocks live in `raw/policy.rs` (per service) and `raw/route.rs` (routes);
//! the checks they share (ranges, sizes, header names, regexes) are at the end of this file.
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{parse_duration, Endpoint, MeshConfig, MtlsMode, Policy, Port, Protocol, Service};

mod authz;
mod policy;
mod route;
mod service_policy;

use authz::{RawAuthorization, RawTrust};
use policy::RawPolicy;
use route::{RawRoute, Scope};
pub(super) use service_policy::RawPolicyDocument;

const MAX_CERT_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

/// A validation failure at one field; `config.rs` adds the file name.
#[derive(Debug)]
pub(super) struct FieldError {
    pub line: u64,
    pub column: u64,
    pub path: String,
    pub reason: String,
}

type S<T> = Spanned<T>;

fn fail<T, U>(
    at: &S<U>,
    path: impl Into<String>,
    reason: impl Into<String>,
) -> Result<T, FieldError> {
    Err(FieldError {
        line: at.referenced.line(),
        column: at.referenced.column(),
        path: path.into(),
        reason: reason.into(),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawMesh {
    trust_domain: Option<S<String>>,
    cluster_domain: Option<S<String>>,
    certificate_lifetime: Option<S<String>>,
    trust: Option<RawTrust>,
    #[serde(default)]
    services: Vec<RawService>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawService {
    name: S<String>,
    namespace: Option<S<String>>,
    service_account: Option<S<String>>,
    mtls: Option<S<String>>,
    #[serde(default)]
    ports: Vec<RawPort>,
    #[serde(default)]
    addresses: Vec<S<String>>,
    #[serde(default)]
    endpoints: Vec<RawEndpoint>,
    policy: Option<RawPolicy>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    authorization: Option<RawAuthorization>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPort {
    port: S<i64>,
    target_port: Option<S<i64>>,
    protocol: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawEndpoint {
    address: S<String>,
    weight: Option<S<i64>>,
}

impl RawMesh {
    /// `base` is the config file's folder (relative paths in `trust` are resolved against it).
    pub(super) fn validate(self, base: &std::path::Path) -> Result<MeshConfig, FieldError> {
        let trust_domain = domain(self.trust_domain, "trustDomain", "trellis.local")?;
        let cluster_domain = domain(self.cluster_domain, "clusterDomain", "cluster.local")?;
        let certificate_lifetime = match &self.certificate_lifetime {
            None => Duration::from_secs(24 * 3600),
            Some(v) => {
                let d = duration(v, "certificateLifetime")?;
                if d < Duration::from_secs(1) || d > MAX_CERT_LIFETIME {
                    return fail(
                        v,
                        "certificateLifetime",
                        format!("{:?} must be between 1s and 90 days", v.value),
                    );
                }
                d
            }
        };
        // Every service a route may send to; an invalid namespace fails in its own service first.
        let known: HashSet<(String, String)> = (self.services.iter())
            .map(|s| {
                let ns = s.namespace.as_ref().map_or("default", |n| n.value.as_str());
                (ns.to_owned(), s.name.value.clone())
            })
            .collect();
        // Remembers the index that first used each (namespace, name) to name it in the error.
        let mut seen: HashMap<(String, String), usize> = HashMap::new();
        // A virtual address names one service: two claiming it would make a connection to it
        // ambiguous. Remembers where each was first given, for the error.
        let mut claimed: HashMap<IpAddr, String> = HashMap::new();
        let mut services = Vec::with_capacity(self.services.len());
        for (i, raw) in self.services.into_iter().enumerate() {
            let at = format!("services[{i}]");
            let name_span = Spanned::new((), raw.name.referenced, raw.name.defined);
            let address_spans: Vec<S<()>> = (raw.addresses.iter())
                .map(|a| Spanned::new((), a.referenced, a.defined))
                .collect();
            let service = raw.validate(&at, &known)?;
            for (j, (ip, span)) in service.addresses.iter().zip(&address_spans).enumerate() {
                let path = format!("{at}.addresses[{j}]");
                if let Some(first) = claimed.get(ip) {
                    return fail(span, path, format!("{ip} is already {first}"));
                }
                claimed.insert(*ip, path);
            }
            let key = (service.namespace.clone(), service.name.clone());
            if let Some(first) = seen.get(&key) {
                return fail(
                    &name_span,
                    format!("{at}.name"),
                    format!("service \"{}/{}\" repeats services[{first}]", key.0, key.1),
                );
            }
            seen.insert(key, i);
            services.push(service);
        }
        let trust = match &self.trust {
            Some(t) => t.validate(base)?,
            None => Default::default(),
        };
        Ok(MeshConfig {
            trust_domain,
            cluster_domain,
            certificate_lifetime,
            services,
            trust,
        })
    }
}

impl RawService {
    fn validate(self, at: &str, known: &HashSet<(String, String)>) -> Result<Service, FieldError> {
        let name = label(&self.name, &format!("{at}.name"))?;
        let namespace = match &self.namespace {
            Some(ns) => label(ns, &format!("{at}.namespace"))?,
            None => "default".to_owned(),
        };
        let service_account = match &self.service_account {
            Some(sa) => subdomain(sa, &format!("{at}.serviceAccount"))?,
            None => name.clone(),
        };
        let mtls = match &self.mtls {
            None => MtlsMode::Strict,
            Some(v) => mtls_mode(v, &format!("{at}.mtls"))?,
        };
        if self.ports.is_empty() {
            return fail(
                &self.name,
                format!("{at}.ports"),
                "at least one port is required",
            );
        }
        let ports = (self.ports.iter().enumerate())
            .map(|(i, p)| p.validate(&format!("{at}.ports[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let addresses = (self.addresses.iter().enumerate())
            .map(|(i, a)| virtual_address(a, &format!("{at}.addresses[{i}]")))
            .collect::<Result<_, _>>()?;
        let endpoints = (self.endpoints.iter().enumerate())
            .map(|(i, e)| e.validate(&format!("{at}.endpoints[{i}]")))
            .collect::<Result<_, _>>()?;
        let policy = match &self.policy {
            Some(p) => p.validate(&format!("{at}.policy"))?,
            None => Policy::default(),
        };
        let scope = Scope {
            namespace: &namespace,
            service: &name,
            known,
        };
        let routes = route::routes(&self.routes, &format!("{at}.routes"), &scope)?;
        let authorization = match &self.authorization {
            Some(a) => Some(a.validate(&format!("{at}.authorization"), &ports)?),
            None => None,
        };
        Ok(Service {
            name,
            namespace,
            service_account,
            mtls,
            ports,
            addresses,
            endpoints,
            policy,
            routes,
            authorization,
        })
    }
}

impl RawPort {
    fn validate(&self, at: &str) -> Result<Port, FieldError> {
        let port = port_number(&self.port, &format!("{at}.port"))?;
        let target_port = match &self.target_port {
            Some(t) => port_number(t, &format!("{at}.targetPort"))?,
            None => port,
        };
        let protocol = match &self.protocol {
            None => Protocol::Http1,
            Some(v) => match v.value.as_str() {
                "http1" => Protocol::Http1,
                "h2c" => Protocol::H2c,
                other => {
                    return fail(
                        v,
                        format!("{at}.protocol"),
                        format!("{other:?} is not one of http1, h2c"),
                    )
                }
            },
        };
        Ok(Port {
            port,
            target_port,
            protocol,
        })
    }
}

impl RawEndpoint {
    fn validate(&self, at: &str) -> Result<Endpoint, FieldError> {
        let Ok(address) = self.address.value.parse::<SocketAddr>() else {
            return fail(
                &self.address,
                format!("{at}.address"),
                format!("{:?} is not an ip:port address", self.address.value),
            );
        };
        let weight = match &self.weight {
            None => 1,
            Some(w) => match u32::try_from(w.value) {
                Ok(v) if (1..=10_000).contains(&v) => v,
                _ => {
                    return fail(
                        w,
                        format!("{at}.weight"),
                        format!("{} is not in 1..=10000", w.value),
                    )
                }
            },
        };
        Ok(Endpoint { address, weight })
    }
}

/// A service's virtual address: an IP without a port (the service's ports apply), which must be
/// one a connection can be addressed to.
fn virtual_address(v: &S<String>, path: &str) -> Result<IpAddr, FieldError> {
    let Ok(ip) = v.value.parse::<IpAddr>() else {
        return fail(
            v,
            path,
            format!(
                "{:?} is not an IP address (v4 or v6, without a port)",
                v.value
            ),
        );
    };
    if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
        return fail(
            v,
            path,
            format!("{ip} cannot be a service address (unspecified, multicast or loopback)"),
        );
    }
    Ok(ip)
}

/// A service's `mtls` (the mesh file's and a TrafficPolicy's).
fn mtls_mode(v: &S<String>, path: &str) -> Result<MtlsMode, FieldError> {
    match v.value.as_str() {
        "strict" => Ok(MtlsMode::Strict),
        "permissive" => Ok(MtlsMode::Permissive),
        "disabled" => Ok(MtlsMode::Disabled),
        other => fail(
            v,
            path,
            format!("{other:?} is not one of strict, permissive, disabled"),
        ),
    }
}

fn duration(v: &S<String>, path: &str) -> Result<Duration, FieldError> {
    match parse_duration(&v.value) {
        Some(d) => Ok(d),
        None if v.value.trim_start().starts_with('-') => {
            fail(v, path, format!("{:?} must be greater than zero", v.value))
        }
        None => fail(
            v,
            path,
            format!(
                "{:?} is not a duration like 500ms, 10s, 5m, 24h or 7d",
                v.value
            ),
        ),
    }
}

fn positive_duration(v: &S<String>, path: &str) -> Result<Duration, FieldError> {
    let d = duration(v, path)?;
    if d.is_zero() {
        return fail(v, path, format!("{:?} must be greater than zero", v.value));
    }
    Ok(d)
}

fn port_number(v: &S<i64>, path: &str) -> Result<u16, FieldError> {
    match u16::try_from(v.value) {
        Ok(p) if p > 0 => Ok(p),
        _ => fail(v, path, format!("{} is not a port in 1..=65535", v.value)),
    }
}

/// A DNS-1123 label: lower-case alphanumerics and '-', starting and ending alphanumeric, <= 63.
fn is_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

fn label(v: &S<String>, path: &str) -> Result<String, FieldError> {
    if !is_label(&v.value) {
        return fail(
            v,
            path,
            format!(
                "{:?} is not a DNS-1123 label (lower-case letters, digits, '-', at most 63)",
                v.value
            ),
        );
    }
    Ok(v.value.clone())
}

/// A DNS-1123 subdomain: dot-separated labels, <= 253 characters.
fn subdomain(v: &S<String>, path: &str) -> Result<String, FieldError> {
    if v.value.len() > 253 || !v.value.split('.').all(is_label) {
        return fail(
            v,
            path,
            format!(
                "{:?} is not a DNS-1123 name (dot-separated labels)",
                v.value
            ),
        );
    }
    Ok(v.value.clone())
}

fn domain(v: Option<S<String>>, path: &str, default: &str) -> Result<String, FieldError> {
    match v {
        None => Ok(default.to_owned()),
        Some(v) => subdomain(&v, path),
    }
}

/// An integer in `lo..=hi`.
fn int_in(v: &S<i64>, path: &str, lo: i64, hi: i64) -> Result<i64, FieldError> {
    if !(lo..=hi).contains(&v.value) {
        return fail(v, path, format!("{} is not in {lo}..={hi}", v.value));
    }
    Ok(v.value)
}

/// A count of at least `lo` that fits the protocol's u32.
fn count(v: &S<i64>, path: &str, lo: u32) -> Result<u32, FieldError> {
    if v.value < i64::from(lo) {
        return fail(v, path, format!("{} is below {lo}", v.value));
    }
    u32::try_from(v.value).or_else(|_| fail(v, path, format!("{} is over {}", v.value, u32::MAX)))
}

/// A number in `lo..=hi` (a ratio or a percentage).
fn number_in(v: &S<f64>, path: &str, lo: f64, hi: f64) -> Result<f64, FieldError> {
    let n = v.value;
    if n.is_nan() {
        return fail(v, path, "is not a number");
    }
    if n > hi {
        return fail(v, path, format!("{n} is over {hi}"));
    }
    if n < lo {
        return fail(v, path, format!("{n} is below {lo}"));
    }
    Ok(n)
}

/// An HTTP token (RFC 9110): header names, methods, cookie names.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A header or cookie name; header names are case-insensitive and kept in lower case.
fn header_name(v: &S<String>, path: &str) -> Result<String, FieldError> {
    if !is_token(&v.value) {
        return fail(v, path, format!("{:?} is not a valid header name", v.value));
    }
    Ok(v.value.to_ascii_lowercase())
}

/// Compiles `pattern` as the proxy will (anchored to the whole value) to refuse it here.
fn regex(v: &S<String>, path: &str) -> Result<String, FieldError> {
    if let Err(e) = regex::Regex::new(&format!("^(?:{})$", v.value)) {
        // The message is a multi-line picture of our anchored copy; its last line says why.
        let text = e.to_string();
        let why = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        let why = why.trim().trim_start_matches("error: ");
        return fail(
            v,
            path,
            format!("{:?} is not a valid regex: {why}", v.value),
        );
    }
    Ok(v.value.clone())
}

/// A size in bytes as written: a number, or a number with a `KiB` or `MiB` suffix.
#[derive(Debug)]
enum Size {
    Number(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl serde::de::Visitor<'_> for SizeVisitor {
            type Value = Size;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a size such as 65536, 64KiB or 1MiB")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Size, E> {
                Ok(Size::Number(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size::Number(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Size, E> {
                Ok(Size::Text(v.to_owned()))
            }
        }
        d.deserialize_any(SizeVisitor)
    }
}

/// A size of at most `max` bytes.
fn size(v: &S<Size>, path: &str, max: u32) -> Result<u32, FieldError> {
    let (shown, bytes) = match &v.value {
        Size::Number(n) => (n.to_string(), Some(*n)),
        Size::Text(t) => {
            let t = t.trim();
            let (digits, unit) =
                t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
            let unit = match unit.trim() {
                "" | "B" => Some(1),
                "KiB" => Some(1024),
                "MiB" => Some(1024 * 1024),
                _ => None,
            };
            let n = digits.parse::<i64>().ok();
            (
                format!("{t:?}"),
                n.zip(unit).and_then(|(n, u)| n.checked_mul(u)),
            )
        }
    };
    match bytes {
        None if shown.contains('-') => fail(v, path, format!("{shown} is below 0")),
        None => fail(
            v,
            path,
            format!("{shown} is not a size like 65536, 64KiB or 1MiB"),
        ),
        Some(b) if b < 0 => fail(v, path, format!("{shown} is below 0")),
        Some(b) if b > i64::from(max) => fail(
            v,
            path,
            format!("{shown} is over {}MiB", max / (1024 * 1024)),
        ),
        Some(b) => Ok(u32::try_from(b).unwrap_or(max)),
    }
}
