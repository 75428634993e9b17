//! The command line: `serve`, `token`, `check` and `manifests`. This is the binary's edge, so errors become
//! `anyhow` here and the tracing subscriber is installed here (never in the library, which tests
//! run many times in one process).
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::kubernetes::{KubernetesOptions, MeshSettings};
use crate::server::{default_server_names, ConfigSource, ControlPlane, ControlPlaneConfig};
use crate::token::TokenAuthority;

#[derive(Debug, Parser)]
#[command(
    name = "trellis-control-plane",
    version,
    about = "The Trellis service mesh control plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter: a level (`info`) or per-module directives
    /// (`info,trellis_control_plane=debug`) [default: $RUST_LOG, else info].
    #[arg(long, global = true, env = "TRELLIS_LOG")]
    log: Option<String>,
    /// `plain` lines (coloured only on a terminal) or `json`, one object per line.
    #[arg(long, global = true, env = "TRELLIS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Plain,
    Json,
}

// Parsed once per process: the size difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Serve discovery and identity to proxies.
    Serve {
        /// Where the mesh config comes from: the YAML file, or the Kubernetes cluster.
        #[arg(long, value_enum, default_value = "file")]
        source: SourceKind,
        /// The mesh YAML (source file); reloaded when it changes.
        #[arg(long, required_if_eq("source", "file"))]
        config: Option<PathBuf>,
        /// Source kubernetes: a kubeconfig file (default: in-cluster, then $KUBECONFIG).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Source kubernetes: the SPIFFE trust domain.
        #[arg(long, default_value = "trellis.local")]
        trust_domain: String,
        /// Source kubernetes: the cluster's DNS domain.
        #[arg(long, default_value = "cluster.local")]
        cluster_domain: String,
        /// Source kubernetes: workload certificate lifetime (1s .. 90 days, e.g. 24h).
        #[arg(long, default_value = "24h")]
        certificate_lifetime: String,
        /// Where the CA and the token key are kept.
        #[arg(long)]
        state_dir: PathBuf,
        /// Where proxies connect (gRPC over TLS): discovery and certificate signing.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: SocketAddr,
        /// A DNS name or IP of the serving certificate (repeatable).
        #[arg(long = "server-name")]
        server_names: Vec<String>,
        /// Use this CA certificate (PEM) instead of the one in the state directory.
        /// The CA certificate (PEM) that signs workload certificates, instead of the one kept in
        /// --state-dir (in a cluster: mounted from the trellis-ca Secret).
        #[arg(long, requires = "ca_key")]
        ca_cert: Option<PathBuf>,
        /// The private key (PEM) of --ca-cert.
        #[arg(long, requires = "ca_cert")]
        ca_key: Option<PathBuf>,
        /// The root certificate (PEM) when --ca-cert is an intermediate (the root key stays
        /// offline).
        #[arg(long, requires = "ca_cert")]
        ca_root: Option<PathBuf>,
        /// Apply a changed config file only after its bytes have been stable this long (ms), so
        /// a file caught half-written (truncate, then write) is never applied.
        #[arg(long, default_value_t = 500)]
        config_settle_ms: u64,
        /// Pending connections the kernel may queue (it clamps this to net.core.somaxconn).
        #[arg(long, default_value_t = crate::server::DEFAULT_LISTEN_BACKLOG)]
        listen_backlog: u32,
        /// Open connections at most [default: the open-files soft limit minus 64].
        #[arg(long)]
        max_connections: Option<usize>,
        /// Open discovery streams at most, in total; more are refused with RESOURCE_EXHAUSTED
        /// and a retry pushback.
        #[arg(long, default_value_t = 20_000)]
        max_streams: usize,
        /// Open discovery streams at most for one identity (namespace/service account).
        #[arg(long, default_value_t = 100)]
        max_streams_per_identity: usize,
        /// HTTP/2 PING and TCP keepalive interval (e.g. 10s; 0s: off).
        #[arg(long, default_value = "10s", value_parser = duration_arg)]
        keepalive_interval: Duration,
        /// A connection whose PING is not answered within this is closed (e.g. 10s).
        #[arg(long, default_value = "10s", value_parser = duration_arg)]
        keepalive_timeout: Duration,
        /// The admin listener (plain HTTP: /live, /ready, /metrics, /status), or `off`.
        #[arg(long, default_value = crate::server::DEFAULT_ADMIN, value_parser = admin_arg)]
        admin: AdminListen,
    },
    /// Print a bootstrap token for a workload.
    Token {
        /// The control plane's --state-dir (the token key is read from it).
        #[arg(long)]
        state_dir: PathBuf,
        /// The workload's namespace.
        #[arg(long)]
        namespace: String,
        /// The workload's service account: its identity is
        /// spiffe://<trust domain>/ns/<namespace>/sa/<service account>.
        #[arg(long)]
        service_account: String,
    },
    /// Validate a mesh YAML file.
    Check {
        /// The mesh YAML file to check.
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the Kubernetes install manifests (deploy/control-plane.yaml).
    Manifests {
        /// The control plane's container image.
        #[arg(long, default_value = crate::manifests::DEFAULT_IMAGE)]
        image: String,
    },
}

/// `--admin`: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AdminListen(Option<SocketAddr>);

fn admin_arg(text: &str) -> Result<AdminListen, String> {
    if text == "off" {
        return Ok(AdminListen(None));
    }
    text.parse()
        .map(|addr| AdminListen(Some(addr)))
        .map_err(|_| format!("{text:?} is neither an address such as 127.0.0.1:9990 nor `off`"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SourceKind {
    File,
    Kubernetes,
}

/// The command line, for checks of its help.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

pub fn main_with_args(args: impl IntoIterator<Item = OsString>) -> anyhow::Result<()> {
    let cli = Cli::try_parse_from(args).unwrap_or_else(|e| e.exit());
    match cli.command {
        Command::Serve {
            source,
            config,
            kubeconfig,
            trust_domain,
            cluster_domain,
            certificate_lifetime,
            state_dir,
            listen,
            server_names,
            ca_cert,
            ca_key,
            ca_root,
            config_settle_ms,
            listen_backlog,
            max_connections,
            max_streams,
            max_streams_per_identity,
            keepalive_interval,
            keepalive_timeout,
            admin,
        } => {
            let source = match (source, config) {
                (SourceKind::File, Some(path)) => ConfigSource::File(path),
                (SourceKind::File, None) => anyhow::bail!("--source file needs --config FILE"),
                (SourceKind::Kubernetes, _) => {
                    let text = &certificate_lifetime;
                    let certificate_lifetime =
                        crate::config::parse_duration(text).with_context(|| {
                            format!(
                                "--certificate-lifetime {text:?}: not a duration such as 24h \
                                 or 30d"
                            )
                        })?;
                    if !(1..=90 * 24 * 3600).contains(&certificate_lifetime.as_secs()) {
                        anyhow::bail!(
                            "--certificate-lifetime {text:?}: must be between 1s and 90d"
                        );
                    }
                    ConfigSource::Kubernetes(KubernetesOptions {
                        kubeconfig,
                        mesh: MeshSettings {
                            trust_domain,
                            cluster_domain,
                            certificate_lifetime,
                        },
                    })
                }
            };
            let defaults = ControlPlaneConfig::new("", "");
            let cfg = ControlPlaneConfig {
                source,
                state_dir,
                listen,
                server_names: if server_names.is_empty() {
                    default_server_names()
                } else {
                    server_names
                },
                ca: ca_cert.zip(ca_key),
                ca_root,
                config_settle: Duration::from_millis(config_settle_ms),
                listen_backlog,
                max_connections,
                max_streams,
                max_streams_per_identity,
                keepalive_interval,
                keepalive_timeout,
                admin: admin.0,
                ..defaults
            };
            init_logging(cli.log.as_deref(), cli.log_format)?;
            serve(cfg, cli.log_format)
        }
        Command::Token {
            state_dir,
            namespace,
            service_account,
        } => {
            std::fs::create_dir_all(&state_dir)
                .with_context(|| format!("creating {}", state_dir.display()))?;
            let tokens = TokenAuthority::load_or_create(&state_dir)?;
            println!("{}", tokens.issue(&namespace, &service_account));
            Ok(())
        }
        Command::Manifests { image } => {
            print!("{}", crate::manifests::render(&image)?);
            Ok(())
        }
        Command::Check { config } => match crate::config::load(&config) {
            Ok(_) => {
                println!("OK");
                Ok(())
            }
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        },
    }
}

/// A clap value parser for durations written like the config's (`500ms`, `10s`, `1m`).
fn duration_arg(text: &str) -> Result<Duration, String> {
    crate::config::parse_duration(text)
        .ok_or_else(|| format!("{text:?} is not a duration such as 500ms, 10s, 1m, 2h or 7d"))
}

/// Installs the log subscriber: escape codes only when stdout is a terminal (a pod's log must not
/// carry them), JSON on request.
fn init_logging(filter: Option<&str>, format: LogFormat) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = match filter {
        Some(f) => EnvFilter::try_new(f).context("--log")?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Plain => builder.with_ansi(std::io::stdout().is_terminal()).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(())
}

fn serve(cfg: ControlPlaneConfig, log_format: LogFormat) -> anyhow::Result<()> {
    // Before the runtime and the listener: every descriptor opened later counts against it.
    match crate::open_files::raise_to_hard() {
        Ok((before, after)) => tracing::info!(
            soft_was = before.soft,
            soft = after.soft,
            hard = after.hard,
            "open-files limit (the soft limit is raised to the hard one)"
        ),
        Err(e) => tracing::warn!("cannot raise the open-files limit: {e}"),
    }
    // One process-wide TLS provider (ring) for the clients that take the default (kube's).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let plane = ControlPlane::bind(cfg).await?;
        let admin = plane.admin_addr().map(|a| a.to_string());
        let ca = plane.ca_cert_path().display().to_string();
        tracing::info!(addr = %plane.local_addr(), admin, ca, "listening");
        // The lines scripts (and tests) read the port from; a JSON log has it in the event.
        if log_format == LogFormat::Plain {
            println!("listening on {}", plane.local_addr());
            if let Some(admin) = &admin {
                println!("admin on {admin}");
            }
            println!("CA certificate: {ca}");
        }
        plane.run(stop_signal()).await?;
        Ok(())
    })
}

/// Resolves on Ctrl-C or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM ({e}); stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin_of(extra: &[&str]) -> Result<Option<SocketAddr>, clap::Error> {
        let args = [
            "trellis-control-plane",
            "serve",
            "--config",
            "m.yaml",
            "--state-dir",
            "s",
        ];
        let cli = Cli::try_parse_from(args.iter().chain(extra))?;
        match cli.command {
            Command::Serve { admin, .. } => Ok(admin.0),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn admin_listens_on_9990_by_default_and_can_be_moved_or_turned_off() {
        assert_eq!(
            admin_of(&[]).unwrap(),
            Some("127.0.0.1:9990".parse().unwrap())
        );
        assert_eq!(
            admin_of(&["--admin", "0.0.0.0:9991"]).unwrap(),
            Some("0.0.0.0:9991".parse().unwrap())
        );
        assert_eq!(admin_of(&["--admin", "off"]).unwrap(), None);
        let error = admin_of(&["--admin", "9990"]).unwrap_err().to_string();
        assert!(error.contains("neither an address"), "{error}");
    }
}
