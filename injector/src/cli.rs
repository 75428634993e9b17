//! The `trellis-injector` command line: `webhook` (the admission server), `inject` (manifests on
//! stdin or in a file, like `linkerd inject`) and `manifests` (the install YAML). Errors are
//! anyhow here, at the edge.

use crate::config::InjectorConfig;
use crate::manifests::{self, Options};
use crate::{server, workload};
use anyhow::Context;
use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Parser)]
#[command(
    name = "trellis-injector",
    version,
    about = "Adds the Trellis sidecar to pods"
)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the mutating admission webhook over HTTPS (POST /mutate, GET /healthz).
    Webhook {
        /// Where the webhook listens (HTTPS).
        #[arg(long, default_value = "0.0.0.0:8443")]
        listen: SocketAddr,
        /// PEM certificate chain of the serving certificate.
        #[arg(long)]
        tls_cert: PathBuf,
        /// PEM private key of the serving certificate.
        #[arg(long)]
        tls_key: PathBuf,
        /// Injector config (YAML); defaults apply without it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Log filter: a level (`info`) or per-module directives.
        #[arg(long, env = "TRELLIS_INJECTOR_LOG", default_value = "info")]
        log: String,
        /// `plain` lines (coloured only on a terminal) or `json`, one object per line.
        #[arg(long, env = "TRELLIS_LOG_FORMAT", default_value = "plain", value_parser = ["plain", "json"])]
        log_format: String,
    },
    /// Inject the sidecar into the workloads of a YAML stream and print the result.
    Inject {
        /// The manifest file, or `-` for stdin.
        #[arg(short = 'f', long = "filename")]
        file: String,
        /// Injector config (YAML); defaults apply without it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override the config's nativeSidecar (false: the fallback for clusters before 1.29).
        #[arg(long)]
        native_sidecar: Option<bool>,
        /// A document that cannot be injected (invalid YAML, a workload the injector refuses)
        /// is reported on stderr and printed unchanged; the others are injected either way.
        /// `fail`: exit 1 at the end; `skip`: exit 0.
        #[arg(long, value_enum, default_value_t = OnError::Fail)]
        on_error: OnError,
    },
    /// Print the injector's install manifests (namespace, RBAC, config, Deployment, Service,
    /// MutatingWebhookConfiguration).
    Manifests {
        /// The injector's image.
        #[arg(long, default_value = manifests::DEFAULT_IMAGE)]
        image: String,
        /// The proxy image the injector adds to pods (default: the config's).
        #[arg(long)]
        proxy_image: Option<String>,
        /// PEM file of the CA that signed the webhook's certificate, written as caBundle.
        #[arg(long)]
        ca_bundle: Option<PathBuf>,
        /// Injector config (YAML) to ship in the manifests; defaults apply without it.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// What `inject` does about a document it cannot inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnError {
    Fail,
    Skip,
}

/// How a run ended, for the process exit status: `Ok(Done::Clean)` is 0, `Ok(Done::
/// DocumentsFailed)` is 1 after the output was written; an `Err` is printed by `main`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    Clean,
    DocumentsFailed,
}

/// The command line, for checks of its help.
pub fn command() -> clap::Command {
    <Args as clap::CommandFactory>::command()
}

pub fn main_with_args(args: impl IntoIterator<Item = OsString>) -> anyhow::Result<Done> {
    match Args::try_parse_from(args) {
        Ok(args) => run(args.command),
        Err(e) if !e.use_stderr() => {
            e.print()?;
            Ok(Done::Clean)
        }
        Err(e) => e.exit(),
    }
}

/// The binary's `main`: errors are printed as `error: …` with their causes (Display, never
/// Debug, so no backtrace whatever `RUST_BACKTRACE` says).
pub fn main() -> std::process::ExitCode {
    match main_with_args(std::env::args_os()) {
        Ok(Done::Clean) => std::process::ExitCode::SUCCESS,
        Ok(Done::DocumentsFailed) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<InjectorConfig> {
    match path {
        Some(path) => Ok(InjectorConfig::load(path)?),
        None => Ok(InjectorConfig::default()),
    }
}

fn run(command: Command) -> anyhow::Result<Done> {
    match command {
        Command::Webhook {
            listen,
            tls_cert,
            tls_key,
            config,
            log,
            log_format,
        } => {
            use std::io::IsTerminal;
            let filter = tracing_subscriber::EnvFilter::try_new(&log).context("--log")?;
            let builder = tracing_subscriber::fmt().with_env_filter(filter);
            // Escape codes only on a terminal: a pod's log must not carry them.
            match log_format.as_str() {
                "json" => builder.json().flatten_event(true).init(),
                _ => builder.with_ansi(std::io::stdout().is_terminal()).init(),
            }
            let config = Arc::new(load_config(config.as_ref())?);
            let tls = server::tls_config(&tls_cert, &tls_key)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("binding {listen}"))?;
                tracing::info!(%listen, "trellis-injector webhook serving");
                server::serve(listener, tls, config, shutdown_signal()).await;
                anyhow::Ok(Done::Clean)
            })
        }
        Command::Inject {
            file,
            config,
            native_sidecar,
            on_error,
        } => {
            let mut config = load_config(config.as_ref())?;
            if let Some(native) = native_sidecar {
                config.native_sidecar = native;
            }
            let input = if file == "-" {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("reading stdin")?;
                text
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?
            };
            let injected = workload::inject_yaml(&input, &config)
                .with_context(|| format!("injecting {file}"))?;
            for report in &injected.reports {
                let what = format!("{} {:?}", report.kind, report.name);
                match &report.skipped {
                    None => eprintln!("{what}: injected"),
                    Some(why) => eprintln!("{what}: skipped ({why})"),
                }
            }
            std::io::stdout()
                .write_all(injected.output.as_bytes())
                .context("writing stdout")?;
            if injected.errors.is_empty() {
                return Ok(Done::Clean);
            }
            let label = match on_error {
                OnError::Fail => "error",
                OnError::Skip => "warning",
            };
            for error in &injected.errors {
                eprintln!("{label}: {error}");
            }
            let n = injected.errors.len();
            let plural = if n == 1 { "document" } else { "documents" };
            Ok(match on_error {
                OnError::Fail => {
                    eprintln!(
                        "error: {n} {plural} of {file} not injected, passed through unchanged \
                         (--on-error=skip exits 0)"
                    );
                    Done::DocumentsFailed
                }
                OnError::Skip => {
                    eprintln!(
                        "warning: {n} {plural} of {file} not injected, passed through unchanged"
                    );
                    Done::Clean
                }
            })
        }
        Command::Manifests {
            image,
            proxy_image,
            ca_bundle,
            config,
        } => {
            let mut config = load_config(config.as_ref())?;
            if let Some(proxy_image) = proxy_image {
                config.proxy_image = proxy_image;
            }
            let ca_bundle = ca_bundle
                .map(|path| {
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
                })
                .transpose()?;
            let text = manifests::render(&Options {
                image,
                ca_bundle,
                config,
            })?;
            std::io::stdout()
                .write_all(text.as_bytes())
                .context("writing stdout")?;
            Ok(Done::Clean)
        }
    }
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
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
