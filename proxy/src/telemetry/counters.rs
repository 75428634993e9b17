//! Counters of what the resilience machinery did, per destination cluster and per route: lock-free
//! atomics bumped on the request path, read by `/stats` and the Prometheus collector. They live
//! outside the config snapshot, carried from one snapshot to the next by name, so a config update
//! does not reset them.

use serde::{Serialize, Serializer};
use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Serialize for Counter {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.get())
    }
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteStats {
    #[serde(skip)]
    pub http: super::metrics::RequestMetrics,
    pub requests: Counter,
    pub retries: Counter,
    pub budget_exhausted: Counter,
    pub timeouts: Counter,
    pub per_try_timeouts: Counter,
    pub faults_injected: Counter,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStats {
    pub requests: Counter,
    pub retries: Counter,
    pub budget_exhausted: Counter,
    pub timeouts: Counter,
    pub overflow_connections: Counter,
    pub overflow_pending: Counter,
    pub overflow_requests: Counter,
    pub overflow_retries: Counter,
    pub ejections: Counter,
    pub connect_failures: Counter,
}
