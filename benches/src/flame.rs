//! `trellis-bench flame`: where each sidecar's CPU goes on the mesh path under load (issue #15,
//! item 7). Starts the upstream and the untraced sidecar pair as the suite does, sends one
//! protocol at one rate (open loop), and meanwhile samples both sidecars with `perf record -e
//! cpu-clock --call-graph dwarf` (the release build has no frame pointers; DWARF unwinding
//! reads its `.eh_frame`). Each recording is folded (`fold.rs`: `<name>.folded`, the input of
//! any flame graph tool) and drawn (`svg.rs`: `<name>.svg`). Samples are wall-clock ticks of
//! the CPU, so the kernel's share (TCP, scheduling) shows beside the proxy's own code.

mod fold;
mod svg;
pub mod syscalls;

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
    /// Count system calls and context switches instead of sampling stacks (`syscalls.rs`).
    pub syscalls: bool,
    pub out: PathBuf,
}

/// What one sidecar's recording came to.
#[derive(Debug, Clone)]
pub struct Flame {
    /// `a-outbound` or `b-inbound`.
    pub name: String,
    /// Stack samples, or with `syscalls` the events recorded.
    pub samples: u64,
    /// The flame graph, or with `syscalls` the table of counts (`syscalls.md`).
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
    let mut recordings: Vec<Recording> = Vec::new();
    for (name, pid) in &sidecars {
        let data = work.join(format!("{name}.perf.data"));
        let mut perf_record = tokio::process::Command::new(&perf);
        perf_record.arg("record");
        if cfg.syscalls {
            perf_record.args([
                "-e",
                "raw_syscalls:sys_enter",
                "-e",
                "context-switches",
                "-c",
                "1",
            ]);
        } else {
            let frequency = cfg.frequency.to_string();
            perf_record.args([
                "-e",
                "cpu-clock",
                "-F",
                &frequency,
                "--call-graph",
                "dwarf,16384",
            ]);
        }
        let child = perf_record
            .args(["-p", &pid.to_string(), "-o"])
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
    if cfg.syscalls {
        return count_syscalls(&perf, recordings, cfg, result);
    }
    let mut flames = Vec::new();
    for (name, data, _) in recordings {
        flames.push(draw(&perf, &name, &data, cfg, &result)?);
    }
    Ok((flames, result))
}

type Recording = (String, PathBuf, tokio::process::Child);

/// `--syscalls`: the counts of every sidecar in one table, per request answered in the recorded
/// window (the rate times the duration: the load's own count includes the warm-up).
fn count_syscalls(
    perf: &Path,
    recordings: Vec<Recording>,
    cfg: &FlameConfig,
    result: load::LoadResult,
) -> anyhow::Result<(Vec<Flame>, load::LoadResult)> {
    let requests = (cfg.rate * cfg.duration.as_secs_f64()).round() as u64;
    let table_path = cfg.out.join("syscalls.md");
    let mut sides = Vec::new();
    let mut flames = Vec::new();
    for (name, data, _) in recordings {
        let counts = syscalls::count(&perf_script(perf, &name, &data)?);
        flames.push(Flame {
            name: name.clone(),
            samples: counts.total_calls() + counts.context_switches,
            svg: table_path.clone(),
        });
        sides.push((name, counts));
    }
    let title = format!(
        "{} at {} rps for {:.0} s ({} answered, {} errors, warm-up included), per request of \
         the recorded window ({requests}):\n\n",
        cfg.protocol.name(),
        cfg.rate,
        cfg.duration.as_secs_f64(),
        result.ok,
        result.errors,
    );
    let text = title + &syscalls::table(&sides, requests);
    print!("{text}");
    std::fs::write(&table_path, text)?;
    Ok((flames, result))
}

fn perf_script(perf: &Path, name: &str, data: &Path) -> anyhow::Result<String> {
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
    Ok(String::from_utf8_lossy(&script.stdout).into_owned())
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
    let folded = fold(&perf_script(perf, name, data)?);
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
