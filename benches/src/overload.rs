//! Overload: the mesh path driven at twice the rate it can hold. First the saturation rate is found
//! (`load::saturate`: rising steps until p99 passes the bound, errors pass 1% or the achieved rate
//! falls behind); then twice that is offered for a short window. What should hold: the sidecars
//! shed the excess with fast 503s (`trellis-error: overloaded…`) instead of queueing it, so the
//! admitted requests' latency stays bounded, and the sidecars' memory stays bounded.
//!
//! The sidecars run with a small `--max-in-flight-requests` (default 256): the generator keeps at
//! most 16 connections × 256 streams in flight, under the default limit of 10,000, which would then
//! never be reached here. Reported: the share of 503s, the latency of shed and of admitted answers,
//! how many each sidecar shed (from its `/metrics`), and each sidecar's RSS idle, after the
//! saturation search, at its peak during the overload (`VmHWM`, reset before) and after it.

use crate::load::{self, LoadConfig, Percentiles, Protocol, SaturationConfig};
use crate::procstat;
use crate::systems::{self, addr, trellis, Process};
use anyhow::Context;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct OverloadConfig {
    pub protocol: Protocol,
    /// The sidecars' `--max-in-flight-requests`.
    pub limit: usize,
    /// Measured time at twice the saturation rate.
    pub window: Duration,
    /// Saturation search: first rate, step factor, measured time per step, p99 bound.
    pub start_rps: f64,
    pub factor: f64,
    pub step: Duration,
    pub p99_bound_us: u64,
    /// Skip the search and take this as the saturation rate.
    pub saturation_rps: Option<f64>,
    pub trellis: Option<PathBuf>,
    pub out: PathBuf,
}

impl OverloadConfig {
    pub fn new(out: PathBuf) -> OverloadConfig {
        OverloadConfig {
            protocol: Protocol::H2c,
            limit: 256,
            window: Duration::from_secs(10),
            start_rps: 1000.0,
            factor: 1.5,
            step: Duration::from_secs(3),
            p99_bound_us: 100_000,
            saturation_rps: None,
            trellis: None,
            out,
        }
    }
}

/// One sidecar's memory through the run and what it shed.
#[derive(Debug, Clone, Serialize)]
pub struct SidecarRow {
    pub process: String,
    pub rss_idle_kib: u64,
    pub rss_after_saturation_kib: u64,
    pub rss_peak_overload_kib: u64,
    pub rss_after_overload_kib: u64,
    pub shed_inbound: u64,
    pub shed_outbound: u64,
    /// 503s from the circuit breaker's per-destination limits instead (all limits summed).
    pub breaker_overflows: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct OverloadReport {
    pub protocol: Protocol,
    pub limit: usize,
    pub saturation_rps: f64,
    pub offered_rps: f64,
    pub window_s: f64,
    pub ok: u64,
    pub shed: u64,
    /// Errors other than shedding (timeouts, resets, other statuses, unanswered).
    pub other_errors: u64,
    pub shed_share: f64,
    pub admitted_ok_rps: f64,
    /// From each request's intended send time (generator lag included).
    pub admitted: Percentiles,
    pub shed_latency: Percentiles,
    /// From each request's actual send time.
    pub admitted_uncorrected: Percentiles,
    pub shed_uncorrected: Percentiles,
    pub sidecars: Vec<SidecarRow>,
    pub load_average: String,
}

fn rss(pid: u32) -> u64 {
    procstat::sample(pid).map_or(0, |s| s.rss_kib)
}

/// Inbound and outbound `trellis_requests_shed_total`, and every
/// `trellis_circuit_breaker_overflows_total` summed, from a sidecar's `/metrics`.
async fn shed_counts(admin: std::net::SocketAddr) -> (u64, u64, u64) {
    let text = match systems::http_get(admin, "localhost", "/metrics").await {
        Ok((200, text)) => text,
        _ => return (0, 0, 0),
    };
    let overflows = (text.lines())
        .filter(|l| l.starts_with("trellis_circuit_breaker_overflows_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    let count = |direction: &str| {
        let series = format!("trellis_requests_shed_total{{direction=\"{direction}\"}}");
        (text.lines())
            .find_map(|l| l.strip_prefix(series.as_str())?.trim().parse().ok())
            .unwrap_or(0)
    };
    (count("inbound"), count("outbound"), overflows)
}

pub async fn run(cfg: &OverloadConfig) -> anyhow::Result<OverloadReport> {
    let work = cfg.out.join("work");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let binary = trellis::find_binary(cfg.trellis.as_deref())?;
    let mut procs: Vec<Process> = vec![systems::start_upstream(&work.join("upstream.log")).await?];
    let sidecars = trellis::Sidecars {
        flags: vec![
            "--max-in-flight-requests".into(),
            cfg.limit.to_string().into(),
        ],
        ..trellis::Sidecars::default()
    };
    let systems = trellis::start_with(&binary, &work, &mut procs, &sidecars).await?;
    let mesh = (systems.into_iter())
        .find(|s| s.system == "trellis" && s.path == systems::PathKind::Mesh)
        .context("the Trellis mesh path did not start")?;
    let sidecars = mesh.measured.clone();
    let idle: Vec<u64> = sidecars.iter().map(|(_, pid)| rss(*pid)).collect();

    let target = (mesh.target)(cfg.protocol);
    let saturation_rps = match cfg.saturation_rps {
        Some(r) => r,
        None => {
            let base = LoadConfig::new(target.clone(), cfg.protocol, cfg.start_rps, cfg.step);
            let sat = SaturationConfig {
                start_rps: cfg.start_rps,
                factor: cfg.factor,
                max_rps: 200_000.0,
                p99_bound_us: cfg.p99_bound_us,
            };
            eprintln!("finding the saturation rate ({}):", cfg.protocol.name());
            load::saturate(&base, &sat).await?.max_held_rps
        }
    };
    anyhow::ensure!(
        saturation_rps > 0.0,
        "no rate held (the first step, {} rps, already missed); try --start-rps lower",
        cfg.start_rps
    );
    let after_saturation: Vec<u64> = sidecars.iter().map(|(_, pid)| rss(*pid)).collect();
    let shed_before = shed_by_sidecar(&sidecars).await;

    let offered_rps = 2.0 * saturation_rps;
    eprintln!(
        "offering {offered_rps:.0} rps (2 × {saturation_rps:.0}) for {:?}",
        cfg.window
    );
    for (_, pid) in &sidecars {
        procstat::reset_peak(*pid);
    }
    let over = LoadConfig::new(target, cfg.protocol, offered_rps, cfg.window);
    let result = load::run(&over).await?;
    let peaks: Vec<u64> = (sidecars.iter())
        .map(|(_, pid)| procstat::sample(*pid).map_or(0, |s| s.peak_rss_kib))
        .collect();
    // A moment for the sidecars to finish what was in flight and free it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after: Vec<u64> = sidecars.iter().map(|(_, pid)| rss(*pid)).collect();
    let shed_after = shed_by_sidecar(&sidecars).await;
    for p in procs.iter_mut() {
        p.check_alive()?;
    }

    let rows = (sidecars.iter().enumerate())
        .map(|(i, (name, _))| SidecarRow {
            process: name.clone(),
            rss_idle_kib: idle[i],
            rss_after_saturation_kib: after_saturation[i],
            rss_peak_overload_kib: peaks[i],
            rss_after_overload_kib: after[i],
            shed_inbound: shed_after[i].0.saturating_sub(shed_before[i].0),
            shed_outbound: shed_after[i].1.saturating_sub(shed_before[i].1),
            breaker_overflows: shed_after[i].2.saturating_sub(shed_before[i].2),
        })
        .collect();
    let answered = result.ok + result.errors;
    let report = OverloadReport {
        protocol: cfg.protocol,
        limit: cfg.limit,
        saturation_rps,
        offered_rps,
        window_s: cfg.window.as_secs_f64(),
        ok: result.ok,
        shed: result.shed,
        other_errors: result.errors - result.shed,
        shed_share: if answered == 0 {
            0.0
        } else {
            result.shed as f64 / answered as f64
        },
        admitted_ok_rps: result.achieved_rps,
        admitted: result.latency.clone(),
        shed_latency: result.shed_latency.clone(),
        admitted_uncorrected: result.uncorrected.clone(),
        shed_uncorrected: result.shed_uncorrected.clone(),
        sidecars: rows,
        load_average: std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
    };
    std::fs::write(
        cfg.out.join("overload.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(cfg.out.join("overload.md"), markdown(&report))?;
    drop(procs);
    Ok(report)
}

/// Shed counters of the watched sidecars, in their order (the loadgen and bench pods).
async fn shed_by_sidecar(sidecars: &[(String, u32)]) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::new();
    for (name, _) in sidecars {
        let pod = if name.ends_with("loadgen") {
            addr::CLIENT_POD
        } else {
            addr::SERVER_POD
        };
        out.push(shed_counts(trellis::admin_addr(pod)).await);
    }
    out
}

pub fn markdown(r: &OverloadReport) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Overload, mesh path, {}: saturation {:.0} rps; offered {:.0} rps for {:.0} s with `--max-in-flight-requests {}`; load average at the end: {}.\n",
        r.protocol.name(),
        r.saturation_rps,
        r.offered_rps,
        r.window_s,
        r.limit,
        r.load_average
    );
    let _ = writeln!(
        md,
        "| answers | count | share | p50 (µs) | p99 (µs) | max (µs) | from send: p50 (µs) | p99 (µs) |\n|---|--:|--:|--:|--:|--:|--:|--:|"
    );
    let total = (r.ok + r.shed + r.other_errors).max(1) as f64;
    let none = Percentiles::default();
    for (what, n, p, u) in [
        ("admitted (2xx)", r.ok, &r.admitted, &r.admitted_uncorrected),
        (
            "shed (503 overloaded)",
            r.shed,
            &r.shed_latency,
            &r.shed_uncorrected,
        ),
        ("other errors", r.other_errors, &none, &none),
    ] {
        let _ = writeln!(
            md,
            "| {what} | {n} | {:.1}% | {} | {} | {} | {} | {} |",
            100.0 * n as f64 / total,
            p.p50_us,
            p.p99_us,
            p.max_us,
            u.p50_us,
            u.p99_us
        );
    }
    let _ = writeln!(
        md,
        "\nLatency from each request's intended send time (open loop, generator lag included), and from its actual send."
    );
    let _ = writeln!(
        md,
        "\nAdmitted answers per second: {:.0}.\n",
        r.admitted_ok_rps
    );
    let _ = writeln!(
        md,
        "| sidecar | RSS idle (MiB) | after saturation search (MiB) | peak during overload (MiB) | after overload (MiB) | shed inbound | shed outbound | circuit-breaker 503s |\n|---|--:|--:|--:|--:|--:|--:|--:|"
    );
    let mib = |k: u64| k as f64 / 1024.0;
    for s in &r.sidecars {
        let _ = writeln!(
            md,
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} |",
            s.process,
            mib(s.rss_idle_kib),
            mib(s.rss_after_saturation_kib),
            mib(s.rss_peak_overload_kib),
            mib(s.rss_after_overload_kib),
            s.shed_inbound,
            s.shed_outbound,
            s.breaker_overflows
        );
    }
    md
}
