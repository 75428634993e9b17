//! What a load run measured: the shared recorder the lanes write into while the run goes, and the
//! `LoadResult` it becomes. All latencies are microseconds in an HdrHistogram (3 significant
//! digits, 1 µs to 60 s).

use super::LoadConfig;
use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MAX_US: u64 = 60_000_000;

/// The percentiles shown in tables and plots, in percent.
pub const CURVE: [f64; 10] = [
    50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 100.0,
];

pub fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_US, 3).context("creating a latency histogram")
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
    /// (percentile in %, latency in µs) at each point of `CURVE`, for the plots.
    pub curve: Vec<(f64, u64)>,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: h.mean(),
            curve: CURVE
                .iter()
                .map(|&p| (p, h.value_at_quantile(p / 100.0)))
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    pub asked_rps: f64,
    /// Answers to measured requests divided by the time from the start of the measured window to
    /// the last answer (or the window's end, if later): a system that cannot keep up drains a
    /// backlog after the window, and that lowers this number.
    pub achieved_rps: f64,
    pub ok: u64,
    /// Connection failures, timeouts, non-2xx statuses, non-zero grpc-status, unanswered slots.
    /// Shed answers are counted here too.
    pub errors: u64,
    /// Of the errors: 503s from a sidecar's load shedding (`trellis-error: overloaded…`).
    pub shed: u64,
    /// Shed answers, from each request's intended send time.
    pub shed_latency: Percentiles,
    /// Shed answers, from each request's actual send time: the proxy's own speed at refusing.
    pub shed_uncorrected: Percentiles,
    pub connections: usize,
    pub payload_bytes: usize,
    pub duration_s: f64,
    /// From each request's intended send time (coordinated omission corrected).
    pub latency: Percentiles,
    /// From each request's actual send time (what a closed-loop tool would report).
    pub uncorrected: Percentiles,
    /// How late requests left the generator (queueing on a busy connection included).
    pub send_lag: Percentiles,
    /// Slots the pacer itself released more than 1 ms late.
    pub pacer_late_slots: u64,
    #[serde(skip)]
    pub histogram: Histogram<u64>,
    #[serde(skip)]
    pub uncorrected_histogram: Histogram<u64>,
}

struct State {
    latency: Histogram<u64>,
    uncorrected: Histogram<u64>,
    send_lag: Histogram<u64>,
    shed_latency: Histogram<u64>,
    shed_uncorrected: Histogram<u64>,
    ok: u64,
    errors: u64,
    shed: u64,
    last_answer: Option<Instant>,
}

/// Shared by the lanes during a run.
pub struct Recorder {
    state: Mutex<State>,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

impl Recorder {
    pub fn new() -> anyhow::Result<Recorder> {
        Ok(Recorder {
            state: Mutex::new(State {
                latency: new_histogram()?,
                uncorrected: new_histogram()?,
                send_lag: new_histogram()?,
                shed_latency: new_histogram()?,
                shed_uncorrected: new_histogram()?,
                ok: 0,
                errors: 0,
                shed: 0,
                last_answer: None,
            }),
        })
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        // A panic while holding the lock poisons it; the numbers are still usable.
        let mut guard = match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// A measured request answered successfully.
    pub fn ok(&self, intended: Instant, sent: Instant, done: Instant) {
        self.with(|s| {
            s.latency.saturating_record(micros(done - intended));
            s.uncorrected.saturating_record(micros(done - sent));
            s.send_lag.saturating_record(micros(sent - intended));
            s.ok += 1;
            s.last_answer = Some(s.last_answer.map_or(done, |l| l.max(done)));
        });
    }

    /// A measured request was refused by load shedding (also an error).
    pub fn shed(&self, intended: Instant, sent: Instant, done: Instant) {
        self.with(|s| {
            s.shed_latency.saturating_record(micros(done - intended));
            s.shed_uncorrected.saturating_record(micros(done - sent));
            s.shed += 1;
            s.errors += 1;
            s.last_answer = Some(s.last_answer.map_or(done, |l| l.max(done)));
        });
    }

    /// A measured request failed.
    pub fn error(&self, done: Instant) {
        self.with(|s| {
            s.errors += 1;
            s.last_answer = Some(s.last_answer.map_or(done, |l| l.max(done)));
        });
    }

    pub fn finish(
        &self,
        config: &LoadConfig,
        measure_start: Instant,
        measured_slots: u64,
        pacer_late_slots: u64,
    ) -> LoadResult {
        self.with(|s| {
            let answered = s.ok + s.errors;
            let unanswered = measured_slots.saturating_sub(answered);
            let window_end = measure_start + config.duration;
            let end = s.last_answer.map_or(window_end, |l| l.max(window_end));
            let elapsed = (end - measure_start).as_secs_f64();
            LoadResult {
                asked_rps: config.rate,
                achieved_rps: if elapsed > 0.0 {
                    s.ok as f64 / elapsed
                } else {
                    0.0
                },
                ok: s.ok,
                errors: s.errors + unanswered,
                shed: s.shed,
                shed_latency: Percentiles::of(&s.shed_latency),
                shed_uncorrected: Percentiles::of(&s.shed_uncorrected),
                connections: config.connections,
                payload_bytes: config.payload_bytes,
                duration_s: config.duration.as_secs_f64(),
                latency: Percentiles::of(&s.latency),
                uncorrected: Percentiles::of(&s.uncorrected),
                send_lag: Percentiles::of(&s.send_lag),
                pacer_late_slots,
                histogram: s.latency.clone(),
                uncorrected_histogram: s.uncorrected.clone(),
            }
        })
    }
}
