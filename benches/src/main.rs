//! `trellis-bench`: the command line of the latency benchmark. `run --short|--full` runs the
//! suite and writes `results/<timestamp>/`; `report` prints the last run's markdown; `load` and
//! `saturate` drive one target by hand; `overload` offers the mesh path twice its saturation rate
//! and reports the load shedding; `soak` runs a fixed rate for minutes watching the sidecars' memory
//! and descriptors (non-zero exit if they grow); `instructions` counts user-space instructions and
//! allocations per request under callgrind; `footprint` measures binary size, start to ready and
//! idle memory; `fleet` runs the control plane under simulated sidecars; `upstream` is the server the suite starts as a
//! process.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use trellis_bench::load::{self, LoadConfig, Protocol, SaturationConfig, Target};
use trellis_bench::report;
use trellis_bench::suite::{self, SuiteConfig};
use trellis_bench::systems::peers::Template;

#[derive(Debug, Parser)]
#[command(name = "trellis-bench", about = "Trellis latency benchmark")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct LoadArgs {
    /// Address to send to (loopback only).
    #[arg(long)]
    target: SocketAddr,
    /// Host header / :authority.
    #[arg(long, default_value = "upstream")]
    host: String,
    #[arg(long, value_enum, default_value = "http1")]
    protocol: Protocol,
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Response body size, bytes.
    #[arg(long, default_value_t = 1024)]
    payload: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Warm-up seconds (not measured).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the suite: direct, Trellis one hop and mesh path, and the installed peers.
    Run {
        /// About 2 minutes: 2,000 rps, 3 s per scenario.
        #[arg(long, conflicts_with = "full")]
        short: bool,
        /// 500, 2,000 and 8,000 rps, 8 s per scenario after 2 s warm-up.
        #[arg(long)]
        full: bool,
        /// Override the rates (rps), comma separated.
        #[arg(long, value_delimiter = ',')]
        rates: Option<Vec<f64>>,
        /// Override the protocols, comma separated.
        #[arg(long, value_enum, value_delimiter = ',')]
        protocols: Option<Vec<Protocol>>,
        /// Override the measured seconds per scenario.
        #[arg(long)]
        duration: Option<f64>,
        #[arg(long)]
        rounds: Option<usize>,
        /// Runtime workers of each Trellis sidecar (run again with 2 to compare).
        #[arg(long, default_value_t = trellis_bench::systems::trellis::DEFAULT_WORKERS)]
        trellis_workers: usize,
        /// The `trellis` binary (default: next to this one).
        #[arg(long)]
        trellis: Option<PathBuf>,
        /// The pingora baseline binary (default: benches/pingora-baseline/target/release/).
        #[arg(long)]
        pingora: Option<PathBuf>,
        /// Another proxy, one hop: NAME=COMMAND with {listen} and {upstream} (repeatable).
        #[arg(long = "peer")]
        peers: Vec<Template>,
        /// Where results go (default: <workspace>/results).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the last run's markdown report.
    Report {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// One constant-rate run against a target; prints JSON.
    Load {
        #[command(flatten)]
        args: LoadArgs,
        /// Requests per second.
        #[arg(long)]
        rate: f64,
    },
    /// Step the rate up until p99 exceeds the bound; prints the highest rate held.
    Saturate {
        #[command(flatten)]
        args: LoadArgs,
        #[arg(long, default_value_t = 500.0)]
        start_rps: f64,
        #[arg(long, default_value_t = 1.5)]
        factor: f64,
        #[arg(long, default_value_t = 100_000.0)]
        max_rps: f64,
        #[arg(long, default_value_t = 10_000)]
        p99_bound_us: u64,
    },
    /// Find the mesh path's saturation rate, offer twice that, report the shedding and memory.
    Overload {
        #[arg(long, value_enum, default_value = "h2c")]
        protocol: Protocol,
        /// The sidecars' --max-in-flight-requests.
        #[arg(long, default_value_t = 256)]
        limit: usize,
        /// Seconds at twice the saturation rate.
        #[arg(long, default_value_t = 10.0)]
        window: f64,
        #[arg(long, default_value_t = 1000.0)]
        start_rps: f64,
        /// Generous: on a shared machine p99 noise alone reaches tens of ms, so the knee is
        /// found by errors (sheds count) and the achieved rate.
        #[arg(long, default_value_t = 100_000)]
        p99_bound_us: u64,
        /// Skip the search: take this as the saturation rate.
        #[arg(long)]
        saturation_rps: Option<f64>,
        #[arg(long)]
        trellis: Option<PathBuf>,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// A fixed rate over the mesh path for minutes, sampling sidecar RSS and open fds; exits
    /// non-zero if either grows.
    Soak {
        /// Total requests per second, split evenly over the protocols.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        #[arg(long, value_enum, value_delimiter = ',', default_value = "http1,h2c")]
        protocols: Vec<Protocol>,
        /// Seconds (default 10 minutes).
        #[arg(long, default_value_t = 600.0)]
        duration: f64,
        /// Seconds left out of the verdict.
        #[arg(long, default_value_t = 60.0)]
        warmup: f64,
        /// Seconds between samples.
        #[arg(long, default_value_t = 5.0)]
        sample_every: f64,
        /// Allowed RSS growth after the warm-up, KiB.
        #[arg(long, default_value_t = 4096)]
        rss_bound_kib: u64,
        #[arg(long)]
        trellis: Option<PathBuf>,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// User-space instructions and allocations per request of each proxy, under callgrind.
    Instructions {
        /// Measured requests per scenario, sent one at a time.
        #[arg(long, default_value_t = 1000)]
        requests: usize,
        /// Requests sent before counting.
        #[arg(long, default_value_t = 200)]
        warmup: usize,
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "http1,h2c,grpc"
        )]
        protocols: Vec<Protocol>,
        /// Trellis sidecars' runtime workers, one pass each (e.g. 1,2).
        #[arg(long, value_delimiter = ',', default_value = "1")]
        workers: Vec<usize>,
        /// Count Trellis only.
        #[arg(long)]
        no_peers: bool,
        /// Also count the traced pair (every request sampled, spans exported to a local OTLP
        /// sink; the exporter thread's instructions included).
        #[arg(long)]
        traced: bool,
        #[arg(long)]
        trellis: Option<PathBuf>,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Binary size (built and stripped), start to ready, idle RSS and RSS per idle client
    /// connection of a sidecar (docs/benchmarks.md, Footprint).
    Footprint {
        /// Times a sidecar is started and timed.
        #[arg(long, default_value_t = 10)]
        starts: usize,
        /// Idle keep-alive client connections opened to one sidecar.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// The sidecars' runtime workers.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        #[arg(long)]
        trellis: Option<PathBuf>,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Flame graphs of both sidecars on the mesh path under load, sampled with `perf record
    /// -e cpu-clock --call-graph dwarf` (docs/benchmarks.md, Flame graphs).
    Flame {
        #[arg(long, value_enum, default_value = "http1")]
        protocol: Protocol,
        #[arg(long, default_value_t = 4000.0)]
        rate: f64,
        /// Seconds sampled (after a 2 s warm-up).
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Samples per second and sidecar.
        #[arg(long, default_value_t = 499)]
        frequency: u32,
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Count each sidecar's system calls and context switches per request instead
        /// (`perf record -e raw_syscalls:sys_enter -e context-switches`; syscalls.md).
        #[arg(long)]
        syscalls: bool,
        #[arg(long)]
        trellis: Option<PathBuf>,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The Fleet section's plots from every `fleet` run's fleet.json under a results directory.
    FleetPlot {
        /// Where the runs are [default: the results directory].
        #[arg(long)]
        results: Option<PathBuf>,
        #[arg(long, default_value = "docs/benchmarks")]
        out: PathBuf,
    },
    /// The control plane under N simulated sidecars: memory per proxy, sync time, push latency
    /// and CPU (docs/benchmarks.md, Fleet).
    Fleet {
        #[arg(long, default_value_t = 1000)]
        proxies: usize,
        #[arg(long, default_value_t = 100)]
        services: usize,
        /// Shared HTTP/2 connections [default: one per 100 proxies].
        #[arg(long)]
        connections: Option<usize>,
        /// Push rounds (each moves one endpoint of one service).
        #[arg(long, default_value_t = 5)]
        pushes: usize,
        /// Then kill and restart the control plane under the synced fleet (a reconnect storm).
        #[arg(long)]
        storm: bool,
        /// Each proxy subscribes by name to K services (its on-demand set: the K after its own)
        /// instead of the wildcard, as sidecars in on-demand mode do.
        #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(1..))]
        on_demand: Option<u64>,
        /// With --on-demand: every service's addresses with the wildcard too, as transparent
        /// sidecars on demand subscribe.
        #[arg(long, requires = "on_demand")]
        transparent: bool,
        /// With --storm: reconnect without initial_resource_versions (everything resent).
        #[arg(long, requires = "storm")]
        no_resume: bool,
        #[arg(long)]
        trellis: Option<PathBuf>,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The benchmark's upstream server (started by `run`).
    Upstream {
        #[arg(long, required = true)]
        listen: Vec<SocketAddr>,
    },
}

fn load_config(a: &LoadArgs, rate: f64) -> anyhow::Result<LoadConfig> {
    anyhow::ensure!(
        a.target.ip().is_loopback(),
        "the benchmark only sends to loopback addresses"
    );
    let mut c = LoadConfig::new(
        Target::plain(a.target, a.host.clone()),
        a.protocol,
        rate,
        Duration::try_from_secs_f64(a.duration).context("--duration")?,
    );
    c.connections = a.connections;
    c.payload_bytes = a.payload;
    c.warmup = Duration::try_from_secs_f64(a.warmup).context("--warmup")?;
    Ok(c)
}

fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("starting the runtime")
}

/// Ctrl-C, or SIGTERM from whatever runs the bench (a CI job's timeout, `kill`).
async fn stop_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.map(|()| "interrupted").context("listening for Ctrl-C"),
        _ = term.recv() => Ok("terminated"),
    }
}

/// Runs `work` on a runtime of `threads` workers until it ends or the bench is told to stop.
/// Stopped, `work` is dropped before the process exits, and with it every process it started
/// (`kill_on_drop`): a signal's default action would end the bench without dropping anything and
/// leave its control plane, sidecars, peers and upstream running.
fn run_until_stopped<T>(
    threads: usize,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    runtime(threads)?.block_on(async {
        tokio::select! {
            r = work => r,
            why = stop_signal() => anyhow::bail!("{}", why?),
        }
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            short: _,
            full,
            rates,
            protocols,
            duration,
            rounds,
            trellis_workers,
            trellis,
            pingora,
            peers,
            out,
        } => {
            let root = out.unwrap_or_else(report::results_root);
            let dir = root.join(report::timestamp());
            let mut cfg = if full {
                SuiteConfig::full(dir.join("work"))
            } else {
                SuiteConfig::short(dir.join("work"))
            };
            if let Some(r) = rates {
                cfg.rates = r;
            }
            if let Some(p) = protocols {
                cfg.protocols = p;
            }
            if let Some(d) = duration {
                cfg.duration = Duration::try_from_secs_f64(d).context("--duration")?;
            }
            if let Some(r) = rounds {
                cfg.rounds = r.max(1);
            }
            cfg.trellis = trellis;
            cfg.trellis_workers = trellis_workers.max(1);
            cfg.pingora = pingora;
            cfg.templates = peers;
            // One worker for the generator (plus the pacer thread): the proxies need the cores.
            let report = run_until_stopped(1, suite::run(&cfg))?;
            report.write(&dir)?;
            print!("{}", std::fs::read_to_string(dir.join("report.md"))?);
            eprintln!("\nresults in {}", dir.display());
        }
        Command::Report { out } => {
            let root = out.unwrap_or_else(report::results_root);
            let dir = report::last_run(&root)?;
            print!("{}", std::fs::read_to_string(dir.join("report.md"))?);
            eprintln!("\n(from {})", dir.display());
        }
        Command::Load { args, rate } => {
            let c = load_config(&args, rate)?;
            let r = run_until_stopped(1, load::run(&c))?;
            println!("{}", serde_json::to_string_pretty(&r)?);
        }
        Command::Saturate {
            args,
            start_rps,
            factor,
            max_rps,
            p99_bound_us,
        } => {
            let c = load_config(&args, start_rps)?;
            let sat = SaturationConfig {
                start_rps,
                factor,
                max_rps,
                p99_bound_us,
            };
            let r = run_until_stopped(1, load::saturate(&c, &sat))?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            eprintln!(
                "highest rate held with p99 ≤ {p99_bound_us} µs: {:.0} rps",
                r.max_held_rps
            );
        }
        Command::Overload {
            protocol,
            limit,
            window,
            start_rps,
            p99_bound_us,
            saturation_rps,
            trellis,
            out,
        } => {
            let root = out.unwrap_or_else(report::results_root);
            let dir = root.join(format!("{}-overload", report::timestamp()));
            let mut cfg = trellis_bench::overload::OverloadConfig::new(dir.clone());
            cfg.protocol = protocol;
            cfg.limit = limit;
            cfg.window = Duration::try_from_secs_f64(window).context("--window")?;
            cfg.start_rps = start_rps;
            cfg.p99_bound_us = p99_bound_us;
            cfg.saturation_rps = saturation_rps;
            cfg.trellis = trellis;
            let r = run_until_stopped(1, trellis_bench::overload::run(&cfg))?;
            print!("{}", trellis_bench::overload::markdown(&r));
            eprintln!("\nresults in {}", dir.display());
        }
        Command::Soak {
            rate,
            protocols,
            duration,
            warmup,
            sample_every,
            rss_bound_kib,
            trellis,
            out,
        } => {
            let root = out.unwrap_or_else(report::results_root);
            let dir = root.join(format!("{}-soak", report::timestamp()));
            let mut cfg = trellis_bench::soak::SoakConfig::new(dir.clone());
            cfg.rate = rate;
            cfg.protocols = protocols;
            cfg.duration = Duration::try_from_secs_f64(duration).context("--duration")?;
            cfg.warmup = Duration::try_from_secs_f64(warmup).context("--warmup")?;
            cfg.sample_every =
                Duration::try_from_secs_f64(sample_every).context("--sample-every")?;
            cfg.rss_bound_kib = rss_bound_kib;
            cfg.trellis = trellis;
            let r = run_until_stopped(1, trellis_bench::soak::run(&cfg))?;
            print!("{}", trellis_bench::soak::markdown(&r));
            eprintln!("\nresults in {}", dir.display());
            if !r.held {
                std::process::exit(1);
            }
        }
        Command::Instructions {
            requests,
            warmup,
            protocols,
            workers,
            no_peers,
            traced,
            trellis,
            out,
        } => {
            let root = out.unwrap_or_else(report::results_root);
            let dir = root.join(format!("{}-instructions", report::timestamp()));
            let mut cfg = trellis_bench::instructions::InstructionsConfig::new(dir.clone());
            cfg.requests = requests.max(1);
            cfg.warmup = warmup;
            cfg.protocols = protocols;
            cfg.workers = workers.into_iter().map(|w| w.max(1)).collect();
            cfg.peers = !no_peers;
            cfg.traced = traced;
            cfg.trellis = trellis;
            let r = run_until_stopped(1, trellis_bench::instructions::run(&cfg))?;
            let md = trellis_bench::instructions::markdown(&r);
            std::fs::write(dir.join("instructions.md"), &md)?;
            std::fs::write(
                dir.join("instructions.json"),
                serde_json::to_string_pretty(&r)?,
            )?;
            print!("{md}");
            eprintln!("\nresults in {}", dir.display());
        }
        Command::Footprint {
            starts,
            connections,
            workers,
            trellis,
            out,
        } => {
            let root = out.unwrap_or_else(report::results_root);
            let dir = root.join(format!("{}-footprint", report::timestamp()));
            let cfg = trellis_bench::footprint::FootprintConfig {
                trellis,
                starts,
                idle_connections: connections,
                workers,
                out: dir.clone(),
            };
            let r = run_until_stopped(1, trellis_bench::footprint::run(&cfg))?;
            std::fs::write(
                dir.join("footprint.json"),
                serde_json::to_string_pretty(&r)?,
            )?;
            print!("{}", trellis_bench::footprint::markdown(&r));
            eprintln!("\nresults in {}", dir.display());
        }
        Command::Flame {
            protocol,
            rate,
            duration,
            frequency,
            workers,
            syscalls,
            trellis,
            out,
        } => {
            let root = out.unwrap_or_else(report::results_root);
            let slug = protocol.name().to_lowercase().replace("http/", "http");
            let dir = root.join(format!("{}-flame-{slug}", report::timestamp()));
            let cfg = trellis_bench::flame::FlameConfig {
                trellis,
                protocol,
                rate,
                duration: Duration::from_secs(duration),
                frequency,
                workers,
                syscalls,
                out: dir.clone(),
            };
            let (flames, load) = run_until_stopped(1, trellis_bench::flame::run(&cfg))?;
            println!("{} answered, {} errors", load.ok, load.errors);
            for f in flames {
                println!("{}: {} samples, {}", f.name, f.samples, f.svg.display());
            }
        }
        Command::FleetPlot { results, out } => {
            let results = results.unwrap_or_else(report::results_root);
            for name in trellis_bench::fleet_plot::run(&results, &out)? {
                println!("{}", out.join(name).display());
            }
        }
        Command::Fleet {
            proxies,
            services,
            connections,
            pushes,
            storm,
            on_demand,
            transparent,
            no_resume,
            trellis,
            out,
        } => {
            let root = out.unwrap_or_else(report::results_root);
            let mut mode = on_demand.map_or(String::new(), |k| format!("-on-demand-{k}"));
            if transparent {
                mode.push_str("-transparent");
            }
            let dir = root.join(format!(
                "{}-fleet-{proxies}x{services}{mode}",
                report::timestamp()
            ));
            let mut cfg = trellis_bench::fleet::FleetConfig::new(proxies, services, dir.clone());
            cfg.connections = connections.unwrap_or(cfg.connections);
            cfg.pushes = pushes;
            cfg.storm = storm;
            cfg.on_demand = on_demand.map(|k| usize::try_from(k).unwrap_or(usize::MAX));
            cfg.transparent = transparent;
            cfg.resume = !no_resume;
            cfg.trellis = trellis;
            // Two workers: ten thousand streams' ACKs are work too, and on Ctrl-C the run is
            // dropped so that the control plane it started is killed.
            let r = run_until_stopped(2, trellis_bench::fleet::run(&cfg))?;
            std::fs::write(dir.join("fleet.json"), serde_json::to_string_pretty(&r)?)?;
            print!("{}", trellis_bench::fleet::markdown(&r));
            eprintln!("\nresults in {}", dir.display());
        }
        Command::Upstream { listen } => {
            runtime(2)?.block_on(async move {
                let mut servers = Vec::new();
                for addr in listen {
                    anyhow::ensure!(
                        addr.ip().is_loopback(),
                        "the upstream only listens on loopback"
                    );
                    servers.push(trellis_bench::upstream::Upstream::start(addr, None).await?);
                }
                stop_signal().await?;
                drop(servers);
                Ok::<_, anyhow::Error>(())
            })?;
        }
    }
    Ok(())
}
