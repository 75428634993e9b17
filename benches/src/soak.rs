//! Soak mode: the mesh path at a fixed rate (default 1,000 rps, HTTP/1.1 and h2c half each) for a
//! long time (default 10 minutes), sampling each sidecar process's resident memory (`VmRSS`) and
//! open file descriptors (`/proc/<pid>/fd`) every few seconds. A leak of a few bytes per request
//! or of one descriptor per connection shows as a trend no single short run can see.
//!
//! The load runs in windows (default 10 s): each window opens fresh client connections and closes
//! them at its end, so connection setup and teardown are exercised as well as requests.
//!
//! The verdict compares the first stretch after the warm-up with the last stretch of the run
//! (each a minute, or a third of the measured time if shorter):
//! - RSS: fails if the median grew by more than `rss_bound_kib` (default 4 MiB). An absolute bound,
//!   not a percentage: a sidecar sits near 15 MiB, so 10% would be 1.5 MiB, within the allocator's
//!   ordinary drift (per-thread arenas, buffers of the connections open at the sample); while a
//!   leak of only 8 bytes per request at 1,000 rps over 9 minutes is 4.3 MB and is caught.
//! - descriptors: fails if the fewest seen in the last stretch exceed the most seen in the first
//!   (a leak only ever climbs; connections opening and closing only move within a band).
//! - errors: fails if more than 1% of the requests failed.

use crate::load::{self, LoadConfig, LoadResult, Protocol};
use crate::procstat;
use crate::systems::{self, trellis, Process};
use anyhow::Context;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// Requests per second in total, split evenly over `protocols`.
    pub rate: f64,
    pub protocols: Vec<Protocol>,
    pub duration: Duration,
    /// Left out of the verdict (pools fill, allocator arenas settle).
    pub warmup: Duration,
    pub sample_every: Duration,
    /// Each window's client connections are opened at its start and closed at its end.
    pub window: Duration,
    pub rss_bound_kib: u64,
    pub trellis: Option<PathBuf>,
    /// Where `samples.csv`, `windows.csv`, `soak.json`, `soak.md` and the processes' files go.
    pub out: PathBuf,
}

impl SoakConfig {
    pub fn new(out: PathBuf) -> SoakConfig {
        SoakConfig {
            rate: 1000.0,
            protocols: vec![Protocol::Http1, Protocol::H2c],
            duration: Duration::from_secs(600),
            warmup: Duration::from_secs(60),
            sample_every: Duration::from_secs(5),
            window: Duration::from_secs(10),
            rss_bound_kib: 4096,
            trellis: None,
            out,
        }
    }
}

/// One reading of one process.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub process: String,
    pub rss_kib: u64,
    pub fds: usize,
}

/// One window of one protocol.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub t_s: f64,
    pub protocol: Protocol,
    pub ok: u64,
    pub errors: u64,
    pub p50_us: u64,
    pub p99_us: u64,
}

/// The verdict for one process.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub process: String,
    pub rss_first_kib: u64,
    pub rss_last_kib: u64,
    pub rss_growth_kib: i64,
    pub fds_first_max: usize,
    pub fds_last_min: usize,
    pub held: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub rate_rps: f64,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub rss_bound_kib: u64,
    pub load_average: String,
    pub ok: u64,
    pub errors: u64,
    pub windows: Vec<Window>,
    pub verdicts: Vec<Verdict>,
    pub samples: Vec<Sample>,
    pub held: bool,
}

/// Starts the upstream and Trellis, runs the soak, writes the files; the report says if it held.
pub async fn run(cfg: &SoakConfig) -> anyhow::Result<SoakReport> {
    anyhow::ensure!(!cfg.protocols.is_empty(), "at least one protocol");
    anyhow::ensure!(
        cfg.duration > cfg.warmup,
        "the duration must exceed the warm-up"
    );
    let work = cfg.out.join("work");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let binary = trellis::find_binary(cfg.trellis.as_deref())?;
    let mut procs: Vec<Process> = vec![systems::start_upstream(&work.join("upstream.log")).await?];
    let systems = trellis::start(&binary, &work, &mut procs).await?;
    let mesh = (systems.into_iter())
        .find(|s| s.system == "trellis" && s.path == systems::PathKind::Mesh)
        .context("the Trellis mesh path did not start")?;
    let watched = mesh.measured.clone();

    let samples = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let sampler = tokio::spawn(sample_loop(
        watched.clone(),
        cfg.sample_every,
        started,
        samples.clone(),
    ));
    let per_protocol = cfg.rate / cfg.protocols.len() as f64;
    let mut windows = Vec::new();
    while started.elapsed() < cfg.duration {
        let left = cfg.duration.saturating_sub(started.elapsed());
        let length = cfg.window.min(left).max(Duration::from_secs(1));
        let t_s = started.elapsed().as_secs_f64();
        let runs: Vec<_> = (cfg.protocols.iter())
            .map(|&p| {
                let mut c = LoadConfig::new((mesh.target)(p), p, per_protocol, length);
                c.warmup = Duration::ZERO;
                (p, tokio::spawn(async move { load::run(&c).await }))
            })
            .collect();
        for (protocol, run) in runs {
            let r: LoadResult = run.await.context("a load task panicked")??;
            windows.push(Window {
                t_s,
                protocol,
                ok: r.ok,
                errors: r.errors,
                p50_us: r.latency.p50_us,
                p99_us: r.latency.p99_us,
            });
        }
        for p in procs.iter_mut() {
            p.check_alive()?;
        }
    }
    sampler.abort();
    let samples = samples.lock().map(|s| s.clone()).unwrap_or_default();
    let report = judge(cfg, windows, samples, &watched);
    write(&cfg.out, &report)?;
    drop(procs);
    Ok(report)
}

async fn sample_loop(
    watched: Vec<(String, u32)>,
    every: Duration,
    started: Instant,
    out: Arc<Mutex<Vec<Sample>>>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let t_s = started.elapsed().as_secs_f64();
        for (name, pid) in &watched {
            let (Some(s), Some(fds)) = (procstat::sample(*pid), procstat::open_fds(*pid)) else {
                continue;
            };
            if let Ok(mut all) = out.lock() {
                all.push(Sample {
                    t_s,
                    process: name.clone(),
                    rss_kib: s.rss_kib,
                    fds,
                });
            }
        }
    }
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// The first and last stretch after the warm-up, per process, and whether each held.
pub fn judge(
    cfg: &SoakConfig,
    windows: Vec<Window>,
    samples: Vec<Sample>,
    watched: &[(String, u32)],
) -> SoakReport {
    let measured = cfg.duration.saturating_sub(cfg.warmup).as_secs_f64();
    let stretch = (measured / 3.0).min(60.0);
    let first_end = cfg.warmup.as_secs_f64() + stretch;
    let last_start = cfg.duration.as_secs_f64() - stretch;
    let mut verdicts = Vec::new();
    for (name, _) in watched {
        let mine = samples.iter().filter(|s| &s.process == name);
        let first: Vec<&Sample> = mine
            .clone()
            .filter(|s| s.t_s >= cfg.warmup.as_secs_f64() && s.t_s < first_end)
            .collect();
        let last: Vec<&Sample> = mine.filter(|s| s.t_s >= last_start).collect();
        let rss_first_kib = median(first.iter().map(|s| s.rss_kib).collect());
        let rss_last_kib = median(last.iter().map(|s| s.rss_kib).collect());
        let rss_growth_kib = rss_last_kib as i64 - rss_first_kib as i64;
        let fds_first_max = first.iter().map(|s| s.fds).max().unwrap_or(0);
        let fds_last_min = last.iter().map(|s| s.fds).min().unwrap_or(usize::MAX);
        let enough = !first.is_empty() && !last.is_empty();
        verdicts.push(Verdict {
            process: name.clone(),
            rss_first_kib,
            rss_last_kib,
            rss_growth_kib,
            fds_first_max,
            fds_last_min,
            held: enough
                && rss_growth_kib <= cfg.rss_bound_kib as i64
                && fds_last_min <= fds_first_max,
        });
    }
    let ok: u64 = windows.iter().map(|w| w.ok).sum();
    let errors: u64 = windows.iter().map(|w| w.errors).sum();
    let errors_held = (errors as f64) <= 0.01 * (ok + errors) as f64;
    SoakReport {
        rate_rps: cfg.rate,
        duration_s: cfg.duration.as_secs_f64(),
        warmup_s: cfg.warmup.as_secs_f64(),
        rss_bound_kib: cfg.rss_bound_kib,
        load_average: std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        ok,
        errors,
        held: errors_held && !verdicts.is_empty() && verdicts.iter().all(|v| v.held),
        windows,
        verdicts,
        samples,
    }
}

fn write(dir: &Path, r: &SoakReport) -> anyhow::Result<()> {
    let mut csv = String::from("t_s,process,rss_kib,fds\n");
    for s in &r.samples {
        let _ = writeln!(csv, "{:.1},{},{},{}", s.t_s, s.process, s.rss_kib, s.fds);
    }
    std::fs::write(dir.join("samples.csv"), csv)?;
    let mut csv = String::from("t_s,protocol,ok,errors,p50_us,p99_us\n");
    for w in &r.windows {
        let _ = writeln!(
            csv,
            "{:.1},{},{},{},{},{}",
            w.t_s,
            w.protocol.name(),
            w.ok,
            w.errors,
            w.p50_us,
            w.p99_us
        );
    }
    std::fs::write(dir.join("windows.csv"), csv)?;
    std::fs::write(dir.join("soak.json"), serde_json::to_string_pretty(r)?)?;
    std::fs::write(dir.join("soak.md"), markdown(r))?;
    Ok(())
}

pub fn markdown(r: &SoakReport) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Soak: {:.0} rps for {:.0} s (warm-up {:.0} s), {} ok, {} errors; load average at the end: {}.\n",
        r.rate_rps, r.duration_s, r.warmup_s, r.ok, r.errors, r.load_average
    );
    let _ = writeln!(
        md,
        "| process | RSS first (MiB) | RSS last (MiB) | growth (KiB) | fds first (max) | fds last (min) | verdict |\n|---|--:|--:|--:|--:|--:|---|"
    );
    for v in &r.verdicts {
        let _ = writeln!(
            md,
            "| {} | {:.1} | {:.1} | {:+} | {} | {} | {} |",
            v.process,
            v.rss_first_kib as f64 / 1024.0,
            v.rss_last_kib as f64 / 1024.0,
            v.rss_growth_kib,
            v.fds_first_max,
            v.fds_last_min,
            if v.held { "held" } else { "**grew**" }
        );
    }
    let _ = writeln!(
        md,
        "\nBound: RSS growth ≤ {} KiB between the first and last stretch after the warm-up (medians); descriptors: the last stretch's fewest ≤ the first stretch's most. Overall: {}.",
        r.rss_bound_kib,
        if r.held { "**held**" } else { "**failed**" }
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_s: f64, rss_kib: u64, fds: usize) -> Sample {
        Sample {
            t_s,
            process: "p".into(),
            rss_kib,
            fds,
        }
    }

    fn cfg() -> SoakConfig {
        let mut c = SoakConfig::new(PathBuf::new());
        c.duration = Duration::from_secs(300);
        c.warmup = Duration::from_secs(60);
        c
    }

    fn verdict(samples: Vec<Sample>) -> Verdict {
        let r = judge(&cfg(), Vec::new(), samples, &[("p".into(), 1)]);
        r.verdicts
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("one verdict"))
    }

    #[test]
    fn flat_memory_and_a_band_of_descriptors_hold() {
        let s = (0..60)
            .map(|i| {
                sample(
                    f64::from(i) * 5.0,
                    15_000 + (i % 3) as u64 * 500,
                    40 + (i % 4) as usize,
                )
            })
            .collect();
        assert!(verdict(s).held);
    }

    #[test]
    fn steady_memory_growth_fails() {
        // 150 KiB per 5 s: the medians of the first and last minute are ~5 MiB apart.
        let s = (0..60)
            .map(|i| sample(f64::from(i) * 5.0, 15_000 + i as u64 * 150, 40))
            .collect();
        let v = verdict(s);
        assert!(!v.held && v.rss_growth_kib > 4096, "{v:?}");
    }

    #[test]
    fn a_descriptor_leak_fails() {
        let s = (0..60)
            .map(|i| sample(f64::from(i) * 5.0, 15_000, 40 + i as usize / 4))
            .collect();
        assert!(!verdict(s).held);
    }

    #[test]
    fn the_warm_up_is_left_out() {
        let mut s: Vec<Sample> = (0..12)
            .map(|i| sample(f64::from(i) * 5.0, 9_000, 10))
            .collect();
        s.extend((12..60).map(|i| sample(f64::from(i) * 5.0, 15_000, 40)));
        assert!(verdict(s).held);
    }
}
