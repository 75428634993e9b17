//! The bound on open connections per listener (`Limits::max_connections`). A connection over the
//! bound is accepted and closed at once: leaving it in the kernel's backlog would only make the
//! client wait for a timeout, and refusing early keeps file descriptors for the connections
//! already being served. A permit is held for the whole life of a connection (including opaque
//! TCP in transparent mode) and released when it is dropped.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Debug)]
pub struct ConnLimit {
    max: usize,
    open: AtomicUsize,
    refused: AtomicU64,
}

/// One open connection's place under the limit.
#[derive(Debug)]
pub struct ConnPermit(Arc<ConnLimit>);

impl ConnLimit {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(ConnLimit {
            max,
            open: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// A permit if fewer than `max` connections are open; otherwise counts the refusal.
    pub fn try_acquire(self: &Arc<Self>) -> Option<ConnPermit> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            });
        match taken {
            Ok(_) => Some(ConnPermit(self.clone())),
            Err(_) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Connections closed at once because the listener was full.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_over_the_bound_and_frees_on_drop() {
        let limit = ConnLimit::new(2);
        let a = limit.try_acquire();
        let b = limit.try_acquire();
        assert!(a.is_some() && b.is_some());
        assert!(limit.try_acquire().is_none());
        assert_eq!((limit.open(), limit.refused()), (2, 1));
        drop(a);
        assert!(
            limit.try_acquire().is_some(),
            "a freed place is usable again"
        );
        assert_eq!(limit.open(), 1, "the permit above was dropped at once");
    }
}
