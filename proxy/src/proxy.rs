//! Wiring: builds the TLS context, the control-plane channel, the identity manager, the discovery
//! client and the three listeners, runs them until shutdown, then drains.

use crate::admin::{self, AdminState};
use crate::config::new_store;
use crate::control_plane::{self, LinkSettings};
use crate::discovery::{DiscoveryClient, SharedStatus};
use crate::http::app::AppClient;
use crate::identity::IdentityManager;
use crate::listeners::{inbound, outbound, Listeners};
use crate::telemetry::metrics::{MetricsCollector, ProxyMetrics};
use crate::telemetry::observe::Telemetry;
use crate::tls::TlsContext;
use crate::transport::MeshConnector;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use trellis_api::discovery::{aggregated_discovery_client::AggregatedDiscoveryClient, Node};
use trellis_api::identity::identity_client::IdentityClient;

/// Everything the proxy needs to start (its bootstrap).
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// e.g. `https://127.0.0.1:8090`
    pub control_plane_url: String,
    /// PEM of the root that signed the control plane's serving certificate.
    pub control_plane_ca_pem: String,
    /// The name the control plane's certificate must carry.
    pub control_plane_name: String,
    /// The bootstrap credential; never logged.
    pub token: String,
    pub trust_domain: String,
    pub namespace: String,
    pub service: String,
    pub service_account: String,
    /// Where the local app listens (loopback in a pod).
    pub app_host: IpAddr,
    pub node_id: String,
    /// How long in-flight requests may take to finish on shutdown.
    pub drain_grace: Duration,
    pub telemetry: TelemetryConfig,
    /// Bounds on connections, streams, requests in flight and slow peers.
    pub limits: crate::Limits,
    /// Lets the admin port change the log filter; set by whoever installed the subscriber.
    pub log_control: Option<LogControl>,
    /// Keepalive, deadlines and the silence bound of the control-plane link.
    pub control_plane_link: LinkSettings,
    /// The admin port's `/config` and `/stats` answer callers from outside the pod too.
    pub admin_open_diagnostics: bool,
    /// The app's original probes, served on the admin port under `/app-health/`.
    pub app_probes: crate::probes::AppProbes,
    /// Wildcard or on-demand discovery of the per-service resources (`discovery/demand.rs`).
    pub discovery: crate::discovery::DiscoverySettings,
    /// HTTP/1.x to peer sidecars as HTTP/1.1 on pooled connections, or over HTTP/2
    /// (`transport::http1`).
    pub http1_to_peers: crate::transport::Http1ToPeers,
}

/// Tracing, metrics and access-log settings.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`; no span export without it.
    pub otlp_endpoint: Option<String>,
    /// Share of new traces (no incoming context) that are sampled.
    pub sample_ratio: f64,
    /// Also write B3 headers.
    pub b3: Option<crate::telemetry::observe::B3Format>,
    /// `stdout` or a file path.
    pub access_log: Option<String>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            sample_ratio: 1.0,
            b3: None,
            access_log: None,
        }
    }
}

/// The function behind `LogControl`: parse and apply a filter, or say why not.
pub type ApplyFilter = dyn Fn(&str) -> Result<(), String> + Send + Sync;

/// Applies a new tracing filter (e.g. `debug` or `trellis_proxy=trace`).
#[derive(Clone)]
pub struct LogControl(pub Arc<ApplyFilter>);

impl std::fmt::Debug for LogControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogControl")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("access log {0}: {1}")]
    AccessLog(String, std::io::Error),
    #[error("span export to {0:?}: {1}")]
    Otlp(String, crate::telemetry::export::ExportError),
    #[error("control plane address {0:?}: {1}")]
    ControlPlane(String, tonic::transport::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsConfigError),
}

/// Runs the proxy until `shutdown` completes, then drains for up to `drain_grace`.
pub async fn run(
    config: ProxyConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let tls = TlsContext::default();
    let server_tls = tls.server_config()?;
    let channel = control_plane::channel(
        &config.control_plane_url,
        &config.control_plane_ca_pem,
        &config.control_plane_name,
        config.control_plane_link,
    )
    .map_err(|e| StartError::ControlPlane(config.control_plane_url.clone(), e))?;
    let spiffe_id = trellis_api::spiffe_id(
        &config.trust_domain,
        &config.namespace,
        &config.service_account,
    );
    let store = new_store();
    let (identity_tx, identity_rx) = tokio::sync::watch::channel(None);
    let discovery_status = SharedStatus::default();
    let telemetry = Arc::new(telemetry(&config)?);
    let connector = MeshConnector::new(tls.clone())
        .with_metrics(telemetry.metrics.clone())
        .with_http1_to_peers(config.http1_to_peers);

    let identity = IdentityManager {
        client: IdentityClient::new(channel.clone()),
        token: config.token.clone(),
        spiffe_id: spiffe_id.clone(),
        tls: tls.clone(),
        status: identity_tx,
        link_status: discovery_status.clone(),
        link: config.control_plane_link,
        control_plane_name: config.control_plane_name.clone(),
    };
    let discovery = DiscoveryClient {
        client: AggregatedDiscoveryClient::new(channel),
        token: config.token.clone(),
        node: Node {
            id: config.node_id.clone(),
            service: config.service.clone(),
            namespace: config.namespace.clone(),
            identity: spiffe_id,
            proxy_version: env!("CARGO_PKG_VERSION").to_string(),
            admin_address: admin::advertised_address(
                &listeners.admin.local_addrs(),
                std::env::var("TRELLIS_POD_IP").ok().as_deref(),
            ),
        },
        store: store.clone(),
        connector,
        tls: tls.clone(),
        status: discovery_status.clone(),
        link: config.control_plane_link,
        control_plane_name: config.control_plane_name.clone(),
        demand: (config.discovery).demand(&config.namespace, listeners.transparent.is_some()),
    };
    let authz_stats = std::sync::Arc::new(crate::authz::AuthzStats::default());
    let stop = Arc::new(tokio::sync::Notify::new());
    let admin_state = AdminState {
        store: store.clone(),
        identity: identity_rx.clone(),
        discovery: discovery_status.clone(),
        authz: authz_stats.clone(),
        metrics: Arc::new(MetricsCollector {
            metrics: telemetry.metrics.clone(),
            store: store.clone(),
            discovery: discovery_status,
            identity: identity_rx,
        }),
        log_control: config.log_control.clone(),
        stop: stop.clone(),
        open_diagnostics: config.admin_open_diagnostics,
        app_probes: Arc::new(config.app_probes.clone()),
        app_host: config.app_host,
        tap: telemetry.tap.clone(),
    };

    let own_ports = [&listeners.inbound, &listeners.outbound, &listeners.admin]
        .iter()
        .flat_map(|l| l.local_addrs())
        .map(|a| a.port())
        .collect();
    let opaque = Arc::new(crate::listeners::opaque::InboundOpaque {
        app_host: config.app_host,
        own_ports,
        store: store.clone(),
        authz: authz_stats.clone(),
        tunnel: crate::listeners::opaque::Tunnel::from_limits(&config.limits),
    });
    let transparent =
        (listeners.transparent.clone()).map(|c| crate::listeners::transparent::Outbound {
            config: Arc::new(c),
            store: store.clone(),
            tls: tls.clone(),
            metrics: telemetry.metrics.clone(),
            tunnel: crate::listeners::opaque::Tunnel::from_limits(&config.limits),
        });
    for listener in [&listeners.inbound, &listeners.outbound] {
        if let Err(e) = listener.set_tcp_keepalive(config.limits.tcp_keepalive) {
            tracing::warn!(error = %e, "TCP keepalive not set on a listener; a vanished client is found only by its connection's own timeouts");
        }
    }
    let (drain, watch) = crate::drain::channel();
    let background = [
        tokio::spawn(identity.run()),
        tokio::spawn(discovery.run()),
        tokio::spawn(close_idle_connections(store.clone())),
    ];
    let inbound_can_serve = can_serve_peers(admin_state.clone());
    let servers = [
        tokio::spawn(crate::drain::once_ready(
            inbound_can_serve,
            watch.clone(),
            inbound::serve(
                listeners.inbound,
                inbound::Inbound {
                    tls: server_tls,
                    store: store.clone(),
                    app: AppClient::new(config.app_host)
                        .with_tunnel_idle_timeout(config.limits.tunnel_idle_timeout),
                    authz: authz_stats.clone(),
                    telemetry: telemetry.clone(),
                    opaque,
                    transparent: transparent.is_some(),
                },
                watch.clone(),
                config.limits.clone(),
            ),
        )),
        tokio::spawn(outbound::serve(
            listeners.outbound,
            store,
            telemetry,
            watch.clone(),
            transparent,
            config.limits.clone(),
        )),
        tokio::spawn(admin::serve(listeners.admin, admin_state, watch)),
    ];
    tokio::select! {
        _ = shutdown => {}
        _ = stop.notified() => tracing::info!("shutdown requested on the admin port"),
    }
    tracing::info!(grace = ?config.drain_grace, "draining");
    if tokio::time::timeout(config.drain_grace, drain.drain())
        .await
        .is_err()
    {
        tracing::warn!("drain grace period over; closing the remaining connections");
    }
    for task in servers.into_iter().chain(background) {
        task.abort();
    }
    Ok(())
}

/// Completes once the inbound listener can serve a peer: with a certificate for the handshake and
/// the inbound config naming the app ports. A restarted sidecar (a rollout) would otherwise
/// accept a peer's request in between and answer it with an error.
async fn can_serve_peers(state: AdminState) {
    while state.identity.borrow().is_none() || state.store.load().inbound.is_none() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Closes pooled connections to endpoints unused for their cluster's idle timeout.
async fn close_idle_connections(store: crate::config::SnapshotStore) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let snapshot = store.load();
        for cluster in snapshot.clusters.values() {
            for endpoint in &cluster.endpoints {
                endpoint
                    .state
                    .conn
                    .close_if_idle(cluster.policy.idle_timeout);
            }
        }
    }
}

fn telemetry(config: &ProxyConfig) -> Result<Telemetry, StartError> {
    let metrics = Arc::new(
        ProxyMetrics::new(format!("{}/{}", config.namespace, config.service))
            .with_limits(&config.limits),
    );
    let t = &config.telemetry;
    let spans = match &t.otlp_endpoint {
        Some(endpoint) => Some(
            crate::telemetry::export::start(
                endpoint,
                crate::telemetry::export::ResourceInfo {
                    service: config.service.clone(),
                    namespace: config.namespace.clone(),
                    pod: config.node_id.clone(),
                },
                metrics.clone(),
            )
            .map_err(|e| StartError::Otlp(endpoint.clone(), e))?,
        ),
        None => None,
    };
    let access_log = match &t.access_log {
        Some(target) => Some(
            crate::telemetry::access_log::AccessLog::open(target)
                .map_err(|e| StartError::AccessLog(target.clone(), e))?,
        ),
        None => None,
    };
    Ok(Telemetry {
        metrics,
        spans,
        sample_ratio: t.sample_ratio.clamp(0.0, 1.0),
        b3: t.b3,
        access_log,
        tap: Arc::default(),
    })
}
