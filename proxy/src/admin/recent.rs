//! The last requests this sidecar handled, for `/explain`'s "recent requests on this path". Kept
//! for every request, tapped or not, so it must cost next to nothing: each entry is a fixed-size
//! slot of a preallocated ring (the authority and path copied into inline buffers, truncated,
//! never allocated; the route rule shared by reference count), written under a lock held for a
//! copy when the request starts and again for its outcome when it ends.
//! Nothing of the request's own buffers is kept: holding a slice of hyper's read buffer would stop
//! it from reusing that buffer for the next request.

use crate::config::RouteRule;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Requests remembered.
pub const REMEMBERED: usize = 64;

/// A string copied into `N` bytes, cut at a character boundary when longer.
#[derive(Clone, Copy)]
pub struct InlineStr<const N: usize> {
    len: u16,
    bytes: [u8; N],
}

impl<const N: usize> InlineStr<N> {
    pub fn new(text: &str) -> Self {
        let mut end = text.len().min(N);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let mut bytes = [0; N];
        bytes[..end].copy_from_slice(&text.as_bytes()[..end]);
        InlineStr {
            len: end as u16,
            bytes,
        }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

/// One request, written when it starts and completed when it finishes.
#[derive(Clone)]
pub struct Remembered {
    /// Which request this slot holds (0: none yet).
    seq: u64,
    pub started: SystemTime,
    /// `outbound` or `inbound`.
    pub direction: &'static str,
    pub method: http::Method,
    pub authority: InlineStr<48>,
    pub path: InlineStr<96>,
    /// The rule that routed it (outbound).
    pub route: Option<Arc<RouteRule>>,
    /// None while it is in flight.
    pub outcome: Option<Outcome>,
}

/// How a request ended.
#[derive(Clone, Copy)]
pub struct Outcome {
    pub status: u16,
    pub elapsed: Duration,
    pub attempts: u32,
}

impl Remembered {
    pub fn to_json(&self) -> Value {
        let unix_ms = (self.started.duration_since(UNIX_EPOCH))
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        let mut doc = json!({
            "timestamp_unix_ms": unix_ms,
            "direction": self.direction,
            "method": self.method.as_str(),
            "authority": self.authority.as_str(),
            "path": self.path.as_str(),
            "route": self.route.as_ref().map(|r| r.name.as_str()),
        });
        match &self.outcome {
            Some(f) => {
                doc["status"] = f.status.into();
                doc["duration_ms"] = (f.elapsed.as_secs_f64() * 1000.0).into();
                doc["attempts"] = f.attempts.into();
            }
            None => doc["inFlight"] = true.into(),
        }
        doc
    }
}

/// The ring of the last `REMEMBERED` requests. A request takes its slot when it starts (its
/// head is copied straight into it, so nothing large rides along in the request's future) and
/// fills in its outcome when it ends, unless newer requests have taken the slot meanwhile.
pub struct RecentRequests {
    ring: Mutex<Ring>,
}

struct Ring {
    slots: Vec<Remembered>,
    next: u64,
}

/// A request's place in the ring, to complete it with.
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

impl Default for RecentRequests {
    fn default() -> Self {
        let empty = Remembered {
            seq: 0,
            started: UNIX_EPOCH,
            direction: "",
            method: http::Method::GET,
            authority: InlineStr::new(""),
            path: InlineStr::new(""),
            route: None,
            outcome: None,
        };
        RecentRequests {
            ring: Mutex::new(Ring {
                slots: vec![empty; REMEMBERED],
                next: 1,
            }),
        }
    }
}

impl std::fmt::Debug for RecentRequests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecentRequests").finish_non_exhaustive()
    }
}

impl RecentRequests {
    /// Remembers a request that starts now. Skipped (ticket 0) when another worker holds the
    /// ring this instant: a request not remembered is better than a worker waiting.
    pub fn start<B>(
        &self,
        direction: &'static str,
        req: &http::Request<B>,
        route: Option<&Arc<RouteRule>>,
    ) -> Ticket {
        let Ok(mut ring) = self.ring.try_lock() else {
            return Ticket(0);
        };
        let seq = ring.next;
        ring.next += 1;
        let slot = &mut ring.slots[(seq % REMEMBERED as u64) as usize];
        slot.seq = seq;
        slot.started = SystemTime::now();
        slot.direction = direction;
        slot.method = req.method().clone();
        slot.authority = InlineStr::new(crate::http::authority_text(req).unwrap_or_default());
        slot.path = InlineStr::new(req.uri().path());
        slot.route = route.cloned();
        slot.outcome = None;
        Ticket(seq)
    }

    /// Records how the request of `ticket` ended, if its slot is still its own.
    pub fn finish(&self, ticket: Ticket, outcome: Outcome) {
        if ticket.0 == 0 {
            return;
        }
        let Ok(mut ring) = self.ring.try_lock() else {
            return;
        };
        let slot = &mut ring.slots[(ticket.0 % REMEMBERED as u64) as usize];
        if slot.seq == ticket.0 {
            slot.outcome = Some(outcome);
        }
    }

    /// Those `keep` selects, oldest first, as JSON.
    pub fn matching(&self, keep: impl Fn(&Remembered) -> bool) -> Vec<Value> {
        let ring = match self.ring.lock() {
            Ok(ring) => ring,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut taken: Vec<&Remembered> = (ring.slots.iter())
            .filter(|r| r.seq != 0 && keep(r))
            .collect();
        taken.sort_by_key(|r| r.seq);
        taken.into_iter().map(Remembered::to_json).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remember(recent: &RecentRequests, path: &str, status: u16) -> Ticket {
        let req = http::Request::get(path)
            .header("host", "hello:8080")
            .body(())
            .unwrap();
        let ticket = recent.start("outbound", &req, None);
        let outcome = Outcome {
            status,
            elapsed: Duration::from_micros(1500),
            attempts: 2,
        };
        recent.finish(ticket, outcome);
        ticket
    }

    #[test]
    fn inline_strings_truncate_at_character_boundaries() {
        assert_eq!(InlineStr::<8>::new("/short").as_str(), "/short");
        assert_eq!(InlineStr::<8>::new("/exactly").as_str(), "/exactly");
        assert_eq!(InlineStr::<8>::new("/much/longer").as_str(), "/much/lo");
        // "é" is two bytes: only one is left after "/abcdef", so it is left out whole.
        assert_eq!(InlineStr::<8>::new("/abcdefé").as_str(), "/abcdef");
        assert_eq!(InlineStr::<8>::new("/abcdeé").as_str(), "/abcdeé");
    }

    #[test]
    fn keeps_the_last_requests_oldest_first_as_json() {
        let recent = RecentRequests::default();
        assert!(recent.matching(|_| true).is_empty());
        for i in 0..REMEMBERED + 3 {
            remember(&recent, &format!("/r{i}"), 200);
        }
        let all = recent.matching(|_| true);
        assert_eq!(all.len(), REMEMBERED);
        assert_eq!(all[0]["path"], "/r3");
        assert_eq!(all[REMEMBERED - 1]["path"], format!("/r{}", REMEMBERED + 2));
        let doc = &all[0];
        assert!(doc["timestamp_unix_ms"].as_u64().unwrap_or_default() > 1_700_000_000_000);
        assert_eq!(doc["method"], "GET");
        assert_eq!(doc["authority"], "hello:8080");
        assert_eq!(doc["status"], 200);
        assert_eq!(doc["duration_ms"], 1.5);
        assert_eq!(doc["attempts"], 2);
        assert_eq!(doc["route"], Value::Null);
        let odd = recent.matching(|r| r.path.as_str().ends_with('5'));
        assert!(odd
            .iter()
            .all(|r| r["path"].as_str().is_some_and(|p| p.ends_with('5'))));
        assert_eq!(odd.len(), 7, "/r5, /r15, … /r65 of /r3../r66");
    }

    #[test]
    fn in_flight_requests_show_and_late_finishes_do_not_overwrite_newer_ones() {
        let recent = RecentRequests::default();
        let req = http::Request::get("/slow").body(()).unwrap();
        let slow = recent.start("inbound", &req, None);
        assert_eq!(recent.matching(|_| true)[0]["inFlight"], true);
        // The slot is taken by newer requests before the slow one ends.
        for i in 0..REMEMBERED {
            remember(&recent, &format!("/fast{i}"), 201);
        }
        recent.finish(
            slow,
            Outcome {
                status: 504,
                elapsed: Duration::from_secs(15),
                attempts: 1,
            },
        );
        let all = recent.matching(|_| true);
        assert!(all.iter().all(|r| r["status"] == 201), "{all:?}");
        recent.finish(
            Ticket(0),
            Outcome {
                status: 1,
                elapsed: Duration::ZERO,
                attempts: 0,
            },
        );
    }
}
