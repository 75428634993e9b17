//! `trellis-bench flame`: where each sidecar's CPU goes on the mesh path under load (issue #15,
//! item 7). Starts the upstream and the untraced sidecar pair as the suite does, sends one
//! protocol at one rate (open loop), and meanwhile samples both sidecars with `perf record -e
//! cpu-clock --call-graph dwarf` (the release build has no frame pointers; DWARF unwinding
//! reads its `.eh_frame`). Each recording is folded (`fold.rs`: `<name>.folded`, the input of
//! any flame graph tool) and drawn (`svg.rs`: `<name>.svg`). Samples are wall-clock ticks of
//! the CPU, so the kernel's share (TCP, scheduling) shows beside the proxy's own code.

mod fold;
mod svg;

pub use fold::{fold, Folded};
pub use svg::render;

use crate::load::{self, LoadConfig, Protocol};
use crate::systems::{self, trellis, PathKind};
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct FlameConfig {
    pub trellis: Option<PathBuf>,
    pub protocol: Protocol,
    pub rate: f64,
    /// How long both sidecars are sampled (after a 2 s warm-up at the same rate).
    pub duration: Duration,
    /// Samples per second and sidecar.
    pub frequency: u32,
    /// `--workers` of each sidecar.
    pub workers: usize,
    pub out: PathBuf,
}

/// What one sidecar's recording came to.
#[derive(Debug, Clone)]
pub struct Flame {
    /// `a-outbound` or `b-inbound`.
    pub name: String,
    pub samples: u64,
    pub svg: PathBuf,
}

/// The run: both sidecars' flame graphs, and the load's own result.
pub async fn run(cfg: &FlameConfig) -> anyhow::Result<(Vec<Flame>, load::LoadResult)> {
    let perf = systems::peers::which("perf").context("`perf` is not installed (linux-perf)")?;
    let binary = trellis::find_binary(cfg.trellis.as_deref())?;
    let work = cfg.out.join("work");
    std::fs::create_dir_all(&work)?;
    let mut procs = vec![systems::start_upstream(&work.join("upstream.log")).await?];
    let opts = trellis::Sidecars::untraced_as_shipped(&binary, cfg.workers);
    let running = trellis::start_with(&binary, &work, &mut procs, &opts).await?;
    let mesh = (running.iter())
        .find(|r| r.path == PathKind::Mesh)
        .context("no mesh path among the started systems")?;
    let sidecars: Vec<(String, u32)> = (mesh.measured.iter())
        .map(|(name, pid)| (side_name(name), *pid))
        .collect();
    let warmup = Duration::from_secs(2);
    let mut load_cfg = LoadConfig::new(
        (mesh.target)(cfg.protocol),
        cfg.protocol,
        cfg.rate,
        cfg.duration,
    );
    load_cfg.warmup = warmup;
    let load = tokio::spawn(async move { load::run(&load_cfg).await });
    tokio::time::sleep(warmup).await;
    let mut recordings = Vec::new();
    for (name, pid) in &sidecars {
        let data = work.join(format!("{name}.perf.data"));
        let child = tokio::process::Command::new(&perf)
            .args([
                "record",
                "-e",
                "cpu-clock",
                "-F",
                &cfg.frequency.to_string(),
            ])
            .args(["--call-graph", "dwarf,16384", "-p", &pid.to_string(), "-o"])
            .arg(&data)
            .arg("--")
            .args(["sleep", &format!("{:.3}", cfg.duration.as_secs_f64())])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting perf record")?;
        recordings.push((name.clone(), data, child));
    }
    for (name, _, child) in &mut recordings {
        let status = child.wait().await?;
        if !status.success() {
            bail!("perf record of {name} failed ({status}); is perf_event_paranoid low enough or are you root?");
        }
    }
    let result = load.await.context("the load task")??;
    drop(procs);
    let mut flames = Vec::new();
    for (name, data, _) in recordings {
        flames.push(draw(&perf, &name, &data, cfg, &result)?);
    }
    Ok((flames, result))
}

/// `loadgen` (the client's pod) is sidecar A, outbound; `bench` sidecar B, inbound.
fn side_name(measured: &str) -> String {
    if measured.contains("loadgen") {
        "a-outbound".into()
    } else if measured.contains("bench") {
        "b-inbound".into()
    } else {
        measured.replace(|c: char| !c.is_ascii_alphanumeric(), "-")
    }
}

fn draw(
    perf: &Path,
    name: &str,
    data: &Path,
    cfg: &FlameConfig,
    result: &load::LoadResult,
) -> anyhow::Result<Flame> {
    let script = std::process::Command::new(perf)
        .args(["script", "-i"])
        .arg(data)
        .output()
        .context("perf script")?;
    if !script.status.success() {
        bail!(
            "perf script of {name}: {}",
            String::from_utf8_lossy(&script.stderr)
        );
    }
    let folded = fold(&String::from_utf8_lossy(&script.stdout));
    let samples: u64 = folded.values().sum();
    let text: String = (folded.iter())
        .map(|(stack, n)| format!("{stack} {n}\n"))
        .collect();
    std::fs::write(cfg.out.join(format!("{name}.folded")), text)?;
    let title = format!(
        "sidecar {name}, {} at {} rps ({} answered, {} errors), {} samples over {:.0} s",
        cfg.protocol.name(),
        cfg.rate,
        result.ok,
        result.errors,
        samples,
        cfg.duration.as_secs_f64()
    );
    let svg = cfg.out.join(format!("{name}.svg"));
    std::fs::write(&svg, render(&title, &folded))?;
    Ok(Flame {
        name: name.to_string(),
        samples,
        svg,
    })
}
