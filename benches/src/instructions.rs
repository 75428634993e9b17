//! `trellis-bench instructions`: user-space instructions and heap allocations per request, per
//! proxy process, counted by callgrind. Wall-clock latency on a shared 2-core machine drifts by
//! tens of percent between runs; instruction counts repeat to well under 1%, so they are what a
//! change to the hot path is judged by (issue #15, docs/benchmarks.md "Steps").
//!
//! Each proxy runs under `valgrind --tool=callgrind`. One client connection sends `warmup`
//! requests one at a time (connections, TLS sessions, pools and caches settle), then every
//! measured process's counters are zeroed (`callgrind_control -z`), `requests` more are sent one
//! at a time, and the counters are dumped (`callgrind_control -d`): the dump's total over
//! `requests` is instructions per request, and the calls it records into the malloc family
//! (`malloc`, `calloc`, `realloc`, `posix_memalign`, `aligned_alloc`, `memalign`) over
//! `requests` are allocations per request. The same method applies to the peers, so the numbers
//! compare like with like; nginx's pool allocator makes its malloc count a lower bound of its
//! allocations.

use crate::load::{Lane, LoadConfig, Protocol};
use crate::systems::{self, peers, trellis, PathKind, Process, Running};
use anyhow::{bail, Context};
use serde::Serialize;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct InstructionsConfig {
    pub out: PathBuf,
    /// Measured requests per scenario.
    pub requests: usize,
    /// Requests before the counters are zeroed.
    pub warmup: usize,
    pub protocols: Vec<Protocol>,
    /// Runtime workers of the Trellis sidecars; one pass per value.
    pub workers: Vec<usize>,
    /// Also measure nginx and haproxy (skipped with a note when not installed).
    pub peers: bool,
    /// Also the traced pair (100% sampling, spans exported).
    pub traced: bool,
    pub trellis: Option<PathBuf>,
}

impl InstructionsConfig {
    pub fn new(out: PathBuf) -> InstructionsConfig {
        InstructionsConfig {
            out,
            requests: 1000,
            warmup: 200,
            protocols: vec![Protocol::Http1, Protocol::H2c, Protocol::Grpc],
            workers: vec![trellis::DEFAULT_WORKERS],
            peers: true,
            traced: false,
            trellis: None,
        }
    }
}

/// One process's counts over one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub system: String,
    pub path: PathKind,
    pub protocol: Protocol,
    /// Trellis sidecars' `--workers`; none for the peers.
    pub workers: Option<usize>,
    pub process: String,
    pub instructions_per_request: f64,
    pub allocations_per_request: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct InstructionsReport {
    pub requests: usize,
    pub warmup: usize,
    pub rows: Vec<Row>,
    pub skipped: Vec<String>,
}

/// The counts in one callgrind dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DumpCounts {
    /// Instructions executed (event `Ir`), user space only.
    pub instructions: u64,
    /// Calls into the malloc family.
    pub allocations: u64,
}

const ALLOCATORS: [&str; 6] = [
    "malloc",
    "calloc",
    "realloc",
    "posix_memalign",
    "aligned_alloc",
    "memalign",
];

/// Reads a callgrind output file's `totals:` (first event) and its calls into the malloc family.
/// Function names are compressed (`cfn=(7) malloc` once, then `cfn=(7)`), so ids are resolved
/// as they are defined; `fn=` and `cfn=` share one table.
pub fn parse_dump(text: &str) -> anyhow::Result<DumpCounts> {
    let mut names: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    let mut callee_is_allocator = false;
    let mut counts = DumpCounts::default();
    let mut totals = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("totals:") {
            let first = rest.split_whitespace().next().unwrap_or("");
            totals = Some(first.parse::<u64>().context("totals: not a number")?);
        } else if let Some(rest) = line.strip_prefix("cfn=") {
            let name = resolve(&mut names, rest);
            // Recursion levels are written as `name'2`.
            let base = name.split('\'').next().unwrap_or(name);
            callee_is_allocator = ALLOCATORS.contains(&base);
        } else if let Some(rest) = line.strip_prefix("fn=") {
            resolve(&mut names, rest);
        } else if let Some(rest) = line.strip_prefix("calls=") {
            if callee_is_allocator {
                let n = rest.split_whitespace().next().unwrap_or("");
                counts.allocations += n.parse::<u64>().context("calls= not a number")?;
            }
        }
    }
    counts.instructions = totals.context("no totals: line (an unfinished dump?)")?;
    Ok(counts)
}

fn resolve<'a>(names: &mut std::collections::HashMap<&'a str, &'a str>, rest: &'a str) -> &'a str {
    let rest = rest.trim();
    match rest.strip_prefix('(').and_then(|r| r.split_once(')')) {
        Some((id, name)) => {
            let name = name.trim();
            if name.is_empty() {
                names.get(id).copied().unwrap_or("")
            } else {
                names.insert(id, name);
                name
            }
        }
        None => rest,
    }
}

fn valgrind(dir: &Path) -> anyhow::Result<Vec<OsString>> {
    let bin =
        peers::which("valgrind").context("valgrind is not installed (apt-get install valgrind)")?;
    anyhow::ensure!(
        peers::which("callgrind_control").is_some(),
        "callgrind_control is not installed (it comes with valgrind)"
    );
    Ok(vec![
        bin.into(),
        "--tool=callgrind".into(),
        format!("--callgrind-out-file={}/callgrind.%p", dir.display()).into(),
    ])
}

async fn control(flag: &str, pid: u32) -> anyhow::Result<()> {
    let out = tokio::process::Command::new("callgrind_control")
        .arg(flag)
        .arg(pid.to_string())
        .output()
        .await
        .context("running callgrind_control")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !text.contains("OK") {
        bail!(
            "callgrind_control {flag} {pid}: {}{}",
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The newest dump of `pid` in `dir` (`callgrind.<pid>.<n>`), once it is complete.
async fn newest_dump(dir: &Path, pid: u32, after: u32) -> anyhow::Result<(u32, DumpCounts)> {
    let prefix = format!("callgrind.{pid}.");
    for _ in 0..100 {
        let newest = std::fs::read_dir(dir)?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix(&prefix)?.parse::<u32>().ok()
            })
            .max();
        if let Some(n) = newest.filter(|n| *n > after) {
            let text = std::fs::read_to_string(dir.join(format!("{prefix}{n}")))?;
            if let Ok(counts) = parse_dump(&text) {
                return Ok((n, counts));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("no new callgrind dump of pid {pid} in {}", dir.display())
}

/// Warm-up, zero, `requests` sequential requests, dump: one row per measured process.
async fn measure(
    cfg: &InstructionsConfig,
    sys: &Running,
    protocol: Protocol,
    workers: Option<usize>,
    dir: &Path,
    dumps: &mut std::collections::HashMap<u32, u32>,
) -> anyhow::Result<Vec<Row>> {
    let mut load = LoadConfig::new(
        (sys.target)(protocol),
        protocol,
        1.0,
        Duration::from_secs(1),
    );
    load.request_timeout = Duration::from_secs(60);
    let mut lane = Lane::connect(&load).await?;
    for _ in 0..cfg.warmup {
        lane.send_one().await.context("warm-up request")?;
    }
    for (_, pid) in &sys.measured {
        control("-z", *pid).await?;
    }
    for _ in 0..cfg.requests {
        lane.send_one().await.context("measured request")?;
    }
    let mut rows = Vec::new();
    let n = cfg.requests.max(1) as f64;
    for (process, pid) in &sys.measured {
        control("-d", *pid).await?;
        let seen = dumps.get(pid).copied().unwrap_or(0);
        let (number, counts) = newest_dump(dir, *pid, seen).await?;
        dumps.insert(*pid, number);
        rows.push(Row {
            system: sys.system.clone(),
            path: sys.path,
            protocol,
            workers,
            process: process.clone(),
            instructions_per_request: counts.instructions as f64 / n,
            allocations_per_request: counts.allocations as f64 / n,
        });
    }
    Ok(rows)
}

async fn measure_all(
    cfg: &InstructionsConfig,
    systems: &[Running],
    workers: Option<usize>,
    dir: &Path,
    report: &mut InstructionsReport,
) {
    let mut dumps = std::collections::HashMap::new();
    for sys in systems {
        for &protocol in cfg.protocols.iter().filter(|p| sys.protocols.contains(p)) {
            eprintln!(
                "counting: {} {} {}{}",
                sys.system,
                sys.path.name(),
                protocol.name(),
                workers
                    .map(|w| format!(", {w} worker(s)"))
                    .unwrap_or_default()
            );
            match measure(cfg, sys, protocol, workers, dir, &mut dumps).await {
                Ok(mut rows) => report.rows.append(&mut rows),
                Err(e) => report.skipped.push(format!(
                    "{} {} {} failed: {e:#}",
                    sys.system,
                    sys.path.name(),
                    protocol.name()
                )),
            }
        }
    }
}

pub async fn run(cfg: &InstructionsConfig) -> anyhow::Result<InstructionsReport> {
    let work = cfg.out.join("work");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let binary = trellis::find_binary(cfg.trellis.as_deref())?;
    let _upstream = systems::start_upstream(&work.join("upstream.log")).await?;
    let mut report = InstructionsReport {
        requests: cfg.requests,
        warmup: cfg.warmup,
        rows: Vec::new(),
        skipped: Vec::new(),
    };
    for &workers in &cfg.workers {
        let dir = work.join(format!("trellis-{workers}w"));
        std::fs::create_dir_all(&dir)?;
        let opts = trellis::Sidecars {
            workers,
            traced: cfg.traced,
            wrap_traced: cfg.traced,
            wrapper: valgrind(&dir)?,
            ready_timeout: Duration::from_secs(300),
            ..trellis::Sidecars::default()
        };
        // Dropped at the end of the pass: the next pass binds the same addresses.
        let mut procs: Vec<Process> = Vec::new();
        let systems = trellis::start_with(&binary, &dir, &mut procs, &opts).await?;
        measure_all(cfg, &systems, Some(workers), &dir, &mut report).await;
    }
    if cfg.peers {
        let dir = work.join("peers");
        std::fs::create_dir_all(&dir)?;
        let under = peers::Under {
            wrapper: valgrind(&dir)?,
        };
        let mut procs: Vec<Process> = Vec::new();
        let (systems, mut notes) = peers::start_under(&dir, &under, &mut procs).await;
        report.skipped.append(&mut notes);
        measure_all(cfg, &systems, None, &dir, &mut report).await;
    }
    Ok(report)
}

/// The report as markdown: one row per process, and the path's sum.
pub fn markdown(r: &InstructionsReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "User-space instructions and malloc-family calls per request (callgrind; {} requests one at a time after {} warm-up, 1 KiB responses).\n",
        r.requests, r.warmup
    );
    let _ = writeln!(
        s,
        "| system | path | protocol | workers | process | instructions / request | allocations / request |"
    );
    let _ = writeln!(s, "|---|---|---|--:|---|--:|--:|");
    let mut i = 0;
    while i < r.rows.len() {
        let first = &r.rows[i];
        let same = r.rows[i..]
            .iter()
            .take_while(|x| {
                x.system == first.system
                    && x.path == first.path
                    && x.protocol == first.protocol
                    && x.workers == first.workers
            })
            .count();
        let group = &r.rows[i..i + same];
        let workers = first.workers.map(|w| w.to_string()).unwrap_or("–".into());
        for row in group {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {:.0} | {:.1} |",
                row.system,
                row.path.name(),
                row.protocol.name(),
                workers,
                row.process,
                row.instructions_per_request,
                row.allocations_per_request
            );
        }
        if group.len() > 1 {
            let ir: f64 = group.iter().map(|x| x.instructions_per_request).sum();
            let allocs: f64 = group.iter().map(|x| x.allocations_per_request).sum();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | **both** | **{:.0}** | **{:.1}** |",
                first.system,
                first.path.name(),
                first.protocol.name(),
                workers,
                ir,
                allocs
            );
        }
        i += same;
    }
    for note in &r.skipped {
        let _ = writeln!(s, "\nNote: {note}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "version: 1
creator: callgrind-3.19.0
events: Ir
fl=(1) /build/glibc/malloc.c
fn=(1) malloc
0 40
fl=(2) src/main.rs
fn=(2) main
cfn=(1)
calls=3 0
0 120
cfn=(3) calloc
calls=2 0
0 30
cfn=(4) memcpy
calls=5 0
0 10
fn=(5) helper
cfn=(6) malloc'2
calls=1 0
0 4
cfn=(1)
calls=4 0
0 7
totals: 211
";

    #[test]
    fn dump_totals_and_allocator_calls() {
        let c = parse_dump(DUMP).expect("parses");
        assert_eq!(c.instructions, 211);
        // 3 + 2 (calloc) + 1 (recursive malloc) + 4; memcpy's 5 do not count.
        assert_eq!(c.allocations, 10);
    }

    #[test]
    fn a_dump_without_totals_is_unfinished() {
        assert!(parse_dump("events: Ir\nfn=(1) main\n0 4\n").is_err());
    }

    #[test]
    fn markdown_sums_a_two_process_path() {
        let row = |process: &str, ir: f64| Row {
            system: "trellis".into(),
            path: PathKind::Mesh,
            protocol: Protocol::Http1,
            workers: Some(1),
            process: process.into(),
            instructions_per_request: ir,
            allocations_per_request: 10.0,
        };
        let r = InstructionsReport {
            requests: 10,
            warmup: 2,
            rows: vec![row("sidecar loadgen", 1000.0), row("sidecar bench", 500.0)],
            skipped: vec![],
        };
        let md = markdown(&r);
        assert!(md.contains("| **both** | **1500** | **20.0** |"), "{md}");
    }
}
