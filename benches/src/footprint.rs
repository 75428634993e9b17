//! `trellis-bench footprint`: what a sidecar costs before it serves much (issue #15, item 5): the
//! binaries' size as built and stripped, start to ready (process start to `/ready` answering 200,
//! that is with its certificate signed and its config received, against a running control plane
//! on loopback), idle RSS, and RSS per idle keep-alive client connection.
//!
//! The mesh is the suite's (`systems::trellis`, untraced pair only, plus the upstream); the
//! start-to-ready sidecar is one more `loadgen` workload on pod 127.0.0.63, started and killed
//! `starts` times. Idle connections are plain HTTP/1.1 to sidecar A's outbound, each having
//! answered one request through the whole mesh path, then left open.

use crate::procstat;
use crate::systems::{self, addr, trellis, Process};
use anyhow::{bail, Context};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The pod of the sidecar that is started over and over.
const PROBE_POD: u8 = 63;

#[derive(Debug, Clone)]
pub struct FootprintConfig {
    pub trellis: Option<PathBuf>,
    /// How many times a sidecar is started and timed.
    pub starts: usize,
    /// Idle client connections opened to sidecar A.
    pub idle_connections: usize,
    /// `--workers` of every sidecar.
    pub workers: usize,
    pub out: PathBuf,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BinarySize {
    pub name: String,
    pub bytes: u64,
    /// After `strip --strip-all`; None without `strip`.
    pub stripped_bytes: Option<u64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Footprint {
    pub workers: usize,
    /// The sidecars' binary (`trellis-proxy`, or `trellis` when it was not built).
    pub sidecar_binary: String,
    pub binaries: Vec<BinarySize>,
    /// Each start, process start to `/ready` 200, in milliseconds.
    pub start_to_ready_ms: Vec<f64>,
    /// RSS of sidecar A (outbound side) and B (inbound side), ready and idle for 2 s.
    pub idle_rss_kib: [u64; 2],
    /// Of A's idle RSS, anonymous memory (heap, stacks) and file-backed pages (the binary's code
    /// and data, libraries), from `/proc/<pid>/smaps_rollup`.
    pub idle_anon_kib: u64,
    pub idle_file_kib: u64,
    pub idle_connections: usize,
    /// Sidecar A's RSS before and after the idle connections were opened.
    pub connections_rss_kib: [u64; 2],
}

impl Footprint {
    pub fn kib_per_connection(&self) -> f64 {
        let [before, after] = self.connections_rss_kib;
        after.saturating_sub(before) as f64 / self.idle_connections.max(1) as f64
    }
}

pub async fn run(cfg: &FootprintConfig) -> anyhow::Result<Footprint> {
    let binary = trellis::find_binary(cfg.trellis.as_deref())?;
    std::fs::create_dir_all(&cfg.out)?;
    let binaries = sizes(&binary, &cfg.out)?;
    // Each idle connection is a descriptor here too.
    let _ = trellis_os::open_files::raise_to_hard();

    let work = cfg.out.join("work");
    std::fs::create_dir_all(&work)?;
    let mut procs = vec![systems::start_upstream(&work.join("upstream.log")).await?];
    // The sidecar image runs `trellis-proxy`; `trellis proxy` (the all-in-one binary) if absent.
    let opts = trellis::Sidecars::untraced_as_shipped(&binary, cfg.workers);
    let proxy = opts.proxy_binary.clone();
    let running = trellis::start_with(&binary, &work, &mut procs, &opts).await?;
    let pid_of = |suffix: &str| {
        (running.iter().flat_map(|r| &r.measured))
            .find(|(name, _)| name.ends_with(suffix))
            .map(|(_, pid)| *pid)
            .with_context(|| format!("no sidecar {suffix}"))
    };
    let (a, b) = (pid_of("loadgen")?, pid_of("bench")?);

    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss_kib = [rss(a)?, rss(b)?];
    let rollup = std::fs::read_to_string(format!("/proc/{a}/smaps_rollup")).unwrap_or_default();
    let idle_anon_kib = procstat::parse_status_kib(&rollup, "Anonymous").unwrap_or(0);
    let idle_file_kib = procstat::parse_status_kib(&rollup, "Rss")
        .unwrap_or(0)
        .saturating_sub(idle_anon_kib);
    warm_up().await?;
    let before = rss(a)?;
    let connections = open_idle(cfg.idle_connections).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let connections_rss_kib = [before, rss(a)?];
    drop(connections);

    let state = work.join("trellis-state");
    let mut start_to_ready_ms = Vec::new();
    for i in 0..cfg.starts {
        let elapsed = start_once(&binary, proxy.as_deref(), &state, cfg.workers, &work, i).await?;
        start_to_ready_ms.push(elapsed.as_secs_f64() * 1000.0);
    }
    drop(procs);
    let sidecar = proxy.as_deref().unwrap_or(&binary);
    Ok(Footprint {
        workers: cfg.workers,
        sidecar_binary: sidecar
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        binaries,
        start_to_ready_ms,
        idle_rss_kib,
        idle_anon_kib,
        idle_file_kib,
        idle_connections: cfg.idle_connections,
        connections_rss_kib,
    })
}

fn rss(pid: u32) -> anyhow::Result<u64> {
    procstat::sample(pid)
        .map(|s| s.rss_kib)
        .with_context(|| format!("process {pid} is gone"))
}

/// `trellis-proxy` and `trellis` beside the given binary, as built and stripped (into `out`).
fn sizes(binary: &Path, out: &Path) -> anyhow::Result<Vec<BinarySize>> {
    let strip = systems::peers::which("strip");
    let mut all = Vec::new();
    for name in ["trellis-proxy", "trellis"] {
        let path = binary.with_file_name(name);
        let Ok(meta) = std::fs::metadata(&path) else {
            eprintln!("footprint: no {} (build it with --release)", path.display());
            continue;
        };
        let stripped_bytes = match &strip {
            Some(strip) => {
                let dest = out.join(format!("{name}.stripped"));
                let ok = std::process::Command::new(strip)
                    .arg("--strip-all")
                    .arg("-o")
                    .arg(&dest)
                    .arg(&path)
                    .status()
                    .is_ok_and(|s| s.success());
                let size = ok.then(|| std::fs::metadata(&dest).map(|m| m.len()).ok());
                let _ = std::fs::remove_file(&dest);
                size.flatten()
            }
            None => None,
        };
        all.push(BinarySize {
            name: name.into(),
            bytes: meta.len(),
            stripped_bytes,
        });
    }
    Ok(all)
}

/// Waits until the mesh path answers 200: `/ready` says a sidecar holds its config, not that the
/// upstream behind the other one is listening yet.
async fn warm_up() -> anyhow::Result<()> {
    let target = addr::at(addr::CLIENT_POD, 4140);
    let started = Instant::now();
    loop {
        match systems::http_get(target, "bench", "/").await {
            Ok((200, _)) => return Ok(()),
            answer if started.elapsed() > Duration::from_secs(10) => {
                bail!("the mesh path did not answer 200 within 10 s: {answer:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Opens `n` keep-alive HTTP/1.1 connections to sidecar A's outbound, each answering one request
/// through the mesh path; they stay open while the returned handles live.
async fn open_idle(n: usize) -> anyhow::Result<Vec<OpenConnection>> {
    use http_body_util::BodyExt;
    let target = addr::at(addr::CLIENT_POD, 4140);
    let mut open = Vec::with_capacity(n);
    for i in 0..n {
        let tcp = tokio::net::TcpStream::connect(target)
            .await
            .with_context(|| format!("idle connection {i} to {target}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        let task = tokio::spawn(conn);
        let req = http::Request::get("/")
            .header(http::header::HOST, "bench")
            .body(http_body_util::Empty::<bytes::Bytes>::new())?;
        let rsp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
            .await
            .context("request on an idle connection timed out")??;
        if !rsp.status().is_success() {
            bail!("idle connection {i}: status {}", rsp.status());
        }
        rsp.into_body().collect().await?;
        open.push(OpenConnection {
            _sender: sender,
            task,
        });
    }
    Ok(open)
}

struct OpenConnection {
    _sender: hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    task: tokio::task::JoinHandle<Result<(), hyper::Error>>,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts one more `loadgen` sidecar; the time from spawning it to its `/ready` answering 200.
async fn start_once(
    binary: &Path,
    proxy: Option<&Path>,
    state: &Path,
    workers: usize,
    work: &Path,
    i: usize,
) -> anyhow::Result<Duration> {
    let mut args = trellis::sidecar_args(
        "loadgen",
        PROBE_POD,
        &state.join("loadgen.token"),
        &state.join("ca.crt.pem"),
    );
    args.extend([OsString::from("--workers"), workers.to_string().into()]);
    let (binary, args) = trellis::sidecar_command(binary, proxy, args);
    let admin = trellis::admin_addr(PROBE_POD);
    let started = Instant::now();
    let mut process = Process::spawn(
        &format!("sidecar loadgen (start {i})"),
        binary,
        &args,
        &work.join("starts.log"),
    )?;
    // Asked every 2 ms: the time measured is a few milliseconds.
    let (limit, every) = (Duration::from_secs(20), Duration::from_millis(2));
    trellis::wait_ready(admin, std::slice::from_mut(&mut process), limit, every).await?;
    let elapsed = started.elapsed();
    drop(process);
    // Until the killed process's listeners are gone, the next start could not bind them.
    let gone = Instant::now();
    while tokio::net::TcpStream::connect(admin).await.is_ok() && gone.elapsed().as_secs() < 5 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(elapsed)
}

/// The report's markdown.
pub fn markdown(f: &Footprint) -> String {
    let mut md = format!(
        "## Footprint (`{}`, `--workers {}`)\n\n",
        f.sidecar_binary, f.workers
    );
    md.push_str("| binary | size | stripped |\n|---|--:|--:|\n");
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0));
    for b in &f.binaries {
        let stripped = b.stripped_bytes.map(mib).unwrap_or_else(|| "–".into());
        md.push_str(&format!(
            "| `{}` | {} | {stripped} |\n",
            b.name,
            mib(b.bytes)
        ));
    }
    let mut starts = f.start_to_ready_ms.clone();
    starts.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let i = ((starts.len() as f64 - 1.0) * q).round() as usize;
        starts.get(i).map_or("–".into(), |ms| format!("{ms:.1} ms"))
    };
    md.push_str(&format!(
        "\n| | value |\n|---|--:|\n\
         | start to ready, median of {} | {} |\n\
         | start to ready, max | {} |\n\
         | idle RSS, sidecar A / B | {:.1} / {:.1} MiB |\n\
         | of A's: anonymous / file-backed | {:.1} / {:.1} MiB |\n\
         | RSS per idle client connection ({} open) | {:.1} KiB |\n",
        starts.len(),
        at(0.5),
        at(1.0),
        f.idle_rss_kib[0] as f64 / 1024.0,
        f.idle_rss_kib[1] as f64 / 1024.0,
        f.idle_anon_kib as f64 / 1024.0,
        f.idle_file_kib as f64 / 1024.0,
        f.idle_connections,
        f.kib_per_connection(),
    ));
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_shows_sizes_starts_and_per_connection_memory() {
        let f = Footprint {
            workers: 1,
            sidecar_binary: "trellis-proxy".into(),
            binaries: vec![BinarySize {
                name: "trellis-proxy".into(),
                bytes: 12 * 1024 * 1024,
                stripped_bytes: Some(9 * 1024 * 1024 + 512 * 1024),
            }],
            start_to_ready_ms: vec![40.0, 30.0, 90.0],
            idle_rss_kib: [8192, 7168],
            idle_anon_kib: 5120,
            idle_file_kib: 3072,
            idle_connections: 1000,
            connections_rss_kib: [8192, 11192],
        };
        assert_eq!(f.kib_per_connection(), 3.0);
        let md = markdown(&f);
        assert!(
            md.contains("| `trellis-proxy` | 12.0 MiB | 9.5 MiB |"),
            "{md}"
        );
        assert!(md.contains("median of 3 | 40.0 ms"), "{md}");
        assert!(md.contains("max | 90.0 ms"), "{md}");
        assert!(md.contains("8.0 / 7.0 MiB"), "{md}");
        assert!(
            md.contains("anonymous / file-backed | 5.0 / 3.0 MiB"),
            "{md}"
        );
        assert!(md.contains("(1000 open) | 3.0 KiB"), "{md}");
    }
}
