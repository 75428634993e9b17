//! A service's `routes` as written (match, weighted backends, timeout, retry, fault) and their
//! validation. Backends name other services, so validation gets the set of every service.
use std::collections::{HashMap, HashSet};

use serde::Deserialize;

use super::policy::RawRetry;
use super::{
    fail, header_name, int_in, is_label, is_token, label, number_in, positive_duration, regex,
    FieldError, S,
};
use crate::config::{
    Backend, Fault, FaultAbort, FaultDelay, HeaderMatch, HeaderValueMatch, PathMatch, Route,
    RouteMatch,
};

/// What a route's validation needs to know about the service that holds it and the mesh.
pub(in crate::config) struct Scope<'a> {
    pub namespace: &'a str,
    pub service: &'a str,
    /// Every (namespace, name) in the mesh.
    pub known: &'a HashSet<(String, String)>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(in crate::config) struct RawRoute {
    name: S<String>,
    r#match: Option<RawMatch>,
    backends: Option<S<Vec<RawBackend>>>,
    timeout: Option<S<String>>,
    retry: Option<RawRetry>,
    fault: Option<S<RawFault>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawMatch {
    path: Option<S<RawPathMatch>>,
    method: Option<S<String>>,
    #[serde(default)]
    headers: Vec<RawHeaderMatch>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPathMatch {
    exact: Option<S<String>>,
    prefix: Option<S<String>>,
    regex: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawHeaderMatch {
    name: S<String>,
    exact: Option<S<String>>,
    prefix: Option<S<String>>,
    regex: Option<S<String>>,
    present: Option<S<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawBackend {
    service: S<String>,
    weight: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawFault {
    delay: Option<RawDelay>,
    abort: Option<RawAbort>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawDelay {
    duration: S<String>,
    percent: S<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawAbort {
    status: S<i64>,
    percent: S<f64>,
}

/// A service's ordered route list; route names are unique within it.
pub(super) fn routes(list: &[RawRoute], at: &str, scope: &Scope) -> Result<Vec<Route>, FieldError> {
    // Remembers the index that first used each route name to name it in the error.
    let mut route_names: HashMap<&str, usize> = HashMap::new();
    let mut routes = Vec::with_capacity(list.len());
    for (i, raw) in list.iter().enumerate() {
        let route = raw.validate(&format!("{at}[{i}]"), scope)?;
        if let Some(first) = route_names.insert(&raw.name.value, i) {
            return fail(
                &raw.name,
                format!("{at}[{i}].name"),
                format!("route \"{}\" repeats routes[{first}]", route.name),
            );
        }
        routes.push(route);
    }
    Ok(routes)
}

impl RawRoute {
    fn validate(&self, at: &str, scope: &Scope) -> Result<Route, FieldError> {
        let name = label(&self.name, &format!("{at}.name"))?;
        let r#match = match &self.r#match {
            Some(m) => m.validate(&format!("{at}.match"))?,
            None => RouteMatch::default(),
        };
        let backends = match &self.backends {
            Some(list) => backends(list, &format!("{at}.backends"), scope)?,
            None => vec![Backend {
                namespace: scope.namespace.to_owned(),
                service: scope.service.to_owned(),
                weight: 1,
            }],
        };
        let timeout = match &self.timeout {
            Some(v) => Some(positive_duration(v, &format!("{at}.timeout"))?),
            None => None,
        };
        let retry = match &self.retry {
            Some(r) => Some(r.validate(&format!("{at}.retry"))?),
            None => None,
        };
        let fault = match &self.fault {
            Some(f) => Some(f.value.validate(f, &format!("{at}.fault"))?),
            None => None,
        };
        Ok(Route {
            name,
            r#match,
            backends,
            timeout,
            retry,
            fault,
        })
    }
}

impl RawMatch {
    fn validate(&self, at: &str) -> Result<RouteMatch, FieldError> {
        let path = match &self.path {
            Some(p) => Some(p.value.validate(p, &format!("{at}.path"))?),
            None => None,
        };
        let method = match &self.method {
            Some(m) if is_token(&m.value) && !m.value.bytes().any(|b| b.is_ascii_lowercase()) => {
                Some(m.value.clone())
            }
            Some(m) => {
                return fail(
                    m,
                    format!("{at}.method"),
                    format!(
                        "{:?} is not an upper-case HTTP method such as GET or POST",
                        m.value
                    ),
                )
            }
            None => None,
        };
        let headers = (self.headers.iter().enumerate())
            .map(|(i, h)| h.validate(&format!("{at}.headers[{i}]")))
            .collect::<Result<_, _>>()?;
        Ok(RouteMatch {
            path,
            method,
            headers,
        })
    }
}

impl RawPathMatch {
    fn validate(&self, span: &S<RawPathMatch>, at: &str) -> Result<PathMatch, FieldError> {
        let absolute = |v: &S<String>, field: &str| {
            if !v.value.starts_with('/') {
                return fail(
                    v,
                    format!("{at}.{field}"),
                    format!("{:?} must start with \"/\"", v.value),
                );
            }
            Ok(v.value.clone())
        };
        match (&self.exact, &self.prefix, &self.regex) {
            (Some(v), None, None) => Ok(PathMatch::Exact(absolute(v, "exact")?)),
            (None, Some(v), None) => Ok(PathMatch::Prefix(absolute(v, "prefix")?)),
            (None, None, Some(v)) => Ok(PathMatch::Regex(regex(v, &format!("{at}.regex"))?)),
            _ => fail(span, at, "give exactly one of exact, prefix, regex"),
        }
    }
}

impl RawHeaderMatch {
    fn validate(&self, at: &str) -> Result<HeaderMatch, FieldError> {
        let name = header_name(&self.name, &format!("{at}.name"))?;
        // Exact and prefix values are compared with header values, which are visible ASCII.
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
        let value = match (&self.exact, &self.prefix, &self.regex, &self.present) {
            (Some(v), None, None, None) => HeaderValueMatch::Exact(text(v, "exact")?),
            (None, Some(v), None, None) => HeaderValueMatch::Prefix(text(v, "prefix")?),
            (None, None, Some(v), None) => {
                HeaderValueMatch::Regex(regex(v, &format!("{at}.regex"))?)
            }
            (None, None, None, Some(v)) => HeaderValueMatch::Present(v.value),
            _ => {
                return fail(
                    &self.name,
                    at,
                    "give exactly one of exact, prefix, regex, present",
                )
            }
        };
        Ok(HeaderMatch { name, value })
    }
}

fn backends(
    list: &S<Vec<RawBackend>>,
    at: &str,
    scope: &Scope,
) -> Result<Vec<Backend>, FieldError> {
    if list.value.is_empty() {
        return fail(
            list,
            at,
            "name at least one backend (or leave backends out to send to this service)",
        );
    }
    let mut backends: Vec<Backend> = Vec::with_capacity(list.value.len());
    for (i, raw) in list.value.iter().enumerate() {
        let at = format!("{at}[{i}]");
        let reference = &raw.service;
        let (namespace, service) = match reference.value.split_once('/') {
            Some((ns, name)) => (ns, name),
            None => (scope.namespace, reference.value.as_str()),
        };
        if !is_label(namespace) || !is_label(service) {
            return fail(
                reference,
                format!("{at}.service"),
                format!(
                    "{:?} is not a service name or namespace/name",
                    reference.value
                ),
            );
        }
        if !(scope.known).contains(&(namespace.to_owned(), service.to_owned())) {
            return fail(
                reference,
                format!("{at}.service"),
                format!("no service {service:?} in namespace {namespace:?}"),
            );
        }
        let weight = match &raw.weight {
            Some(w) => int_in(w, &format!("{at}.weight"), 0, 10_000)? as u32,
            None => 1,
        };
        let backend = Backend {
            namespace: namespace.to_owned(),
            service: service.to_owned(),
            weight,
        };
        if let Some(first) = (backends.iter()).position(|b| b.cluster() == backend.cluster()) {
            return fail(
                reference,
                format!("{at}.service"),
                format!(
                    "{:?} repeats backends[{first}]; give it one entry with the summed weight",
                    reference.value
                ),
            );
        }
        backends.push(backend);
    }
    if backends.iter().all(|b| b.weight == 0) {
        return fail(
            list,
            at,
            "the weights sum to 0; at least one must be above 0",
        );
    }
    Ok(backends)
}

impl RawFault {
    fn validate(&self, span: &S<RawFault>, at: &str) -> Result<Fault, FieldError> {
        if self.delay.is_none() && self.abort.is_none() {
            return fail(span, at, "give delay, abort or both");
        }
        let delay = match &self.delay {
            Some(d) => Some(FaultDelay {
                duration: positive_duration(&d.duration, &format!("{at}.delay.duration"))?,
                permille: permille(&d.percent, &format!("{at}.delay.percent"))?,
            }),
            None => None,
        };
        let abort = match &self.abort {
            Some(a) => Some(FaultAbort {
                status: int_in(&a.status, &format!("{at}.abort.status"), 200, 599)? as u16,
                permille: permille(&a.percent, &format!("{at}.abort.percent"))?,
            }),
            None => None,
        };
        Ok(Fault { delay, abort })
    }
}

/// A percentage with at most one decimal, as per-mille.
fn permille(v: &S<f64>, at: &str) -> Result<u32, FieldError> {
    let tenths = number_in(v, at, 0.0, 100.0)? * 10.0;
    let rounded = tenths.round();
    if (tenths - rounded).abs() > 1e-6 {
        return fail(
            v,
            at,
            format!("{} has more than one decimal (steps are 0.1)", v.value),
        );
    }
    // In 0..=1000 after the range check.
    Ok(rounded as u32)
}
