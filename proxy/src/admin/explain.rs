//! `GET /explain`: what this sidecar would do with one request, from the snapshot in force. The
//! route is chosen by the proxy's own matcher (`RouteTable::select`), and each rule before it is
//! re-checked one condition at a time with the same `RouteMatch::matches`, to say which condition
//! failed. Nothing here runs on the request path; it costs only the caller of `/explain`.
//!
//! Query: `authority` (required), `method` (GET), `path` (/), `header=name:value` (repeatable),
//! `from` (a caller SPIFFE ID: decides this sidecar's inbound authorization for it).

use crate::authz::{Attributes, HttpAttributes, Peer};
use crate::config::{human_duration, Cluster, MeshSnapshot, RouteMatch, RouteRule, RouteTable};
use crate::http::Body;
use http::{HeaderName, HeaderValue, Method, Request};
use serde_json::{json, Value};

/// Why an `/explain` query cannot be answered: the caller's fault, said with the fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExplainError {
    #[error("missing authority: add ?authority=<service>[:port]")]
    MissingAuthority,
    #[error("invalid {what} {value:?}: {fix}")]
    Invalid {
        what: &'static str,
        value: String,
        fix: &'static str,
    },
}

/// The request to explain, as given in the query.
#[derive(Debug)]
pub struct Query {
    request: Request<Body>,
    from: Option<String>,
    /// How many recent requests on the chosen route to show.
    pub recent: usize,
}

impl Query {
    pub fn parse(query: &str) -> Result<Query, ExplainError> {
        let mut builder = Request::builder();
        let mut recent = 10;
        let (mut authority, mut method, mut path, mut from) =
            (None, Method::GET, "/".to_string(), None);
        let invalid = |what, value: &str, fix| ExplainError::Invalid {
            what,
            value: value.to_string(),
            fix,
        };
        for (key, value) in pairs(query) {
            match key.as_str() {
                "authority" => authority = Some(value),
                "method" => {
                    method = Method::from_bytes(value.as_bytes())
                        .map_err(|_| invalid("method", &value, "use a token such as GET"))?
                }
                "path" => path = value,
                "from" => from = Some(value),
                "recent" => {
                    recent = value
                        .parse()
                        .map_err(|_| invalid("recent", &value, "give a number of requests"))?
                }
                "header" => {
                    let (name, v) = value
                        .split_once(':')
                        .ok_or_else(|| invalid("header", &value, "write it as name:value"))?;
                    let name = HeaderName::from_bytes(name.trim().as_bytes())
                        .map_err(|_| invalid("header name", name, "use a valid header name"))?;
                    let v = HeaderValue::from_str(v.trim())
                        .map_err(|_| invalid("header value", v, "use visible ASCII"))?;
                    builder = builder.header(name, v);
                }
                _ => {}
            }
        }
        let authority = authority.ok_or(ExplainError::MissingAuthority)?;
        let uri = format!("http://{authority}{path}");
        let request = builder
            .method(method)
            .uri(&uri)
            .header(http::header::HOST, authority.as_str())
            .body(Body::empty())
            .map_err(|_| {
                invalid(
                    "authority or path",
                    &uri,
                    "give host[:port] and a path starting with /",
                )
            })?;
        Ok(Query {
            request,
            from,
            recent,
        })
    }
}

/// The explanation as JSON (the CLI renders it for people).
pub fn explain(snapshot: &MeshSnapshot, identity: Option<&str>, query: &Query) -> Value {
    let req = &query.request;
    let (host, port) = crate::http::authority(req).unwrap_or_default();
    let headers: serde_json::Map<String, Value> = (req.headers().iter())
        .filter(|(n, _)| *n != http::header::HOST)
        .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
        .collect();
    let mut doc = json!({
        "sidecar": identity,
        "request": {
            "method": req.method().as_str(),
            "authority": host,
            "port": port,
            "path": req.uri().path(),
            "headers": headers,
        },
    });
    match snapshot.route_table(&host, port) {
        Some(table) => {
            let chosen = table.select(req);
            doc["routeTable"] = table.name.as_str().into();
            doc["routes"] = rules_tried(table, chosen, req).into();
            doc["route"] = chosen.name.as_str().into();
            doc["backends"] = backends(snapshot, chosen, req).into();
        }
        None => {
            doc["route"] = Value::Null;
            doc["noRoute"] = format!(
                "no route config names {host}{}: the sidecar answers 404 (trellis-error: no route). Check the \
                 service name and port, and that the control plane publishes it (/config → \
                 routes)",
                port.map(|p| format!(":{p}")).unwrap_or_default()
            )
            .into();
        }
    }
    if let (Some(inbound), Some(from)) = (&snapshot.inbound, &query.from) {
        let peer = match from.as_str() {
            "" | "anonymous" => Peer::unauthenticated(),
            id => Peer::authenticated(id),
        };
        let port = port.or(match inbound.ports.as_slice() {
            [only] => Some(only.port),
            _ => Some(80),
        });
        let attrs = Attributes {
            port,
            http: Some(HttpAttributes {
                method: req.method(),
                path: req.uri().path(),
                headers: req.headers(),
            }),
        };
        let decision = inbound.authorization.decide(&peer, &attrs);
        doc["authorization"] = json!({
            "caller": from,
            "action": decision.action,
            "rule": decision.rule,
        });
    }
    doc
}

/// The last `n` requests this sidecar finished on the path `doc` explains, newest last: outbound
/// ones to the same host that took the route `doc` names, inbound ones for the same host.
pub fn add_recent(doc: &mut Value, recent: &super::recent::RecentRequests, n: usize) {
    let route = doc["route"].as_str().map(str::to_owned);
    let host = doc["request"]["authority"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let hits = recent.matching(|r| {
        let written = r.authority.as_str();
        let same_host = crate::http::split_authority(written)
            .map_or(written, |(host, _)| host)
            .eq_ignore_ascii_case(&host);
        match (r.direction, &r.route, &route) {
            ("outbound", Some(taken), Some(route)) => same_host && taken.name == *route,
            ("outbound", _, _) => false,
            _ => same_host,
        }
    });
    let skip = hits.len().saturating_sub(n);
    doc["recent"] = hits.into_iter().skip(skip).collect::<Vec<_>>().into();
}

/// Each rule up to the chosen one: matched, or the first condition that did not hold.
fn rules_tried(table: &RouteTable, chosen: &RouteRule, req: &Request<Body>) -> Vec<Value> {
    let mut tried = Vec::new();
    for rule in table.rules.iter().chain(std::iter::once(&table.fallback)) {
        let matched = std::ptr::eq(&**rule, chosen);
        let why = if matched {
            "matched".to_string()
        } else {
            mismatch(&rule.matcher, req)
        };
        tried.push(json!({ "name": rule.name, "matched": matched, "why": why }));
        if matched {
            break;
        }
    }
    tried
}

/// The first condition of `m` that `req` fails, each checked alone by the real matcher.
fn mismatch(m: &RouteMatch, req: &Request<Body>) -> String {
    let only = |path, method, headers| RouteMatch {
        path,
        method,
        headers,
    };
    let path = only(m.path.clone(), None, Vec::new());
    if !path.matches(req) {
        return format!(
            "path {} does not match {}",
            req.uri().path(),
            describe_path(m)
        );
    }
    if let Some(want) = &m.method {
        if !only(Default::default(), Some(want.clone()), Vec::new()).matches(req) {
            return format!("method {} is not {want}", req.method());
        }
    }
    for h in &m.headers {
        if !only(Default::default(), None, vec![h.clone()]).matches(req) {
            let value = serde_json::to_string(&h.value).unwrap_or_default();
            return format!("header {} does not match {value}", h.name);
        }
    }
    "did not match".into()
}

fn describe_path(m: &RouteMatch) -> String {
    use crate::config::PathMatch;
    match &m.path {
        PathMatch::Any => "any path".into(),
        PathMatch::Exact(p) => format!("exactly {p}"),
        PathMatch::Prefix(p) => format!("prefix {p}"),
        PathMatch::Regex(r) => format!("regex {}", r.as_str()),
    }
}

/// The chosen rule's backends, each cluster with its policy in force and its endpoints' state.
fn backends(snapshot: &MeshSnapshot, rule: &RouteRule, req: &Request<Body>) -> Vec<Value> {
    (rule.backends.iter())
        .map(|b| match snapshot.clusters.get(&b.cluster) {
            Some(cluster) => {
                let mut v = cluster_view(cluster, rule, req);
                v["weight"] = b.weight.into();
                v
            }
            None => json!({
                "cluster": b.cluster,
                "weight": b.weight,
                "problem": "the cluster is not in the config held: requests get 503 (no endpoints) \
                            until the control plane sends it",
            }),
        })
        .collect()
}

fn cluster_view(cluster: &Cluster, rule: &RouteRule, req: &Request<Body>) -> Value {
    use crate::resilience::breaker::Limit;
    let policy = &cluster.policy;
    let retry = rule.retry.as_ref().unwrap_or(&policy.retry);
    let (requests, retries) = cluster.state.budget.window();
    let allowed = (requests as f64 * retry.budget_ratio) as u64
        + u64::from(retry.budget_min_per_second) * crate::resilience::budget::WINDOW_SECS;
    let breaker = &cluster.state.breaker;
    let endpoints: Vec<Value> = (cluster.endpoints.iter())
        .map(|e| {
            json!({
                "address": e.addr.to_string(),
                "identity": e.identity,
                "weight": e.weight,
                "ejected": e.state.outlier.is_ejected(),
                "ejectedFor": e.state.outlier.ejected_for().map(human_duration),
                "outstanding": e.state.load.outstanding(),
                // What the peak-EWMA balancer believes this endpoint's latency is.
                "latencyEwmaMs": (e.state.load.ewma_nanos() / 1e4).round() / 100.0,
            })
        })
        .collect();
    let idempotent = crate::resilience::retry::is_idempotent(req.method());
    json!({
        "cluster": cluster.name,
        "policy": {
            "timeout": human_duration(rule.timeout.unwrap_or(policy.request_timeout)),
            "timeoutFrom": if rule.timeout.is_some() { "route" } else { "cluster" },
            "connectTimeout": human_duration(policy.connect_timeout),
            "retry": retry,
            "retryFrom": if rule.retry.is_some() { "route" } else { "cluster" },
            "retriesApply": idempotent || retry.non_idempotent,
            "budget": {
                "requestsLast10s": requests,
                "retriesLast10s": retries,
                "retriesAllowed": allowed,
                "exhausted": retries >= allowed,
            },
            "breaker": {
                "requests": [breaker.in_use(Limit::Requests), policy.breaker.max_requests],
                "pending": [breaker.in_use(Limit::Pending), policy.breaker.max_pending_requests],
                "retries": [breaker.in_use(Limit::Retries), policy.breaker.max_retries],
            },
            "loadBalancer": policy.lb,
            "outlier": policy.outlier,
        },
        "endpoints": endpoints,
    })
}

/// `a=b&c=d` with `+` and `%XX` decoded; pairs that do not decode are skipped.
pub(super) fn pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    (query.split('&'))
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((decode(k)?, decode(v)?))
        })
}

fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests;
