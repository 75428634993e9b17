//! The open-loop load generator. Owns what a load run is (`LoadConfig`), running one (`run`) and
//! what it measured (`LoadResult`).
//!
//! Open loop, as wrk2 and fortio do it: request `k` has an *intended* send time
//! `start + k / rate`, fixed before the run starts. A pacer thread (`pacer.rs`) hands each slot to
//! a connection ("lane", `client.rs`) at that time whatever the system under test is doing, and the
//! latency recorded is `response complete − intended send time`. A stalled server therefore shows
//! up in the latency of every request that *should* have been sent during the stall, not only the
//! few that were in flight (coordinated omission corrected). The latency from the actual send is
//! kept alongside (`uncorrected`) to show the difference, and the pacer's own lateness
//! (`send_lag`) says whether the generator kept up.

mod client;
mod pacer;
mod record;
mod saturate;

pub use client::{is_shed, Lane, Protocol, Target};
pub use record::{LoadResult, Percentiles};
pub use saturate::{saturate, SaturationConfig, SaturationResult};

use anyhow::{bail, Context};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// One constant-rate run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub target: Target,
    pub protocol: Protocol,
    /// TCP connections; HTTP/1.1 sends one request at a time per connection, HTTP/2 multiplexes.
    pub connections: usize,
    /// Response body size asked of the upstream, in bytes (for gRPC: the message size).
    pub payload_bytes: usize,
    /// Requests per second, for the whole run.
    pub rate: f64,
    /// Measured time, after the warm-up.
    pub duration: Duration,
    /// Sent at the same rate but left out of every statistic.
    pub warmup: Duration,
    /// Cap on concurrent streams per HTTP/2 connection; slots wait (and their latency grows).
    pub max_streams_per_connection: usize,
    /// A request not answered within this is an error.
    pub request_timeout: Duration,
}

impl LoadConfig {
    pub fn new(target: Target, protocol: Protocol, rate: f64, duration: Duration) -> LoadConfig {
        LoadConfig {
            target,
            protocol,
            connections: 16,
            payload_bytes: 1024,
            rate,
            duration,
            warmup: Duration::from_secs(1),
            max_streams_per_connection: 256,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Runs the load and waits for the last answer (or its timeout).
pub async fn run(config: &LoadConfig) -> anyhow::Result<LoadResult> {
    if !(config.rate.is_finite() && config.rate > 0.0) {
        bail!("rate must be a positive number of requests per second");
    }
    if config.connections == 0 {
        bail!("at least one connection is needed");
    }
    let recorder = Arc::new(record::Recorder::new()?);
    let mut lanes = Vec::with_capacity(config.connections);
    let mut tasks = Vec::with_capacity(config.connections);
    for i in 0..config.connections {
        let conn = client::Lane::connect(config)
            .await
            .with_context(|| format!("opening connection {i} to {}", config.target.addr))?;
        let (tx, rx) = mpsc::unbounded_channel();
        lanes.push(tx);
        tasks.push(tokio::spawn(conn.serve(rx, recorder.clone())));
    }
    let interval = Duration::from_secs_f64(1.0 / config.rate);
    let warmup_slots = (config.warmup.as_secs_f64() * config.rate).round() as u64;
    let measured_slots = (config.duration.as_secs_f64() * config.rate).round() as u64;
    // A little slack so every lane is waiting before the first slot.
    let start = Instant::now() + Duration::from_millis(20);
    let measure_start = start + config.warmup;
    let plan = pacer::Plan {
        start,
        interval,
        warmup_slots,
        total_slots: warmup_slots + measured_slots,
    };
    let pacer = std::thread::Builder::new()
        .name("bench-pacer".into())
        .spawn(move || pacer::pace(plan, lanes))
        .context("starting the pacer thread")?;
    for task in tasks {
        // A lane ends when the pacer hangs up and its requests are answered or timed out.
        let _ = task.await;
    }
    let late_slots = match pacer.join() {
        Ok(late) => late,
        Err(_) => bail!("the pacer thread panicked"),
    };
    Ok(recorder.finish(config, measure_start, measured_slots, late_slots))
}
