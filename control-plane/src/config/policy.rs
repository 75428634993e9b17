//! The traffic-policy part of the validated model: per-service policy (balancing, timeouts,
//! retries, circuit breaking, outlier detection) and per-route matching, splits and faults. The
//! defaults live here, next to the types, and docs/policy.md says why each was chosen.
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadBalancer {
    RoundRobin,
    P2cEwma,
    LeastRequest,
    ConsistentHash,
}

/// What the consistent hash is computed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// A request header, name in lower case.
    Header(String),
    Cookie(String),
}

/// The policy of one destination service (its Cluster resource).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub load_balancer: LoadBalancer,
    /// Set exactly when `load_balancer` is `ConsistentHash`.
    pub hash_on: Option<HashOn>,
    pub connect_timeout: Duration,
    /// Overall, retries included.
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    pub retry: Retry,
    pub circuit_breaker: CircuitBreaker,
    pub outlier_detection: OutlierDetection,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            load_balancer: LoadBalancer::P2cEwma,
            hash_on: None,
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            retry: Retry::default(),
            circuit_breaker: CircuitBreaker::default(),
            outlier_detection: OutlierDetection::default(),
        }
    }
}

/// A condition under which a failed attempt is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    /// Any 5xx response.
    ServerError,
    /// 502, 503, 504 and connect failures.
    GatewayError,
    Reset,
    ConnectFailure,
    /// The codes in `Retry::status_codes`.
    RetriableStatusCodes,
    Cancelled,
    DeadlineExceeded,
    Internal,
    ResourceExhausted,
    Unavailable,
}

impl RetryOn {
    pub const ALL: [RetryOn; 10] = [
        RetryOn::ServerError,
        RetryOn::GatewayError,
        RetryOn::Reset,
        RetryOn::ConnectFailure,
        RetryOn::RetriableStatusCodes,
        RetryOn::Cancelled,
        RetryOn::DeadlineExceeded,
        RetryOn::Internal,
        RetryOn::ResourceExhausted,
        RetryOn::Unavailable,
    ];

    /// The name used both in the YAML and in the protocol's `retry_on`.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryOn::ServerError => "5xx",
            RetryOn::GatewayError => "gateway-error",
            RetryOn::Reset => "reset",
            RetryOn::ConnectFailure => "connect-failure",
            RetryOn::RetriableStatusCodes => "retriable-status-codes",
            RetryOn::Cancelled => "cancelled",
            RetryOn::DeadlineExceeded => "deadline-exceeded",
            RetryOn::Internal => "internal",
            RetryOn::ResourceExhausted => "resource-exhausted",
            RetryOn::Unavailable => "unavailable",
        }
    }

    pub fn from_name(name: &str) -> Option<RetryOn> {
        RetryOn::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    /// Total attempts including the first, 1..=10.
    pub attempts: u32,
    pub retry_on: Vec<RetryOn>,
    /// For `RetryOn::RetriableStatusCodes`.
    pub status_codes: Vec<u16>,
    pub per_try_timeout: Option<Duration>,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Retries allowed per request, 0..=1, on top of `budget_min_per_second`.
    pub budget_ratio: f64,
    pub budget_min_per_second: u32,
    /// Also retry methods that are not idempotent (POST, PATCH).
    pub non_idempotent: bool,
    /// Request bodies up to this many bytes are kept for replay.
    pub replay_buffer: u32,
}

/// The largest `replayBuffer`: it is held per in-flight request.
pub const MAX_REPLAY_BUFFER: u32 = 16 * 1024 * 1024;

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 2,
            retry_on: vec![RetryOn::ConnectFailure],
            status_codes: Vec::new(),
            per_try_timeout: None,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            budget_ratio: 0.2,
            budget_min_per_second: 10,
            non_idempotent: false,
            replay_buffer: 64 * 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitBreaker {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierDetection {
    /// 0 = this detector is off.
    pub consecutive_5xx: u32,
    /// 502/503/504 and connect failures; 0 = off.
    pub consecutive_gateway_errors: u32,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    /// 0..=100.
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_5xx: 0,
            consecutive_gateway_errors: 7,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

/// One entry of a service's ordered route list.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub name: String,
    pub r#match: RouteMatch,
    /// Never empty; the weights sum to more than zero.
    pub backends: Vec<Backend>,
    /// Replaces the policy's `request_timeout`.
    pub timeout: Option<Duration>,
    /// Replaces the policy's retry for this route.
    pub retry: Option<Retry>,
    pub fault: Option<Fault>,
}

/// Every given condition must hold; the default matches every request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteMatch {
    pub path: Option<PathMatch>,
    /// Upper case.
    pub method: Option<String>,
    pub headers: Vec<HeaderMatch>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    /// Matched against the whole path.
    Regex(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    /// Lower case.
    pub name: String,
    pub value: HeaderValueMatch,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValueMatch {
    Exact(String),
    Prefix(String),
    /// Matched against the whole value.
    Regex(String),
    /// true: the header must be present; false: absent.
    Present(bool),
}

/// A destination service of a route, with its share of the route's traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub namespace: String,
    pub service: String,
    pub weight: u32,
}

impl Backend {
    /// The Cluster resource name, `<namespace>/<service>`.
    pub fn cluster(&self) -> String {
        format!("{}/{}", self.namespace, self.service)
    }
}

/// At least one of `delay` and `abort` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultDelay {
    pub duration: Duration,
    /// Share of requests delayed, 0..=1000.
    pub permille: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultAbort {
    /// 200..=599.
    pub status: u16,
    /// Share of requests aborted, 0..=1000.
    pub permille: u32,
}
