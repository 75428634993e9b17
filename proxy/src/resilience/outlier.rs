//! Outlier detection: an endpoint that answers with `consecutive_5xx` 5xx responses, or
//! `consecutive_gateway_errors` gateway errors (502/503/504, connect failures), in a row is
//! ejected from balancing for base × (number of ejections) capped at max, unless that would eject
//! more than `max_ejection_percent` of the cluster (one ejection is always allowed, as in Envoy).
//! When the time is up the endpoint gets traffic again on probation: its next failure ejects it at
//! once, its next success clears the record by one ejection.

use crate::config::{Endpoint, OutlierConfig};
use crate::telemetry::ClusterStats;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Milliseconds since the first call, a cheap shared clock for ejection deadlines.
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// What one attempt on an endpoint showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A 5xx other than a gateway error.
    ServerError,
    /// 502/503/504 or a failure to connect.
    GatewayError,
}

impl Outcome {
    pub fn of_status(status: u16) -> Outcome {
        match status {
            502..=504 => Outcome::GatewayError,
            500..=599 => Outcome::ServerError,
            _ => Outcome::Success,
        }
    }
}

#[derive(Debug, Default)]
pub struct OutlierState {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    /// `now_ms()` until which the endpoint is ejected; 0 = never ejected.
    ejected_until: AtomicU64,
    ejections: AtomicU32,
    probation: AtomicBool,
}

impl OutlierState {
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Acquire);
        if until == 0 {
            return false;
        }
        if now_ms() < until {
            return true;
        }
        // Time served: back in rotation, on probation until the next outcome.
        if self
            .ejected_until
            .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.probation.store(true, Ordering::Release);
        }
        false
    }

    /// Records an outcome; returns true if the endpoint was ejected by it.
    pub fn record(
        &self,
        outcome: Outcome,
        config: &OutlierConfig,
        cluster: &[Arc<Endpoint>],
        stats: &ClusterStats,
    ) -> bool {
        if outcome == Outcome::Success {
            self.consecutive_5xx.store(0, Ordering::Relaxed);
            self.consecutive_gateway.store(0, Ordering::Relaxed);
            if self.probation.swap(false, Ordering::AcqRel) {
                let _ = self
                    .ejections
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
            }
            return false;
        }
        let fives = self.consecutive_5xx.fetch_add(1, Ordering::AcqRel) + 1;
        let gateway = if outcome == Outcome::GatewayError {
            self.consecutive_gateway.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            self.consecutive_gateway.store(0, Ordering::Relaxed);
            0
        };
        let tripped = self.probation.load(Ordering::Acquire)
            || (config.consecutive_5xx > 0 && fives >= config.consecutive_5xx)
            || (config.consecutive_gateway_errors > 0
                && gateway >= config.consecutive_gateway_errors);
        let enabled = config.consecutive_5xx > 0 || config.consecutive_gateway_errors > 0;
        if !tripped || !enabled || self.is_ejected() || !room_to_eject(config, cluster) {
            return false;
        }
        let n = self.ejections.fetch_add(1, Ordering::AcqRel) + 1;
        let duration = config
            .base_ejection
            .saturating_mul(n)
            .min(config.max_ejection.max(config.base_ejection));
        self.ejected_until
            .store(now_ms() + duration.as_millis() as u64, Ordering::Release);
        self.probation.store(false, Ordering::Release);
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway.store(0, Ordering::Relaxed);
        stats.ejections.inc();
        // Found by identity rather than passed in so the hot path's signature stays as it is;
        // this runs only on an ejection.
        let endpoint = cluster
            .iter()
            .find(|e| std::ptr::eq(&e.state.outlier, self))
            .map(|e| e.addr.to_string())
            .unwrap_or_else(|| "unknown".into());
        tracing::info!(
            %endpoint,
            ejection = n,
            duration = %crate::config::human_duration(duration),
            "endpoint {endpoint} ejected by outlier detection"
        );
        true
    }

    /// Remaining ejection time, for tests and the admin view.
    pub fn ejected_for(&self) -> Option<Duration> {
        let until = self.ejected_until.load(Ordering::Acquire);
        let now = now_ms();
        (until > now).then(|| Duration::from_millis(until - now))
    }
}

fn room_to_eject(config: &OutlierConfig, cluster: &[Arc<Endpoint>]) -> bool {
    if config.max_ejection_percent == 0 {
        return false;
    }
    let ejected = cluster
        .iter()
        .filter(|e| e.state.outlier.is_ejected())
        .count();
    ejected == 0 || (ejected + 1) * 100 <= config.max_ejection_percent as usize * cluster.len()
}

#[cfg(test)]
mod tests;
