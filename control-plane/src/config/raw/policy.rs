//! The per-service `policy` block as written (balancing, timeouts, retry, circuit breaker, outlier
//! detection) and its validation; `retry` is shared with routes, which may replace it.
use serde::Deserialize;

use super::{
    count, fail, header_name, int_in, number_in, positive_duration, size, FieldError, Size, S,
};
use crate::config::policy::MAX_REPLAY_BUFFER;
use crate::config::{
    CircuitBreaker, HashOn, LoadBalancer, OutlierDetection, Policy, Retry, RetryOn,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(in crate::config) struct RawPolicy {
    load_balancer: Option<S<String>>,
    hash_on: Option<S<RawHashOn>>,
    connect_timeout: Option<S<String>>,
    request_timeout: Option<S<String>>,
    idle_timeout: Option<S<String>>,
    retry: Option<RawRetry>,
    circuit_breaker: Option<RawCircuitBreaker>,
    outlier_detection: Option<RawOutlierDetection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawHashOn {
    header: Option<S<String>>,
    cookie: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawRetry {
    attempts: Option<S<i64>>,
    retry_on: Option<S<Vec<S<String>>>>,
    status_codes: Option<S<Vec<S<i64>>>>,
    per_try_timeout: Option<S<String>>,
    backoff: Option<RawBackoff>,
    budget: Option<RawBudget>,
    non_idempotent: Option<bool>,
    replay_buffer: Option<S<Size>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawBackoff {
    base: Option<S<String>>,
    max: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawBudget {
    ratio: Option<S<f64>>,
    min_per_second: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawCircuitBreaker {
    max_connections: Option<S<i64>>,
    max_pending_requests: Option<S<i64>>,
    max_requests: Option<S<i64>>,
    max_retries: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawOutlierDetection {
    #[serde(rename = "consecutive5xx")]
    consecutive_5xx: Option<S<i64>>,
    consecutive_gateway_errors: Option<S<i64>>,
    base_ejection_time: Option<S<String>>,
    max_ejection_time: Option<S<String>>,
    max_ejection_percent: Option<S<i64>>,
}

/// `Some(check(v))` when the field is given, `default` otherwise.
fn or_default<T, U>(
    v: &Option<S<U>>,
    default: T,
    check: impl FnOnce(&S<U>) -> Result<T, FieldError>,
) -> Result<T, FieldError> {
    v.as_ref().map_or(Ok(default), check)
}

impl RawPolicy {
    pub(super) fn validate(&self, at: &str) -> Result<Policy, FieldError> {
        let defaults = Policy::default();
        let load_balancer = or_default(&self.load_balancer, defaults.load_balancer, |v| {
            Ok(match v.value.as_str() {
                "roundRobin" => LoadBalancer::RoundRobin,
                "p2cEwma" => LoadBalancer::P2cEwma,
                "leastRequest" => LoadBalancer::LeastRequest,
                "consistentHash" => LoadBalancer::ConsistentHash,
                other => {
                    return fail(
                        v,
                        format!("{at}.loadBalancer"),
                        format!(
                            "{other:?} is not one of roundRobin, p2cEwma, leastRequest, \
                             consistentHash"
                        ),
                    )
                }
            })
        })?;
        let hash_on =
            match (&self.hash_on, &self.load_balancer) {
                (Some(h), _) if load_balancer != LoadBalancer::ConsistentHash => {
                    return fail(
                        h,
                        format!("{at}.hashOn"),
                        "only applies to loadBalancer consistentHash",
                    )
                }
                (Some(h), _) => Some(h.value.validate(h, &format!("{at}.hashOn"))?),
                (None, Some(lb)) if load_balancer == LoadBalancer::ConsistentHash => return fail(
                    lb,
                    format!("{at}.hashOn"),
                    "is required by loadBalancer consistentHash ({header: NAME} or {cookie: NAME})",
                ),
                (None, _) => None,
            };
        let timeout = |v: &Option<S<String>>, field: &str, default| {
            or_default(v, default, |v| {
                positive_duration(v, &format!("{at}.{field}"))
            })
        };
        Ok(Policy {
            load_balancer,
            hash_on,
            connect_timeout: timeout(
                &self.connect_timeout,
                "connectTimeout",
                defaults.connect_timeout,
            )?,
            request_timeout: timeout(
                &self.request_timeout,
                "requestTimeout",
                defaults.request_timeout,
            )?,
            idle_timeout: timeout(&self.idle_timeout, "idleTimeout", defaults.idle_timeout)?,
            retry: match &self.retry {
                Some(r) => r.validate(&format!("{at}.retry"))?,
                None => defaults.retry,
            },
            circuit_breaker: match &self.circuit_breaker {
                Some(c) => c.validate(&format!("{at}.circuitBreaker"))?,
                None => defaults.circuit_breaker,
            },
            outlier_detection: match &self.outlier_detection {
                Some(o) => o.validate(&format!("{at}.outlierDetection"))?,
                None => defaults.outlier_detection,
            },
        })
    }
}

impl RawHashOn {
    fn validate(&self, span: &S<RawHashOn>, at: &str) -> Result<HashOn, FieldError> {
        match (&self.header, &self.cookie) {
            (Some(h), None) => Ok(HashOn::Header(header_name(h, &format!("{at}.header"))?)),
            (None, Some(c)) => Ok(HashOn::Cookie(header_name(c, &format!("{at}.cookie"))?)),
            _ => fail(span, at, "give exactly one of header, cookie"),
        }
    }
}

impl RawRetry {
    pub(super) fn validate(&self, at: &str) -> Result<Retry, FieldError> {
        let defaults = Retry::default();
        let attempts = or_default(&self.attempts, defaults.attempts, |v| {
            // In range, so the cast is exact.
            int_in(v, &format!("{at}.attempts"), 1, 10).map(|n| n as u32)
        })?;
        let retry_on = match &self.retry_on {
            Some(list) => retry_on(list, &format!("{at}.retryOn"))?,
            None => defaults.retry_on.clone(),
        };
        let mut status_codes = Vec::new();
        if let Some(codes) = &self.status_codes {
            for (i, c) in codes.value.iter().enumerate() {
                let code = int_in(c, &format!("{at}.statusCodes[{i}]"), 100, 599)?;
                status_codes.push(code as u16);
            }
            if !retry_on.contains(&RetryOn::RetriableStatusCodes) {
                return fail(
                    codes,
                    format!("{at}.statusCodes"),
                    "has no effect unless retryOn lists retriable-status-codes",
                );
            }
        }
        // The default retryOn does not list retriable-status-codes, so only a given one can.
        if let Some(list) = &self.retry_on {
            if retry_on.contains(&RetryOn::RetriableStatusCodes) && status_codes.is_empty() {
                return fail(
                    list,
                    format!("{at}.retryOn"),
                    "retriable-status-codes needs statusCodes",
                );
            }
        }
        let per_try_timeout = match &self.per_try_timeout {
            Some(v) => Some(positive_duration(v, &format!("{at}.perTryTimeout"))?),
            None => None,
        };
        let (backoff_base, backoff_max) = match &self.backoff {
            Some(b) => b.validate(&format!("{at}.backoff"), &defaults)?,
            None => (defaults.backoff_base, defaults.backoff_max),
        };
        let (budget_ratio, budget_min_per_second) = match &self.budget {
            Some(b) => (
                or_default(&b.ratio, defaults.budget_ratio, |v| {
                    number_in(v, &format!("{at}.budget.ratio"), 0.0, 1.0)
                })?,
                or_default(&b.min_per_second, defaults.budget_min_per_second, |v| {
                    count(v, &format!("{at}.budget.minPerSecond"), 0)
                })?,
            ),
            None => (defaults.budget_ratio, defaults.budget_min_per_second),
        };
        let replay_buffer = or_default(&self.replay_buffer, defaults.replay_buffer, |v| {
            size(v, &format!("{at}.replayBuffer"), MAX_REPLAY_BUFFER)
        })?;
        Ok(Retry {
            attempts,
            retry_on,
            status_codes,
            per_try_timeout,
            backoff_base,
            backoff_max,
            budget_ratio,
            budget_min_per_second,
            non_idempotent: self.non_idempotent.unwrap_or(defaults.non_idempotent),
            replay_buffer,
        })
    }
}

fn retry_on(list: &S<Vec<S<String>>>, at: &str) -> Result<Vec<RetryOn>, FieldError> {
    if list.value.is_empty() {
        return fail(
            list,
            at,
            "name at least one condition (attempts: 1 turns retries off)",
        );
    }
    let mut conditions: Vec<RetryOn> = Vec::with_capacity(list.value.len());
    for (i, v) in list.value.iter().enumerate() {
        let Some(condition) = RetryOn::from_name(&v.value) else {
            let names: Vec<_> = RetryOn::ALL.iter().map(|c| c.as_str()).collect();
            return fail(
                v,
                format!("{at}[{i}]"),
                format!(
                    "unknown condition {:?} (expected one of {})",
                    v.value,
                    names.join(", ")
                ),
            );
        };
        if let Some(first) = conditions.iter().position(|c| *c == condition) {
            return fail(
                v,
                format!("{at}[{i}]"),
                format!("{:?} repeats {at}[{first}]", v.value),
            );
        }
        conditions.push(condition);
    }
    Ok(conditions)
}

impl RawBackoff {
    fn validate(
        &self,
        at: &str,
        defaults: &Retry,
    ) -> Result<(std::time::Duration, std::time::Duration), FieldError> {
        let base = or_default(&self.base, defaults.backoff_base, |v| {
            positive_duration(v, &format!("{at}.base"))
        })?;
        let max = or_default(&self.max, defaults.backoff_max, |v| {
            positive_duration(v, &format!("{at}.max"))
        })?;
        if max < base {
            return match (&self.max, &self.base) {
                (Some(m), _) => fail(
                    m,
                    format!("{at}.max"),
                    format!("{:?} is less than base {:?}", m.value, base),
                ),
                (None, Some(b)) => fail(
                    b,
                    format!("{at}.base"),
                    format!("{:?} is over max (default {:?}); set max too", b.value, max),
                ),
                (None, None) => unreachable!("the defaults are ordered"),
            };
        }
        Ok((base, max))
    }
}

impl RawCircuitBreaker {
    fn validate(&self, at: &str) -> Result<CircuitBreaker, FieldError> {
        let d = CircuitBreaker::default();
        let limit = |v: &Option<S<i64>>, field: &str, default| {
            or_default(v, default, |v| count(v, &format!("{at}.{field}"), 1))
        };
        Ok(CircuitBreaker {
            max_connections: limit(&self.max_connections, "maxConnections", d.max_connections)?,
            max_pending_requests: limit(
                &self.max_pending_requests,
                "maxPendingRequests",
                d.max_pending_requests,
            )?,
            max_requests: limit(&self.max_requests, "maxRequests", d.max_requests)?,
            max_retries: limit(&self.max_retries, "maxRetries", d.max_retries)?,
        })
    }
}

impl RawOutlierDetection {
    fn validate(&self, at: &str) -> Result<OutlierDetection, FieldError> {
        let d = OutlierDetection::default();
        let consecutive = |v: &Option<S<i64>>, field: &str, default| {
            or_default(v, default, |v| count(v, &format!("{at}.{field}"), 0))
        };
        let time = |v: &Option<S<String>>, field: &str, default| {
            or_default(v, default, |v| {
                positive_duration(v, &format!("{at}.{field}"))
            })
        };
        let base = time(
            &self.base_ejection_time,
            "baseEjectionTime",
            d.base_ejection_time,
        )?;
        let max = time(
            &self.max_ejection_time,
            "maxEjectionTime",
            d.max_ejection_time,
        )?;
        if max < base {
            return match (&self.max_ejection_time, &self.base_ejection_time) {
                (Some(m), _) => fail(
                    m,
                    format!("{at}.maxEjectionTime"),
                    format!("{:?} is less than baseEjectionTime {:?}", m.value, base),
                ),
                (None, Some(b)) => fail(
                    b,
                    format!("{at}.baseEjectionTime"),
                    format!(
                        "{:?} is over maxEjectionTime (default {:?}); set maxEjectionTime too",
                        b.value, max
                    ),
                ),
                (None, None) => unreachable!("the defaults are ordered"),
            };
        }
        Ok(OutlierDetection {
            consecutive_5xx: consecutive(
                &self.consecutive_5xx,
                "consecutive5xx",
                d.consecutive_5xx,
            )?,
            consecutive_gateway_errors: consecutive(
                &self.consecutive_gateway_errors,
                "consecutiveGatewayErrors",
                d.consecutive_gateway_errors,
            )?,
            base_ejection_time: base,
            max_ejection_time: max,
            max_ejection_percent: or_default(
                &self.max_ejection_percent,
                d.max_ejection_percent,
                |v| int_in(v, &format!("{at}.maxEjectionPercent"), 0, 100).map(|n| n as u32),
            )?,
        })
    }
}
