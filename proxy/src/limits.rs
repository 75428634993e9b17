//! Resource limits: what one slow client, one flood or one burst may cost the proxy. Every bound
//! a hostile or overloaded peer could otherwise push without end (header bytes, connections,
//! concurrent streams, requests in flight, time spent waiting for bytes) has its knob here, so
//! that one struct travels from the command line to the listeners and the request stack.
//!
//! `Budget` is the counter behind the bounds that are counts of things held at once (open
//! connections per listener, requests in flight per listener): taking a slot is one
//! compare-and-swap, with no lock and no queue, and a refusal is counted where `/metrics` reads it.
//!
//! A budget shared by many client connections (requests in flight) is also shared fairly between
//! them (`Budget::try_take_for`): once half of it is in use, a connection that already holds its
//! fair share is refused, whatever room is left. The share is the budget over the connections
//! holding slots plus one, never less than `FAIR_SHARE_FLOOR`: the "plus one" keeps room for a
//! client that has nothing in flight yet (the well-behaved client between two requests), so one
//! client that opens a thousand streams and sits on them gets at most half the budget when
//! alone, less when others are busy, and the other clients' requests always find room. With the
//! defaults (10,000 in flight, 1,000 streams per connection) no single connection reaches half,
//! so fairness only shows between many greedy connections. This costs one more atomic add and
//! subtract per request on the connection's own counter, and one on the count of active
//! connections when a connection goes from zero slots to one and back.

pub mod idle;
pub mod workers;

use std::sync::atomic::{AtomicIsize, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Limits {
    /// An HTTP/1 connection that waits this long for a request head and gets none (a head
    /// dribbled in, slowloris, or an idle keep-alive connection) is closed, after one to two of
    /// these (`listeners::head_wait`).
    pub header_read_timeout: Duration,
    /// Largest HTTP/1 request head (request line plus headers), in bytes.
    pub max_header_bytes: usize,
    /// An HTTP/1 request body may stall this long before it is answered 408 (slow body).
    pub body_idle_timeout: Duration,
    /// Largest decoded HTTP/2 header list, in bytes (bounds CONTINUATION floods).
    pub max_header_list_size: u32,
    /// Concurrent HTTP/2 streams a peer sidecar may open on one (mTLS) connection, which carries
    /// many apps' requests.
    pub max_concurrent_streams: u32,
    /// Concurrent HTTP/2 streams one client (an app on the outbound listener, a plaintext caller
    /// on the inbound) may open on one connection; never more than `max_concurrent_streams`.
    /// Lower than a peer's: every stream a client opens at once is work the proxy starts at once
    /// (a task, an upstream stream, an app connection), and a client that opens and abandons a
    /// thousand is work every other client waits behind; streams over the bound are refused by
    /// h2 with REFUSED_STREAM before any of that starts.
    pub max_client_concurrent_streams: u32,
    /// Open connections per listener; more are accepted and closed at once: left in the
    /// kernel's backlog they would only make the client wait for a timeout, and refusing early
    /// keeps file descriptors for the connections already being served.
    pub max_connections: usize,
    /// Requests each listener (inbound, outbound) works on at once; more are answered 503 at once
    /// (load shedding, `resilience::shed`).
    pub max_in_flight_requests: usize,
    /// TCP keepalive on every connection the proxy accepts or opens for a tunnel: a peer that
    /// vanished without a FIN or a RST (a partition, a host powered off) is found after this
    /// much silence plus three unanswered probes this far apart, instead of holding the
    /// connection's slot and descriptors until the tunnel's idle timeout.
    pub tcp_keepalive: Duration,
    /// An opaque TCP stream or a WebSocket with no byte in either direction for this long is
    /// closed (Envoy's TCP proxy closes after an hour too): an abandoned tunnel does not hold its
    /// slot forever (`idle`).
    pub tunnel_idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            body_idle_timeout: Duration::from_secs(60),
            max_header_list_size: 64 * 1024,
            max_concurrent_streams: 1000,
            max_client_concurrent_streams: 100,
            max_connections: 20_000,
            max_in_flight_requests: 10_000,
            tcp_keepalive: Duration::from_secs(10),
            tunnel_idle_timeout: Duration::from_secs(3600),
        }
    }
}

/// A connection holding at least this many slots may be shed as over its fair share; below it, never
/// (with thousands of connections active, an even split would leave each too little to work with).
pub const FAIR_SHARE_FLOOR: usize = 16;

/// At most `max` things held at once, and how many were refused since start.
#[derive(Debug)]
pub struct Budget {
    max: usize,
    in_use: AtomicUsize,
    refused: AtomicU64,
    /// Of `refused`, those refused because their connection held more than its fair share.
    unfair: AtomicU64,
    /// Connections (`Share`s) holding at least one slot. Signed: a connection's release and its
    /// next take race, so the count may dip below its true value for a moment.
    active: AtomicIsize,
}

/// What one client connection holds of a `Budget` (`Budget::try_take_for`). Its count is also
/// how the connection's reader tells an idle connection from one waiting on a response
/// (`h1_guard`'s head timer): a slot is held until the response body ends.
#[derive(Debug)]
pub struct Share {
    held: AtomicUsize,
    /// Whether the connection may be refused for holding more than its fair share.
    fair: bool,
}

impl Share {
    /// A connection's share, refused past its fair part of a busy budget.
    pub fn new() -> Arc<Share> {
        Share::with(true)
    }

    /// A connection's share that is only counted, never judged fair or not (and not counted
    /// among the budget's active connections, which only fairness reads).
    pub fn counted() -> Arc<Share> {
        Share::with(false)
    }

    /// A share of the same kind for another connection.
    pub fn another(&self) -> Arc<Share> {
        Share::with(self.fair)
    }

    fn with(fair: bool) -> Arc<Share> {
        Arc::new(Share {
            held: AtomicUsize::new(0),
            fair,
        })
    }

    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

/// One held place in a `Budget` (and in a connection's `Share`); given back when dropped.
#[derive(Debug)]
pub struct Slot {
    budget: Arc<Budget>,
    share: Option<Arc<Share>>,
}

impl Budget {
    pub fn new(max: usize) -> Arc<Budget> {
        Arc::new(Budget {
            max,
            in_use: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            unfair: AtomicU64::new(0),
            active: AtomicIsize::new(0),
        })
    }

    /// A slot if fewer than `max` are held; otherwise counts the refusal.
    pub fn try_take(self: &Arc<Self>) -> Option<Slot> {
        let max = self.max;
        let taken = (self.in_use).fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        });
        match taken {
            Ok(_) => Some(Slot {
                budget: self.clone(),
                share: None,
            }),
            Err(_) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// A slot for a request of the connection whose holdings are `share`: refused if the budget
    /// is full, or, for a fair share, if it is at least half used and the connection already
    /// holds its fair part (see `resilience::shed`).
    pub fn try_take_for(self: &Arc<Self>, share: &Arc<Share>) -> Option<Slot> {
        let held = share.held.fetch_add(1, Ordering::AcqRel);
        if held == 0 && share.fair {
            self.active.fetch_add(1, Ordering::AcqRel);
        }
        let max = self.max;
        let mut unfair = false;
        // Only a connection at or over the floor can be over its share: the common case (a
        // client with a few requests out) never reads the active count.
        let fair = (share.fair && held >= FAIR_SHARE_FLOOR).then(|| {
            let active = self.active.load(Ordering::Acquire).max(1) as usize;
            (max / (active + 1)).max(FAIR_SHARE_FLOOR)
        });
        let taken = (self.in_use).fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            unfair = fair.is_some_and(|fair| n >= max / 2 && held >= fair);
            (n < max && !unfair).then_some(n + 1)
        });
        match taken {
            Ok(_) => Some(Slot {
                budget: self.clone(),
                share: Some(share.clone()),
            }),
            Err(_) => {
                self.give_back_share(share);
                self.refused.fetch_add(1, Ordering::Relaxed);
                if unfair {
                    self.unfair.fetch_add(1, Ordering::Relaxed);
                }
                None
            }
        }
    }

    fn give_back_share(&self, share: &Share) {
        if share.held.fetch_sub(1, Ordering::AcqRel) == 1 && share.fair {
            self.active.fetch_sub(1, Ordering::AcqRel);
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Acquire)
    }

    /// Takes refused because the budget was full, or the taker's connection over its fair
    /// share, since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Of `refused`, those refused because their connection held more than its fair share.
    pub fn refused_unfair(&self) -> u64 {
        self.unfair.load(Ordering::Relaxed)
    }

    /// Connections holding at least one slot.
    pub fn active_connections(&self) -> usize {
        self.active.load(Ordering::Acquire).max(0) as usize
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.budget.in_use.fetch_sub(1, Ordering::AcqRel);
        if let Some(share) = &self.share {
            self.budget.give_back_share(share);
        }
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

    #[test]
    fn a_counted_share_is_counted_but_never_judged_fair() {
        use super::Share;
        let budget = Budget::new(40);
        let share = Share::counted();
        // A fair share alone would get half the budget; a counted one gets all of it.
        let held: Vec<_> = (0..41).map_while(|_| budget.try_take_for(&share)).collect();
        assert_eq!(
            (held.len(), share.held(), budget.refused_unfair()),
            (40, 40, 0)
        );
        assert_eq!(budget.active_connections(), 0, "only fairness reads it");
        drop(held);
        assert_eq!((share.held(), budget.in_use()), (0, 0));
    }

    #[test]
    fn over_half_used_a_connection_over_its_fair_share_is_refused_first() {
        use super::{Share, FAIR_SHARE_FLOOR};
        let budget = Budget::new(120);
        let (greedy, modest) = (Share::new(), Share::new());
        let mut held = Vec::new();
        // Alone, a connection gets half the budget: the other half is kept for newcomers.
        while let Some(slot) = budget.try_take_for(&greedy) {
            held.push(slot);
        }
        assert_eq!((held.len(), budget.refused_unfair()), (60, 1));
        // A second connection is admitted, and gets up to its share of 120 / 3 = 40.
        let mut modest_held: Vec<_> = (0..50)
            .map_while(|_| budget.try_take_for(&modest))
            .collect();
        assert_eq!(modest_held.len(), 40);
        assert_eq!(budget.active_connections(), 2);
        assert!(budget.try_take_for(&greedy).is_none(), "over its share");
        assert_eq!((budget.in_use(), budget.refused_unfair()), (100, 3));
        // Under half used, nobody is refused for fairness.
        held.truncate(10);
        modest_held.truncate(10);
        let more: Vec<_> = (0..30)
            .map_while(|_| budget.try_take_for(&greedy))
            .collect();
        assert_eq!(more.len(), 30, "from 20 to 50 in use");
        // Everything given back: no connection counts as active.
        drop((held, modest_held, more));
        assert_eq!((budget.in_use(), budget.active_connections()), (0, 0));
        assert_eq!((greedy.held(), modest.held()), (0, 0));

        // The floor: with many connections active, each may still hold FAIR_SHARE_FLOOR.
        let small = Budget::new(40);
        let shares: Vec<_> = (0..20).map(|_| Share::new()).collect();
        let mut slots: Vec<_> = shares
            .iter()
            .filter_map(|s| small.try_take_for(s))
            .collect();
        let first = &shares[0];
        while let Some(s) = small.try_take_for(first) {
            slots.push(s);
        }
        assert_eq!(
            first.held(),
            FAIR_SHARE_FLOOR,
            "40 / 21 = 1, raised to the floor"
        );
        assert!(
            small.try_take_for(&shares[1]).is_some(),
            "room for the others"
        );
    }
}
