//! The report of a suite run: the data (`Report`, serialised as JSON), the arithmetic on it (added
//! latency over the direct path of the same protocol and rate, the targets met or missed),
//! the markdown rendering (`markdown.rs`), the SVG plots (`svg.rs`), and the results folder
//! (`results/<timestamp>/`). Every number carries its unit in its name or column header.

pub mod markdown;
pub mod svg;
mod targets;

use crate::load::{Percentiles, Protocol};
use crate::procstat::Usage;
use crate::systems::PathKind;
use anyhow::Context;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
}

impl Machine {
    pub fn this() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, v)| v.trim())
            })
            .unwrap_or("unknown")
            .to_string();
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub mode: String,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub rounds: usize,
    pub connections: usize,
    pub payload_bytes: usize,
    /// Runtime workers of each Trellis sidecar.
    pub trellis_workers: usize,
}

/// Latency added over the direct path, µs (negative when within noise below it).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Added {
    pub p50_us: i64,
    pub p90_us: i64,
    pub p99_us: i64,
    pub p999_us: i64,
    pub max_us: i64,
}

impl Added {
    pub fn between(system: &Percentiles, direct: &Percentiles) -> Added {
        let d = |a: u64, b: u64| {
            i64::try_from(a).unwrap_or(i64::MAX) - i64::try_from(b).unwrap_or(i64::MAX)
        };
        Added {
            p50_us: d(system.p50_us, direct.p50_us),
            p90_us: d(system.p90_us, direct.p90_us),
            p99_us: d(system.p99_us, direct.p99_us),
            p999_us: d(system.p999_us, direct.p999_us),
            max_us: d(system.max_us, direct.max_us),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub system: String,
    pub path: PathKind,
    pub protocol: Protocol,
    pub rate_rps: f64,
    pub achieved_rps: f64,
    pub ok: u64,
    pub errors: u64,
    pub connections: usize,
    pub latency: Percentiles,
    pub added: Option<Added>,
    pub uncorrected_p99_us: u64,
    pub send_lag_p99_us: u64,
    pub pacer_late_slots: u64,
    pub processes: Vec<Usage>,
}

impl ScenarioResult {
    pub fn empty(
        system: &str,
        path: PathKind,
        protocol: Protocol,
        rate_rps: f64,
        connections: usize,
    ) -> ScenarioResult {
        ScenarioResult {
            system: system.to_string(),
            path,
            protocol,
            rate_rps,
            achieved_rps: 0.0,
            ok: 0,
            errors: 0,
            connections,
            latency: Percentiles::default(),
            added: None,
            uncorrected_p99_us: 0,
            send_lag_p99_us: 0,
            pacer_late_slots: 0,
            processes: Vec::new(),
        }
    }

    pub fn label(&self) -> String {
        if self.path == PathKind::Direct {
            return "direct".into();
        }
        format!("{} {}", self.system, self.path.name())
    }
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Met,
    Missed,
    NotMeasured,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    pub target: String,
    pub measured: String,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub started_utc: String,
    pub machine: Machine,
    pub settings: Settings,
    pub skipped: Vec<String>,
    /// Resident memory of each sidecar before any traffic, MiB.
    pub idle_rss_mib: Vec<(String, f64)>,
    pub scenarios: Vec<ScenarioResult>,
    pub targets: Vec<TargetCheck>,
}

impl Report {
    pub fn new(
        settings: Settings,
        mut scenarios: Vec<ScenarioResult>,
        skipped: Vec<String>,
        idle_rss_mib: Vec<(String, f64)>,
    ) -> Report {
        fill_added(&mut scenarios);
        let targets = targets::check_all(&scenarios, &idle_rss_mib);
        Report {
            started_utc: timestamp(),
            machine: Machine::this(),
            settings,
            skipped,
            idle_rss_mib,
            scenarios,
            targets,
        }
    }

    /// Writes report.json, report.md and the SVG plots into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(self)?)?;
        let plots = svg::write_all(self, dir)?;
        std::fs::write(dir.join("report.md"), markdown::render(self, &plots))?;
        Ok(())
    }
}

/// Sets `added` on every scenario that has a direct run of the same protocol and rate.
pub fn fill_added(scenarios: &mut [ScenarioResult]) {
    let directs: Vec<(Protocol, f64, Percentiles)> = scenarios
        .iter()
        .filter(|s| s.path == PathKind::Direct)
        .map(|s| (s.protocol, s.rate_rps, s.latency.clone()))
        .collect();
    for s in scenarios.iter_mut().filter(|s| s.path != PathKind::Direct) {
        s.added = directs
            .iter()
            .find(|(p, r, _)| *p == s.protocol && *r == s.rate_rps)
            .map(|(_, _, d)| Added::between(&s.latency, d));
    }
}

/// `YYYY-MM-DDTHH-MM-SSZ` (UTC), usable as a folder name.
pub fn timestamp() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}-{:02}-{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

/// `<workspace>/results`.
pub fn results_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../results")
}

/// The newest `results/<timestamp>` holding a report.
pub fn last_run(root: &Path) -> anyhow::Result<PathBuf> {
    let mut runs: Vec<PathBuf> = std::fs::read_dir(root)
        .with_context(|| {
            format!(
                "no results in {} yet (run `trellis-bench run --short`)",
                root.display()
            )
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("report.md").is_file())
        .collect();
    runs.sort();
    runs.pop()
        .with_context(|| format!("no finished run in {}", root.display()))
}

#[cfg(test)]
mod tests;
