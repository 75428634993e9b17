//! The benchmark suite: starts the upstream, Trellis and whatever peers are installed, then runs
//! every scenario (system × path × protocol × rate) interleaved — for each rate and protocol, all
//! systems in turn, and that `rounds` times (A B C A B C) — so drift over the run (thermal,
//! neighbours, page cache) hits every system alike. Rounds of a scenario are merged (histograms
//! added, CPU summed, peak RSS maxed). Every process started is stopped when the suite ends, also
//! on failure.

use crate::load::{self, LoadConfig, Protocol};
use crate::procstat::{self, Usage};
use crate::report::{Report, ScenarioResult, Settings};
use crate::systems::{self, peers, trellis, PathKind, Process, Running};
use anyhow::Context;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct SuiteConfig {
    pub mode: String,
    pub rates: Vec<f64>,
    pub protocols: Vec<Protocol>,
    pub duration: Duration,
    pub warmup: Duration,
    pub rounds: usize,
    pub connections: usize,
    pub payload_bytes: usize,
    pub trellis: Option<PathBuf>,
    pub pingora: Option<PathBuf>,
    pub templates: Vec<peers::Template>,
    /// Runtime workers of each Trellis sidecar (`--workers`).
    pub trellis_workers: usize,
    /// Scratch space: configs, logs, state.
    pub work: PathBuf,
}

impl SuiteConfig {
    pub fn short(work: PathBuf) -> SuiteConfig {
        SuiteConfig {
            mode: "short".into(),
            rates: vec![2000.0],
            protocols: vec![Protocol::Http1, Protocol::H2c, Protocol::Grpc],
            duration: Duration::from_secs(3),
            warmup: Duration::from_secs(1),
            rounds: 2,
            connections: 16,
            payload_bytes: 1024,
            trellis: None,
            pingora: None,
            templates: Vec::new(),
            trellis_workers: trellis::DEFAULT_WORKERS,
            work,
        }
    }

    pub fn full(work: PathBuf) -> SuiteConfig {
        SuiteConfig {
            mode: "full".into(),
            rates: vec![500.0, 2000.0, 8000.0],
            duration: Duration::from_secs(8),
            warmup: Duration::from_secs(2),
            ..SuiteConfig::short(work)
        }
    }
}

struct Acc {
    result: ScenarioResult,
    histogram: Option<hdrhistogram::Histogram<u64>>,
    achieved_sum: f64,
    runs: u32,
}

pub async fn run(cfg: &SuiteConfig) -> anyhow::Result<Report> {
    std::fs::create_dir_all(&cfg.work)?;
    let mut procs: Vec<Process> = Vec::new();
    let outcome = run_with(cfg, &mut procs).await;
    // Stop everything (Process::drop kills each with its descendants).
    drop(procs);
    outcome
}

async fn run_with(cfg: &SuiteConfig, procs: &mut Vec<Process>) -> anyhow::Result<Report> {
    eprintln!(
        "starting the upstream, Trellis and the peers (work dir {})",
        cfg.work.display()
    );
    procs.push(systems::start_upstream(&cfg.work.join("upstream.log")).await?);
    let binary = trellis::find_binary(cfg.trellis.as_deref())?;
    let mut systems = vec![systems::direct()];
    let sidecars = trellis::Sidecars {
        workers: cfg.trellis_workers,
        ..trellis::Sidecars::default()
    };
    systems.extend(trellis::start_with(&binary, &cfg.work, procs, &sidecars).await?);
    // Idle RSS of the sidecars, before any traffic.
    let idle: Vec<(String, f64)> = systems
        .iter()
        .filter(|s| s.system == "trellis" && s.path == PathKind::Mesh)
        .flat_map(|s| s.measured.iter())
        .filter_map(|(n, pid)| Some((n.clone(), procstat::sample(*pid)?.rss_kib as f64 / 1024.0)))
        .collect();
    let (peer_systems, mut skipped) =
        peers::start_all(&cfg.work, cfg.pingora.as_deref(), &cfg.templates, procs).await;
    systems.extend(peer_systems);
    for note in &skipped {
        eprintln!("note: {note}");
    }
    let mut accs: Vec<Acc> = Vec::new();
    for &rate in &cfg.rates {
        for &protocol in &cfg.protocols {
            let here: Vec<&Running> = systems
                .iter()
                .filter(|s| s.protocols.contains(&protocol))
                .collect();
            for round in 0..cfg.rounds {
                for sys in &here {
                    for p in procs.iter_mut() {
                        p.check_alive()?;
                    }
                    eprintln!(
                        "round {}/{}: {} {} {} at {rate} rps",
                        round + 1,
                        cfg.rounds,
                        sys.system,
                        sys.path.name(),
                        protocol.name()
                    );
                    match one_run(cfg, sys, protocol, rate).await {
                        Ok((result, usage)) => merge(&mut accs, sys, protocol, rate, result, usage),
                        Err(e) => {
                            let note = format!(
                                "{} {} {} at {rate} rps failed: {e:#}",
                                sys.system,
                                sys.path.name(),
                                protocol.name()
                            );
                            eprintln!("note: {note}");
                            skipped.push(note);
                        }
                    }
                }
            }
        }
    }
    let scenarios = accs
        .into_iter()
        .map(|mut a| {
            if let Some(h) = &a.histogram {
                a.result.latency = load::Percentiles::of(h);
            }
            a.result.achieved_rps = a.achieved_sum / f64::from(a.runs.max(1));
            a.result
        })
        .collect();
    Ok(Report::new(
        Settings {
            mode: cfg.mode.clone(),
            duration_s: cfg.duration.as_secs_f64(),
            warmup_s: cfg.warmup.as_secs_f64(),
            rounds: cfg.rounds,
            connections: cfg.connections,
            payload_bytes: cfg.payload_bytes,
            trellis_workers: cfg.trellis_workers,
        },
        scenarios,
        skipped,
        idle,
    ))
}

async fn one_run(
    cfg: &SuiteConfig,
    sys: &Running,
    protocol: Protocol,
    rate: f64,
) -> anyhow::Result<(load::LoadResult, Vec<Usage>)> {
    let mut load_cfg = LoadConfig::new((sys.target)(protocol), protocol, rate, cfg.duration);
    load_cfg.warmup = cfg.warmup;
    load_cfg.connections = cfg.connections;
    load_cfg.payload_bytes = cfg.payload_bytes;
    for (_, pid) in &sys.measured {
        procstat::reset_peak(*pid);
    }
    let before: Vec<_> = sys
        .measured
        .iter()
        .map(|(_, pid)| procstat::sample(*pid))
        .collect();
    let result = load::run(&load_cfg).await.context("load run")?;
    // CPU covers the warm-up too, so it is divided by every request sent.
    let sent = (rate * (cfg.duration + cfg.warmup).as_secs_f64()).round() as u64;
    let usage = sys
        .measured
        .iter()
        .zip(before)
        .filter_map(|((name, pid), before)| {
            Some(procstat::usage(
                name,
                before?,
                procstat::sample(*pid)?,
                sent,
            ))
        })
        .collect();
    Ok((result, usage))
}

fn merge(
    accs: &mut Vec<Acc>,
    sys: &Running,
    protocol: Protocol,
    rate: f64,
    r: load::LoadResult,
    usage: Vec<Usage>,
) {
    let pos = accs.iter().position(|a| {
        a.result.system == sys.system
            && a.result.path == sys.path
            && a.result.protocol == protocol
            && a.result.rate_rps == rate
    });
    let acc = match pos {
        Some(i) => &mut accs[i],
        None => {
            accs.push(Acc {
                result: ScenarioResult::empty(&sys.system, sys.path, protocol, rate, r.connections),
                histogram: None,
                achieved_sum: 0.0,
                runs: 0,
            });
            let last = accs.len() - 1;
            &mut accs[last]
        }
    };
    match &mut acc.histogram {
        Some(h) => {
            let _ = h.add(&r.histogram);
        }
        None => acc.histogram = Some(r.histogram.clone()),
    }
    acc.achieved_sum += r.achieved_rps;
    acc.runs += 1;
    let res = &mut acc.result;
    res.ok += r.ok;
    res.errors += r.errors;
    res.uncorrected_p99_us = res.uncorrected_p99_us.max(r.uncorrected.p99_us);
    res.send_lag_p99_us = res.send_lag_p99_us.max(r.send_lag.p99_us);
    res.pacer_late_slots += r.pacer_late_slots;
    for u in usage {
        match res.processes.iter_mut().find(|p| p.process == u.process) {
            Some(p) => {
                let runs = f64::from(acc.runs);
                p.cpu_s += u.cpu_s;
                // Running mean of the per-run ratio (runs have the same request count).
                p.cpu_s_per_1k_requests +=
                    (u.cpu_s_per_1k_requests - p.cpu_s_per_1k_requests) / runs;
                p.peak_rss_mib = p.peak_rss_mib.max(u.peak_rss_mib);
            }
            None => res.processes.push(u),
        }
    }
}
