//! `trellis-bench fleet-plot`: the plots of docs/benchmarks.md's Fleet section, drawn from the
//! `fleet.json` of every `fleet` run under a results directory: control-plane memory per proxy,
//! push latency (p50 and p99), time to sync the whole fleet and CPU per push, one bar per
//! configuration (proxies × services, subscription mode). A configuration run more than once is
//! drawn from its latest run (directories sort by their timestamp).

use crate::report::svg::bar_chart;
use anyhow::Context;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One `fleet` run as the plots need it.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetRun {
    pub proxies: u64,
    pub services: u64,
    /// `wildcard`, `on demand K=…` or `transparent K=…` (K: the services each proxy calls).
    pub mode: String,
    pub kib_per_proxy: f64,
    pub push_p50_ms: f64,
    pub push_p99_ms: f64,
    pub sync_all_s: f64,
    pub cpu_per_push_ms: f64,
}

impl FleetRun {
    /// Reads a run from its `fleet.json`; `None` if a field the plots need is missing.
    pub fn from_json(v: &Value) -> Option<FleetRun> {
        let on_demand = v["on_demand"].as_u64().unwrap_or(0);
        let transparent = v["transparent"].as_bool().unwrap_or(false);
        let mode = match (on_demand, transparent) {
            (0, _) => "wildcard".to_string(),
            (k, false) => format!("on demand K={k}"),
            (k, true) => format!("transparent K={k}"),
        };
        Some(FleetRun {
            proxies: v["proxies"].as_u64()?,
            services: v["services"].as_u64()?,
            mode,
            kib_per_proxy: v["kib_per_proxy"].as_f64()?,
            push_p50_ms: v["push_p50_ms"].as_f64()?,
            push_p99_ms: v["push_p99_ms"].as_f64()?,
            sync_all_s: v["sync_all_s"].as_f64()?,
            cpu_per_push_ms: v["cpu_per_push_ms"].as_f64()?,
        })
    }

    fn label(&self) -> String {
        format!("{} × {}, {}", self.proxies, self.services, self.mode)
    }

    /// Sorts by mode, then size, so that a mode's bars stand together.
    fn order(&self) -> (String, u64, u64) {
        (self.mode.clone(), self.proxies, self.services)
    }
}

/// The latest run of each configuration under `results` (every `*fleet*/fleet.json`).
pub fn collect(results: &Path) -> anyhow::Result<Vec<FleetRun>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(results)
        .with_context(|| format!("reading {}", results.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().contains("fleet"))
        })
        .collect();
    dirs.sort();
    let mut latest: BTreeMap<String, FleetRun> = BTreeMap::new();
    for dir in dirs {
        let Ok(text) = std::fs::read_to_string(dir.join("fleet.json")) else {
            continue;
        };
        let json: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not JSON", dir.join("fleet.json").display()))?;
        if let Some(run) = FleetRun::from_json(&json) {
            latest.insert(run.label(), run);
        }
    }
    let mut runs: Vec<FleetRun> = latest.into_values().collect();
    runs.sort_by_key(FleetRun::order);
    Ok(runs)
}

/// The four plots as (file name, SVG).
pub fn plots(runs: &[FleetRun]) -> Vec<(&'static str, String)> {
    let bars = |f: &dyn Fn(&FleetRun) -> f64| -> Vec<(String, f64)> {
        runs.iter().map(|r| (r.label(), f(r))).collect()
    };
    let mut push = Vec::new();
    for r in runs {
        push.push((format!("{}: p50", r.label()), r.push_p50_ms));
        push.push((format!("{}: p99", r.label()), r.push_p99_ms));
    }
    vec![
        (
            "fleet-memory.svg",
            bar_chart(
                "Control-plane memory per connected proxy",
                "KiB",
                &bars(&|r| r.kib_per_proxy),
            ),
        ),
        (
            "fleet-push.svg",
            bar_chart(
                "One endpoint change: until the last subscriber ACKed it",
                "ms",
                &push,
            ),
        ),
        (
            "fleet-sync.svg",
            bar_chart(
                "Whole fleet connected and synced",
                "s",
                &bars(&|r| r.sync_all_s),
            ),
        ),
        (
            "fleet-cpu.svg",
            bar_chart(
                "Control-plane CPU per push",
                "ms",
                &bars(&|r| r.cpu_per_push_ms),
            ),
        ),
    ]
}

/// Collects the runs under `results` and writes the plots into `out`; returns the file names.
pub fn run(results: &Path, out: &Path) -> anyhow::Result<Vec<String>> {
    let runs = collect(results)?;
    anyhow::ensure!(
        !runs.is_empty(),
        "no fleet.json under {} (run `trellis-bench fleet` first)",
        results.display()
    );
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut written = Vec::new();
    for (name, svg) in plots(&runs) {
        let path = out.join(name);
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
        written.push(name.to_string());
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory, removed when dropped (on failure too).
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir =
                std::env::temp_dir().join(format!("fleet-plot-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("scratch dir");
            Scratch(dir)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn run_json(proxies: u64, on_demand: u64, transparent: bool, kib: f64) -> Value {
        serde_json::json!({
            "proxies": proxies, "services": 100, "on_demand": on_demand,
            "transparent": transparent, "kib_per_proxy": kib, "push_p50_ms": 10.0,
            "push_p99_ms": 20.0, "sync_all_s": 1.5, "cpu_per_push_ms": 12.0,
        })
    }

    #[test]
    fn the_latest_run_of_each_configuration_is_plotted() {
        let dir = Scratch::new("latest");
        let runs = [
            (
                "2026-12-02T10-00-00Z-fleet-a",
                run_json(100, 0, false, 50.0),
            ),
            (
                "2026-12-02T11-00-00Z-fleet-b",
                run_json(100, 0, false, 40.0),
            ),
            ("2026-12-02T11-00-01Z-fleet-c", run_json(100, 5, true, 15.0)),
            ("2026-12-02T11-00-02Z-suite", run_json(100, 5, false, 99.0)),
        ];
        for (name, json) in &runs {
            std::fs::create_dir(dir.path().join(name)).expect("mkdir");
            std::fs::write(dir.path().join(name).join("fleet.json"), json.to_string())
                .expect("write");
        }
        let got = collect(dir.path()).expect("collected");
        let seen: Vec<(&str, f64)> = got
            .iter()
            .map(|r| (r.mode.as_str(), r.kib_per_proxy))
            .collect();
        assert_eq!(seen, [("transparent K=5", 15.0), ("wildcard", 40.0)]);
        let out = dir.path().join("plots");
        let written = super::run(dir.path(), &out).expect("plots");
        assert_eq!(written.len(), 4);
        let memory = std::fs::read_to_string(out.join("fleet-memory.svg")).expect("svg");
        assert!(memory.contains("100 × 100, wildcard"));
        assert!(memory.contains("40.000 KiB"));
        let push = std::fs::read_to_string(out.join("fleet-push.svg")).expect("svg");
        assert!(push.contains("p99") && push.contains("20.000 ms"));
    }

    #[test]
    fn no_runs_is_an_error_naming_the_directory() {
        let dir = Scratch::new("none");
        let err = super::run(dir.path(), &dir.path().join("out")).expect_err("nothing to plot");
        assert!(err.to_string().contains("no fleet.json under"), "{err}");
    }
}
