//! The mesh YAML exactly as written, with source spans on every value we validate, and the
//! validation that turns it into the plain model. Enums and durations are read as strings so that
//! a bad value gets our message and its precise field path rather than a generic serde one.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{
    parse_duration, Endpoint, LoadBalancer, MeshConfig, MtlsMode, Policy, Port, Protocol, Route,
    Service,
};

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
    endpoints: Vec<RawEndpoint>,
    policy: Option<RawPolicy>,
    #[serde(default)]
    routes: Vec<RawRoute>,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPolicy {
    load_balancer: Option<S<String>>,
    connect_timeout: Option<S<String>>,
    request_timeout: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRoute {
    name: S<String>,
    path_prefix: S<String>,
    timeout: Option<S<String>>,
}

impl RawMesh {
    pub(super) fn validate(self) -> Result<MeshConfig, FieldError> {
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
        // Remembers the index that first used each (namespace, name) to name it in the error.
        let mut seen: HashMap<(String, String), usize> = HashMap::new();
        let mut services = Vec::with_capacity(self.services.len());
        for (i, raw) in self.services.into_iter().enumerate() {
            let at = format!("services[{i}]");
            let name_span = Spanned::new((), raw.name.referenced, raw.name.defined);
            let service = raw.validate(&at)?;
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
        Ok(MeshConfig {
            trust_domain,
            cluster_domain,
            certificate_lifetime,
            services,
        })
    }
}

impl RawService {
    fn validate(self, at: &str) -> Result<Service, FieldError> {
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
            Some(v) => match v.value.as_str() {
                "strict" => MtlsMode::Strict,
                "permissive" => MtlsMode::Permissive,
                "disabled" => MtlsMode::Disabled,
                other => {
                    return fail(
                        v,
                        format!("{at}.mtls"),
                        format!("{other:?} is not one of strict, permissive, disabled"),
                    )
                }
            },
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
            .collect::<Result<_, _>>()?;
        let endpoints = (self.endpoints.iter().enumerate())
            .map(|(i, e)| e.validate(&format!("{at}.endpoints[{i}]")))
            .collect::<Result<_, _>>()?;
        let policy = match &self.policy {
            Some(p) => p.validate(&format!("{at}.policy"))?,
            None => Policy::default(),
        };
        let routes = (self.routes.iter().enumerate())
            .map(|(i, r)| r.validate(&format!("{at}.routes[{i}]")))
            .collect::<Result<_, _>>()?;
        Ok(Service {
            name,
            namespace,
            service_account,
            mtls,
            ports,
            endpoints,
            policy,
            routes,
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

impl RawPolicy {
    fn validate(&self, at: &str) -> Result<Policy, FieldError> {
        let defaults = Policy::default();
        let load_balancer = match &self.load_balancer {
            None => defaults.load_balancer,
            Some(v) => match v.value.as_str() {
                "roundRobin" => LoadBalancer::RoundRobin,
                "p2cEwma" => LoadBalancer::P2cEwma,
                "leastRequest" => LoadBalancer::LeastRequest,
                "consistentHash" => LoadBalancer::ConsistentHash,
                other => {
                    return fail(
                        v,
                        format!("{at}.loadBalancer"),
                        format!(
                        "{other:?} is not one of roundRobin, p2cEwma, leastRequest, consistentHash"
                    ),
                    )
                }
            },
        };
        let connect_timeout = match &self.connect_timeout {
            Some(v) => positive_duration(v, &format!("{at}.connectTimeout"))?,
            None => defaults.connect_timeout,
        };
        let request_timeout = match &self.request_timeout {
            Some(v) => positive_duration(v, &format!("{at}.requestTimeout"))?,
            None => defaults.request_timeout,
        };
        Ok(Policy {
            load_balancer,
            connect_timeout,
            request_timeout,
        })
    }
}

impl RawRoute {
    fn validate(&self, at: &str) -> Result<Route, FieldError> {
        let name = subdomain(&self.name, &format!("{at}.name"))?;
        if !self.path_prefix.value.starts_with('/') {
            return fail(
                &self.path_prefix,
                format!("{at}.pathPrefix"),
                format!("{:?} must start with \"/\"", self.path_prefix.value),
            );
        }
        let timeout = match &self.timeout {
            Some(v) => Some(positive_duration(v, &format!("{at}.timeout"))?),
            None => None,
        };
        Ok(Route {
            name,
            path_prefix: self.path_prefix.value.clone(),
            timeout,
        })
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
            format!("{:?} is not a duration like 500ms, 10s, 5m or 24h", v.value),
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
