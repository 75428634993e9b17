//! Structured inputs shared by the fuzz targets: `arbitrary` mirrors of the resource protos that
//! become real `trellis.config.v1` messages, and requests to match against what they configure.
//!
//! Random bytes almost never survive prost and the first checks of a decoder, so the mirrors pick
//! most strings from short lists of values the decoders accept (and a few they must refuse), and
//! only sometimes take arbitrary text. That way the fuzzer spends its time in our validation and
//! matching code, not in rejecting garbage.

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use trellis_api::config as pb;

/// A string: usually one of the given choices, sometimes anything.
#[derive(Arbitrary, Debug, Clone)]
pub enum Text {
    Pick(u8),
    Any(String),
}

impl Text {
    pub fn get(&self, choices: &[&str]) -> String {
        match self {
            Text::Pick(i) if !choices.is_empty() => choices[*i as usize % choices.len()].into(),
            Text::Pick(_) => String::new(),
            Text::Any(s) => s.clone(),
        }
    }
}

/// A number: usually small, sometimes anything (so both the valid range and its edges get tried).
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Num {
    Small(u8),
    Port(u16),
    Any(u32),
}

impl Num {
    pub fn get(self) -> u32 {
        match self {
            Num::Small(n) => n.into(),
            Num::Port(n) => n.into(),
            Num::Any(n) => n,
        }
    }
}

pub const HOSTS: &[&str] = &[
    "web",
    "web.default",
    "API.default.svc.cluster.local",
    "",
    "a b",
];
pub const CLUSTERS: &[&str] = &["default/web", "default/api", "default/web-canary", ""];
pub const VIRTUAL_IPS: &[&str] = &["10.96.0.10", "fd00::10", "10.96.0.10:80", "", "web"];
pub const PATHS: &[&str] = &[
    "/",
    "/api",
    "/api/v1/users",
    "/users/42",
    "/healthz",
    "",
    "*",
];
pub const REGEXES: &[&str] = &[
    "/users/[0-9]+",
    ".*",
    "/api/.+",
    "(",
    "[z-a]",
    "(?P<n>a)(?P<n>b)",
];
pub const METHODS: &[&str] = &["GET", "POST", "DELETE", "", "get", "BAD METHOD", "PURGE"];
pub const HEADER_NAMES: &[&str] = &[
    "x-canary",
    "x-user",
    "X-Team",
    "content-type",
    "",
    "bad name",
];
pub const HEADER_VALUES: &[&str] = &["1", "true", "alice", "", "a\u{7f}", "caf\u{e9}"];
pub const IDENTITIES: &[&str] = &[
    "*",
    "spiffe://td/ns/default/sa/web",
    "spiffe://td/ns/ops/*",
    "spiffe://td/ns/",
    "spiffe://other/ns/default/sa/web",
    "",
];
pub const NAMESPACES: &[&str] = &["default", "ops", ""];
pub const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "retriable-status-codes",
    "unavailable",
    "deadline-exceeded",
    "bogus",
];
pub const ADDRESSES: &[&str] = &[
    "127.0.0.1:4143",
    "10.0.0.7:4143",
    "[::1]:4143",
    "10.0.0.8:0",
    "10.0.0.9",
    "web:80",
];

#[derive(Arbitrary, Debug)]
pub struct HeaderMatch {
    pub name: Text,
    /// 0 exact, 1 prefix, 2 regex, 3 present, else none.
    pub kind: u8,
    pub value: Text,
    pub present: bool,
}

impl HeaderMatch {
    pub fn to_pb(&self) -> pb::HeaderMatch {
        use pb::header_match::Value;
        let value = match self.kind % 5 {
            0 => Some(Value::Exact(self.value.get(HEADER_VALUES))),
            1 => Some(Value::Prefix(self.value.get(HEADER_VALUES))),
            2 => Some(Value::Regex(self.value.get(REGEXES))),
            3 => Some(Value::Present(self.present)),
            _ => None,
        };
        pb::HeaderMatch {
            name: self.name.get(HEADER_NAMES),
            value,
        }
    }
}

#[derive(Arbitrary, Debug)]
pub struct Retry {
    pub max_attempts: Num,
    pub retry_on: Vec<Text>,
    pub per_try_timeout_ms: u64,
    pub budget_ratio: f64,
    pub budget_min_per_second: u32,
    pub retriable_status_codes: Vec<Num>,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    pub retry_non_idempotent: bool,
    pub replay_buffer_bytes: u32,
    pub enabled: bool,
}

impl Retry {
    pub fn to_pb(&self) -> pb::RetryPolicy {
        pb::RetryPolicy {
            max_attempts: self.max_attempts.get(),
            retry_on: self.retry_on.iter().map(|t| t.get(RETRY_ON)).collect(),
            per_try_timeout_ms: self.per_try_timeout_ms,
            budget_ratio: self.budget_ratio,
            budget_min_per_second: self.budget_min_per_second,
            retriable_status_codes: self
                .retriable_status_codes
                .iter()
                .map(|n| n.get())
                .collect(),
            backoff_base_ms: self.backoff_base_ms,
            backoff_max_ms: self.backoff_max_ms,
            retry_non_idempotent: self.retry_non_idempotent,
            replay_buffer_bytes: self.replay_buffer_bytes,
            enabled: self.enabled,
        }
    }
}

#[derive(Arbitrary, Debug)]
pub struct Route {
    pub name: Text,
    /// 0 exact, 1 prefix, 2 regex, else any.
    pub path_kind: u8,
    pub path: Text,
    pub method: Text,
    pub headers: Vec<HeaderMatch>,
    pub backends: Vec<(Text, Num)>,
    pub timeout_ms: u64,
    pub retry: Option<Retry>,
    pub fault: Option<(u64, Num, Num, Num)>,
}

impl Route {
    pub fn to_pb(&self) -> pb::Route {
        use pb::route_match::Path;
        let path = match self.path_kind % 4 {
            0 => Some(Path::Exact(self.path.get(PATHS))),
            1 => Some(Path::Prefix(self.path.get(PATHS))),
            2 => Some(Path::Regex(self.path.get(REGEXES))),
            _ => None,
        };
        pb::Route {
            name: self.name.get(&["canary", "users", "health", ""]),
            r#match: Some(pb::RouteMatch {
                path,
                method: self.method.get(METHODS),
                headers: self.headers.iter().map(HeaderMatch::to_pb).collect(),
            }),
            backends: (self.backends.iter())
                .map(|(c, w)| pb::WeightedBackend {
                    cluster: c.get(CLUSTERS),
                    weight: w.get(),
                })
                .collect(),
            timeout_ms: self.timeout_ms,
            retry: self.retry.as_ref().map(Retry::to_pb),
            fault: self
                .fault
                .map(|(delay_ms, delay, status, abort)| pb::FaultInjection {
                    delay_ms,
                    delay_permille: delay.get(),
                    abort_status: status.get(),
                    abort_permille: abort.get(),
                }),
        }
    }
}

#[derive(Arbitrary, Debug)]
pub struct RouteConfig {
    pub hosts: Vec<Text>,
    pub ports: Vec<Num>,
    pub routes: Vec<Route>,
    pub default_cluster: Text,
    pub addresses: Vec<Text>,
    pub target_ports: Vec<Num>,
}

impl RouteConfig {
    pub fn to_pb(&self) -> pb::RouteConfig {
        pb::RouteConfig {
            hosts: self.hosts.iter().map(|h| h.get(HOSTS)).collect(),
            ports: self.ports.iter().map(|p| p.get()).collect(),
            routes: self.routes.iter().map(Route::to_pb).collect(),
            default_cluster: self.default_cluster.get(CLUSTERS),
            addresses: self.addresses.iter().map(|a| a.get(VIRTUAL_IPS)).collect(),
            target_ports: self.target_ports.iter().map(|p| p.get()).collect(),
        }
    }
}

#[derive(Arbitrary, Debug)]
pub struct AuthzRule {
    pub name: Text,
    pub action: Num,
    pub identities: Vec<Text>,
    pub namespaces: Vec<Text>,
    pub unauthenticated: Option<bool>,
    pub ports: Vec<Num>,
    pub paths: Vec<(u8, Text)>,
    pub methods: Vec<Text>,
    pub headers: Vec<HeaderMatch>,
}

impl AuthzRule {
    pub fn to_pb(&self) -> pb::AuthzRule {
        use pb::authz_path::Kind;
        pb::AuthzRule {
            name: self.name.get(&["a", "b", "c", "default", ""]),
            action: self.action.get() as i32,
            from: Some(pb::AuthzSource {
                identities: self.identities.iter().map(|t| t.get(IDENTITIES)).collect(),
                namespaces: self.namespaces.iter().map(|t| t.get(NAMESPACES)).collect(),
                unauthenticated: self.unauthenticated,
            }),
            to: Some(pb::AuthzTarget {
                ports: self.ports.iter().map(|p| p.get()).collect(),
                paths: (self.paths.iter())
                    .map(|(kind, p)| pb::AuthzPath {
                        kind: match kind % 3 {
                            0 => Some(Kind::Exact(p.get(PATHS))),
                            1 => Some(Kind::Prefix(p.get(PATHS))),
                            _ => None,
                        },
                    })
                    .collect(),
                methods: self.methods.iter().map(|m| m.get(METHODS)).collect(),
                headers: self.headers.iter().map(HeaderMatch::to_pb).collect(),
            }),
        }
    }
}

#[derive(Arbitrary, Debug)]
pub struct AuthorizationPolicy {
    pub default_action: Num,
    pub rules: Vec<AuthzRule>,
}

impl AuthorizationPolicy {
    pub fn to_pb(&self) -> pb::AuthorizationPolicy {
        pb::AuthorizationPolicy {
            default_action: self.default_action.get() as i32,
            rules: self.rules.iter().map(AuthzRule::to_pb).collect(),
        }
    }
}

#[derive(Arbitrary, Debug)]
pub struct Inbound {
    pub ports: Vec<(Num, Num, Num)>,
    pub mtls_mode: Num,
    pub authorization: Option<AuthorizationPolicy>,
}

impl Inbound {
    pub fn to_pb(&self) -> pb::InboundConfig {
        pb::InboundConfig {
            ports: (self.ports.iter())
                .map(|(port, target, protocol)| pb::AppPort {
                    port: port.get(),
                    target_port: target.get(),
                    protocol: protocol.get() as i32,
                })
                .collect(),
            mtls_mode: self.mtls_mode.get() as i32,
            authorization: self.authorization.as_ref().map(AuthorizationPolicy::to_pb),
        }
    }
}

#[derive(Arbitrary, Debug)]
pub struct Cluster {
    pub name: Text,
    pub lb_policy: Num,
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    pub retry: Option<Retry>,
    pub circuit_breaker: Option<(u32, u32, u32, u32)>,
    pub outlier: Option<(u32, u64, Num, u32, u64)>,
    /// 0 header, 1 cookie, else none.
    pub hash_kind: u8,
    pub hash_key: Text,
    pub idle_timeout_ms: u64,
}

impl Cluster {
    pub fn to_pb(&self) -> pb::Cluster {
        use pb::hash_policy::Key;
        pb::Cluster {
            name: self.name.get(CLUSTERS),
            lb_policy: self.lb_policy.get() as i32,
            connect_timeout_ms: self.connect_timeout_ms,
            request_timeout_ms: self.request_timeout_ms,
            retry: self.retry.as_ref().map(Retry::to_pb),
            circuit_breaker: self.circuit_breaker.map(|(c, p, r, t)| pb::CircuitBreaker {
                max_connections: c,
                max_pending_requests: p,
                max_requests: r,
                max_retries: t,
            }),
            outlier_detection: self
                .outlier
                .map(|(c5, base, pct, gw, max)| pb::OutlierDetection {
                    consecutive_5xx: c5,
                    base_ejection_ms: base,
                    max_ejection_percent: pct.get(),
                    consecutive_gateway_errors: gw,
                    max_ejection_ms: max,
                }),
            hash_policy: match self.hash_kind % 3 {
                0 => Some(Key::Header(self.hash_key.get(HEADER_NAMES))),
                1 => Some(Key::Cookie(self.hash_key.get(&["session", ""]))),
                _ => None,
            }
            .map(|key| pb::HashPolicy { key: Some(key) }),
            idle_timeout_ms: self.idle_timeout_ms,
        }
    }
}

#[derive(Arbitrary, Debug)]
pub struct Endpoints {
    pub cluster: Text,
    pub endpoints: Vec<(Text, Text, Num, bool)>,
}

impl Endpoints {
    pub fn to_pb(&self) -> pb::Endpoints {
        pb::Endpoints {
            cluster: self.cluster.get(CLUSTERS),
            endpoints: (self.endpoints.iter())
                .map(|(address, identity, weight, plaintext)| pb::Endpoint {
                    address: address.get(ADDRESSES),
                    identity: identity.get(IDENTITIES),
                    weight: weight.get(),
                    plaintext: *plaintext,
                })
                .collect(),
        }
    }
}

/// A request to match: method, target, headers and the caller's identity.
#[derive(Arbitrary, Debug)]
pub struct Request {
    pub method: Text,
    pub path: Text,
    pub authority: Text,
    pub headers: Vec<(Text, Text)>,
    pub port: Option<u16>,
    pub identity: Option<Text>,
}

impl Request {
    /// The request as hyper would hand it over; parts that are not valid HTTP are replaced or
    /// dropped, since hyper never lets them through.
    pub fn to_http(&self) -> http::Request<()> {
        let method = http::Method::from_bytes(self.method.get(METHODS).as_bytes())
            .unwrap_or(http::Method::GET);
        let path = self.path.get(PATHS);
        let uri =
            http::Uri::try_from(path.as_str()).unwrap_or_else(|_| http::Uri::from_static("/"));
        let mut req = http::Request::new(());
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        let host = self.authority.get(HOSTS);
        let host = match self.port {
            Some(p) => format!("{host}:{p}"),
            None => host,
        };
        if let Ok(v) = http::HeaderValue::from_str(&host) {
            req.headers_mut().insert(http::header::HOST, v);
        }
        for (name, value) in &self.headers {
            let name = http::HeaderName::from_bytes(name.get(HEADER_NAMES).as_bytes());
            let value = http::HeaderValue::from_bytes(value.get(HEADER_VALUES).as_bytes());
            if let (Ok(n), Ok(v)) = (name, value) {
                req.headers_mut().append(n, v);
            }
        }
        req
    }

    pub fn identity(&self) -> Option<String> {
        self.identity.as_ref().map(|t| t.get(IDENTITIES))
    }
}
