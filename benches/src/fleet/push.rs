//! The push rounds: each moves one endpoint of one service in the mesh file, and waits until
//! every proxy holding a changed resource has received it. A moved endpoint changes the
//! service's `Endpoints` (held by the proxies that route to it) and its `ServiceAddresses` (held
//! by every transparent proxy on demand), so the receivers expected, and the responses each
//! must get, are read from the proxies' own subscriptions (`subscribe::expected_mask`).
//! Measured per round: latency from the control plane's publication to each receiver holding
//! the whole change, and to each `Endpoints` subscriber holding the new endpoints (the update
//! that routing waits for), the resources received against those expected, and the control
//! plane's CPU over the round.

use super::sim::Recorder;
use super::subscribe::{expected_mask, type_index, Subscriptions, MOVED_ENDPOINT_CHANGES, TYPES};
use super::{changed_service, cpu_of, mesh_yaml, published_at, service_name, wait_for};
use super::{write_mesh, FleetConfig, NAMESPACE};
use crate::systems::Process;
use anyhow::bail;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use trellis_api::type_url;

/// What the rounds measured, summed over them.
#[derive(Debug, Default)]
pub struct Pushes {
    pub rounds: usize,
    /// Receivers expected (live proxies holding a changed resource) and receivers reached.
    pub expected: usize,
    pub reached: usize,
    /// Proxies that received a response of the round's version without holding anything changed.
    pub unexpected: usize,
    /// Expected receivers that missed a response they should have received.
    pub missed: usize,
    /// Of the expected receivers, those subscribed to the changed service's `Endpoints`.
    pub endpoint_subscribers: usize,
    /// Microseconds from publication to each receiver holding the whole change.
    pub latencies_us: Vec<u64>,
    /// Microseconds from publication to each `Endpoints` subscriber holding the new endpoints.
    pub endpoint_latencies_us: Vec<u64>,
    pub resources: u64,
    pub resources_expected: u64,
    pub cpu_s: f64,
}

/// Runs `cfg.pushes` rounds against the control plane `cp` (process `pid`), whose idle CPU rate
/// is `idle_rate` (seconds per second).
pub async fn rounds(
    cp: &mut Process,
    pid: u32,
    cfg: &FleetConfig,
    (mesh, log): (&Path, &Path),
    rec: &Recorder,
    subscriptions: &[Arc<Subscriptions>],
    idle_rate: f64,
) -> anyhow::Result<Pushes> {
    let endpoints_bit = type_index(type_url::ENDPOINTS).map_or(0, |i| 1 << i);
    let (services, mut p) = (cfg.services, Pushes::default());
    for round in 1..=cfg.pushes {
        let version = 1 + round as u64;
        rec.await_version(version);
        let name = format!(
            "{NAMESPACE}/{}",
            service_name(changed_service(services, round))
        );
        let expected: Vec<(usize, u32)> = (subscriptions.iter().enumerate())
            .filter(|(i, _)| !rec.dead[*i].load(Ordering::Relaxed))
            .map(|(i, subs)| (i, expected_mask(subs, &MOVED_ENDPOINT_CHANGES, &name)))
            .filter(|(_, mask)| *mask != 0)
            .collect();
        let before = (Instant::now(), cpu_of(pid));
        write_mesh(mesh, &mesh_yaml(services, round))?;
        let outstanding = || {
            (expected.iter())
                .filter(|(i, mask)| rec.received(*i) & mask != *mask)
                .filter(|(i, _)| !rec.dead[*i].load(Ordering::Relaxed))
                .count()
        };
        wait_for(cp, Duration::from_secs(60), || outstanding() == 0).await?;
        // The ACKs of the last proxies are still in flight: they are part of the push's cost.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cpu = cpu_of(pid).saturating_sub(before.1).as_secs_f64()
            - idle_rate * before.0.elapsed().as_secs_f64();
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let Some(published) = published_at(&text, version) else {
            bail!("no `config version {version} applied` in {}", log.display());
        };
        p.missed += outstanding();
        p.expected += expected.len();
        p.endpoint_subscribers += (expected.iter())
            .filter(|(_, mask)| mask & endpoints_bit != 0)
            .count();
        p.resources_expected += (expected.iter())
            .map(|(_, mask)| u64::from(mask.count_ones()))
            .sum::<u64>();
        let mut wanted = vec![false; subscriptions.len()];
        for (i, _) in &expected {
            wanted[*i] = true;
        }
        for (i, wanted) in wanted.iter().enumerate() {
            let whole = (0..TYPES).map(|t| rec.pushed(i, t)).max();
            let Some(at) = whole.filter(|at| *at != 0) else {
                continue;
            };
            p.reached += 1;
            p.unexpected += usize::from(!wanted);
            p.latencies_us.push(at.saturating_sub(published));
            let endpoints = type_index(type_url::ENDPOINTS).map_or(0, |t| rec.pushed(i, t));
            if endpoints != 0 {
                p.endpoint_latencies_us
                    .push(endpoints.saturating_sub(published));
            }
        }
        p.resources += rec.pushed_resources.load(Ordering::Relaxed);
        p.cpu_s += cpu.max(0.0);
        p.rounds += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    p.latencies_us.sort_unstable();
    p.endpoint_latencies_us.sort_unstable();
    Ok(p)
}
