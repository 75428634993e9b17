//! A consistent-hash ring for session affinity: each endpoint owns 100 × weight points; a key maps
//! to the first point at or after its hash. Adding or removing an endpoint moves only the keys of
//! the points it owns. The hash is SipHash with fixed keys, so every proxy maps a key alike.

use crate::config::Endpoint;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

const POINTS_PER_WEIGHT: u32 = 100;

#[derive(Debug, Clone, Default)]
pub struct HashRing {
    /// (point, endpoint index), sorted by point.
    points: Vec<(u64, usize)>,
}

fn hash(bytes: &[u8]) -> u64 {
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

impl HashRing {
    pub fn new(endpoints: &[Arc<Endpoint>]) -> Self {
        let mut points = Vec::new();
        for (i, e) in endpoints.iter().enumerate() {
            for p in 0..POINTS_PER_WEIGHT * e.weight.clamp(1, 100) {
                points.push((hash(format!("{}#{p}", e.addr).as_bytes()), i));
            }
        }
        points.sort_unstable();
        HashRing { points }
    }

    /// The owner of `key`, walking on past endpoints that `ok` rejects.
    pub fn lookup<'a>(
        &self,
        key: &[u8],
        eps: &'a [Arc<Endpoint>],
        ok: impl Fn(&Endpoint) -> bool,
    ) -> Option<&'a Arc<Endpoint>> {
        if self.points.is_empty() {
            return None;
        }
        let h = hash(key);
        let start = self.points.partition_point(|(p, _)| *p < h);
        (0..self.points.len())
            .map(|i| self.points[(start + i) % self.points.len()].1)
            .filter_map(|i| eps.get(i))
            .find(|e| ok(e))
    }
}
