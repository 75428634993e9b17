//! The `trellis-proxy` command line (also reachable as `trellis proxy`). Flags can come from the
//! environment (`TRELLIS_*`), which is how the injector configures a sidecar.

use crate::listeners::transparent::TransparentConfig;
use crate::listeners::{ListenAddrs, Listeners};
use crate::proxy::{run, LogControl, ProxyConfig, TelemetryConfig};
use crate::telemetry::observe::B3Format;
use crate::{Limits, LinkSettings};
use anyhow::Context;
use clap::Parser;
use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing_subscriber::{layer::SubscriberExt, reload, util::SubscriberInitExt, EnvFilter};

#[derive(Debug, Parser)]
#[command(
    name = "trellis-proxy",
    version,
    about = "The Trellis sidecar proxy",
    after_help = "Other commands (each with its own --help):\n  \
                  trellis-proxy redirect     the pod's init step: install (or --cleanup) the \
                  iptables rules that send the pod's traffic to the proxy\n  \
                  trellis-proxy wait-ready   wait until the sidecar's /ready answers (a \
                  postStart hook, so the app starts after its sidecar)"
)]
pub struct Args {
    /// Control plane URL.
    #[arg(
        long,
        env = "TRELLIS_CONTROL_PLANE",
        default_value = "https://127.0.0.1:8090"
    )]
    control_plane: String,
    /// PEM file with the root that signed the control plane's certificate.
    #[arg(long, env = "TRELLIS_CONTROL_PLANE_CA")]
    control_plane_ca: PathBuf,
    /// Name the control plane's certificate must carry.
    #[arg(long, env = "TRELLIS_CONTROL_PLANE_NAME", default_value = "localhost")]
    control_plane_name: String,
    /// File holding the bootstrap token (preferred over --token: it stays out of `ps`).
    #[arg(long, env = "TRELLIS_TOKEN_FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// The bootstrap token itself (`trellis control-plane token`); prefer --token-file.
    #[arg(long, env = "TRELLIS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The SPIFFE trust domain of the mesh: peers' identities must be in it.
    #[arg(long, env = "TRELLIS_TRUST_DOMAIN", default_value = "trellis.local")]
    trust_domain: String,
    /// The workload's namespace (part of its identity).
    #[arg(long, env = "TRELLIS_NAMESPACE", default_value = "default")]
    namespace: String,
    /// The service this workload belongs to.
    #[arg(long, env = "TRELLIS_SERVICE")]
    service: String,
    /// Defaults to the service name.
    #[arg(long, env = "TRELLIS_SERVICE_ACCOUNT")]
    service_account: Option<String>,
    /// Where peers' mTLS connections arrive: one address or several, comma-separated
    /// (`0.0.0.0:4143,[::]:4143` for a dual-stack pod; `[::]:4143` alone serves both families).
    #[arg(long, env = "TRELLIS_INBOUND", default_value = "127.0.0.1:4143")]
    inbound: ListenAddrs,
    /// Where the app's outbound connections arrive (`127.0.0.1:4140,[::1]:4140` when ip6tables
    /// redirects too).
    #[arg(long, env = "TRELLIS_OUTBOUND", default_value = "127.0.0.1:4140")]
    outbound: ListenAddrs,
    /// The admin port (probes, metrics, diagnostics); comma-separated like `--inbound`.
    #[arg(long, env = "TRELLIS_ADMIN", default_value = "127.0.0.1:4191")]
    admin: ListenAddrs,
    /// Where the local app listens.
    #[arg(long, env = "TRELLIS_APP_HOST", default_value = "127.0.0.1")]
    app_host: IpAddr,
    /// Unique name of this proxy instance (pod name).
    #[arg(long, env = "TRELLIS_NODE_ID")]
    node_id: Option<String>,
    /// Seconds in-flight requests get to finish on shutdown.
    #[arg(long, env = "TRELLIS_DRAIN_GRACE_SECONDS", default_value_t = 5)]
    drain_grace_seconds: u64,
    /// Log filter: a level (`info`) or per-module directives (`info,trellis_proxy=debug`);
    /// changeable at runtime with `PUT /log-level` on the admin port.
    #[arg(long, env = "TRELLIS_LOG", default_value = "info")]
    log: String,
    /// `plain` lines (coloured only on a terminal) or `json`, one object per line.
    #[arg(long, env = "TRELLIS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    log_format: LogFormat,
    /// OTLP/gRPC collector for spans, e.g. http://127.0.0.1:4317 (no span export without it).
    #[arg(long, env = "TRELLIS_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Share of new traces sampled (requests arriving with a trace context keep its decision).
    #[arg(long, env = "TRELLIS_TRACE_SAMPLE_RATIO", default_value_t = 1.0)]
    trace_sample_ratio: f64,
    /// Context headers written: w3c, or w3c plus b3 (single header) or b3multi (X-B3-*).
    #[arg(long, env = "TRELLIS_TRACE_PROPAGATION", default_value = "w3c", value_parser = ["w3c", "b3", "b3multi"])]
    trace_propagation: String,
    /// JSON access log: `stdout` or a file path.
    #[arg(long, env = "TRELLIS_ACCESS_LOG")]
    access_log: Option<String>,
    /// Transparent mode: connections arrive through `trellis-proxy redirect`'s iptables rules and
    /// go where they were originally addressed (docs/interception.md).
    #[arg(long, env = "TRELLIS_TRANSPARENT")]
    transparent: bool,
    /// Transparent mode: comma-separated destination ports carried as opaque TCP without
    /// protocol detection (server-speaks-first protocols such as SMTP or MySQL).
    #[arg(long, env = "TRELLIS_OPAQUE_PORTS", default_value = "")]
    opaque_ports: String,
    /// Transparent mode: milliseconds to wait for the app's first bytes before treating the
    /// connection as opaque TCP.
    #[arg(long, env = "TRELLIS_DETECT_TIMEOUT_MS", default_value_t = 1000)]
    detect_timeout_ms: u64,
    /// Open connections per listener; more are closed at once. Never more than a quarter of the
    /// descriptors the open-files limit leaves after a reserve (logged at start).
    #[arg(long, env = "TRELLIS_MAX_CONNECTIONS", default_value_t = Limits::default().max_connections)]
    max_connections: usize,
    /// Requests in flight at once, per listener; more are answered 503 at once (load shedding).
    #[arg(long, env = "TRELLIS_MAX_IN_FLIGHT_REQUESTS", default_value_t = Limits::default().max_in_flight_requests)]
    max_in_flight_requests: usize,
    /// Milliseconds an HTTP/1 client has to send a complete request head.
    #[arg(long, env = "TRELLIS_HEADER_READ_TIMEOUT_MS", default_value_t = Limits::default().header_read_timeout.as_millis() as u64)]
    header_read_timeout_ms: u64,
    /// Milliseconds an HTTP/1 request body may stall before it is answered 408.
    #[arg(long, env = "TRELLIS_BODY_IDLE_TIMEOUT_MS", default_value_t = Limits::default().body_idle_timeout.as_millis() as u64)]
    body_idle_timeout_ms: u64,
    /// Seconds of silence before TCP keepalive probes a connection (three probes this far
    /// apart): a vanished peer's tunnel is closed instead of held.
    #[arg(long, env = "TRELLIS_TCP_KEEPALIVE_SECONDS", default_value_t = Limits::default().tcp_keepalive.as_secs(), value_parser = clap::value_parser!(u64).range(1..=7200))]
    tcp_keepalive_seconds: u64,
    /// Seconds an opaque TCP stream or a WebSocket may carry no byte either way before it is
    /// closed.
    #[arg(long, env = "TRELLIS_TUNNEL_IDLE_TIMEOUT_SECONDS", default_value_t = Limits::default().tunnel_idle_timeout.as_secs(), value_parser = clap::value_parser!(u64).range(1..=604800))]
    tunnel_idle_timeout_seconds: u64,
    /// Largest HTTP/1 request head, in bytes (at least 8192); larger ones are answered 431.
    #[arg(long, env = "TRELLIS_MAX_HEADER_BYTES", default_value_t = Limits::default().max_header_bytes)]
    max_header_bytes: usize,
    /// Concurrent HTTP/2 streams per connection from another sidecar; more are refused
    /// (REFUSED_STREAM).
    #[arg(long, env = "TRELLIS_MAX_CONCURRENT_STREAMS", default_value_t = Limits::default().max_concurrent_streams)]
    max_concurrent_streams: u32,
    /// Concurrent HTTP/2 streams one app (or plaintext) client connection may open; at most
    /// --max-concurrent-streams, which bounds connections from other sidecars.
    #[arg(long, env = "TRELLIS_MAX_CLIENT_CONCURRENT_STREAMS", default_value_t = Limits::default().max_client_concurrent_streams)]
    max_client_concurrent_streams: u32,
    /// Seconds between HTTP/2 PINGs to the control plane, and how long one may go unanswered: a
    /// silent connection is replaced within about twice this.
    #[arg(long, env = "TRELLIS_CONTROL_PLANE_KEEPALIVE_SECONDS", default_value_t = LinkSettings::default().keepalive.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
    control_plane_keepalive_seconds: u64,
    /// Deadline, in seconds, of each certificate request and of opening the discovery stream.
    #[arg(long, env = "TRELLIS_CONTROL_PLANE_TIMEOUT_SECONDS", default_value_t = LinkSettings::default().rpc_timeout.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
    control_plane_timeout_seconds: u64,
    /// Seconds the discovery stream may stay silent before it is reopened.
    #[arg(long, env = "TRELLIS_CONTROL_PLANE_MAX_SILENCE_SECONDS", default_value_t = LinkSettings::default().max_silence.as_secs(), value_parser = clap::value_parser!(u64).range(1..=86400))]
    control_plane_max_silence_seconds: u64,
    /// Let callers from outside the pod read the admin port's /config and /stats (they show
    /// internal addresses and policy); /shutdown and /log-level stay loopback-only regardless.
    #[arg(long, env = "TRELLIS_ADMIN_OPEN_DIAGNOSTICS")]
    admin_open_diagnostics: bool,
    /// The app's original probes as JSON (`{"/app-health/<container>/<kind>": {"httpGet"|"grpc"|
    /// "tcpSocket": {...}, "timeoutSeconds": N}}`), performed on `GET /app-health/...` of the
    /// admin port; the injector sets it when it rewrites the app's probes.
    #[arg(long, env = "TRELLIS_APP_PROBES", default_value = "")]
    app_probes: String,
    /// Runtime worker threads. Default: the container's CPU limit (cgroup v2 cpu.max, cgroup v1
    /// CFS quota), rounded up, at least 1; without a limit, the CPUs available.
    #[arg(long, env = "TRELLIS_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,
    /// `on-demand`: only the routes, clusters and endpoints of the services the app calls,
    /// subscribed on their first request (with --transparent also every service's addresses, to
    /// place original destinations); `wildcard`: every service's. Default: on-demand.
    /// docs/protocol.md.
    #[arg(long, env = "TRELLIS_DISCOVERY_MODE")]
    discovery_mode: Option<crate::discovery::DiscoveryMode>,
    /// On demand: how long a first request to a service not held yet waits for its config.
    #[arg(long, env = "TRELLIS_DISCOVERY_WAIT_MS", default_value_t = 3000, value_parser = clap::value_parser!(u64).range(1..=60000))]
    discovery_wait_ms: u64,
    /// On demand: a service without requests for this long is unsubscribed.
    #[arg(long, env = "TRELLIS_DISCOVERY_IDLE_SECONDS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=604800))]
    discovery_idle_seconds: u64,
    /// How the app's HTTP/1.x requests travel to peer sidecars: `http1`, as HTTP/1.1 on pooled
    /// mutual-TLS connections (one per concurrent request, closed after 4-6 s idle); `h2`, as
    /// streams of one HTTP/2 connection per peer. gRPC, h2c and upgrades always take HTTP/2.
    /// docs/architecture.md.
    #[arg(long, env = "TRELLIS_HTTP1_TO_PEERS", value_enum, default_value_t)]
    http1_to_peers: crate::transport::Http1ToPeers,
}

/// The discovery mode (on demand without `--discovery-mode`) and its timings.
fn discovery_settings(args: &Args) -> crate::discovery::DiscoverySettings {
    crate::discovery::DiscoverySettings {
        mode: args.discovery_mode.unwrap_or_default(),
        wait: Duration::from_millis(args.discovery_wait_ms),
        idle: Duration::from_secs(args.discovery_idle_seconds),
    }
}

fn trellis_limits(args: &Args) -> Limits {
    Limits {
        max_connections: args.max_connections,
        max_in_flight_requests: args.max_in_flight_requests,
        header_read_timeout: Duration::from_millis(args.header_read_timeout_ms),
        body_idle_timeout: Duration::from_millis(args.body_idle_timeout_ms),
        max_header_bytes: args.max_header_bytes,
        max_concurrent_streams: args.max_concurrent_streams,
        max_client_concurrent_streams: args.max_client_concurrent_streams,
        tcp_keepalive: Duration::from_secs(args.tcp_keepalive_seconds),
        tunnel_idle_timeout: Duration::from_secs(args.tunnel_idle_timeout_seconds),
        ..Limits::default()
    }
}

/// Raises the open-files limit to the hard one (logged) and returns what each of the two serving
/// listeners may hold open at once so that a flood of connections never takes the descriptors
/// the proxy needs to serve the ones it holds: every accepted connection may need a second
/// descriptor (to the app, a peer or a passthrough destination), and a reserve stays for the
/// control-plane link, the admin port, pooled connections and the runtime.
fn connections_per_listener() -> usize {
    use trellis_os::open_files;
    let soft = match open_files::raise_to_hard() {
        Ok((before, after)) => {
            tracing::info!(
                soft_was = before.soft,
                soft = after.soft,
                hard = after.hard,
                "open-files limit (the soft limit is raised to the hard one)"
            );
            after.soft
        }
        Err(e) => {
            tracing::warn!("cannot read or raise the open-files limit ({e}); assuming 1024");
            1024
        }
    };
    let cap = listener_share(open_files::connection_budget(soft));
    tracing::info!(
        connections_per_listener = cap,
        "connection cap from the open-files limit (--max-connections lowers it further)"
    );
    cap
}

/// Each listener's part of the descriptors left for connections: two listeners, two descriptors
/// per connection.
fn listener_share(budget: usize) -> usize {
    (budget / 4).max(1)
}

/// `trellis-proxy redirect …`: the init step (see `crate::redirect`), the same binary.
#[derive(Debug, Parser)]
#[command(
    name = "trellis-proxy redirect",
    version,
    about = "Install the pod's iptables redirect"
)]
struct RedirectCommand {
    #[command(flatten)]
    args: crate::redirect::RedirectArgs,
}

/// Every command line of the binary (run, `redirect`, `wait-ready`), for checks of their help.
pub fn commands() -> Vec<clap::Command> {
    use clap::CommandFactory;
    vec![
        Args::command(),
        RedirectCommand::command(),
        crate::wait_ready::WaitReady::command(),
    ]
}

pub fn main_with_args(args: impl IntoIterator<Item = OsString>) -> anyhow::Result<()> {
    let mut args: Vec<OsString> = args.into_iter().collect();
    if args.get(1).is_some_and(|a| a == "redirect") {
        args.remove(1);
        return crate::redirect::main(RedirectCommand::try_parse_from(args)?.args);
    }
    if args.get(1).is_some_and(|a| a == "wait-ready") {
        args.remove(1);
        return crate::wait_ready::run(&crate::wait_ready::WaitReady::try_parse_from(args)?);
    }
    let args = Args::try_parse_from(args)?;
    // Before anything starts: a bad probe table is the injector's (or the user's) mistake.
    let app_probes = crate::probes::AppProbes::parse(&args.app_probes)
        .with_context(|| format!("--app-probes ({})", crate::probes::ENV))?;
    let log_control = init_logging(&args.log, args.log_format)?;
    if !(0.0..=1.0).contains(&args.trace_sample_ratio) {
        anyhow::bail!(
            "--trace-sample-ratio: {} is not in [0, 1]",
            args.trace_sample_ratio
        );
    }
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("reading --token-file {}", path.display()))?
            .trim()
            .to_string(),
        (None, None) => anyhow::bail!("one of --token-file or --token is required"),
    };
    let ca = std::fs::read_to_string(&args.control_plane_ca).with_context(|| {
        format!(
            "reading --control-plane-ca {}",
            args.control_plane_ca.display()
        )
    })?;
    let config = ProxyConfig {
        control_plane_url: args.control_plane.clone(),
        control_plane_ca_pem: ca,
        control_plane_name: args.control_plane_name.clone(),
        token,
        trust_domain: args.trust_domain.clone(),
        namespace: args.namespace.clone(),
        service: args.service.clone(),
        service_account: args
            .service_account
            .clone()
            .unwrap_or_else(|| args.service.clone()),
        app_host: args.app_host,
        node_id: args
            .node_id
            .clone()
            .unwrap_or_else(|| format!("{}-{}", args.service, std::process::id())),
        drain_grace: Duration::from_secs(args.drain_grace_seconds),
        telemetry: TelemetryConfig {
            otlp_endpoint: args.otlp_endpoint.clone(),
            sample_ratio: args.trace_sample_ratio,
            b3: match args.trace_propagation.as_str() {
                "b3" => Some(B3Format::Single),
                "b3multi" => Some(B3Format::Multi),
                _ => None,
            },
            access_log: args.access_log.clone(),
        },
        limits: Limits {
            max_connections: args.max_connections.min(connections_per_listener()),
            ..trellis_limits(&args)
        },
        log_control: Some(log_control),
        control_plane_link: LinkSettings {
            keepalive: Duration::from_secs(args.control_plane_keepalive_seconds),
            rpc_timeout: Duration::from_secs(args.control_plane_timeout_seconds),
            max_silence: Duration::from_secs(args.control_plane_max_silence_seconds),
        },
        admin_open_diagnostics: args.admin_open_diagnostics,
        app_probes,
        discovery: discovery_settings(&args),
        http1_to_peers: args.http1_to_peers,
    };
    let transparent = transparent_config(&args)?;
    let (workers, warnings) = crate::limits::workers::choose(args.workers.map(usize::from));
    for warning in warnings {
        tracing::warn!("worker count: ignoring {warning}");
    }
    tracing::info!(workers = workers.count, source = %workers.source, "runtime workers");
    // One worker runs on tokio's current-thread scheduler: the same single thread, without the
    // work-stealing scheduler's shared queues and cross-thread wake-ups that only pay off with
    // more than one worker.
    let mut builder = match workers.count {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    let runtime = builder
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let mut listeners = Listeners::bind(
            args.inbound.clone(),
            args.outbound.clone(),
            args.admin.clone(),
        )
        .await
        .context("binding listeners")?;
        if let Some(transparent) = transparent {
            listeners = listeners.with_transparent(transparent);
        }
        tracing::info!(
            inbound = %args.inbound, outbound = %args.outbound, admin = %args.admin,
            service = %config.service, "trellis-proxy starting"
        );
        run(config, listeners, shutdown_signal()).await?;
        Ok(())
    })
}

/// The transparent-mode settings, `None` without `--transparent`.
fn transparent_config(args: &Args) -> anyhow::Result<Option<TransparentConfig>> {
    if !args.transparent {
        return Ok(None);
    }
    if !args.app_host.is_loopback() {
        // The redirect sends the proxy's own connections to its pod's addresses to the inbound
        // port (a service calling itself, see docs/interception.md): a connection to the app on
        // such an address would come back to the proxy instead of reaching the app.
        anyhow::bail!(
            "--app-host {}: with --transparent the app must be reached on a loopback address \
             (127.0.0.1 or ::1); apps that listen only on the pod's address are not supported",
            args.app_host
        );
    }
    let opaque_ports = crate::redirect::parse_ports("--opaque-ports", &args.opaque_ports)?
        .into_iter()
        .flat_map(|r| r.first..=r.last)
        .collect();
    Ok(Some(TransparentConfig {
        opaque_ports,
        detect_timeout: Duration::from_millis(args.detect_timeout_ms),
    }))
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

/// Installs the log subscriber (on stdout) with a filter the admin port can replace at runtime.
/// Escape codes only when stdout is a terminal: a pod's log file or `kubectl logs` must not
/// carry them.
fn init_logging(filter: &str, format: LogFormat) -> anyhow::Result<LogControl> {
    use std::io::IsTerminal;
    let (filter, handle) = reload::Layer::new(EnvFilter::try_new(filter).context("--log")?);
    let plain = (format == LogFormat::Plain)
        .then(|| tracing_subscriber::fmt::layer().with_ansi(std::io::stdout().is_terminal()));
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(plain)
        .with(json)
        .init();
    Ok(LogControl(Arc::new(move |new: &str| {
        let parsed = EnvFilter::try_new(new).map_err(|e| e.to_string())?;
        handle.reload(parsed).map_err(|e| e.to_string())
    })))
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_listener_gets_a_quarter_of_the_descriptors_for_connections() {
        use trellis_os::open_files::connection_budget;
        // 1,024 descriptors: 960 after the reserve, 240 per listener, so 480 accepted
        // connections and their 480 onward connections fit.
        assert_eq!(listener_share(connection_budget(1024)), 240);
        assert_eq!(listener_share(connection_budget(256)), 48);
        assert_eq!(listener_share(0), 1);
    }

    #[test]
    fn discovery_is_on_demand_by_default_in_both_modes() {
        use crate::discovery::DiscoveryMode;
        let mode = |extra: &[&str]| {
            let base = [
                "trellis-proxy",
                "--service",
                "web",
                "--control-plane-ca",
                "ca.pem",
            ];
            let args = Args::try_parse_from(base.iter().chain(extra)).expect("parses");
            discovery_settings(&args).mode
        };
        assert_eq!(mode(&[]), DiscoveryMode::OnDemand);
        assert_eq!(mode(&["--transparent"]), DiscoveryMode::OnDemand);
        let wildcard = ["--discovery-mode", "wildcard"];
        assert_eq!(mode(&wildcard), DiscoveryMode::Wildcard);
        let on_demand = ["--discovery-mode", "on-demand"];
        assert_eq!(mode(&on_demand), DiscoveryMode::OnDemand);
        let transparent = ["--transparent", "--discovery-mode", "wildcard"];
        assert_eq!(mode(&transparent), DiscoveryMode::Wildcard);
        // In transparent mode on demand also places destinations by every service's addresses.
        let settings = crate::discovery::DiscoverySettings::default();
        let by_address = |transparent| {
            settings
                .demand("default", transparent)
                .map(|d| d.by_address)
        };
        assert_eq!(by_address(true), Some(true));
        assert_eq!(by_address(false), Some(false));
        let wildcard = crate::discovery::DiscoverySettings {
            mode: DiscoveryMode::Wildcard,
            ..Default::default()
        };
        assert!(wildcard.demand("default", true).is_none());
    }

    #[test]
    fn a_bad_probe_table_names_the_variable_and_the_json_path() {
        let probes = r#"{"/app-health/web/readyz": {"httpGet": {"path": "/", "port": "http"}}}"#;
        let args = [
            "trellis-proxy",
            "--service",
            "web",
            "--control-plane-ca",
            "/nonexistent/ca.pem",
            "--app-probes",
            probes,
        ];
        let err = main_with_args(args.map(OsString::from)).expect_err("refused");
        let text = format!("{err:#}");
        assert!(
            text.starts_with("--app-probes (TRELLIS_APP_PROBES): "),
            "{text}"
        );
        assert!(
            text.contains(r#"$["/app-health/web/readyz"].httpGet.port: expected a port number"#),
            "{text}"
        );
    }
}
