//! Route tables: for one destination service, the ordered rules that pick a backend cluster by
//! path, method and headers, with weighted splits and fault injection. Matching reads only the
//! request head and allocates nothing.

use super::policy::RetryPolicy;
use crate::telemetry::RouteStats;
use http::{HeaderName, HeaderValue, Method, Request};
use regex::Regex;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Serialize)]
pub struct RouteTable {
    pub name: String,
    pub hosts: Vec<String>,
    pub ports: Vec<u16>,
    pub rules: Vec<Arc<RouteRule>>,
    /// Used when no rule matches: everything to the service's own cluster.
    pub fallback: Arc<RouteRule>,
}

impl RouteTable {
    /// The first rule whose match holds, or the fallback.
    pub fn select<B>(&self, req: &Request<B>) -> &Arc<RouteRule> {
        self.rules
            .iter()
            .find(|r| r.matcher.matches(req))
            .unwrap_or(&self.fallback)
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteRule {
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    pub backends: Vec<Backend>,
    #[serde(serialize_with = "crate::config::ser_opt_duration")]
    pub timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
    pub fault: Option<Fault>,
    #[serde(skip)]
    pub split: AtomicU64,
    pub stats: Arc<RouteStats>,
}

impl RouteRule {
    /// A rule matching everything and sending it to `cluster`.
    pub fn catch_all(name: String, cluster: String, stats: Arc<RouteStats>) -> Self {
        RouteRule {
            name,
            matcher: RouteMatch::default(),
            backends: vec![Backend { cluster, weight: 1 }],
            timeout: None,
            retry: None,
            fault: None,
            split: AtomicU64::new(0),
            stats,
        }
    }

    /// The backend for the next request: a deterministic weighted rotation, so a 90/10 split is
    /// exactly 90/10 over every 100 requests (no sampling noise for small canaries).
    pub fn backend(&self) -> Option<&str> {
        match self.backends.as_slice() {
            [] => None,
            [only] => Some(&only.cluster),
            many => {
                let total: u64 = many.iter().map(|b| u64::from(b.weight)).sum();
                if total == 0 {
                    return many.first().map(|b| b.cluster.as_str());
                }
                let mut slot = self.split.fetch_add(1, Ordering::Relaxed) % total;
                for b in many {
                    if slot < u64::from(b.weight) {
                        return Some(&b.cluster);
                    }
                    slot -= u64::from(b.weight);
                }
                many.last().map(|b| b.cluster.as_str())
            }
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Backend {
    pub cluster: String,
    pub weight: u32,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RouteMatch {
    pub path: PathMatch,
    #[serde(serialize_with = "ser_opt_display")]
    pub method: Option<Method>,
    pub headers: Vec<HeaderMatch>,
}

impl RouteMatch {
    pub fn matches<B>(&self, req: &Request<B>) -> bool {
        self.path.matches(req.uri().path())
            && self.method.as_ref().is_none_or(|m| m == req.method())
            && self.headers.iter().all(|h| h.matches(req.headers()))
    }
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum PathMatch {
    #[default]
    Any,
    Exact(String),
    Prefix(String),
    Regex(#[serde(serialize_with = "ser_regex")] Regex),
}

impl PathMatch {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Any => true,
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Regex(r) => r.is_match(path),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct HeaderMatch {
    #[serde(serialize_with = "crate::config::ser_display")]
    pub name: HeaderName,
    pub value: HeaderValueMatch,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum HeaderValueMatch {
    Exact(#[serde(serialize_with = "ser_header_value")] HeaderValue),
    Prefix(String),
    Regex(#[serde(serialize_with = "ser_regex")] Regex),
    Present(bool),
}

impl HeaderMatch {
    fn matches(&self, headers: &http::HeaderMap) -> bool {
        let mut values = headers.get_all(&self.name).iter();
        match &self.value {
            HeaderValueMatch::Present(want) => values.next().is_some() == *want,
            HeaderValueMatch::Exact(v) => values.any(|x| x == v),
            HeaderValueMatch::Prefix(p) => values.any(|x| x.as_bytes().starts_with(p.as_bytes())),
            HeaderValueMatch::Regex(r) => values.any(|x| x.to_str().is_ok_and(|s| r.is_match(s))),
        }
    }
}

/// Chaos drills: delay and/or abort a share of requests.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    #[serde(serialize_with = "ser_fault_delay")]
    pub delay: Option<(Duration, u32)>,
    /// (status, per-mille)
    #[serde(serialize_with = "ser_fault_abort")]
    pub abort: Option<(u16, u32)>,
}

fn ser_fault_delay<S: serde::Serializer>(
    v: &Option<(Duration, u32)>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let v = v.map(|(d, per_mille)| {
        serde_json::json!({ "duration": crate::config::human_duration(d), "perMille": per_mille })
    });
    v.serialize(s)
}

fn ser_fault_abort<S: serde::Serializer>(v: &Option<(u16, u32)>, s: S) -> Result<S::Ok, S::Error> {
    let v =
        v.map(|(status, per_mille)| serde_json::json!({ "status": status, "perMille": per_mille }));
    v.serialize(s)
}

/// Compiles a regex that must match the whole value.
pub fn anchored_regex(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{pattern})$"))
}

fn ser_regex<S: serde::Serializer>(r: &Regex, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(r.as_str())
}

fn ser_header_value<S: serde::Serializer>(v: &HeaderValue, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(v.as_bytes()))
}

fn ser_opt_display<S: serde::Serializer, T: std::fmt::Display>(
    v: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_str(&v.to_string()),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, matcher: RouteMatch, backends: &[(&str, u32)]) -> Arc<RouteRule> {
        Arc::new(RouteRule {
            backends: backends
                .iter()
                .map(|(c, w)| Backend {
                    cluster: c.to_string(),
                    weight: *w,
                })
                .collect(),
            matcher,
            ..RouteRule::catch_all(name.into(), String::new(), Arc::default())
        })
    }

    fn table(rules: Vec<Arc<RouteRule>>) -> RouteTable {
        RouteTable {
            name: "t".into(),
            hosts: vec![],
            ports: vec![],
            rules,
            fallback: rule("fallback", RouteMatch::default(), &[("default", 1)]),
        }
    }

    fn req(method: Method, path: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap_or_default()
    }

    #[test]
    fn first_matching_rule_wins_and_fallback_catches_the_rest() {
        let t = table(vec![
            rule(
                "exact",
                RouteMatch {
                    path: PathMatch::Exact("/a".into()),
                    ..Default::default()
                },
                &[("exact", 1)],
            ),
            rule(
                "regex",
                RouteMatch {
                    path: PathMatch::Regex(
                        anchored_regex("/users/[0-9]+").unwrap_or_else(|e| panic!("{e}")),
                    ),
                    ..Default::default()
                },
                &[("regex", 1)],
            ),
            rule(
                "canary-header",
                RouteMatch {
                    path: PathMatch::Prefix("/".into()),
                    method: Some(Method::POST),
                    headers: vec![HeaderMatch {
                        name: HeaderName::from_static("x-canary"),
                        value: HeaderValueMatch::Exact(HeaderValue::from_static("1")),
                    }],
                },
                &[("canary", 1)],
            ),
        ]);
        let name = |r: &Request<()>| t.select(r).name.clone();
        assert_eq!(name(&req(Method::GET, "/a", &[])), "exact");
        assert_eq!(name(&req(Method::GET, "/a/b", &[])), "fallback");
        assert_eq!(name(&req(Method::GET, "/users/42", &[])), "regex");
        assert_eq!(
            name(&req(Method::GET, "/users/42/x", &[])),
            "fallback",
            "regex is anchored"
        );
        assert_eq!(
            name(&req(Method::POST, "/x", &[("x-canary", "1")])),
            "canary-header"
        );
        assert_eq!(
            name(&req(Method::GET, "/x", &[("x-canary", "1")])),
            "fallback",
            "method must match"
        );
        assert_eq!(
            name(&req(Method::POST, "/x", &[("x-canary", "2")])),
            "fallback",
            "header must match"
        );
    }

    #[test]
    fn header_presence_and_absence() {
        let present = HeaderMatch {
            name: HeaderName::from_static("x-debug"),
            value: HeaderValueMatch::Present(true),
        };
        let absent = HeaderMatch {
            name: HeaderName::from_static("x-debug"),
            value: HeaderValueMatch::Present(false),
        };
        let with = req(Method::GET, "/", &[("x-debug", "")]);
        let without = req(Method::GET, "/", &[]);
        assert!(present.matches(with.headers()) && !present.matches(without.headers()));
        assert!(!absent.matches(with.headers()) && absent.matches(without.headers()));
    }

    #[test]
    fn weighted_split_is_exact_over_a_turn() {
        let r = rule(
            "split",
            RouteMatch::default(),
            &[("stable", 90), ("canary", 10)],
        );
        let canary = (0..2000).filter(|_| r.backend() == Some("canary")).count();
        assert_eq!(canary, 200);
    }
}
