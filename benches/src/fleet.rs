//! `trellis-bench fleet`: the control plane under a fleet of simulated sidecars (issue #14). The
//! control plane runs as its own process (`trellis control-plane serve`, so its memory and CPU are
//! read from /proc), serving a mesh of `services` services; `proxies` simulated sidecars (`sim`)
//! speak the real discovery protocol over TLS with bootstrap tokens, sharing `connections` HTTP/2
//! connections. Measured:
//! - control-plane RSS before any proxy and once all are in sync: KiB per proxy;
//! - time from opening the first stream to the last proxy holding every type;
//! - push rounds: one endpoint of one service changes in the mesh file; latency from the control
//!   plane's publication (the timestamp of its `config version N applied` log line, same clock)
//!   to each proxy receiving the change and ACKing it: p50, p99, max; control-plane CPU per round
//!   (parse, build, fan-out, ACKs; idle CPU subtracted), and per proxy;
//! - errors: streams that failed, proxies that missed a push;
//! - with `on_demand` = K, each proxy subscribes by name, as a sidecar in on-demand mode does, to
//!   the routes, cluster and endpoints of K services (the next K after its own), instead of `*`:
//!   memory per proxy then follows K, not the mesh; a push reaches only the changed service's
//!   subscribers, and those are the receivers expected;
//! - with `transparent` as well, each proxy also subscribes to every service's `ServiceAddresses`
//!   with `*`, as a transparent sidecar on demand does: a moved endpoint then reaches every proxy
//!   (the addresses) and the service's callers (the endpoints too), measured apart (`push.rs`);
//! - with `storm`, a reconnect storm after the pushes (`storm.rs`): the control plane killed and
//!   restarted under the fleet, time until every proxy is back in sync; the proxies resume with
//!   `initial_resource_versions` as sidecars do, or, with `resume` off, ask for everything again.
//!
//! `subscribe.rs` says what each proxy subscribes to, `sim.rs` runs one proxy's stream, `held.rs`
//! keeps what it holds for the resume, `table.rs` writes the report's markdown.
//!
//! Every process started is a `Process`, killed on drop: on success, on error, and on Ctrl-C
//! (the caller races the run against the signal, so the future and its processes are dropped).

mod held;
mod push;
mod sim;
mod storm;
mod subscribe;
mod table;

pub use table::{markdown, on_demand_table_row, table_row, ON_DEMAND_TABLE_HEADER, TABLE_HEADER};

use crate::procstat;
use crate::systems::{self, trellis, Process};
use anyhow::Context;
use serde::Serialize;
use sim::{Recorder, SimProxy};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use subscribe::Plan;
use trellis_api::discovery::Node;

const TRUST_DOMAIN: &str = "trellis.local";
const NAMESPACE: &str = "default";
const CONTROL_PLANE: SocketAddr = systems::addr::at(80, 18290);

#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub proxies: usize,
    pub services: usize,
    /// HTTP/2 connections the simulated proxies share (a real sidecar has its own).
    pub connections: usize,
    pub pushes: usize,
    /// Restart the control plane under the synced fleet at the end (the reconnect storm).
    pub storm: bool,
    /// On-demand subscriptions: each proxy names K services instead of the wildcard.
    pub on_demand: Option<usize>,
    /// With `on_demand`: every service's addresses with the wildcard too (a transparent sidecar).
    pub transparent: bool,
    /// Reconnect with `initial_resource_versions` (off: every proxy is sent all it holds again).
    pub resume: bool,
    pub trellis: Option<PathBuf>,
    /// Where `fleet.json`, `fleet.md`, the mesh file, state and the log go.
    pub out: PathBuf,
}

impl FleetConfig {
    pub fn new(proxies: usize, services: usize, out: PathBuf) -> FleetConfig {
        FleetConfig {
            proxies,
            services,
            connections: proxies.div_ceil(100).max(1),
            pushes: 5,
            storm: false,
            on_demand: None,
            transparent: false,
            resume: true,
            trellis: None,
            out,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    pub proxies: usize,
    pub services: usize,
    /// Services each proxy subscribes to by name (`None`: the wildcard).
    pub on_demand: Option<usize>,
    /// Every service's addresses held by every proxy (transparent mode on demand).
    pub transparent: bool,
    pub connections: usize,
    pub rss_idle_kib: u64,
    pub rss_synced_kib: u64,
    pub kib_per_proxy: f64,
    pub sync_all_s: f64,
    pub synced: usize,
    /// Payload bytes the fleet received to get in sync, per proxy.
    pub sync_payload_kib_per_proxy: f64,
    pub pushes: usize,
    /// Per push round on average: the proxies subscribed to the changed service (the receivers
    /// expected; every proxy with the wildcard), and the proxies the push reached.
    pub push_expected: f64,
    pub push_reached: f64,
    pub push_p50_ms: f64,
    pub push_p99_ms: f64,
    pub push_max_ms: f64,
    /// From publication to each `Endpoints` subscriber of the changed service holding the new
    /// endpoints (with `transparent` a subset of the receivers; otherwise all of them).
    pub push_endpoints_subscribers: f64,
    pub push_endpoints_p50_ms: f64,
    pub push_endpoints_p99_ms: f64,
    pub push_endpoints_max_ms: f64,
    /// Resources per receiving proxy per push, received and expected (1 when only the changed
    /// endpoint set is sent; with `transparent`, 2 for the service's callers, 1 for the others).
    pub resources_per_push: f64,
    pub resources_expected_per_push: f64,
    /// Proxies that received a push round's version holding nothing it changed.
    pub unexpected_pushes: usize,
    pub cpu_per_push_ms: f64,
    pub cpu_per_push_per_proxy_us: f64,
    pub failed_streams: usize,
    pub missed_pushes: usize,
    pub first_error: Option<String>,
    pub load_average: String,
    /// The bench's own peak RSS: the simulated proxies, with what they hold for the resume.
    pub bench_peak_rss_kib: u64,
    pub storm: Option<storm::StormReport>,
}

/// Endpoint addresses of service `k`; `round` > 0 moves the first one (a one-endpoint change).
fn endpoints(k: usize, round: usize) -> [String; 2] {
    let (a, b) = (k / 250, k % 250);
    let first = if round == 0 {
        format!("10.{a}.{b}.1:4143")
    } else {
        format!("10.{}.{}.{}:4143", 100 + a, b, round % 250 + 2)
    };
    [first, format!("10.{a}.{b}.2:4143")]
}

fn service_name(k: usize) -> String {
    format!("svc-{k:04}")
}

/// The mesh: `services` services, two endpoints each. Push round `r` moves the first endpoint of
/// service `7r mod services`, on top of the earlier rounds' moves, so each round changes exactly
/// one resource.
pub fn mesh_yaml(services: usize, round: usize) -> String {
    let mut y = format!("trustDomain: {TRUST_DOMAIN}\nservices:\n");
    for k in 0..services {
        let moved = (1..=round)
            .rev()
            .find(|r| (r * 7) % services == k)
            .unwrap_or(0);
        let [e1, e2] = endpoints(k, moved);
        let _ = write!(
            y,
            "  - name: {}\n    ports: [{{port: 80, targetPort: 8080, protocol: http1}}]\n    \
             endpoints: [{{address: \"{e1}\"}}, {{address: \"{e2}\"}}]\n",
            service_name(k)
        );
    }
    y
}

/// Replaces the file in one rename, so the control plane never reads it half-written.
fn write_mesh(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

/// Unix microseconds of a `tracing` fmt timestamp such as `2026-12-02T09:40:01.123456Z`.
pub fn parse_log_time(stamp: &str) -> Option<u64> {
    let num = |s: &str| s.parse::<u32>().ok();
    let (date, rest) = stamp.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-');
    let (y, m, day) = (d.next()?, d.next()?, d.next()?);
    let (hms, frac) = rest.split_once('.').unwrap_or((rest, "0"));
    let mut t = hms.split(':');
    let (h, min, s) = (num(t.next()?)?, num(t.next()?)?, num(t.next()?)?);
    let digits = frac.len().min(9);
    let frac_ns = num(frac.get(..digits)?)? * 10u32.pow(9 - digits as u32);
    let date = time::Date::from_calendar_date(
        y.parse().ok()?,
        time::Month::try_from(u8::try_from(num(m)?).ok()?).ok()?,
        u8::try_from(num(day)?).ok()?,
    )
    .ok()?;
    let clock = time::Time::from_hms_nano(
        u8::try_from(h).ok()?,
        u8::try_from(min).ok()?,
        u8::try_from(s).ok()?,
        frac_ns,
    )
    .ok()?;
    let nanos = time::PrimitiveDateTime::new(date, clock)
        .assume_utc()
        .unix_timestamp_nanos();
    u64::try_from(nanos / 1000).ok()
}

/// When the control plane logged that it published `version`, from its log.
pub fn published_at(log: &str, version: u64) -> Option<u64> {
    let needle = format!("config version {version} applied");
    let line = log.lines().rev().find(|l| l.contains(&needle))?;
    parse_log_time(without_colours(line).split_whitespace().next()?)
}

/// The text without ANSI colour sequences (`ESC [ … m`), which wrap the timestamp when the
/// control plane logs in colour.
fn without_colours(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Waits until `done()` or `limit`, failing early if the control plane exits.
async fn wait_for(
    cp: &mut Process,
    limit: Duration,
    done: impl Fn() -> bool,
) -> anyhow::Result<bool> {
    let start = Instant::now();
    while !done() {
        cp.check_alive()?;
        if start.elapsed() > limit {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(true)
}

fn cpu_of(pid: u32) -> Duration {
    procstat::sample(pid).map(|s| s.cpu).unwrap_or_default()
}

fn rss_of(pid: u32) -> u64 {
    procstat::sample(pid).map(|s| s.rss_kib).unwrap_or(0)
}

pub async fn run(cfg: &FleetConfig) -> anyhow::Result<FleetReport> {
    anyhow::ensure!(
        cfg.proxies > 0 && cfg.services > 0,
        "--proxies and --services > 0"
    );
    let work = cfg.out.join("work");
    let state = work.join("state");
    std::fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
    let binary = trellis::find_binary(cfg.trellis.as_deref())?;
    let mesh = work.join("mesh.yaml");
    write_mesh(&mesh, &mesh_yaml(cfg.services, 0))?;
    let log = work.join("control-plane.log");

    // One token per identity in use; `token` also creates the key the control plane loads.
    let identities = cfg.proxies.min(cfg.services);
    let mut tokens: Vec<Arc<str>> = Vec::with_capacity(identities);
    for k in 0..identities {
        tokens.push(
            trellis::token(&binary, &state, &service_name(k))
                .await?
                .into(),
        );
    }
    let args: Vec<OsString> = [
        "control-plane",
        "serve",
        "--admin",
        "off",
        "--config-settle-ms",
        "0",
        "--listen",
        &CONTROL_PLANE.to_string(),
        "--max-streams",
        &(cfg.proxies + 1000).to_string(),
        "--max-streams-per-identity",
        &cfg.proxies.to_string(),
    ]
    .iter()
    .map(OsString::from)
    .chain(["--config".into(), mesh.clone().into_os_string()])
    .chain(["--state-dir".into(), state.clone().into_os_string()])
    .collect();
    let spawn = || Process::spawn("control plane", &binary, &args, &log);
    let mut cp = spawn()?;
    let pid = cp.pid().context("the control plane has no pid")?;
    systems::wait_port("the control plane", CONTROL_PLANE, Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle_kib = rss_of(pid);

    let ca = std::fs::read_to_string(state.join("ca.crt.pem")).context("reading the CA")?;
    let link = trellis_proxy::control_plane::LinkSettings {
        rpc_timeout: Duration::from_secs(120),
        ..Default::default()
    };
    let url = format!("https://{CONTROL_PLANE}");
    let channels = (0..cfg.connections.max(1))
        .map(|_| trellis_proxy::control_plane::channel(&url, &ca, "localhost", link))
        .collect::<Result<Vec<_>, _>>()
        .context("building the channels")?;

    let rec = Recorder::new(cfg.proxies);
    let plan = Plan {
        services: cfg.services,
        on_demand: cfg.on_demand,
        transparent: cfg.transparent,
    };
    let mut subscriptions = Vec::with_capacity(cfg.proxies);
    let started = sim::unix_micros();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..cfg.proxies {
        let service = service_name(i % cfg.services);
        let node = Node {
            id: format!("fleet-{i}"),
            service: service.clone(),
            namespace: NAMESPACE.into(),
            identity: trellis_api::spiffe_id(TRUST_DOMAIN, NAMESPACE, &service),
            proxy_version: "fleet-bench".into(),
            admin_address: String::new(),
        };
        let subs = Arc::new(plan.subscriptions(&node, i));
        subscriptions.push(subs.clone());
        let proxy = SimProxy {
            index: i,
            subscriptions: subs,
            resume: cfg.resume && cfg.storm,
            node,
            token: tokens[i % identities].clone(),
        };
        let channel = channels[i % channels.len()].clone();
        tasks.spawn(sim::run(proxy, channel, rec.clone()));
    }
    let sync_limit = Duration::from_secs(60) + Duration::from_millis(20 * cfg.proxies as u64);
    let live = || cfg.proxies - rec.failed.load(Ordering::Relaxed);
    wait_for(&mut cp, sync_limit, || {
        rec.synced.load(Ordering::Relaxed) >= live()
    })
    .await?;
    let synced = rec.synced.load(Ordering::Relaxed);
    let last_sync = (rec.synced_at.iter())
        .map(|s| s.load(Ordering::Relaxed))
        .max()
        .unwrap_or(started);
    let sync_payload = rec.payload_bytes.load(Ordering::Relaxed);
    // Let the allocator and the streams settle, then read memory and the idle CPU rate.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_synced_kib = rss_of(pid);
    let idle_start = (Instant::now(), cpu_of(pid));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rate = cpu_of(pid).saturating_sub(idle_start.1).as_secs_f64()
        / idle_start.0.elapsed().as_secs_f64();

    let files = (mesh.as_path(), log.as_path());
    let p = push::rounds(&mut cp, pid, cfg, files, &rec, &subscriptions, idle_rate).await?;
    let storm = if cfg.storm {
        let (restarted, report) =
            storm::restart(cp, spawn, CONTROL_PLANE, &rec, (live(), cfg.resume)).await?;
        cp = restarted;
        Some(report)
    } else {
        None
    };
    tasks.abort_all();
    drop(cp);
    let ms = |us: u64| us as f64 / 1000.0;
    let per_round = |n: usize| n as f64 / p.rounds.max(1) as f64;
    let pushes_received = p.latencies_us.len().max(1) as f64;
    let cpu_per_push = p.cpu_s / p.rounds.max(1) as f64;
    let first_error = rec.first_error.lock().ok().and_then(|e| e.clone());
    Ok(FleetReport {
        proxies: cfg.proxies,
        services: cfg.services,
        on_demand: cfg.on_demand,
        transparent: cfg.transparent && cfg.on_demand.is_some(),
        connections: channels.len(),
        rss_idle_kib,
        rss_synced_kib,
        kib_per_proxy: rss_synced_kib.saturating_sub(rss_idle_kib) as f64 / cfg.proxies as f64,
        sync_all_s: last_sync.saturating_sub(started) as f64 / 1e6,
        synced,
        sync_payload_kib_per_proxy: sync_payload as f64 / 1024.0 / cfg.proxies as f64,
        pushes: p.rounds,
        push_expected: per_round(p.expected),
        push_reached: per_round(p.reached),
        push_p50_ms: ms(percentile(&p.latencies_us, 50.0)),
        push_p99_ms: ms(percentile(&p.latencies_us, 99.0)),
        push_max_ms: ms(p.latencies_us.last().copied().unwrap_or(0)),
        push_endpoints_subscribers: per_round(p.endpoint_subscribers),
        push_endpoints_p50_ms: ms(percentile(&p.endpoint_latencies_us, 50.0)),
        push_endpoints_p99_ms: ms(percentile(&p.endpoint_latencies_us, 99.0)),
        push_endpoints_max_ms: ms(p.endpoint_latencies_us.last().copied().unwrap_or(0)),
        resources_per_push: p.resources as f64 / pushes_received,
        resources_expected_per_push: p.resources_expected as f64 / p.expected.max(1) as f64,
        unexpected_pushes: p.unexpected,
        cpu_per_push_ms: cpu_per_push * 1000.0,
        cpu_per_push_per_proxy_us: cpu_per_push * 1e6 / live().max(1) as f64,
        failed_streams: rec.failed.load(Ordering::Relaxed),
        missed_pushes: p.missed,
        first_error,
        load_average: std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        // This process alone (`procstat::sample` would add its children's).
        bench_peak_rss_kib: std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| procstat::parse_status_kib(&s, "VmHWM"))
            .unwrap_or(0),
        storm,
    })
}

/// The service whose endpoint push round `round` moves (`mesh_yaml`).
fn changed_service(services: usize, round: usize) -> usize {
    (round * 7) % services
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_timestamps_parse_to_unix_micros() {
        assert_eq!(
            parse_log_time("1970-01-01T00:00:01.000002Z"),
            Some(1_000_002)
        );
        assert_eq!(
            parse_log_time("2026-12-02T09:40:01.123456789Z"),
            Some(1_796_204_401_123_456)
        );
        assert_eq!(parse_log_time("not a time"), None);
        let log = "2026-12-02T09:40:01.5Z  INFO trellis_control_plane::publish: config version 3 \
                   applied\n\x1b[2m2026-12-02T09:40:02.000001Z\x1b[0m INFO x: config version 4 applied\n";
        assert_eq!(published_at(log, 3), Some(1_796_204_401_500_000));
        assert_eq!(published_at(log, 4), Some(1_796_204_402_000_001));
        assert_eq!(published_at(log, 5), None);
    }

    #[test]
    fn each_round_moves_one_endpoint_of_one_service() {
        let changed = |a: &str, b: &str| {
            (a.lines().zip(b.lines()))
                .filter(|(x, y)| x != y)
                .map(|(_, y)| y.to_owned())
                .collect::<Vec<_>>()
        };
        let rounds: Vec<String> = (0..4).map(|r| mesh_yaml(10, r)).collect();
        for r in 1..4 {
            let diff = changed(&rounds[r - 1], &rounds[r]);
            assert_eq!(diff.len(), 1, "round {r}: {diff:?}");
            assert!(
                diff[0].contains(&format!("10.100.{}.", (r * 7) % 10)),
                "{diff:?}"
            );
        }
    }

    #[test]
    fn percentiles_take_the_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&[], 99.0), 0);
    }
}
