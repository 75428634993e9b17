//! The reconnect storm (issue #14, item 6): the control plane is killed under the whole synced
//! fleet and started again on the same address and state directory, as a rollout or a crash
//! would; every simulated sidecar loses its stream at once and comes back with its jittered
//! backoff (or the control plane's retry pushback, when it refuses a stream over its caps).
//! The proxies resume as sidecars do, naming what they hold in `initial_resource_versions`, so
//! the new control plane (same mesh, same versions) answers every type's first request empty;
//! without resume (`FleetConfig::resume` off) each is sent everything it holds again, the worst
//! case. Measured: time from the kill to the last proxy holding every type again, reconnect
//! attempts, refusals, payload resent, the new control plane's CPU and peak RSS, and proxies
//! that never came back.

use super::sim::{unix_micros, Recorder};
use super::wait_for;
use crate::procstat;
use crate::systems::{self, Process};
use anyhow::Context;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[derive(Debug, Clone, Serialize)]
pub struct StormReport {
    /// Whether the proxies sent `initial_resource_versions`.
    pub resumed: bool,
    /// From the kill until the new control plane accepted connections.
    pub restart_s: f64,
    /// From the kill until the last proxy held every type again.
    pub all_synced_s: f64,
    pub synced: usize,
    pub reconnect_attempts: usize,
    /// Attempts refused with `RESOURCE_EXHAUSTED` (over the stream caps).
    pub refused: usize,
    /// The new control plane's peak RSS while the fleet came back.
    pub peak_rss_kib: u64,
    /// Resource payload the proxies received from the kill until all were in sync, per proxy.
    pub resent_kib_per_proxy: f64,
    /// The new control plane's CPU (user + system) from its start until all were in sync.
    pub cpu_s: f64,
}

/// Kills `cp`, starts a new one with `spawn`, and waits for `proxies` to be in sync again
/// (`resumed`: whether they send what they hold). Returns the new control plane (still
/// running) and what was measured.
pub async fn restart(
    cp: Process,
    spawn: impl Fn() -> anyhow::Result<Process>,
    addr: SocketAddr,
    rec: &Recorder,
    (proxies, resumed): (usize, bool),
) -> anyhow::Result<(Process, StormReport)> {
    rec.start_storm();
    let payload_before = rec.payload_bytes.load(Ordering::Relaxed);
    let killed = unix_micros();
    drop(cp);
    // The old process's listener must be gone before the new one binds the same address.
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut cp = spawn()?;
    systems::wait_port("the restarted control plane", addr, Duration::from_secs(30)).await?;
    let restarted = unix_micros();
    let pid = cp.pid().context("the restarted control plane has no pid")?;
    let limit = Duration::from_secs(120) + Duration::from_millis(10 * proxies as u64);
    wait_for(&mut cp, limit, || {
        rec.synced.load(Ordering::Relaxed) >= proxies
    })
    .await?;
    let last = (rec.synced_at.iter())
        .map(|s| s.load(Ordering::Relaxed))
        .max()
        .unwrap_or(killed);
    let seconds = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1e6;
    let resent = rec.payload_bytes.load(Ordering::Relaxed) - payload_before;
    let sample = procstat::sample(pid);
    let report = StormReport {
        resumed,
        restart_s: seconds(killed, restarted),
        all_synced_s: seconds(killed, last),
        synced: rec.synced.load(Ordering::Relaxed),
        reconnect_attempts: rec.reconnects.load(Ordering::Relaxed),
        refused: rec.refused.load(Ordering::Relaxed),
        peak_rss_kib: sample.as_ref().map_or(0, |s| s.peak_rss_kib),
        resent_kib_per_proxy: resent as f64 / 1024.0 / proxies.max(1) as f64,
        cpu_s: sample.map_or(0.0, |s| s.cpu.as_secs_f64()),
    };
    Ok((cp, report))
}

/// The report's line about the storm.
pub fn summary(s: &StormReport, proxies: usize) -> String {
    let how = if s.resumed {
        "resuming with initial_resource_versions"
    } else {
        "without initial_resource_versions (the worst case)"
    };
    format!(
        "Reconnect storm (control plane killed and restarted under the synced fleet, proxies \
         {how}): {} of {proxies} proxies in sync again {:.2} s after the kill (the new control \
         plane listened after {:.2} s); {} reconnect attempts, {} refused with \
         RESOURCE_EXHAUSTED; {:.1} KiB of payload resent per proxy; the new control plane's CPU \
         {:.2} s, peak RSS {:.1} MiB.",
        s.synced,
        s.all_synced_s,
        s.restart_s,
        s.reconnect_attempts,
        s.refused,
        s.resent_kib_per_proxy,
        s.cpu_s,
        s.peak_rss_kib as f64 / 1024.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_names_counts_and_times() {
        let s = StormReport {
            resumed: true,
            restart_s: 0.4,
            all_synced_s: 7.25,
            synced: 10_000,
            reconnect_attempts: 12_345,
            refused: 0,
            peak_rss_kib: 200 * 1024,
            resent_kib_per_proxy: 0.3,
            cpu_s: 1.5,
        };
        let text = summary(&s, 10_000);
        assert!(
            text.contains("10000 of 10000 proxies in sync again 7.25 s"),
            "{text}"
        );
        assert!(
            text.contains("12345 reconnect attempts, 0 refused"),
            "{text}"
        );
        assert!(text.contains("peak RSS 200.0 MiB"), "{text}");
        assert!(
            text.contains("resuming with initial_resource_versions"),
            "{text}"
        );
        assert!(
            text.contains("0.3 KiB of payload resent per proxy"),
            "{text}"
        );
        assert!(text.contains("CPU 1.50 s"), "{text}");
        let worst = summary(
            &StormReport {
                resumed: false,
                ..s
            },
            10_000,
        );
        assert!(
            worst.contains("without initial_resource_versions"),
            "{worst}"
        );
    }
}
