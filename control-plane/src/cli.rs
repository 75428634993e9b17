//! The command line: `serve`, `token` and `check`. This is the binary's edge, so errors become
//! `anyhow` here and the tracing subscriber is installed here (never in the library, which tests
//! run many times in one process).
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::server::{default_server_names, ControlPlane, ControlPlaneConfig};
use crate::token::TokenAuthority;

#[derive(Debug, Parser)]
#[command(
    name = "trellis-control-plane",
    about = "The Trellis service mesh control plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve discovery and identity to proxies.
    Serve {
        /// The mesh YAML; reloaded when it changes.
        #[arg(long)]
        config: PathBuf,
        /// Where the CA and the token key are kept.
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: SocketAddr,
        /// A DNS name or IP of the serving certificate (repeatable).
        #[arg(long = "server-name")]
        server_names: Vec<String>,
        /// Use this CA certificate (PEM) instead of the one in the state directory.
        #[arg(long, requires = "ca_key")]
        ca_cert: Option<PathBuf>,
        #[arg(long, requires = "ca_cert")]
        ca_key: Option<PathBuf>,
    },
    /// Print a bootstrap token for a workload.
    Token {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        service_account: String,
    },
    /// Validate a mesh YAML file.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
}

pub fn main_with_args(args: impl IntoIterator<Item = OsString>) -> anyhow::Result<()> {
    let cli = Cli::try_parse_from(args).unwrap_or_else(|e| e.exit());
    match cli.command {
        Command::Serve {
            config,
            state_dir,
            listen,
            server_names,
            ca_cert,
            ca_key,
        } => {
            let cfg = ControlPlaneConfig {
                config_path: config,
                state_dir,
                listen,
                server_names: if server_names.is_empty() {
                    default_server_names()
                } else {
                    server_names
                },
                ca: ca_cert.zip(ca_key),
            };
            serve(cfg)
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

fn serve(cfg: ControlPlaneConfig) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let plane = ControlPlane::bind(cfg).await?;
        println!("listening on {}", plane.local_addr());
        println!("CA certificate: {}", plane.ca_cert_path().display());
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
