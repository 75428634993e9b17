//! A small, fast, non-cryptographic random source for load balancing, fault injection and jitter:
//! xorshift64* per thread, seeded from the standard library's per-process random keys. No lock and
//! no syscall per call.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    h.finish() | 1
}

/// A uniformly distributed u64.
pub fn next_u64() -> u64 {
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// Uniform in [0, n); 0 when n is 0.
pub fn below(n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    // Multiply-shift avoids the modulo bias that matters for small n.
    ((u128::from(next_u64()) * u128::from(n)) >> 64) as u64
}

/// Uniform in [0, 1).
pub fn unit() -> f64 {
    (next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    #[test]
    fn below_is_in_range_and_roughly_uniform() {
        let mut counts = [0u32; 4];
        for _ in 0..40_000 {
            let v = super::below(4);
            counts[v as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
        assert_eq!(super::below(0), 0);
        let u = super::unit();
        assert!((0.0..1.0).contains(&u));
    }
}
