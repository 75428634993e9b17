//! Gateway API routes as a mesh route source (GAMMA: an `HTTPRoute` or `GRPCRoute` whose
//! `parentRefs` name a Service). Each (rule, match) becomes one mesh `Route`, and a Service's
//! routes are ordered by the Gateway API precedence rules, since the mesh model is first-match:
//!
//! - HTTPRoute: Exact path, then RegularExpression (implementation-specific: between the two so
//!   a regex is not hidden behind `PathPrefix /`), then PathPrefix with the longest value first;
//!   then a method match; then more header matches.
//! - GRPCRoute: the longest matching service, then the longest method, then more header matches.
//! - Ties: the oldest route (creation time), then `namespace/name`, then rule and match order.
//!
//! What the mesh model cannot express is reported on the route (`Accepted` False,
//! `UnsupportedValue`, with the field path) and the whole route is left out rather than applied
//! in part. Unusable backends are reported as `ResolvedRefs` False and, as the API requires,
//! their share of the traffic is answered with an error (a route fault: 500, or 503 →
//! `UNAVAILABLE` for gRPC). Pure functions of the watched objects, tested without a cluster.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::gateway::{
    GRPCRoute, GRPCRouteMatch, HTTPRoute, HTTPRouteMatch, HTTPRouteRetry, ParentReference,
};
use super::status::{Desired, DesiredStatus, ParentVerdict, StatusKind, Verdict};
use crate::config::{
    Backend, Fault, FaultAbort, HeaderMatch, HeaderValueMatch, PathMatch, Retry, RetryOn, Route,
    RouteMatch, Service,
};

/// A Service in the mesh, as the route translation needs it.
pub(super) struct Target<'a> {
    pub service: &'a Service,
    /// The Kubernetes Service's port names and numbers (`sectionName` names a port).
    pub ports: NamedPorts,
}

pub(super) type NamedPorts = Vec<(Option<String>, u16)>;

/// What the Gateway API routes make of the mesh.
#[derive(Debug, Default)]
pub(super) struct Attached {
    /// Per (namespace, service) with at least one accepted route: its routes, in precedence order.
    pub routes: BTreeMap<(String, String), Vec<Route>>,
    /// Per service with routes: the oldest route attached (`HTTPRoute shop/web`), for messages.
    pub first: BTreeMap<(String, String), String>,
    pub statuses: Vec<DesiredStatus>,
    pub skipped: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Http,
    Grpc,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Http => "HTTPRoute",
            Kind::Grpc => "GRPCRoute",
        }
    }
    fn status_kind(self) -> StatusKind {
        match self {
            Kind::Http => StatusKind::HttpRoute,
            Kind::Grpc => StatusKind::GrpcRoute,
        }
    }
}

/// Sorts a Service's routes: the kind's own precedence first, then the route's age and name,
/// then rule and match order within it.
type Precedence = ([i64; 4], i64, String, usize, usize);

struct Entry {
    precedence: Precedence,
    route: Route,
}

/// One route object's entries for one Service, with its kind and age.
type Candidate = (Kind, (i64, String), Vec<Entry>);

/// Why a route cannot be accepted: the reason and the positioned message.
struct Refused {
    reason: &'static str,
    message: String,
}

fn unsupported(message: String) -> Refused {
    Refused {
        reason: "UnsupportedValue",
        message,
    }
}

/// A backendRef that cannot be used: `ResolvedRefs` False with this reason.
struct RefProblem {
    reason: &'static str,
    message: String,
}

/// One route object, whichever kind.
struct Object<'a> {
    kind: Kind,
    meta: &'a ObjectMeta,
    namespace: &'a str,
    name: &'a str,
    parent_refs: &'a [ParentReference],
    /// (creation time in seconds, `namespace/name`): the cross-route tie-breakers.
    age: (i64, String),
}

/// Per route object: what it decided for each of its Service parents in the mesh.
struct Decided {
    kind: Kind,
    namespace: String,
    name: String,
    meta_uid: Option<String>,
    generation: Option<i64>,
    parents: Vec<(Option<(String, String)>, ParentVerdict)>,
}

pub(super) fn attach(
    http: &[&HTTPRoute],
    grpc: &[&GRPCRoute],
    meshed: &HashSet<&str>,
    targets: &BTreeMap<(String, String), Target>,
) -> Attached {
    let mut candidates: BTreeMap<(String, String), Vec<Candidate>> = BTreeMap::new();
    let mut decided: Vec<Decided> = Vec::new();
    // Refusals, one line each, for the control plane's `skipped` list.
    let mut refusals: Vec<String> = Vec::new();
    let known: HashMap<(String, String), Vec<u16>> = (targets.iter())
        .map(|(k, t)| (k.clone(), t.service.ports.iter().map(|p| p.port).collect()))
        .collect();
    let objects = (http.iter().map(|r| {
        (
            object(Kind::Http, &r.metadata, &r.spec.parent_refs),
            Some(*r),
            None,
        )
    }))
    .chain(grpc.iter().map(|r| {
        (
            object(Kind::Grpc, &r.metadata, &r.spec.parent_refs),
            None,
            Some(*r),
        )
    }));
    for (obj, h, g) in objects {
        let Some(obj) = obj else { continue };
        if !meshed.contains(obj.namespace) {
            continue;
        }
        let translated = match (h, g) {
            (Some(r), _) => http_entries(r, &obj, &known),
            (_, Some(r)) => grpc_entries(r, &obj, &known),
            _ => continue,
        };
        let mut parents = Vec::new();
        let mut attached_to: HashSet<(String, String)> = HashSet::new();
        for (i, parent) in obj.parent_refs.iter().enumerate() {
            let is_service =
                parent.group.as_deref() == Some("") && parent.kind.as_deref() == Some("Service");
            let parent_ns = parent.namespace.as_deref().unwrap_or(obj.namespace);
            if !is_service || !meshed.contains(parent_ns) {
                continue; // a Gateway's, or another mesh's: not ours to judge
            }
            let key = (parent_ns.to_owned(), parent.name.clone());
            let at = format!("spec.parentRefs[{i}]");
            let accepted = match (&translated, parent_check(parent, &key, &obj, targets, &at)) {
                (_, Err(refused)) => Err(refused),
                (Err(refused), _) => Err(Refused {
                    reason: refused.reason,
                    message: refused.message.clone(),
                }),
                (Ok(_), Ok(())) => Ok(()),
            };
            let resolved = match &translated {
                Ok((_, Some(problem))) => Verdict::new(
                    "ResolvedRefs",
                    false,
                    problem.reason,
                    problem.message.clone(),
                ),
                _ => Verdict::new(
                    "ResolvedRefs",
                    true,
                    "ResolvedRefs",
                    "all references resolved",
                ),
            };
            let (accepted, target) = match accepted {
                Ok(()) => (
                    Verdict::new(
                        "Accepted",
                        true,
                        "Accepted",
                        "routes the Service in the mesh",
                    ),
                    Some(key.clone()),
                ),
                Err(r) => {
                    refusals.push(format!(
                        "{}/{}/{}: {}",
                        obj.kind.status_kind().plural(),
                        obj.namespace,
                        obj.name,
                        r.message
                    ));
                    (Verdict::new("Accepted", false, r.reason, r.message), None)
                }
            };
            if let (Some(key), Ok((entries, _))) = (&target, &translated) {
                if attached_to.insert(key.clone()) {
                    let entries = entries.iter().map(Entry::clone_entry).collect();
                    (candidates.entry(key.clone()).or_default()).push((
                        obj.kind,
                        obj.age.clone(),
                        entries,
                    ));
                }
            }
            parents.push((
                target,
                ParentVerdict {
                    parent_ref: parent.clone(),
                    conditions: vec![accepted, resolved],
                },
            ));
        }
        decided.push(Decided {
            kind: obj.kind,
            namespace: obj.namespace.to_owned(),
            name: obj.name.to_owned(),
            meta_uid: obj.meta.uid.clone(),
            generation: obj.meta.generation,
            parents,
        });
    }

    let mut out = Attached::default();
    // HTTPRoutes and GRPCRoutes are not merged on one Service (the API forbids merging them):
    // the kind whose oldest route is older keeps the Service, the other is reported Conflicted.
    let mut losers: HashSet<(Kind, (String, String))> = HashSet::new();
    for (key, mut list) in candidates {
        list.sort_by(|a, b| a.1.cmp(&b.1));
        let Some((winner, first_age, _)) = list.first() else {
            continue;
        };
        let winner = *winner;
        let first = format!("{} {}", winner.name(), first_age.1);
        if list.iter().any(|(k, _, _)| *k != winner) {
            let loser = if winner == Kind::Http {
                Kind::Grpc
            } else {
                Kind::Http
            };
            losers.insert((loser, key.clone()));
        }
        let mut entries: Vec<Entry> = (list.into_iter())
            .filter(|(k, _, _)| *k == winner)
            .flat_map(|(_, _, e)| e)
            .collect();
        entries.sort_by(|a, b| a.precedence.cmp(&b.precedence));
        out.routes
            .insert(key.clone(), entries.into_iter().map(|e| e.route).collect());
        out.first.insert(key, first);
    }
    for d in decided {
        let mut parents = Vec::with_capacity(d.parents.len());
        for (target, mut verdict) in d.parents {
            if let Some(key) = target.filter(|k| losers.contains(&(d.kind, k.clone()))) {
                let (ns, svc) = &key;
                let holder = out.first.get(&key).cloned().unwrap_or_default();
                let message = format!(
                    "Service {ns}/{svc} is routed by {holder}; HTTPRoutes and GRPCRoutes are not \
                     merged on one Service (the kind with the oldest route applies)"
                );
                out.skipped.push(format!(
                    "{}/{}/{}: {message}",
                    d.kind.status_kind().plural(),
                    d.namespace,
                    d.name
                ));
                verdict.conditions[0] = Verdict::new("Accepted", false, "Conflicted", message);
            }
            parents.push(verdict);
        }
        out.statuses.push(DesiredStatus {
            kind: d.kind.status_kind(),
            namespace: d.namespace,
            name: d.name,
            uid: d.meta_uid,
            generation: d.generation,
            desired: Desired::Parents(parents),
        });
    }
    out.skipped.extend(refusals);
    out
}

impl Entry {
    fn clone_entry(&self) -> Entry {
        Entry {
            precedence: self.precedence.clone(),
            route: self.route.clone(),
        }
    }
}

fn object<'a>(
    kind: Kind,
    meta: &'a ObjectMeta,
    parent_refs: &'a [ParentReference],
) -> Option<Object<'a>> {
    let namespace = meta.namespace.as_deref()?;
    let name = meta.name.as_deref()?;
    let created = (meta.creation_timestamp.as_ref()).map_or(i64::MAX, |t| t.0.as_second());
    Some(Object {
        kind,
        meta,
        namespace,
        name,
        parent_refs,
        age: (created, format!("{namespace}/{name}")),
    })
}

/// Whether the Service parent can take this route: a producer route (same namespace) to a
/// meshed Service, for the whole Service.
fn parent_check(
    parent: &ParentReference,
    key: &(String, String),
    obj: &Object,
    targets: &BTreeMap<(String, String), Target>,
    at: &str,
) -> Result<(), Refused> {
    let (ns, name) = key;
    if ns != obj.namespace {
        return Err(unsupported(format!(
            "{at}.namespace: consumer routes (a parent Service in another namespace) are not \
             supported; put the route in namespace {ns:?}"
        )));
    }
    let Some(target) = targets.get(key) else {
        return Err(Refused {
            reason: "NoMatchingParent",
            message: format!(
                "{at}.name: no Service {ns}/{name} in the mesh (a Service with TCP ports in a \
                 namespace labelled trellis.io/inject=enabled)"
            ),
        });
    };
    if parent.port.is_none() && parent.section_name.is_none() {
        return Ok(());
    }
    let matching: Vec<u16> = (target.ports.iter())
        .filter(|(n, p)| {
            parent.port.is_none_or(|want| i32::from(*p) == want)
                && (parent.section_name.as_ref()).is_none_or(|want| n.as_ref() == Some(want))
        })
        .map(|(_, p)| *p)
        .collect();
    if matching.is_empty() {
        return Err(Refused {
            reason: "NoMatchingParent",
            message: format!("{at}: Service {ns}/{name} has no such port"),
        });
    }
    if target.ports.len() > 1 {
        return Err(unsupported(format!(
            "{at}: routes for one port of a Service with several ports are not supported (Trellis \
             routes apply to every port of a Service); leave out port and sectionName"
        )));
    }
    Ok(())
}

type Translated = Result<(Vec<Entry>, Option<RefProblem>), Refused>;

fn http_entries(
    route: &HTTPRoute,
    obj: &Object,
    known: &HashMap<(String, String), Vec<u16>>,
) -> Translated {
    let mut entries = Vec::new();
    let mut problem = None;
    for (i, rule) in route.spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        if let Some(f) = rule.filters.first() {
            return Err(unsupported(format!(
                "{at}.filters[0].type: {:?} filters are not supported",
                f.type_
            )));
        }
        if rule.session_persistence.is_some() {
            return Err(unsupported(format!(
                "{at}.sessionPersistence: not supported (use a TrafficPolicy's \
                 policy.loadBalancer consistentHash)"
            )));
        }
        let refs: Vec<BackendRefView> = (rule.backend_refs.iter())
            .map(|b| BackendRefView {
                group: b.group.as_deref(),
                kind: b.kind.as_deref(),
                name: &b.name,
                namespace: b.namespace.as_deref(),
                port: b.port,
                weight: b.weight,
                filters: b.filters.first().map(|f| f.type_.as_str()),
            })
            .collect();
        let (backends, fault) = split(&refs, &at, obj, known, 500, &mut problem)?;
        let timeout = match rule.timeouts.as_ref().and_then(|t| t.request.as_ref()) {
            Some(d) => Some(or_longest(duration(d, &format!("{at}.timeouts.request"))?)),
            None => None,
        };
        let per_try = match rule
            .timeouts
            .as_ref()
            .and_then(|t| t.backend_request.as_ref())
        {
            Some(d) => Some(duration(d, &format!("{at}.timeouts.backendRequest"))?),
            None => None,
        };
        let retry = retry(rule.retry.as_ref(), per_try, &format!("{at}.retry"))?;
        let rule_name = rule.name.clone().unwrap_or_else(|| i.to_string());
        let default_match = [HTTPRouteMatch::default()];
        let matches = if rule.matches.is_empty() {
            &default_match[..]
        } else {
            &rule.matches[..]
        };
        for (j, m) in matches.iter().enumerate() {
            let (r#match, rank) = http_match(m, &format!("{at}.matches[{j}]"))?;
            entries.push(Entry {
                precedence: (rank, obj.age.0, obj.age.1.clone(), i, j),
                route: Route {
                    name: format!("http:{}:{rule_name}:{j}", obj.name),
                    r#match,
                    backends: backends.clone(),
                    timeout,
                    retry: retry.clone(),
                    fault,
                },
            });
        }
    }
    Ok((entries, problem))
}

fn grpc_entries(
    route: &GRPCRoute,
    obj: &Object,
    known: &HashMap<(String, String), Vec<u16>>,
) -> Translated {
    let mut entries = Vec::new();
    let mut problem = None;
    for (i, rule) in route.spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        if let Some(f) = rule.filters.first() {
            return Err(unsupported(format!(
                "{at}.filters[0].type: {:?} filters are not supported",
                f.type_
            )));
        }
        if rule.session_persistence.is_some() {
            return Err(unsupported(format!(
                "{at}.sessionPersistence: not supported"
            )));
        }
        let refs: Vec<BackendRefView> = (rule.backend_refs.iter())
            .map(|b| BackendRefView {
                group: b.group.as_deref(),
                kind: b.kind.as_deref(),
                name: &b.name,
                namespace: b.namespace.as_deref(),
                port: b.port,
                weight: b.weight,
                filters: b.filters.first().map(|f| f.type_.as_str()),
            })
            .collect();
        // 503 is what the proxy answers gRPC callers as UNAVAILABLE, which the API asks for.
        let (backends, fault) = split(&refs, &at, obj, known, 503, &mut problem)?;
        let rule_name = rule.name.clone().unwrap_or_else(|| i.to_string());
        let default_match = [GRPCRouteMatch::default()];
        let matches = if rule.matches.is_empty() {
            &default_match[..]
        } else {
            &rule.matches[..]
        };
        for (j, m) in matches.iter().enumerate() {
            let (r#match, rank) = grpc_match(m, &format!("{at}.matches[{j}]"))?;
            entries.push(Entry {
                precedence: (rank, obj.age.0, obj.age.1.clone(), i, j),
                route: Route {
                    name: format!("grpc:{}:{rule_name}:{j}", obj.name),
                    r#match,
                    backends: backends.clone(),
                    timeout: None,
                    retry: None,
                    fault,
                },
            });
        }
    }
    Ok((entries, problem))
}

fn len(s: &str) -> i64 {
    i64::try_from(s.len()).unwrap_or(i64::MAX)
}

fn count<T>(v: &[T]) -> i64 {
    i64::try_from(v.len()).unwrap_or(i64::MAX)
}

/// An HTTPRoute match and its precedence rank (smaller first).
fn http_match(m: &HTTPRouteMatch, at: &str) -> Result<(RouteMatch, [i64; 4]), Refused> {
    if !m.query_params.is_empty() {
        return Err(unsupported(format!(
            "{at}.queryParams: query parameter matching is not supported"
        )));
    }
    let (kind, value) = match &m.path {
        Some(p) => (
            p.type_.as_deref().unwrap_or("PathPrefix"),
            p.value.as_deref().unwrap_or("/"),
        ),
        None => ("PathPrefix", "/"),
    };
    let (path, path_rank) = match kind {
        "Exact" => {
            absolute(value, &format!("{at}.path.value"))?;
            (PathMatch::Exact(value.to_owned()), 0)
        }
        "RegularExpression" => {
            compiles(value, &format!("{at}.path.value"))?;
            (PathMatch::Regex(value.to_owned()), 1)
        }
        "PathPrefix" => {
            absolute(value, &format!("{at}.path.value"))?;
            (prefix(value), 2)
        }
        other => {
            return Err(unsupported(format!(
                "{at}.path.type: {other:?} is not supported (Exact, PathPrefix, RegularExpression)"
            )))
        }
    };
    let method = match &m.method {
        Some(method) if is_token(method) && !method.bytes().any(|b| b.is_ascii_lowercase()) => {
            Some(method.clone())
        }
        Some(method) => {
            return Err(unsupported(format!(
                "{at}.method: {method:?} is not an upper-case HTTP method"
            )))
        }
        None => None,
    };
    let headers = headers(
        m.headers
            .iter()
            .map(|h| (h.type_.as_deref(), h.name.as_str(), h.value.as_str())),
        &format!("{at}.headers"),
    )?;
    let rank = [
        path_rank,
        -len(value),
        i64::from(method.is_none()),
        -count(&headers),
    ];
    Ok((
        RouteMatch {
            path: Some(path),
            method,
            headers,
        },
        rank,
    ))
}

/// `PathPrefix` matches whole path elements (`/abc` matches `/abc` and `/abc/d`, not `/abcd`),
/// where the mesh's prefix is a string prefix: anything but `/` becomes an anchored regex.
fn prefix(value: &str) -> PathMatch {
    let trimmed = value.trim_end_matches('/');
    if trimmed.is_empty() {
        return PathMatch::Prefix("/".to_owned());
    }
    PathMatch::Regex(format!("{}(?:/.*)?", regex::escape(trimmed)))
}

/// A GRPCRoute match as a path match on `/<service>/<method>`, and its precedence rank.
fn grpc_match(m: &GRPCRouteMatch, at: &str) -> Result<(RouteMatch, [i64; 4]), Refused> {
    let mut rank = [0, 0, 0, 0];
    let path = match &m.method {
        None => None,
        Some(mm) => {
            let service = mm.service.as_deref().filter(|s| !s.is_empty());
            let method = mm.method.as_deref().filter(|s| !s.is_empty());
            rank[0] = -service.map_or(0, len);
            rank[1] = -method.map_or(0, len);
            match mm.type_.as_deref().unwrap_or("Exact") {
                "Exact" => {
                    for (v, field) in [(service, "service"), (method, "method")] {
                        if v.is_some_and(|v| v.contains('/')) {
                            return Err(unsupported(format!(
                                "{at}.method.{field}: must not contain \"/\""
                            )));
                        }
                    }
                    match (service, method) {
                        (Some(s), Some(m)) => Some(PathMatch::Exact(format!("/{s}/{m}"))),
                        (Some(s), None) => Some(PathMatch::Prefix(format!("/{s}/"))),
                        (None, Some(m)) => {
                            Some(PathMatch::Regex(format!("/[^/]+/{}", regex::escape(m))))
                        }
                        (None, None) => None,
                    }
                }
                "RegularExpression" => {
                    for (v, field) in [(service, "service"), (method, "method")] {
                        if let Some(v) = v {
                            compiles(v, &format!("{at}.method.{field}"))?;
                        }
                    }
                    let s = service.unwrap_or("[^/]+");
                    let m = method.unwrap_or("[^/]+");
                    Some(PathMatch::Regex(format!("/(?:{s})/(?:{m})")))
                }
                other => {
                    return Err(unsupported(format!(
                        "{at}.method.type: {other:?} is not supported (Exact, RegularExpression)"
                    )))
                }
            }
        }
    };
    let headers = headers(
        m.headers
            .iter()
            .map(|h| (h.type_.as_deref(), h.name.as_str(), h.value.as_str())),
        &format!("{at}.headers"),
    )?;
    rank[2] = -count(&headers);
    Ok((
        RouteMatch {
            path,
            method: None,
            headers,
        },
        rank,
    ))
}

/// Header matches; of several with the same name (case-insensitive) only the first counts, as
/// the API says.
fn headers<'a>(
    list: impl Iterator<Item = (Option<&'a str>, &'a str, &'a str)>,
    at: &str,
) -> Result<Vec<HeaderMatch>, Refused> {
    let mut out: Vec<HeaderMatch> = Vec::new();
    for (k, (kind, name, value)) in list.enumerate() {
        if !is_token(name) {
            return Err(unsupported(format!(
                "{at}[{k}].name: {name:?} is not a header name"
            )));
        }
        let name = name.to_ascii_lowercase();
        if out.iter().any(|h| h.name == name) {
            continue;
        }
        let value = match kind.unwrap_or("Exact") {
            "Exact" => HeaderValueMatch::Exact(value.to_owned()),
            "RegularExpression" => {
                compiles(value, &format!("{at}[{k}].value"))?;
                HeaderValueMatch::Regex(value.to_owned())
            }
            other => {
                return Err(unsupported(format!(
                    "{at}[{k}].type: {other:?} is not supported (Exact, RegularExpression)"
                )))
            }
        };
        out.push(HeaderMatch { name, value });
    }
    Ok(out)
}

/// One backendRef, whichever route kind it comes from.
struct BackendRefView<'a> {
    group: Option<&'a str>,
    kind: Option<&'a str>,
    name: &'a str,
    namespace: Option<&'a str>,
    port: Option<i32>,
    weight: Option<i32>,
    /// The first per-backend filter's type, if any.
    filters: Option<&'a str>,
}

/// The mesh model's largest backend weight; Gateway API weights go to 1000000.
const MAX_WEIGHT: u64 = 10_000;

/// A rule's weighted split. Backends that cannot be used keep their share, answered with
/// `abort_status` through a route fault; the first such problem is kept for `ResolvedRefs`. No
/// backendRefs send to the parent Service itself, as a mesh YAML route without backends does.
fn split(
    refs: &[BackendRefView],
    at: &str,
    obj: &Object,
    known: &HashMap<(String, String), Vec<u16>>,
    abort_status: u16,
    problem: &mut Option<RefProblem>,
) -> Result<(Vec<Backend>, Option<Fault>), Refused> {
    let parent = |weight| {
        (obj.parent_refs.iter())
            .find(|p| p.group.as_deref() == Some("") && p.kind.as_deref() == Some("Service"))
            .map(|p| Backend {
                namespace: obj.namespace.to_owned(),
                service: p.name.clone(),
                weight,
            })
    };
    if refs.is_empty() {
        return Ok((parent(1).into_iter().collect(), None));
    }
    let mut valid: Vec<(Backend, u64)> = Vec::new();
    let mut invalid_weight: u64 = 0;
    let mut total: u64 = 0;
    for (k, b) in refs.iter().enumerate() {
        let at = format!("{at}.backendRefs[{k}]");
        if let Some(f) = b.filters {
            return Err(unsupported(format!(
                "{at}.filters[0].type: {f:?} filters are not supported"
            )));
        }
        let weight = u64::try_from(b.weight.unwrap_or(1)).unwrap_or(0);
        total += weight;
        let ns = b.namespace.unwrap_or(obj.namespace);
        let found = match (b.group.unwrap_or(""), b.kind.unwrap_or("Service")) {
            ("", "Service") if ns != obj.namespace => Err(RefProblem {
                reason: "RefNotPermitted",
                message: format!(
                    "{at}.namespace: a backend in another namespace needs a ReferenceGrant, \
                     which Trellis does not read"
                ),
            }),
            ("", "Service") => match known.get(&(ns.to_owned(), b.name.to_owned())) {
                None => Err(RefProblem {
                    reason: "BackendNotFound",
                    message: format!("{at}.name: no Service {ns}/{} in the mesh", b.name),
                }),
                Some(ports)
                    if b.port
                        .is_some_and(|p| !ports.iter().any(|q| i32::from(*q) == p)) =>
                {
                    Err(RefProblem {
                        reason: "BackendNotFound",
                        message: format!(
                            "{at}.port: Service {ns}/{} has no port {}",
                            b.name,
                            b.port.unwrap_or_default()
                        ),
                    })
                }
                Some(_) => Ok(()),
            },
            (group, kind) => Err(RefProblem {
                reason: "InvalidKind",
                message: format!(
                    "{at}: {kind} in group {group:?} is not a backend Trellis can send to (only \
                     Services)"
                ),
            }),
        };
        match found {
            Ok(()) => {
                let backend = Backend {
                    namespace: ns.to_owned(),
                    service: b.name.to_owned(),
                    weight: 0,
                };
                match valid
                    .iter_mut()
                    .find(|(v, _)| v.cluster() == backend.cluster())
                {
                    // The same Service twice (other ports): one backend with the summed weight.
                    Some((_, w)) => *w += weight,
                    None => valid.push((backend, weight)),
                }
            }
            Err(p) => {
                invalid_weight += weight;
                problem.get_or_insert(p);
            }
        }
    }
    let valid_weight = total - invalid_weight;
    if valid_weight == 0 {
        let fault = Fault {
            delay: None,
            abort: Some(FaultAbort {
                status: abort_status,
                permille: 1000,
            }),
        };
        return Ok((parent(1).into_iter().collect(), Some(fault)));
    }
    let max = valid.iter().map(|(_, w)| *w).max().unwrap_or(1);
    let backends = (valid.into_iter())
        .map(|(mut b, w)| {
            let scaled = if max > MAX_WEIGHT {
                // Scaled into the model's range; a non-zero weight stays non-zero.
                (w * MAX_WEIGHT / max).max(u64::from(w > 0))
            } else {
                w
            };
            b.weight = u32::try_from(scaled).unwrap_or(u32::MAX);
            b
        })
        .collect();
    let permille = (invalid_weight * 1000 + total / 2) / total;
    let fault = (permille > 0).then(|| Fault {
        delay: None,
        abort: Some(FaultAbort {
            status: abort_status,
            permille: u32::try_from(permille).unwrap_or(1000),
        }),
    });
    Ok((backends, fault))
}

/// An HTTPRoute rule's retry: `attempts` counts retries (the mesh counts attempts), `codes`
/// are retried as retriable status codes, connect failures always (the API says SHOULD).
fn retry(
    r: Option<&HTTPRouteRetry>,
    per_try: Option<Duration>,
    at: &str,
) -> Result<Option<Retry>, Refused> {
    let per_try = per_try.filter(|d| !d.is_zero());
    let Some(r) = r else {
        return Ok(per_try.map(|d| Retry {
            per_try_timeout: Some(d),
            ..Retry::default()
        }));
    };
    let mut retry = Retry {
        per_try_timeout: per_try,
        ..Retry::default()
    };
    if let Some(n) = r.attempts {
        match u32::try_from(n) {
            Ok(n) if n <= 9 => retry.attempts = n + 1,
            _ => {
                return Err(unsupported(format!(
                    "{at}.attempts: {n} is not in 0..=9 (Trellis makes at most 10 attempts)"
                )))
            }
        }
    }
    if !r.codes.is_empty() {
        retry.retry_on.push(RetryOn::RetriableStatusCodes);
        for (k, code) in r.codes.iter().enumerate() {
            match u16::try_from(*code) {
                Ok(c) if (100..=599).contains(&c) => retry.status_codes.push(c),
                _ => {
                    return Err(unsupported(format!(
                        "{at}.codes[{k}]: {code} is not an HTTP status"
                    )))
                }
            }
        }
    }
    if let Some(b) = &r.backoff {
        let base = duration(b, &format!("{at}.backoff"))?;
        if !base.is_zero() {
            retry.backoff_base = base;
            retry.backoff_max = retry.backoff_max.max(base * 10);
        }
    }
    Ok(Some(retry))
}

/// "0s" disables a timeout; the mesh cannot, so it gets the longest one it takes.
fn or_longest(d: Duration) -> Duration {
    if d.is_zero() {
        Duration::from_millis(u64::from(u32::MAX))
    } else {
        d
    }
}

/// A GEP-2257 duration: 1 to 4 `<1-5 digits><h|m|s|ms>` parts (`1h30m`, `500ms`, `0s`).
pub(super) fn parse_gateway_duration(text: &str) -> Option<Duration> {
    let mut rest = text;
    let mut total = Duration::ZERO;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 || digits > 5 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else {
            return None;
        };
        rest = &rest[len..];
        total += unit * u32::try_from(n).ok()?;
        parts += 1;
    }
    (1..=4).contains(&parts).then_some(total)
}

fn duration(text: &str, at: &str) -> Result<Duration, Refused> {
    parse_gateway_duration(text).ok_or_else(|| {
        unsupported(format!(
            "{at}: {text:?} is not a Gateway API duration like 10s, 500ms or 1h30m"
        ))
    })
}

fn absolute(value: &str, at: &str) -> Result<(), Refused> {
    if !value.starts_with('/') {
        return Err(unsupported(format!(
            "{at}: {value:?} must start with \"/\""
        )));
    }
    Ok(())
}

/// Compiled as the proxy will (anchored to the whole value), so a bad pattern is reported here.
fn compiles(pattern: &str, at: &str) -> Result<(), Refused> {
    regex::Regex::new(&format!("^(?:{pattern})$"))
        .map(drop)
        .map_err(|_| {
            unsupported(format!(
                "{at}: {pattern:?} is not a valid regex (RE2 syntax)"
            ))
        })
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MtlsMode, Policy, Port, Protocol};

    fn mesh_service(name: &str) -> Service {
        Service {
            name: name.into(),
            namespace: "shop".into(),
            service_account: name.into(),
            mtls: MtlsMode::Strict,
            ports: vec![Port {
                port: 80,
                target_port: 8080,
                protocol: Protocol::Http1,
            }],
            addresses: vec![],
            endpoints: vec![],
            policy: Policy::default(),
            routes: vec![],
            authorization: None,
        }
    }

    fn http(name: &str, created: &str, spec: serde_json::Value) -> HTTPRoute {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": "shop", "generation": 1,
                         "creationTimestamp": created},
            "spec": spec
        }))
        .unwrap()
    }

    fn grpc(name: &str, created: &str, spec: serde_json::Value) -> GRPCRoute {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
            "metadata": {"name": name, "namespace": "shop", "generation": 1,
                         "creationTimestamp": created},
            "spec": spec
        }))
        .unwrap()
    }

    fn parent(name: &str) -> serde_json::Value {
        serde_json::json!({"group": "", "kind": "Service", "name": name})
    }

    fn run(http_routes: &[HTTPRoute], grpc_routes: &[GRPCRoute]) -> Attached {
        let services = [mesh_service("web"), mesh_service("api")];
        let targets: BTreeMap<(String, String), Target> = (services.iter())
            .map(|s| {
                let key = (s.namespace.clone(), s.name.clone());
                (
                    key,
                    Target {
                        service: s,
                        ports: vec![(Some("http".into()), 80)],
                    },
                )
            })
            .collect();
        let meshed = HashSet::from(["shop"]);
        let h: Vec<&HTTPRoute> = http_routes.iter().collect();
        let g: Vec<&GRPCRoute> = grpc_routes.iter().collect();
        attach(&h, &g, &meshed, &targets)
    }

    fn names(a: &Attached, service: &str) -> Vec<String> {
        a.routes[&("shop".to_owned(), service.to_owned())]
            .iter()
            .map(|r| r.name.clone())
            .collect()
    }

    fn verdicts(a: &Attached, name: &str) -> Vec<(bool, String, String)> {
        let d = a.statuses.iter().find(|s| s.name == name).unwrap();
        let Desired::Parents(parents) = &d.desired else {
            panic!("{d:?}")
        };
        parents[0]
            .conditions
            .iter()
            .map(|c| (c.status, c.reason.clone(), c.message.clone()))
            .collect()
    }

    #[test]
    fn http_precedence_exact_then_regex_then_longest_prefix_then_method_then_headers() {
        let rules = serde_json::json!({"parentRefs": [parent("web")], "rules": [
            {"name": "root", "matches": [{"path": {"type": "PathPrefix", "value": "/"}}]},
            {"name": "api", "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}]},
            {"name": "api-get", "matches": [{"path": {"type": "PathPrefix", "value": "/api"},
                                             "method": "GET"}]},
            {"name": "api-hdr", "matches": [{"path": {"type": "PathPrefix", "value": "/api"},
                "method": "GET", "headers": [{"name": "X-Canary", "value": "1"}]}]},
            {"name": "users", "matches": [{"path": {"type": "RegularExpression",
                                                    "value": "/users/[0-9]+"}}]},
            {"name": "health", "matches": [{"path": {"type": "Exact", "value": "/healthz"}}]}
        ]});
        // An older route with the same match as "root" comes before it.
        let older = serde_json::json!({"parentRefs": [parent("web")], "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}]}]});
        let a = run(
            &[
                http("new", "2026-02-01T00:00:00Z", rules),
                http("old", "2026-01-01T00:00:00Z", older),
            ],
            &[],
        );
        assert_eq!(
            names(&a, "web"),
            [
                "http:new:health:0",
                "http:new:users:0",
                "http:new:api-hdr:0",
                "http:new:api-get:0",
                "http:new:api:0",
                "http:old:0:0",
                "http:new:root:0",
            ]
        );
        let web = &a.routes[&("shop".to_owned(), "web".to_owned())];
        assert_eq!(
            web[4].r#match.path,
            Some(PathMatch::Regex("/api(?:/.*)?".into()))
        );
        assert_eq!(web[6].r#match.path, Some(PathMatch::Prefix("/".into())));
        assert_eq!(web[2].r#match.headers[0].name, "x-canary");
        // No backendRefs: to the parent Service, as a mesh YAML route without backends.
        assert_eq!(web[0].backends[0].cluster(), "shop/web");
    }

    #[test]
    fn prefix_matches_whole_path_elements() {
        let PathMatch::Regex(re) = prefix("/api/") else {
            panic!()
        };
        let re = regex::Regex::new(&format!("^(?:{re})$")).unwrap();
        assert!(re.is_match("/api") && re.is_match("/api/") && re.is_match("/api/v1"));
        assert!(!re.is_match("/apix"));
    }

    #[test]
    fn grpc_method_matches_become_paths_ordered_by_specificity() {
        let spec = serde_json::json!({"parentRefs": [parent("api")], "rules": [
            {"matches": [{"method": {"service": "shop.Catalog"}}]},
            {"matches": [{"method": {"service": "shop.Catalog", "method": "GetItem"}}]},
            {"matches": [{"method": {"method": "Check"}}]},
            {"matches": [{"method": {"type": "RegularExpression", "service": "shop\\..*",
                                     "method": "List.*"}}]}
        ]});
        let a = run(&[], &[grpc("catalog", "2026-01-01T00:00:00Z", spec)]);
        let routes = &a.routes[&("shop".to_owned(), "api".to_owned())];
        let paths: Vec<_> = routes.iter().map(|r| r.r#match.path.clone()).collect();
        assert_eq!(
            paths,
            [
                Some(PathMatch::Exact("/shop.Catalog/GetItem".into())),
                Some(PathMatch::Prefix("/shop.Catalog/".into())),
                Some(PathMatch::Regex("/(?:shop\\..*)/(?:List.*)".into())),
                Some(PathMatch::Regex("/[^/]+/Check".into())),
            ]
        );
    }

    #[test]
    fn weights_split_and_unusable_backends_keep_their_share_as_errors() {
        let spec = serde_json::json!({"parentRefs": [parent("web")], "rules": [{
        "backendRefs": [
            {"group": "", "kind": "Service", "name": "web", "port": 80, "weight": 600000},
            {"group": "", "kind": "Service", "name": "api", "port": 80, "weight": 200000},
            {"group": "", "kind": "Service", "name": "ghost", "port": 80, "weight": 200000}
        ]}]});
        let a = run(&[http("split", "2026-01-01T00:00:00Z", spec)], &[]);
        let route = &a.routes[&("shop".to_owned(), "web".to_owned())][0];
        let weights: Vec<_> = route
            .backends
            .iter()
            .map(|b| (b.cluster(), b.weight))
            .collect();
        // Scaled into the model's 0..=10000.
        assert_eq!(
            weights,
            [
                ("shop/web".to_owned(), 10000),
                ("shop/api".to_owned(), 3333)
            ]
        );
        let abort = route.fault.and_then(|f| f.abort).unwrap();
        assert_eq!((abort.status, abort.permille), (500, 200));
        assert_eq!(
            verdicts(&a, "split"),
            [
                (
                    true,
                    "Accepted".into(),
                    "routes the Service in the mesh".into()
                ),
                (
                    false,
                    "BackendNotFound".into(),
                    "spec.rules[0].backendRefs[2].name: no Service shop/ghost in the mesh".into()
                ),
            ]
        );
    }

    #[test]
    fn unsupported_routes_are_refused_whole_with_the_field() {
        let query = serde_json::json!({"parentRefs": [parent("web")], "rules": [
            {"matches": [{"path": {"type": "Exact", "value": "/a"}}]},
            {"matches": [{"queryParams": [{"name": "v", "value": "2"}]}]}]});
        let consumer = serde_json::json!({"parentRefs": [
            {"group": "", "kind": "Service", "name": "web", "namespace": "other"}]});
        let filter = serde_json::json!({"parentRefs": [parent("web")], "rules": [
            {"filters": [{"type": "RequestHeaderModifier",
                          "requestHeaderModifier": {"set": [{"name": "x", "value": "1"}]}}]}]});
        let a = run(
            &[
                http("query", "2026-01-01T00:00:00Z", query),
                http("consumer", "2026-01-01T00:00:00Z", consumer),
                http("filter", "2026-01-01T00:00:00Z", filter),
            ],
            &[],
        );
        assert!(a.routes.is_empty(), "{:?}", a.routes.keys());
        assert_eq!(
            verdicts(&a, "query")[0],
            (
                false,
                "UnsupportedValue".into(),
                "spec.rules[1].matches[0].queryParams: query parameter matching is not supported"
                    .into()
            )
        );
        assert_eq!(
            verdicts(&a, "filter")[0].2,
            "spec.rules[0].filters[0].type: \"RequestHeaderModifier\" filters are not supported"
        );
        // The consumer route names a namespace that is not meshed here: not ours, no status.
        let d = a.statuses.iter().find(|s| s.name == "consumer").unwrap();
        assert_eq!(d.desired, Desired::Parents(vec![]));
        assert!(a
            .skipped
            .iter()
            .any(|s| s.starts_with("httproutes/shop/query: ")));
    }

    #[test]
    fn http_and_grpc_routes_on_one_service_are_not_merged_the_older_kind_wins() {
        let h = serde_json::json!({"parentRefs": [parent("api")], "rules": [{}]});
        let g = serde_json::json!({"parentRefs": [parent("api")], "rules": [{}]});
        let a = run(
            &[http("newer", "2026-02-01T00:00:00Z", h)],
            &[grpc("older", "2026-01-01T00:00:00Z", g)],
        );
        assert_eq!(names(&a, "api"), ["grpc:older:0:0"]);
        let (status, reason, message) = verdicts(&a, "newer").remove(0);
        assert_eq!((status, reason.as_str()), (false, "Conflicted"));
        assert!(
            message.contains("routed by GRPCRoute shop/older"),
            "{message}"
        );
        assert_eq!(verdicts(&a, "older")[0].1, "Accepted");
    }

    #[test]
    fn gateway_durations() {
        assert_eq!(
            parse_gateway_duration("1h30m"),
            Some(Duration::from_secs(5400))
        );
        assert_eq!(
            parse_gateway_duration("500ms"),
            Some(Duration::from_millis(500))
        );
        assert_eq!(parse_gateway_duration("0s"), Some(Duration::ZERO));
        for bad in ["", "5", "1d", "123456s", "1h1h1h1h1h", "-1s"] {
            assert_eq!(parse_gateway_duration(bad), None, "{bad}");
        }
    }
}
