//! Wiring: builds the TLS context, the control-plane channel, the identity manager, the discovery
//! client and the three listeners, runs them until shutdown, then drains.

use crate::admin::{self, AdminState};
use crate::config::new_store;
use crate::discovery::{DiscoveryClient, SharedStatus};
use crate::http::app::AppClient;
use crate::identity::IdentityManager;
use crate::listeners::{inbound, outbound, Listeners};
use crate::tls::TlsContext;
use crate::transport::MeshConnector;
use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
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
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
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
    let channel = Endpoint::from_shared(config.control_plane_url.clone())
        .and_then(|e| {
            e.tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&config.control_plane_ca_pem))
                    .domain_name(config.control_plane_name.clone()),
            )
        })
        .map_err(|e| StartError::ControlPlane(config.control_plane_url.clone(), e))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect_lazy();
    let spiffe_id = trellis_api::spiffe_id(
        &config.trust_domain,
        &config.namespace,
        &config.service_account,
    );
    let store = new_store();
    let (identity_tx, identity_rx) = tokio::sync::watch::channel(None);
    let discovery_status = SharedStatus::default();
    let connector = MeshConnector::new(tls.clone());

    let identity = IdentityManager {
        client: IdentityClient::new(channel.clone()),
        token: config.token.clone(),
        spiffe_id: spiffe_id.clone(),
        tls: tls.clone(),
        status: identity_tx,
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
        },
        store: store.clone(),
        connector,
        tls: tls.clone(),
        status: discovery_status.clone(),
    };
    let admin_state = AdminState {
        store: store.clone(),
        identity: identity_rx,
        discovery: discovery_status,
    };

    let (drain, watch) = crate::drain::channel();
    let background = [
        tokio::spawn(identity.run()),
        tokio::spawn(discovery.run()),
        tokio::spawn(close_idle_connections(store.clone())),
    ];
    let servers = [
        tokio::spawn(inbound::serve(
            listeners.inbound,
            server_tls,
            store.clone(),
            AppClient::new(config.app_host),
            watch.clone(),
        )),
        tokio::spawn(outbound::serve(listeners.outbound, store, watch.clone())),
        tokio::spawn(admin::serve(listeners.admin, admin_state, watch)),
    ];
    shutdown.await;
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
