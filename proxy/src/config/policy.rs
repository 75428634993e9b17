//! Per-destination policy as the proxy applies it: balancing, timeouts, retries, circuit-breaker
//! limits and outlier detection. Values arrive filled in by the control plane; the defaults here
//! apply only to fields an older control plane leaves empty, and mirror its documented defaults
//! (docs/policy.md).

use serde::Serialize;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum LbPolicy {
    RoundRobin,
    P2cEwma,
    LeastRequest,
    ConsistentHash,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum HashKey {
    Header(#[serde(serialize_with = "crate::config::ser_display")] http::HeaderName),
    Cookie(String),
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterPolicy {
    pub lb: LbPolicy,
    pub hash: Option<HashKey>,
    #[serde(serialize_with = "crate::config::ser_duration")]
    pub connect_timeout: Duration,
    #[serde(serialize_with = "crate::config::ser_duration")]
    pub request_timeout: Duration,
    #[serde(serialize_with = "crate::config::ser_duration")]
    pub idle_timeout: Duration,
    pub retry: RetryPolicy,
    pub breaker: BreakerLimits,
    pub outlier: OutlierConfig,
}

impl Default for ClusterPolicy {
    fn default() -> Self {
        ClusterPolicy {
            lb: LbPolicy::P2cEwma,
            hash: None,
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            retry: RetryPolicy::default(),
            breaker: BreakerLimits::default(),
            outlier: OutlierConfig::default(),
        }
    }
}

/// What makes a failed attempt worth another one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryOn {
    pub status_5xx: bool,
    pub gateway_error: bool,
    pub reset: bool,
    pub connect_failure: bool,
    /// `retriable-status-codes`: these statuses.
    pub status_codes: Vec<u16>,
    /// gRPC status codes (from trailers-only responses).
    pub grpc_codes: Vec<u16>,
}

impl RetryOn {
    /// Parses one condition name; false if unknown.
    pub fn add(&mut self, condition: &str) -> bool {
        match condition {
            "5xx" => self.status_5xx = true,
            "gateway-error" => self.gateway_error = true,
            "reset" => self.reset = true,
            "connect-failure" => self.connect_failure = true,
            // The list itself arrives in `retriable_status_codes`.
            "retriable-status-codes" => {}
            "cancelled" => self.grpc_codes.push(1),
            "deadline-exceeded" => self.grpc_codes.push(4),
            "resource-exhausted" => self.grpc_codes.push(8),
            "internal" => self.grpc_codes.push(13),
            "unavailable" => self.grpc_codes.push(14),
            _ => return false,
        }
        true
    }

    pub fn on_status(&self, status: u16) -> bool {
        (self.status_5xx && (500..600).contains(&status))
            || (self.gateway_error && matches!(status, 502..=504))
            || self.status_codes.contains(&status)
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Total attempts including the first.
    pub max_attempts: u32,
    pub retry_on: RetryOn,
    #[serde(serialize_with = "crate::config::ser_opt_duration")]
    pub per_try_timeout: Option<Duration>,
    #[serde(serialize_with = "crate::config::ser_duration")]
    pub backoff_base: Duration,
    #[serde(serialize_with = "crate::config::ser_duration")]
    pub backoff_max: Duration,
    pub budget_ratio: f64,
    pub budget_min_per_second: u32,
    pub non_idempotent: bool,
    pub replay_buffer: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 2,
            retry_on: RetryOn {
                connect_failure: true,
                ..RetryOn::default()
            },
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

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BreakerLimits {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
}

impl Default for BreakerLimits {
    fn default() -> Self {
        BreakerLimits {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutlierConfig {
    /// 0 disables.
    pub consecutive_5xx: u32,
    /// 502/503/504 and connect failures; 0 disables.
    pub consecutive_gateway_errors: u32,
    #[serde(serialize_with = "crate::config::ser_duration")]
    pub base_ejection: Duration,
    #[serde(serialize_with = "crate::config::ser_duration")]
    pub max_ejection: Duration,
    pub max_ejection_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_5xx: 0,
            consecutive_gateway_errors: 7,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}
