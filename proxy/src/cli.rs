//! The `trellis-proxy` command line (also reachable as `trellis proxy`). Flags can come from the
//! environment (`TRELLIS_*`), which is how the injector configures a sidecar.

use crate::listeners::Listeners;
use crate::proxy::{run, ProxyConfig};
use anyhow::Context;
use clap::Parser;
use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(name = "trellis-proxy", version, about = "The Trellis sidecar proxy")]
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
    #[arg(long, env = "TRELLIS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[arg(long, env = "TRELLIS_TRUST_DOMAIN", default_value = "trellis.local")]
    trust_domain: String,
    #[arg(long, env = "TRELLIS_NAMESPACE", default_value = "default")]
    namespace: String,
    /// The service this workload belongs to.
    #[arg(long, env = "TRELLIS_SERVICE")]
    service: String,
    /// Defaults to the service name.
    #[arg(long, env = "TRELLIS_SERVICE_ACCOUNT")]
    service_account: Option<String>,
    #[arg(long, env = "TRELLIS_INBOUND", default_value = "127.0.0.1:4143")]
    inbound: SocketAddr,
    #[arg(long, env = "TRELLIS_OUTBOUND", default_value = "127.0.0.1:4140")]
    outbound: SocketAddr,
    #[arg(long, env = "TRELLIS_ADMIN", default_value = "127.0.0.1:4191")]
    admin: SocketAddr,
    /// Where the local app listens.
    #[arg(long, env = "TRELLIS_APP_HOST", default_value = "127.0.0.1")]
    app_host: IpAddr,
    /// Unique name of this proxy instance (pod name).
    #[arg(long, env = "TRELLIS_NODE_ID")]
    node_id: Option<String>,
    /// Seconds in-flight requests get to finish on shutdown.
    #[arg(long, env = "TRELLIS_DRAIN_GRACE_SECONDS", default_value_t = 5)]
    drain_grace_seconds: u64,
    #[arg(long, env = "TRELLIS_LOG", default_value = "info")]
    log: String,
}

pub fn main_with_args(args: impl IntoIterator<Item = OsString>) -> anyhow::Result<()> {
    let args = Args::try_parse_from(args)?;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).context("--log")?)
        .init();
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
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let listeners = Listeners::bind(args.inbound, args.outbound, args.admin)
            .await
            .context("binding listeners")?;
        tracing::info!(
            inbound = %args.inbound, outbound = %args.outbound, admin = %args.admin,
            service = %config.service, "trellis-proxy starting"
        );
        run(config, listeners, shutdown_signal()).await?;
        Ok(())
    })
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
