//! Resource limits: what one slow client, one flood or one burst may cost the proxy. Every bound
//! a hostile or overloaded peer could otherwise push without end (header bytes, connections,
//! concurrent streams, requests in flight, time spent waiting for bytes) has its knob here, so
//! that one struct travels from the command line to the listeners and the request stack.
//!
//! `Budget` is the counter behind the bounds that are counts of things held at once (open
//! connections per listener, requests in flight per listener): taking a slot is one
//! compare-and-swap, with no lock and no queue, and a refusal is counted where `/metrics` reads it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Limits {
    /// An HTTP/1 request head must arrive within this (slowloris).
    pub header_read_timeout: Duration,
    /// Largest HTTP/1 request head (request line plus headers), in bytes.
    pub max_header_bytes: usize,
    /// An HTTP/1 request body may stall this long before it is answered 408 (slow body).
    pub body_idle_timeout: Duration,
    /// Largest decoded HTTP/2 header list, in bytes (bounds CONTINUATION floods).
    pub max_header_list_size: u32,
    /// Concurrent HTTP/2 streams a peer may open on one connection.
    pub max_concurrent_streams: u32,
    /// Open connections per listener; more are accepted and closed at once: left in the
    /// kernel's backlog they would only make the client wait for a timeout, and refusing early
    /// keeps file descriptors for the connections already being served.
    pub max_connections: usize,
    /// Requests each listener (inbound, outbound) works on at once; more are answered 503 at once
    /// (load shedding, `resilience::shed`).
    pub max_in_flight_requests: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            body_idle_timeout: Duration::from_secs(60),
            max_header_list_size: 64 * 1024,
            max_concurrent_streams: 1000,
            max_connections: 20_000,
            max_in_flight_requests: 10_000,
        }
    }
}

/// At most `max` things held at once, and how many were refused since start.
#[derive(Debug)]
pub struct Budget {
    max: usize,
    in_use: AtomicUsize,
    refused: AtomicU64,
}

/// One held place in a `Budget`; given back when dropped.
#[derive(Debug)]
pub struct Slot(Arc<Budget>);

impl Budget {
    pub fn new(max: usize) -> Arc<Budget> {
        Arc::new(Budget {
            max,
            in_use: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// A slot if fewer than `max` are held; otherwise counts the refusal.
    pub fn try_take(self: &Arc<Self>) -> Option<Slot> {
        let max = self.max;
        let taken = (self.in_use).fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        });
        match taken {
            Ok(_) => Some(Slot(self.clone())),
            Err(_) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Acquire)
    }

    /// Takes refused because the budget was full, since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_use.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::Budget;

    #[test]
    fn refuses_over_the_bound_and_frees_on_drop() {
        let budget = Budget::new(2);
        let a = budget.try_take();
        let b = budget.try_take();
        assert!(a.is_some() && b.is_some());
        assert!(budget.try_take().is_none());
        assert_eq!((budget.in_use(), budget.refused()), (2, 1));
        drop(a);
        assert!(budget.try_take().is_some(), "a freed place is usable again");
        assert_eq!(budget.in_use(), 1, "the slot above was dropped at once");
    }
}
