//! Assembles the control plane: state directory, CA, token key, the config source (the YAML file,
//! or Kubernetes) with its initial config and snapshot and its authenticator, the TLS listener
//! serving the identity and discovery services, and the source's updater (the file reloader or
//! the Kubernetes watches). `bind` does everything that can fail on bad input before anything is
//! served, so a wrong config, an unreachable cluster or a busy port is reported at start; `run`
//! serves until the shutdown future resolves. The resource limits (listen backlog, connection
//! and stream caps, keepalives) are set here from `ControlPlaneConfig`; the mechanisms live in
//! `accept.rs`, `discovery/limits.rs` and `open_files.rs`. One `ControlPlaneMetrics` is made here
//! and handed to every module that counts; the admin listener (`admin.rs`), when configured,
//! starts first in `bind` so that liveness holds while the config source syncs.
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use trellis_api::identity::identity_server::IdentityServer;

use crate::accept::{self, AcceptOptions, Admission};
use crate::admin::{AdminServer, AdminState, Readiness};
use crate::authn::Authenticator;
use crate::ca::{CaError, CaSource, CertificateAuthority};
use crate::config::{self, ConfigError, MeshConfig};
use crate::discovery::{DiscoveryServer, DiscoveryService, StreamCaps, StreamLimits};
use crate::identity::IdentityService;
use crate::kubernetes::translate::Built;
use crate::kubernetes::{self, KubernetesError, KubernetesOptions, KubernetesSource};
use crate::metrics::ControlPlaneMetrics;
use crate::publish::Publisher;
use crate::resources::{self, SharedSnapshot};
use crate::status::ControlPlaneStatus;
use crate::token::{TokenAuthority, TokenError};
use crate::watch::Reloader;

/// How long in-flight RPCs get to finish after shutdown before they are cut.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// A connection that has not finished its TLS handshake by then is closed: otherwise idle
/// connections would hold their descriptor and admission place for ever.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the mesh config comes from; the source also decides how proxies authenticate.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigSource {
    /// The mesh YAML, reloaded when it changes; proxies present bootstrap tokens.
    File(PathBuf),
    /// The cluster's Services, EndpointSlices, Pods and TrafficPolicies; proxies present their
    /// projected service-account tokens, checked with the TokenReview API.
    Kubernetes(KubernetesOptions),
}

#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    pub source: ConfigSource,
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    /// Names (DNS or IP) of the serving certificate.
    pub server_names: Vec<String>,
    /// Operator-provided CA (cert PEM, key PEM); otherwise the CA lives in `state_dir`.
    pub ca: Option<(PathBuf, PathBuf)>,
    /// The root certificate (PEM) when `ca` is an intermediate; its key can stay offline.
    pub ca_root: Option<PathBuf>,
    /// A changed mesh YAML is applied once its bytes have stayed the same this long, so a file
    /// caught half-written is never applied (zero: at once).
    pub config_settle: Duration,
    /// Pending connections the kernel queues (clamped to `net.core.somaxconn`), for a fleet
    /// reconnecting at once.
    pub listen_backlog: u32,
    /// Open connections at most; `None`: the open-files soft limit minus a reserve
    /// (`open_files::connection_budget`), so descriptors are left for the reloader and the CA.
    pub max_connections: Option<usize>,
    /// Open discovery streams at most, in total and per identity; over either, a stream is
    /// refused with RESOURCE_EXHAUSTED and a `grpc-retry-pushback-ms` of `stream_pushback`
    /// plus up to half again.
    pub max_streams: usize,
    pub max_streams_per_identity: usize,
    pub stream_pushback: Duration,
    /// HTTP/2 PINGs on every connection this often, and the connection closed when one is not
    /// answered within `keepalive_timeout`, so streams of proxies that vanished (power loss, a
    /// partition) end; TCP keepalive probes at the same interval. Zero turns both off.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// The admin listener (plain HTTP: `/live`, `/ready`, `/metrics`, `/status`); `None`: none.
    pub admin: Option<SocketAddr>,
}

impl ControlPlaneConfig {
    /// Defaults: listen on 127.0.0.1:8090, the default server names, CA in `state_dir`, the
    /// limits in `DEFAULT_*` (a connection cap derived from the open-files limit), and no admin
    /// listener (the command line turns it on at `DEFAULT_ADMIN`; in-process users pick a port).
    pub fn new(config_path: impl Into<PathBuf>, state_dir: impl Into<PathBuf>) -> Self {
        let streams = StreamCaps::default();
        ControlPlaneConfig {
            source: ConfigSource::File(config_path.into()),
            state_dir: state_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            server_names: default_server_names(),
            ca: None,
            ca_root: None,
            config_settle: crate::watch::DEFAULT_SETTLE,
            listen_backlog: DEFAULT_LISTEN_BACKLOG,
            max_connections: None,
            max_streams: streams.total,
            max_streams_per_identity: streams.per_identity,
            stream_pushback: streams.pushback,
            keepalive_interval: DEFAULT_KEEPALIVE,
            keepalive_timeout: DEFAULT_KEEPALIVE,
            admin: None,
        }
    }

    fn stream_caps(&self) -> StreamCaps {
        StreamCaps {
            total: self.max_streams,
            per_identity: self.max_streams_per_identity,
            pushback: self.stream_pushback,
        }
    }
}

pub const DEFAULT_LISTEN_BACKLOG: u32 = 4096;
/// The command line's admin listener.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9990";
/// Both the HTTP/2 PING interval and its timeout.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(10);

/// The connection cap: the configured one, or what the open-files limit leaves.
fn connection_cap(configured: Option<usize>) -> usize {
    if let Some(max) = configured {
        return max;
    }
    match crate::open_files::current() {
        Ok(limits) => crate::open_files::connection_budget(limits.soft),
        Err(e) => {
            let assumed = crate::open_files::connection_budget(1024);
            tracing::warn!(
                "cannot read the open-files limit ({e}); allowing {assumed} connections"
            );
            assumed
        }
    }
}

pub fn default_server_names() -> Vec<String> {
    ["localhost", "127.0.0.1", "::1", "trellis-control-plane"]
        .map(String::from)
        .to_vec()
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Kubernetes(#[from] KubernetesError),
    #[error("certificate authority: {0}")]
    Ca(#[from] CaError),
    #[error("token key: {0}")]
    Token(#[from] TokenError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("admin listener cannot listen on {addr}: {source}")]
    AdminBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("gRPC server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

pub struct ControlPlane {
    cfg: ControlPlaneConfig,
    listener: TcpListener,
    local_addr: SocketAddr,
    ca: Arc<CertificateAuthority>,
    tokens: Arc<TokenAuthority>,
    auth: Arc<dyn Authenticator>,
    /// (cert PEM, key PEM) of the serving certificate.
    server_identity: (String, String),
    updater: Updater,
    snapshots: watch::Sender<SharedSnapshot>,
    status: Arc<watch::Sender<ControlPlaneStatus>>,
    metrics: Arc<ControlPlaneMetrics>,
    readiness: Arc<Readiness>,
    /// Runs from `bind` until `run` returns (or the value is dropped).
    admin: Option<AdminServer>,
}

impl ControlPlane {
    pub async fn bind(cfg: ControlPlaneConfig) -> Result<ControlPlane, Error> {
        std::fs::create_dir_all(&cfg.state_dir).map_err(|source| Error::StateDir {
            path: cfg.state_dir.clone(),
            source,
        })?;
        // Version 0 until the config is loaded below: `/ready` says so meanwhile.
        let status = Arc::new(watch::channel(ControlPlaneStatus::default()).0);
        let metrics = ControlPlaneMetrics::new();
        let readiness = Arc::new(Readiness::default());
        let admin = match cfg.admin {
            Some(addr) => {
                let state = AdminState {
                    status: status.subscribe(),
                    metrics: metrics.clone(),
                    readiness: readiness.clone(),
                };
                let server = AdminServer::start(addr, state)
                    .await
                    .map_err(|source| Error::AdminBind { addr, source })?;
                tracing::info!(addr = %server.local_addr(), "admin listener serving");
                Some(server)
            }
            None => None,
        };
        let (mesh, updater) = match &cfg.source {
            ConfigSource::File(path) => {
                let (mesh, initial) = read_config(path)?;
                let updater = Updater::File {
                    path: path.clone(),
                    initial,
                };
                (mesh, updater)
            }
            ConfigSource::Kubernetes(options) => {
                let client = kubernetes::client(options.kubeconfig.as_deref()).await?;
                let source = KubernetesSource::start(client.clone(), options.mesh.clone());
                source.wait_synced(kubernetes::SYNC_TIMEOUT).await?;
                let built = source.build();
                for reason in &built.skipped {
                    tracing::warn!("not applied: {reason}");
                }
                let auth = kubernetes::TokenReviewAuthenticator::new(client);
                let updater = Updater::Kubernetes {
                    source: Box::new(source),
                    built: built.clone(),
                    auth: Arc::new(auth),
                };
                (built.mesh, updater)
            }
        };
        let source = match &cfg.ca {
            Some((cert, key)) => CaSource::Files {
                cert: cert.clone(),
                key: key.clone(),
                root: cfg.ca_root.clone(),
            },
            None => CaSource::StateDir(cfg.state_dir.clone()),
        };
        let ca = CertificateAuthority::load(&source)?;
        match issuing_not_after(&ca) {
            Some(not_after) => metrics.set_ca_not_after(not_after),
            None => tracing::warn!("cannot read the issuing certificate's expiry for the metrics"),
        }
        let tokens = Arc::new(TokenAuthority::load_or_create(&cfg.state_dir)?);
        let auth: Arc<dyn Authenticator> = match &updater {
            Updater::Kubernetes { auth, .. } => auth.clone(),
            Updater::File { .. } => tokens.clone(),
        };
        let server_identity = ca.server_certificate(&mesh.trust_domain, &cfg.server_names)?;

        let listener =
            accept::bind(cfg.listen, cfg.listen_backlog).map_err(|source| Error::Bind {
                addr: cfg.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: cfg.listen,
            source,
        })?;

        let snapshot = resources::build(&mesh, &[ca.root_der().to_vec()], 1);
        let (snapshots, _) = watch::channel(Arc::new(snapshot));
        status.send_modify(|s| {
            s.config_version = 1;
            s.skipped = match &updater {
                Updater::Kubernetes { built, .. } => built.skipped.clone(),
                Updater::File { .. } => Vec::new(),
            };
        });
        Ok(ControlPlane {
            cfg,
            listener,
            local_addr,
            ca: Arc::new(ca),
            tokens,
            auth,
            server_identity,
            updater,
            snapshots,
            status,
            metrics,
            readiness,
            admin,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where the admin listener is, when there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(AdminServer::local_addr)
    }

    /// The counts `/metrics` serves.
    pub fn metrics(&self) -> Arc<ControlPlaneMetrics> {
        self.metrics.clone()
    }

    /// The root certificate (PEM): proxies' trust anchor for the control plane and their peers.
    pub fn ca_pem(&self) -> String {
        self.ca.root_pem().to_owned()
    }

    /// Where the root certificate is on disk.
    pub fn ca_cert_path(&self) -> PathBuf {
        match &self.cfg.ca {
            Some((cert, _)) => cert.clone(),
            None => self.cfg.state_dir.join(crate::ca::CERT_FILE),
        }
    }

    pub fn issue_token(&self, namespace: &str, service_account: &str) -> String {
        self.tokens.issue(namespace, service_account)
    }

    pub fn status(&self) -> watch::Receiver<ControlPlaneStatus> {
        self.status.subscribe()
    }

    /// The trust domain of the config being served.
    pub fn trust_domain(&self) -> String {
        self.snapshots.borrow().trust_domain.clone()
    }

    /// Serves both gRPC services over TLS and reloads the config until `shutdown` resolves.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        // One stop signal for the server, every discovery stream and the reloader: tonic's
        // graceful shutdown waits for open streams, and discovery streams never end on their own.
        let (stop_tx, stop_rx) = watch::channel(false);
        // Serves until this function returns, through the shutdown grace period.
        let _admin = self.admin;
        let (cert_pem, key_pem) = &self.server_identity;
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(cert_pem, key_pem))
            .timeout(TLS_HANDSHAKE_TIMEOUT);
        let identity = IdentityService::with_authenticator(
            self.ca.clone(),
            self.auth.clone(),
            self.snapshots.subscribe(),
        )
        .with_metrics(self.metrics.clone());
        let discovery = DiscoveryService::new(
            self.auth.clone(),
            self.snapshots.subscribe(),
            self.status.clone(),
            stop_rx.clone(),
        )
        .with_limits(StreamLimits::with_metrics(
            self.cfg.stream_caps(),
            self.metrics.clone(),
        ))
        .with_metrics(self.metrics.clone());
        let roots_der = vec![self.ca.root_der().to_vec()];
        let updater = match self.updater {
            Updater::File { path, initial } => {
                let reloader = Reloader::new(path, initial, roots_der, self.snapshots, self.status)
                    .with_settle(self.cfg.config_settle)
                    .with_metrics(self.metrics.clone());
                tokio::spawn(reloader.run(stop_rx.clone()))
            }
            Updater::Kubernetes { source, built, .. } => {
                let publisher = Publisher::new(roots_der, self.snapshots, self.status)
                    .with_metrics(self.metrics.clone());
                tokio::spawn(source.run(publisher, built, stop_rx.clone()))
            }
        };
        let mut server_stop = stop_rx;
        let keepalive = Some(self.cfg.keepalive_interval).filter(|d| !d.is_zero());
        let max_connections = connection_cap(self.cfg.max_connections);
        let incoming = accept::incoming(
            self.listener,
            AcceptOptions {
                max_connections,
                tcp_keepalive: keepalive,
            },
            Arc::new(Admission::with_metrics(self.metrics.clone())),
        );
        // tonic polls the incoming stream once it serves: that first poll makes `/ready` pass.
        let readiness = self.readiness.clone();
        let serving = futures_util::stream::once(async move { readiness.set_serving() })
            .filter_map(|()| async { None });
        let incoming = serving.chain(incoming);
        let serve = Server::builder()
            .http2_keepalive_interval(keepalive)
            .http2_keepalive_timeout(Some(self.cfg.keepalive_timeout))
            .tls_config(tls)?
            .add_service(IdentityServer::new(identity))
            .add_service(DiscoveryServer::new(discovery))
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = server_stop.changed().await;
            });
        let mut server = tokio::spawn(serve);
        tracing::info!(
            addr = %self.local_addr,
            listen_backlog = self.cfg.listen_backlog,
            somaxconn = accept::somaxconn(),
            max_connections,
            max_streams = self.cfg.max_streams,
            max_streams_per_identity = self.cfg.max_streams_per_identity,
            keepalive_ms = self.cfg.keepalive_interval.as_millis() as u64,
            keepalive_timeout_ms = self.cfg.keepalive_timeout.as_millis() as u64,
            config_settle_ms = self.cfg.config_settle.as_millis() as u64,
            "control plane serving"
        );

        let early = tokio::select! {
            _ = shutdown => None,
            result = &mut server => Some(result),
        };
        self.readiness.set_stopping();
        stop_tx.send_replace(true);
        let result = match early {
            Some(result) => result,
            None => match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!("in-flight RPCs did not finish in time; closing them");
                    server.abort();
                    Ok(Ok(()))
                }
            },
        };
        let _ = updater.await;
        tracing::info!(addr = %self.local_addr, "control plane stopped");
        Ok(result??)
    }
}

/// What keeps the config current while serving.
enum Updater {
    /// The YAML reloader; `initial` is the content the first snapshot was built from.
    File { path: PathBuf, initial: Vec<u8> },
    Kubernetes {
        source: Box<KubernetesSource>,
        built: Built,
        auth: Arc<kubernetes::TokenReviewAuthenticator>,
    },
}

/// The notAfter (unix seconds) of the certificate that signs workload certificates: the
/// intermediate when there is one, else the root.
fn issuing_not_after(ca: &CertificateAuthority) -> Option<i64> {
    let der = ca.intermediate_der().unwrap_or(ca.root_der());
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Reads and validates the mesh YAML; returns it with the bytes it was parsed from.
fn read_config(path: &std::path::Path) -> Result<(MeshConfig, Vec<u8>), ConfigError> {
    let file = path.display().to_string();
    let read_error = |source| ConfigError::Read {
        file: file.clone(),
        source,
    };
    let initial = std::fs::read(path).map_err(read_error)?;
    let text = std::str::from_utf8(&initial)
        .map_err(|e| read_error(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    let mesh = config::parse(&file, text)?;
    Ok((mesh, initial))
}
