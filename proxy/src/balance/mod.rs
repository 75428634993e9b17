//! Endpoint selection, by the cluster's `LbPolicy`:
//! - `P2cEwma` (default): two random candidates, the lower cost wins; cost = peak-EWMA latency ×
//!   (outstanding + 1) / weight. Slow or busy endpoints shed load within a few requests.
//! - `LeastRequest`: two random candidates, fewer outstanding requests per weight wins.
//! - `RoundRobin`: weighted rotation on one atomic counter.
//! - `ConsistentHash`: a hash ring keyed by a header or cookie, for session affinity.
//!
//! Ejected endpoints (outlier detection) and the endpoint a retry wants to avoid are skipped; if
//! that leaves none, all endpoints are candidates again (better a suspect endpoint than none).

mod load;
mod ring;

pub use load::{Load, LoadGuard};
pub use ring::HashRing;

use crate::config::{Cluster, Endpoint, HashKey, LbPolicy};
use crate::random;
use http::HeaderMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Picks an endpoint for one attempt.
pub fn pick<'a>(
    cluster: &'a Cluster,
    headers: &HeaderMap,
    avoid: Option<SocketAddr>,
) -> Option<&'a Arc<Endpoint>> {
    let eps = &cluster.endpoints;
    if eps.is_empty() {
        return None;
    }
    let usable = |e: &Endpoint| Some(e.addr) != avoid && !e.state.outlier.is_ejected();
    let any_usable = eps.iter().any(|e| usable(e));
    let ok = |e: &Endpoint| !any_usable || usable(e);
    match cluster.policy.lb {
        LbPolicy::RoundRobin => round_robin(eps, &cluster.state.next, ok),
        LbPolicy::P2cEwma => p2c(eps, ok, |e| {
            e.state.load.cost() / f64::from(e.weight.max(1))
        }),
        LbPolicy::LeastRequest => p2c(eps, ok, |e| {
            (e.state.load.outstanding() as f64 + 1.0) / f64::from(e.weight.max(1))
        }),
        LbPolicy::ConsistentHash => {
            let key = cluster
                .policy
                .hash
                .as_ref()
                .and_then(|k| hash_key(k, headers));
            match (key, &cluster.ring) {
                (Some(key), Some(ring)) => ring.lookup(key, eps, ok),
                _ => p2c(eps, ok, |e| {
                    e.state.load.cost() / f64::from(e.weight.max(1))
                }),
            }
        }
    }
}

/// Weighted rotation: each endpoint appears `weight` times per turn of the counter.
fn round_robin<'a>(
    eps: &'a [Arc<Endpoint>],
    counter: &std::sync::atomic::AtomicUsize,
    ok: impl Fn(&Endpoint) -> bool,
) -> Option<&'a Arc<Endpoint>> {
    let total: usize = eps.iter().map(|e| e.weight.max(1) as usize).sum();
    for _ in 0..eps.len() {
        let mut slot = counter.fetch_add(1, Ordering::Relaxed) % total;
        let chosen = eps.iter().find(|e| {
            let w = e.weight.max(1) as usize;
            if slot < w {
                true
            } else {
                slot -= w;
                false
            }
        });
        if let Some(e) = chosen.filter(|e| ok(e)) {
            return Some(e);
        }
    }
    eps.iter().find(|e| ok(e))
}

/// Power of two choices: two distinct random endpoints, the cheaper usable one wins. If most
/// endpoints are unusable, falls back to the cheapest usable one by scanning.
fn p2c(
    eps: &[Arc<Endpoint>],
    ok: impl Fn(&Endpoint) -> bool,
    cost: impl Fn(&Endpoint) -> f64,
) -> Option<&Arc<Endpoint>> {
    let n = eps.len() as u64;
    if n == 1 {
        return eps.first();
    }
    for _ in 0..4 {
        let i = random::below(n);
        let mut j = random::below(n - 1);
        if j >= i {
            j += 1;
        }
        let (a, b) = (&eps[i as usize], &eps[j as usize]);
        match (ok(a), ok(b)) {
            (true, true) => return Some(if cost(b) < cost(a) { b } else { a }),
            (true, false) => return Some(a),
            (false, true) => return Some(b),
            (false, false) => continue,
        }
    }
    eps.iter()
        .filter(|e| ok(e))
        .min_by(|a, b| cost(a).total_cmp(&cost(b)))
}

fn hash_key<'h>(key: &HashKey, headers: &'h HeaderMap) -> Option<&'h [u8]> {
    match key {
        HashKey::Header(name) => headers.get(name).map(|v| v.as_bytes()),
        HashKey::Cookie(name) => headers.get_all(http::header::COOKIE).iter().find_map(|v| {
            v.as_bytes().split(|b| *b == b';').find_map(|pair| {
                let pair = pair.trim_ascii_start();
                let rest = pair.strip_prefix(name.as_bytes())?;
                rest.strip_prefix(b"=")
            })
        }),
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod tests_support;
