//! Caps on open discovery streams, in total and per identity, so that a pod in a restart loop or a
//! client leaking streams cannot take the whole budget from the rest of the fleet. A refused
//! stream gets `RESOURCE_EXHAUSTED` with `grpc-retry-pushback-ms` (the gRPC retry-pushback key,
//! a decimal count of milliseconds), jittered so that refused proxies do not all return at once.
//! Counts are held by a `StreamPermit` that the stream task owns, so they are released whichever
//! way the stream ends.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

use crate::accept::Throttle;
use crate::metrics::{ControlPlaneMetrics, StreamCap};

/// The gRPC metadata key telling a client how long to wait before retrying.
pub const PUSHBACK_KEY: &str = "grpc-retry-pushback-ms";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamCaps {
    /// Open streams in total.
    pub total: usize,
    /// Open streams of one identity (namespace/service account).
    pub per_identity: usize,
    /// The least a refused client is told to wait; the hint is this plus up to half again.
    pub pushback: Duration,
}

impl Default for StreamCaps {
    fn default() -> Self {
        StreamCaps {
            total: 20_000,
            per_identity: 100,
            pushback: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_identity: HashMap<String, usize>,
}

/// The open-stream counts, shared by every stream of one server.
#[derive(Debug)]
pub struct StreamLimits {
    caps: StreamCaps,
    counts: Mutex<Counts>,
    refusals: Throttle,
    metrics: Arc<ControlPlaneMetrics>,
}

impl StreamLimits {
    pub fn new(caps: StreamCaps) -> Arc<Self> {
        Self::with_metrics(caps, ControlPlaneMetrics::new())
    }

    /// Counts refusals, by cap, in `metrics`.
    pub fn with_metrics(caps: StreamCaps, metrics: Arc<ControlPlaneMetrics>) -> Arc<Self> {
        Arc::new(StreamLimits {
            caps,
            counts: Mutex::new(Counts::default()),
            refusals: Throttle::new(Duration::from_secs(1)),
            metrics,
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        // The counts stay consistent under a panic elsewhere (each update is one statement).
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Streams open now: in total, and of `identity`.
    pub fn open(&self, identity: &str) -> (usize, usize) {
        let counts = self.counts();
        let of = counts.by_identity.get(identity).copied().unwrap_or(0);
        (counts.total, of)
    }

    /// Takes a place for a stream of `identity`, or says which cap refuses it.
    pub fn acquire(self: &Arc<Self>, identity: &str) -> Result<StreamPermit, Status> {
        let refusal = {
            let mut counts = self.counts();
            let of = counts.by_identity.get(identity).copied().unwrap_or(0);
            if counts.total >= self.caps.total {
                self.metrics.stream_refused(StreamCap::Total);
                Some(format!(
                    "discovery stream limit reached: {} streams open in total (max-streams {}); \
                     identity {identity} has {of}",
                    counts.total, self.caps.total
                ))
            } else if of >= self.caps.per_identity {
                self.metrics.stream_refused(StreamCap::PerIdentity);
                Some(format!(
                    "discovery stream limit reached for identity {identity}: {of} streams open \
                     (max-streams-per-identity {})",
                    self.caps.per_identity
                ))
            } else {
                counts.total += 1;
                *counts.by_identity.entry(identity.to_owned()).or_insert(0) += 1;
                None
            }
        };
        match refusal {
            None => Ok(StreamPermit {
                limits: self.clone(),
                identity: identity.to_owned(),
            }),
            Some(message) => {
                let pushback = self.pushback();
                if let Some(held) = self.refusals.ready() {
                    tracing::warn!(
                        pushback_ms = pushback.as_millis() as u64,
                        refused_since_last_log = held,
                        "{message}"
                    );
                }
                Err(exhausted(message, pushback))
            }
        }
    }

    /// `pushback` plus a random 0..50 % of it.
    fn pushback(&self) -> Duration {
        let base = self.caps.pushback;
        let mut bytes = [0u8; 2];
        let fraction = match SystemRandom::new().fill(&mut bytes) {
            Ok(()) => f64::from(u16::from_le_bytes(bytes)) / f64::from(u16::MAX),
            Err(_) => 0.5,
        };
        base + base.mul_f64(fraction / 2.0)
    }

    fn release(&self, identity: &str) {
        let mut counts = self.counts();
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.by_identity.get_mut(identity) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.by_identity.remove(identity);
            }
        }
    }
}

/// `RESOURCE_EXHAUSTED` with the pushback in milliseconds.
fn exhausted(message: String, pushback: Duration) -> Status {
    let mut metadata = MetadataMap::new();
    let millis = pushback.as_millis().to_string();
    if let Ok(value) = MetadataValue::try_from(millis.as_str()) {
        metadata.insert(PUSHBACK_KEY, value);
    }
    Status::with_metadata(Code::ResourceExhausted, message, metadata)
}

/// One open stream's place; released on drop.
#[derive(Debug)]
pub struct StreamPermit {
    limits: Arc<StreamLimits>,
    identity: String,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        self.limits.release(&self.identity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(total: usize, per_identity: usize) -> StreamCaps {
        StreamCaps {
            total,
            per_identity,
            pushback: Duration::from_millis(1000),
        }
    }

    fn pushback_ms(status: &Status) -> u64 {
        status
            .metadata()
            .get(PUSHBACK_KEY)
            .expect("pushback present")
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    #[test]
    fn per_identity_cap_refuses_with_pushback_and_releases_on_drop() {
        let metrics = ControlPlaneMetrics::new();
        let limits = StreamLimits::with_metrics(caps(10, 2), metrics.clone());
        let a1 = limits.acquire("default/a").unwrap();
        let _a2 = limits.acquire("default/a").unwrap();
        let refused = limits.acquire("default/a").unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert!(
            refused
                .message()
                .contains("identity default/a: 2 streams open")
                && refused.message().contains("max-streams-per-identity 2"),
            "{}",
            refused.message()
        );
        let ms = pushback_ms(&refused);
        assert!((1000..=1500).contains(&ms), "{ms}");
        assert_eq!(metrics.streams_refused(StreamCap::PerIdentity), 1);
        assert_eq!(metrics.streams_refused(StreamCap::Total), 0);
        // Another identity is not affected.
        let _b = limits.acquire("default/b").unwrap();
        assert_eq!(limits.open("default/a"), (3, 2));
        drop(a1);
        assert_eq!(limits.open("default/a"), (2, 1));
        let _a3 = limits.acquire("default/a").unwrap();
    }

    #[test]
    fn total_cap_refuses_everyone() {
        let metrics = ControlPlaneMetrics::new();
        let limits = StreamLimits::with_metrics(caps(2, 5), metrics.clone());
        let _a = limits.acquire("default/a").unwrap();
        let b = limits.acquire("default/b").unwrap();
        let refused = limits.acquire("default/c").unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert!(
            refused
                .message()
                .contains("2 streams open in total (max-streams 2)")
                && refused.message().contains("identity default/c has 0"),
            "{}",
            refused.message()
        );
        assert_eq!(metrics.streams_refused(StreamCap::Total), 1);
        assert_eq!(metrics.streams_refused(StreamCap::PerIdentity), 0);
        drop(b);
        assert!(limits.acquire("default/c").is_ok());
        assert_eq!(
            limits.open("default/c"),
            (1, 0),
            "the permit was dropped at once"
        );
    }

    #[test]
    fn pushback_is_jittered_within_half_again() {
        let limits = StreamLimits::new(caps(0, 0));
        let values: Vec<u64> = (0..50)
            .map(|_| pushback_ms(&limits.acquire("x/y").unwrap_err()))
            .collect();
        assert!(
            values.iter().all(|ms| (1000..=1500).contains(ms)),
            "{values:?}"
        );
        let distinct: std::collections::HashSet<_> = values.iter().collect();
        assert!(distinct.len() > 5, "jittered: {values:?}");
    }
}
