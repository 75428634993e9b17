//! The retry budget: retries may add at most `ratio` × requests plus `min_per_second` × window to a
//! destination's load over a sliding 10-second window, so that a failing service sees a bounded
//! amount of extra traffic however many callers retry (Linkerd's model; Envoy's retry budgets are
//! the same idea). Lock-free: ten one-second buckets of atomics, each stamped with its second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

const BUCKETS: usize = 10;
/// Seconds the budget looks back over.
pub const WINDOW_SECS: u64 = BUCKETS as u64;

#[derive(Debug)]
pub struct RetryBudget {
    start: Instant,
    // (second stamp, requests, retries) per bucket.
    stamps: [AtomicU64; BUCKETS],
    requests: [AtomicU64; BUCKETS],
    retries: [AtomicU64; BUCKETS],
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            start: Instant::now(),
            stamps: Default::default(),
            requests: Default::default(),
            retries: Default::default(),
        }
    }
}

impl RetryBudget {
    fn now_secs(&self) -> u64 {
        self.start.elapsed().as_secs() + 1
    }

    /// The bucket for this second, cleared if it last served an older second.
    fn bucket(&self, now: u64) -> usize {
        let i = (now % BUCKETS as u64) as usize;
        let stamp = self.stamps[i].load(Ordering::Acquire);
        if stamp != now
            && self.stamps[i]
                .compare_exchange(stamp, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.requests[i].store(0, Ordering::Release);
            self.retries[i].store(0, Ordering::Release);
        }
        i
    }

    fn window_sums(&self, now: u64) -> (u64, u64) {
        let (mut req, mut ret) = (0, 0);
        for i in 0..BUCKETS {
            let stamp = self.stamps[i].load(Ordering::Acquire);
            if stamp + BUCKETS as u64 > now {
                req += self.requests[i].load(Ordering::Relaxed);
                ret += self.retries[i].load(Ordering::Relaxed);
            }
        }
        (req, ret)
    }

    /// (original requests, retries) in the window now; read by `/explain`.
    pub fn window(&self) -> (u64, u64) {
        self.window_sums(self.now_secs())
    }

    /// Records an original request (not a retry).
    pub fn deposit(&self) {
        let now = self.now_secs();
        let i = self.bucket(now);
        self.requests[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget if it allows one.
    pub fn try_withdraw(&self, ratio: f64, min_per_second: u32) -> bool {
        let now = self.now_secs();
        let (requests, retries) = self.window_sums(now);
        let allowed = (requests as f64 * ratio) as u64 + u64::from(min_per_second) * BUCKETS as u64;
        if retries >= allowed {
            return false;
        }
        let i = self.bucket(now);
        self.retries[i].fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_capped_by_ratio_plus_minimum() {
        let budget = RetryBudget::default();
        for _ in 0..1000 {
            budget.deposit();
        }
        let granted = (0..1000).filter(|_| budget.try_withdraw(0.2, 1)).count();
        // 20% of 1000 requests plus 1/s over the 10 s window.
        assert_eq!(granted, 200 + 10);
    }

    #[test]
    fn zero_budget_allows_only_the_minimum() {
        let budget = RetryBudget::default();
        let granted = (0..100).filter(|_| budget.try_withdraw(0.0, 0)).count();
        assert_eq!(granted, 0);
    }
}
