//! Per-endpoint load: requests outstanding and a peak-EWMA of latency. "Peak" means a slower
//! sample replaces the average at once while faster samples pull it down gradually, so a
//! degrading endpoint is avoided immediately and trusted again only slowly.

use crate::config::EndpointState;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// How fast old samples fade: the weight of a sample halves about every 7 s (tau = 10 s).
const DECAY_NANOS: f64 = 10e9;
/// Assumed latency of an endpoint without samples yet, so new endpoints are tried but not
/// flooded.
const DEFAULT_RTT_NANOS: f64 = 1e6;

#[derive(Debug)]
pub struct Load {
    outstanding: AtomicUsize,
    /// f64 bits of the EWMA in nanoseconds; 0 = no sample yet.
    ewma: AtomicU64,
    /// Nanoseconds since `epoch` of the last update.
    stamp: AtomicU64,
    epoch: Instant,
}

impl Default for Load {
    fn default() -> Self {
        Load {
            outstanding: AtomicUsize::new(0),
            ewma: AtomicU64::new(0),
            stamp: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl Load {
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// The estimate, decayed toward zero for the time since the last sample, so an endpoint
    /// that was avoided for being slow is tried again after a while (as tower's PeakEwma does).
    pub fn ewma_nanos(&self) -> f64 {
        match f64::from_bits(self.ewma.load(Ordering::Relaxed)) {
            v if v > 0.0 => {
                let now = self.epoch.elapsed().as_nanos() as u64;
                let idle = now.saturating_sub(self.stamp.load(Ordering::Relaxed)) as f64;
                v * (-idle / DECAY_NANOS).exp()
            }
            _ => DEFAULT_RTT_NANOS,
        }
    }

    /// Expected cost of sending one more request here.
    pub fn cost(&self) -> f64 {
        self.ewma_nanos() * (self.outstanding() as f64 + 1.0)
    }

    /// Records one latency sample. Races between concurrent updates lose a sample at worst.
    pub fn observe(&self, rtt_nanos: f64) {
        let now = self.epoch.elapsed().as_nanos() as u64;
        let last = self.stamp.swap(now, Ordering::Relaxed);
        let current = f64::from_bits(self.ewma.load(Ordering::Relaxed));
        let next = if current <= 0.0 || rtt_nanos > current {
            rtt_nanos
        } else {
            let w = (-(now.saturating_sub(last) as f64) / DECAY_NANOS).exp();
            current * w + rtt_nanos * (1.0 - w)
        };
        self.ewma.store(next.to_bits(), Ordering::Relaxed);
    }
}

/// One outstanding request on an endpoint, counted until the guard drops (at the end of the
/// response body).
///
/// A request sent that never got its response head (the caller gave up, a timeout fired, the
/// stream failed) is a latency sample too, of the time it waited: otherwise an endpoint behind a
/// silent connection, whose requests are all abandoned, keeps the estimate of its last good
/// answer, looks like the fastest endpoint and gets every request until the connection's
/// keepalive gives up on it (as tower's PeakEwma, the sample is taken when the handle drops).
#[derive(Debug)]
pub struct LoadGuard {
    endpoint: Arc<EndpointState>,
    /// When the request went out (`sent`); meaningless before, and never read then.
    started: Instant,
    /// Sent, and no response head yet.
    awaiting_head: bool,
}

impl LoadGuard {
    pub fn start(endpoint: &Arc<EndpointState>) -> LoadGuard {
        endpoint.load.outstanding.fetch_add(1, Ordering::Relaxed);
        LoadGuard {
            endpoint: endpoint.clone(),
            // No clock read until the request is sent: only `sent` starts the measurement.
            started: endpoint.load.epoch,
            awaiting_head: false,
        }
    }

    /// The request is on the wire: latency is measured from here, so the time to open a
    /// connection (a TLS handshake) does not count as the endpoint's latency.
    pub fn sent(&mut self) {
        self.started = Instant::now();
        self.awaiting_head = true;
    }

    /// The endpoint the request went to.
    pub fn endpoint_addr(&self) -> std::net::SocketAddr {
        self.endpoint.conn.addr()
    }

    /// Response headers arrived: the latency sample.
    pub fn headers_received(&mut self) {
        if std::mem::take(&mut self.awaiting_head) {
            self.endpoint
                .load
                .observe(self.started.elapsed().as_nanos() as f64);
        }
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        if self.awaiting_head {
            self.endpoint
                .load
                .observe(self.started.elapsed().as_nanos() as f64);
        }
        self.endpoint
            .load
            .outstanding
            .fetch_sub(1, Ordering::Relaxed);
    }
}
