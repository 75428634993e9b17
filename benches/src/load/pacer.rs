//! The pacer: one OS thread that releases each request slot at its intended send time and hands
//! it to a lane, round robin. A thread rather than a tokio timer because tokio's timer wheel has
//! 1 ms resolution, which would add up to a millisecond of pacing error to every sample; a thread
//! sleeping in `nanosleep` is within tens of microseconds. The pacer never waits for the system
//! under test: when a lane is busy its slots queue in the lane's channel, still stamped with their
//! intended time.

use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// A request slot: when it should have been sent, and whether it counts.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    pub intended: Instant,
    pub measured: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub start: Instant,
    pub interval: Duration,
    pub warmup_slots: u64,
    pub total_slots: u64,
}

impl Plan {
    pub fn intended(&self, slot: u64) -> Instant {
        // u32 is plenty for the slot count of any run (4 billion requests); saturate otherwise.
        let k = u32::try_from(slot).unwrap_or(u32::MAX);
        self.start + self.interval * k
    }
}

/// Releases every slot of `plan`; returns how many were released more than 1 ms late (the
/// generator falling behind, which the report shows).
pub fn pace(plan: Plan, lanes: Vec<UnboundedSender<Slot>>) -> u64 {
    let mut late = 0;
    if lanes.is_empty() {
        return late;
    }
    for k in 0..plan.total_slots {
        let intended = plan.intended(k);
        let now = Instant::now();
        if intended > now {
            std::thread::sleep(intended - now);
        } else if now - intended > Duration::from_millis(1) {
            late += 1;
        }
        let lane = &lanes[(k % lanes.len() as u64) as usize];
        // A lane that has gone (its connection failed for good) drops its slots; they are
        // counted as errors by the recorder from the missing answers.
        let _ = lane.send(Slot {
            intended,
            measured: k >= plan.warmup_slots,
        });
    }
    late
}
