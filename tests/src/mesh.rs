//! `Mesh`: a control plane, workloads (sidecar + echo app) and their YAML config, all in-process on
//! loopback. Replicas of one service are "pods" on distinct loopback addresses (127.0.0.2, .3, …)
//! sharing the app port, as pods share a containerPort in Kubernetes.

use crate::apps::{EchoApp, Protocol};
use crate::chaos::ChaosRelay;
use crate::client::TestClient;
use anyhow::{bail, Context};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use trellis_control_plane::{ControlPlane, ControlPlaneConfig, ControlPlaneStatus};

pub const TRUST_DOMAIN: &str = "trellis.local";
pub const NAMESPACE: &str = "default";

/// A service in the mesh.
#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub protocol: Protocol,
    pub replicas: usize,
    /// Extra YAML lines appended to the service entry (policy, routes…).
    pub extra_yaml: String,
    pub external: Vec<SocketAddr>,
    pub weights: Vec<u32>,
}

impl Service {
    pub fn http1(name: &str) -> Service {
        Service {
            name: name.into(),
            protocol: Protocol::Http1,
            replicas: 1,
            extra_yaml: String::new(),
            external: Vec::new(),
            weights: Vec::new(),
        }
    }
    pub fn h2c(name: &str) -> Service {
        Service {
            protocol: Protocol::H2c,
            ..Service::http1(name)
        }
    }
    pub fn grpc(name: &str) -> Service {
        Service {
            protocol: Protocol::Grpc,
            ..Service::http1(name)
        }
    }
    /// A service with no workloads of the harness: its endpoints are these addresses (a
    /// black hole, a stopped server…), listed with the service's identity.
    pub fn external(name: &str, endpoints: &[SocketAddr]) -> Service {
        Service {
            replicas: 0,
            external: endpoints.to_vec(),
            ..Service::http1(name)
        }
    }
    pub fn replicas(mut self, n: usize) -> Service {
        self.replicas = n;
        self
    }
    /// Adds YAML under the service entry, written as at the service's own indentation
    /// (`policy:` / `routes:` at column 0); the harness indents it.
    pub fn yaml(mut self, text: &str) -> Service {
        for line in text.lines() {
            self.extra_yaml.push_str("    ");
            self.extra_yaml.push_str(line);
            self.extra_yaml.push('\n');
        }
        self
    }
    /// Endpoint weights, in workload order (default 1).
    pub fn weights(mut self, weights: &[u32]) -> Service {
        self.weights = weights.to_vec();
        self
    }
    pub fn spiffe_id(&self) -> String {
        trellis_api::spiffe_id(TRUST_DOMAIN, NAMESPACE, &self.name)
    }
}

/// One pod: its app and its sidecar.
pub struct Workload {
    pub service: String,
    pub app: EchoApp,
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    /// Whether the control plane's config lists this workload as an endpoint.
    pub listed: bool,
    /// Bound sockets waiting for the sidecar to start.
    pending: Option<trellis_proxy::Listeners>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Drop for Workload {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[derive(Default)]
pub struct MeshBuilder {
    services: Vec<Service>,
    telemetry: trellis_proxy::TelemetryConfig,
    /// PEM roots sidecars also accept for the control plane (for CA rotation tests).
    extra_control_plane_ca: String,
    mesh_yaml: String,
    limits: trellis_proxy::Limits,
    link: trellis_proxy::LinkSettings,
    relay_control_plane: bool,
    /// Control planes serving the mesh (0 and 1 mean one).
    control_plane_replicas: usize,
    /// On-demand (default) or wildcard discovery in every sidecar.
    discovery: trellis_proxy::discovery::DiscoverySettings,
    /// How every sidecar sends HTTP/1.x to its peers (`--http1-to-peers`).
    http1_to_peers: trellis_proxy::transport::Http1ToPeers,
}

impl MeshBuilder {
    /// `n` control planes serve the same mesh (the same YAML, the same state directory: the CA
    /// and the token key, as replicas share the mounted Secret), behind one address: a relay
    /// that gives each new connection to the next replica that accepts it, as a Kubernetes
    /// Service does. `Mesh::stop_control_plane_replica` kills one.
    pub fn control_plane_replicas(mut self, n: usize) -> Self {
        self.control_plane_replicas = n;
        self.relay_control_plane = true;
        self
    }

    /// Sidecars reach the control plane through a `ChaosRelay` (see `Mesh::control_plane_relay`),
    /// which can reset or silently freeze their connections.
    pub fn control_plane_relay(mut self) -> Self {
        self.relay_control_plane = true;
        self
    }

    /// Keepalive, deadlines and silence bound of every sidecar's control-plane link.
    pub fn control_plane_link(mut self, link: trellis_proxy::LinkSettings) -> Self {
        self.link = link;
        self
    }

    /// Every sidecar sends HTTP/1.x to its peers this way (`--http1-to-peers`).
    pub fn http1_to_peers(mut self, way: trellis_proxy::transport::Http1ToPeers) -> Self {
        self.http1_to_peers = way;
        self
    }

    /// Sidecars also trust `pem` for the control plane's certificate, as an operator distributes
    /// a new root before a CA rotation.
    pub fn control_plane_ca_extra(mut self, pem: &str) -> Self {
        self.extra_control_plane_ca.push_str(pem);
        self
    }

    /// Top-level YAML lines of the mesh config (`certificateLifetime: 20s`, `trust: …`).
    pub fn mesh_yaml(mut self, text: &str) -> Self {
        self.mesh_yaml.push_str(text);
        if !text.ends_with('\n') {
            self.mesh_yaml.push('\n');
        }
        self
    }

    /// Telemetry settings for every sidecar (OTLP endpoint, sampling, B3, access log).
    pub fn telemetry(mut self, telemetry: trellis_proxy::TelemetryConfig) -> Self {
        self.telemetry = telemetry;
        self
    }

    /// Resource limits for every sidecar (connections, streams, in-flight requests, timeouts).
    pub fn limits(mut self, limits: trellis_proxy::Limits) -> Self {
        self.limits = limits;
        self
    }

    pub fn service(mut self, s: Service) -> Self {
        self.services.push(s);
        self
    }

    /// Discovery mode (wildcard or on-demand) and its timings for every sidecar.
    pub fn discovery(mut self, settings: trellis_proxy::discovery::DiscoverySettings) -> Self {
        self.discovery = settings;
        self
    }

    /// Every sidecar subscribes to every service (`--discovery-mode wildcard`): for tests in
    /// which a sidecar must hold a service its app has not called (one added while the test
    /// runs, or called first while the control plane is away).
    pub fn wildcard_discovery(self) -> Self {
        self.discovery(trellis_proxy::discovery::DiscoverySettings {
            mode: trellis_proxy::discovery::DiscoveryMode::Wildcard,
            ..Default::default()
        })
    }

    pub async fn start(self) -> anyhow::Result<Mesh> {
        crate::init_logging();
        let dir = tempfile::tempdir()?;
        let mut mesh = Mesh {
            config_path: dir.path().join("mesh.yaml"),
            state_dir: dir.path().join("state"),
            services: self.services.clone(),
            workloads: Vec::new(),
            app_ports: Vec::new(),
            control_plane: None,
            tokens: Vec::new(),
            ca_pem: String::new(),
            next_host: 2,
            telemetry: self.telemetry.clone(),
            limits: self.limits.clone(),
            link: self.link,
            discovery: self.discovery,
            http1_to_peers: self.http1_to_peers,
            relay: None,
            replicas: Vec::new(),
            mesh_yaml: self.mesh_yaml.clone(),
            _dir: dir,
        };
        for s in &self.services {
            for _ in 0..s.replicas {
                mesh.prepare_workload(&s.name).await?;
            }
        }
        mesh.write_config()?;
        let mut cp_config = ControlPlaneConfig::new(&mesh.config_path, &mesh.state_dir);
        cp_config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        cp_config.admin = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        let cp = ControlPlane::bind(cp_config).await?;
        mesh.ca_pem = cp.ca_pem() + &self.extra_control_plane_ca;
        for s in &self.services {
            mesh.tokens
                .push((s.name.clone(), cp.issue_token(NAMESPACE, &s.name)));
        }
        mesh.control_plane = Some(ControlPlaneHandle::spawn(cp));
        for _ in 1..self.control_plane_replicas {
            let mut replica = ControlPlaneConfig::new(&mesh.config_path, &mesh.state_dir);
            replica.listen = SocketAddr::from(([127, 0, 0, 1], 0));
            let cp = ControlPlane::bind(replica).await?;
            mesh.replicas.push(ControlPlaneHandle::spawn(cp));
        }
        if self.relay_control_plane {
            let mut targets = vec![mesh.control_plane_addr()];
            targets.extend(mesh.replicas.iter().map(|r| r.addr));
            mesh.relay = Some(ChaosRelay::balance(&targets, 1, 0.0).await?);
        }
        for i in 0..mesh.workloads.len() {
            mesh.start_proxy(i).await?;
        }
        mesh.wait_ready().await?;
        Ok(mesh)
    }
}

struct ControlPlaneHandle {
    addr: SocketAddr,
    /// Its admin port (`/status`, `/proxies`), when it has one.
    admin: Option<SocketAddr>,
    status: watch::Receiver<ControlPlaneStatus>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl ControlPlaneHandle {
    /// Runs a bound control plane until the handle is stopped or dropped.
    fn spawn(cp: ControlPlane) -> ControlPlaneHandle {
        let (addr, admin, status) = (cp.local_addr(), cp.admin_addr(), cp.status());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = cp
                .run(async {
                    let _ = stopped.await;
                })
                .await;
        });
        ControlPlaneHandle {
            addr,
            admin,
            status,
            stop: Some(stop),
            task,
        }
    }
}

impl Drop for ControlPlaneHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

pub struct Mesh {
    pub config_path: PathBuf,
    pub state_dir: PathBuf,
    pub services: Vec<Service>,
    pub workloads: Vec<Workload>,
    /// The app port of each service (shared by its replicas).
    app_ports: Vec<(String, u16)>,
    control_plane: Option<ControlPlaneHandle>,
    tokens: Vec<(String, String)>,
    ca_pem: String,
    next_host: u8,
    telemetry: trellis_proxy::TelemetryConfig,
    limits: trellis_proxy::Limits,
    link: trellis_proxy::LinkSettings,
    discovery: trellis_proxy::discovery::DiscoverySettings,
    http1_to_peers: trellis_proxy::transport::Http1ToPeers,
    /// Between the sidecars and the control plane, when the builder asked for it.
    relay: Option<ChaosRelay>,
    /// The control planes after the first (`MeshBuilder::control_plane_replicas`).
    replicas: Vec<ControlPlaneHandle>,
    /// Top-level YAML lines written before `services:`; change and `write_config` to apply.
    pub mesh_yaml: String,
    _dir: tempfile::TempDir,
}

impl Mesh {
    pub fn builder() -> MeshBuilder {
        MeshBuilder::default()
    }

    /// The most common shape: a `client` workload and one destination service.
    /// Panics if the mesh cannot start (tests want the reason, not a Result).
    pub async fn client_and(destination: Service) -> Mesh {
        match Mesh::builder()
            .service(Service::http1("client"))
            .service(destination)
            .start()
            .await
        {
            Ok(mesh) => mesh,
            Err(e) => panic!("mesh starts: {e:#}"),
        }
    }

    fn service(&self, name: &str) -> anyhow::Result<&Service> {
        self.services
            .iter()
            .find(|s| s.name == name)
            .with_context(|| format!("no service {name}"))
    }

    /// The first workload of a service.
    pub fn workload(&self, service: &str) -> &Workload {
        match self.workloads.iter().find(|w| w.service == service) {
            Some(w) => w,
            None => panic!("no workload of {service}"),
        }
    }

    pub fn workloads_of<'a>(&'a self, service: &'a str) -> impl Iterator<Item = &'a Workload> + 'a {
        self.workloads.iter().filter(move |w| w.service == service)
    }

    /// A client for the app of `service`'s first workload, speaking HTTP/1.1 or h2c to its sidecar.
    pub fn client(&self, from: &str, h2c: bool) -> TestClient {
        TestClient::new(self.workload(from).outbound, h2c)
    }

    pub fn control_plane_status(&self) -> ControlPlaneStatus {
        self.control_plane
            .as_ref()
            .map(|c| c.status.borrow().clone())
            .unwrap_or_default()
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The (first) control plane's admin port, on loopback: `/status`, `/proxies`, `/metrics`.
    pub fn control_plane_admin_addr(&self) -> Option<SocketAddr> {
        self.control_plane.as_ref().and_then(|c| c.admin)
    }

    pub fn control_plane_addr(&self) -> SocketAddr {
        self.control_plane
            .as_ref()
            .map(|c| c.addr)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The relay in front of the control plane (`MeshBuilder::control_plane_relay`).
    pub fn control_plane_relay(&self) -> Option<&ChaosRelay> {
        self.relay.as_ref()
    }

    /// The URL sidecars use for the control plane: the relay's address when there is one.
    fn control_plane_url(&self) -> String {
        match &self.relay {
            Some(relay) => format!("https://{}", relay.addr),
            None => format!("https://{}", self.control_plane_addr()),
        }
    }

    /// Stops control-plane replica `index` (0: the first, as `stop_control_plane`) and waits
    /// until it has stopped: its listener and its streams are closed.
    pub async fn stop_control_plane_replica(&mut self, index: usize) {
        let handle = match index {
            0 => self.control_plane.as_mut(),
            i => self.replicas.get_mut(i - 1),
        };
        if let Some(cp) = handle {
            if let Some(stop) = cp.stop.take() {
                let _ = stop.send(());
                let _ = (&mut cp.task).await;
            }
        }
    }

    /// What control-plane replica `index` reports (0: the first, as `control_plane_status`).
    pub fn control_plane_replica_status(&self, index: usize) -> ControlPlaneStatus {
        let handle = match index {
            0 => self.control_plane.as_ref(),
            i => self.replicas.get(i - 1),
        };
        handle
            .map(|c| c.status.borrow().clone())
            .unwrap_or_default()
    }

    /// Stops the control plane; sidecars keep serving with what they hold.
    pub async fn stop_control_plane(&mut self) {
        if let Some(cp) = self.control_plane.as_mut() {
            // Without a stop sender it was stopped already (and its task awaited).
            if let Some(stop) = cp.stop.take() {
                let _ = stop.send(());
                let _ = (&mut cp.task).await;
            }
        }
    }

    /// Starts the control plane again on the same address and state directory (after
    /// `stop_control_plane`), optionally with operator CA files (issuer cert, key, root).
    pub async fn restart_control_plane(
        &mut self,
        ca: Option<(PathBuf, PathBuf, PathBuf)>,
    ) -> anyhow::Result<()> {
        self.stop_control_plane().await;
        let mut cp_config = ControlPlaneConfig::new(&self.config_path, &self.state_dir);
        cp_config.listen = self.control_plane_addr();
        cp_config.admin = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        if let Some((cert, key, root)) = ca {
            cp_config.ca = Some((cert, key));
            cp_config.ca_root = Some(root);
        }
        let cp = ControlPlane::bind(cp_config).await?;
        self.control_plane = Some(ControlPlaneHandle::spawn(cp));
        Ok(())
    }

    pub fn token(&self, service_account: &str) -> Option<&str> {
        self.tokens
            .iter()
            .find(|(s, _)| s == service_account)
            .map(|(_, t)| t.as_str())
    }

    /// Binds a workload's app and sidecar sockets (the sidecar starts later, in `start_proxy`).
    async fn prepare_workload(&mut self, service: &str) -> anyhow::Result<usize> {
        let host = IpAddr::V4(Ipv4Addr::new(127, 0, 0, self.next_host));
        self.next_host = self
            .next_host
            .checked_add(1)
            .context("too many workloads")?;
        let port = self
            .app_ports
            .iter()
            .find(|(s, _)| s == service)
            .map(|(_, p)| *p)
            .unwrap_or(0);
        let protocol = self.service(service)?.protocol;
        let app = EchoApp::start(
            &format!("{service}-{}", self.workloads.len()),
            SocketAddr::new(host, port),
            protocol,
        )
        .await?;
        if port == 0 {
            self.app_ports.push((service.to_string(), app.addr.port()));
        }
        let listeners = trellis_proxy::Listeners::bind(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            SocketAddr::from(([127, 0, 0, 1], 0)),
            SocketAddr::from(([127, 0, 0, 1], 0)),
        )
        .await?;
        self.workloads.push(Workload {
            service: service.to_string(),
            inbound: listeners.inbound_addr()?,
            outbound: listeners.outbound_addr()?,
            admin: listeners.admin_addr()?,
            app,
            listed: true,
            pending: Some(listeners),
            stop: None,
            task: None,
        });
        Ok(self.workloads.len() - 1)
    }

    async fn start_proxy(&mut self, index: usize) -> anyhow::Result<()> {
        let service = self.workloads[index].service.clone();
        let token = self
            .token(&service)
            .context("no token for the service")?
            .to_string();
        let control_plane_url = self.control_plane_url();
        let ca_pem = self.ca_pem.clone();
        let w = &mut self.workloads[index];
        let listeners = w.pending.take().context("sidecar already started")?;
        let config = trellis_proxy::ProxyConfig {
            control_plane_url,
            control_plane_ca_pem: ca_pem,
            control_plane_name: "localhost".into(),
            token,
            trust_domain: TRUST_DOMAIN.into(),
            namespace: NAMESPACE.into(),
            service: service.clone(),
            service_account: service.clone(),
            app_host: w.app.addr.ip(),
            node_id: format!("{service}-{index}"),
            drain_grace: Duration::from_secs(1),
            telemetry: self.telemetry.clone(),
            limits: self.limits.clone(),
            log_control: None,
            control_plane_link: self.link,
            admin_open_diagnostics: false,
            app_probes: Default::default(),
            discovery: self.discovery,
            http1_to_peers: self.http1_to_peers,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        w.stop = Some(stop);
        w.task = Some(tokio::spawn(async move {
            if let Err(e) = trellis_proxy::run(config, listeners, async {
                let _ = stopped.await;
            })
            .await
            {
                tracing::error!(error = %e, "proxy failed");
            }
        }));
        Ok(())
    }

    /// A sidecar for `service` outside the mesh's bookkeeping, pointed at any control plane (for
    /// tests with a scripted one). Its app is the first workload's app of that service.
    pub async fn standalone_sidecar(&self, service: &str) -> anyhow::Result<Sidecar> {
        let listeners = trellis_proxy::Listeners::bind(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            SocketAddr::from(([127, 0, 0, 1], 0)),
            SocketAddr::from(([127, 0, 0, 1], 0)),
        )
        .await?;
        let config = trellis_proxy::ProxyConfig {
            control_plane_url: self.control_plane_url(),
            control_plane_ca_pem: self.ca_pem.clone(),
            control_plane_name: "localhost".into(),
            token: self
                .token(service)
                .context("no token for the service")?
                .to_string(),
            trust_domain: TRUST_DOMAIN.into(),
            namespace: NAMESPACE.into(),
            service: service.to_string(),
            service_account: service.to_string(),
            app_host: self.workload(service).app.addr.ip(),
            node_id: format!("{service}-standalone"),
            drain_grace: Duration::from_secs(1),
            telemetry: self.telemetry.clone(),
            limits: self.limits.clone(),
            log_control: None,
            control_plane_link: self.link,
            admin_open_diagnostics: false,
            app_probes: Default::default(),
            discovery: self.discovery,
            http1_to_peers: self.http1_to_peers,
        };
        Ok(Sidecar {
            inbound: listeners.inbound_addr()?,
            outbound: listeners.outbound_addr()?,
            admin: listeners.admin_addr()?,
            config,
            listeners: Some(listeners),
            stop: None,
        })
    }

    /// Asks a workload's sidecar to shut down (as SIGTERM would) and returns its task, which ends
    /// once the drain is over.
    pub fn stop_sidecar(&mut self, index: usize) -> Option<JoinHandle<()>> {
        let w = &mut self.workloads[index];
        if let Some(stop) = w.stop.take() {
            let _ = stop.send(());
        }
        w.task.take()
    }

    /// The sidecar's task, to watch it end (after `POST /shutdown`, say) without asking it to stop.
    pub fn take_sidecar_task(&mut self, index: usize) -> Option<JoinHandle<()>> {
        self.workloads[index].task.take()
    }

    /// Starts a stopped sidecar again on its same inbound, outbound and admin addresses (a pod
    /// restarted in a rollout) and waits until it is ready. The old one must have exited.
    pub async fn restart_sidecar(&mut self, index: usize) -> anyhow::Result<()> {
        let w = &self.workloads[index];
        let (inbound, outbound, admin) = (w.inbound, w.outbound, w.admin);
        // The ports were just released; retry briefly in case the kernel still holds one.
        let start = Instant::now();
        let listeners = loop {
            match trellis_proxy::Listeners::bind(inbound, outbound, admin).await {
                Ok(l) => break l,
                Err(e) if start.elapsed() < Duration::from_secs(5) => {
                    tracing::debug!(error = %e, "rebinding the sidecar's ports");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e).context("rebinding the sidecar's ports"),
            }
        };
        self.workloads[index].pending = Some(listeners);
        self.start_proxy(index).await?;
        wait_until(Duration::from_secs(15), || self.is_ready(index))
            .await
            .context("restarted sidecar never ready")?;
        Ok(())
    }

    /// The app port of a service.
    pub fn app_port(&self, service: &str) -> Option<u16> {
        self.app_ports
            .iter()
            .find(|(s, _)| s == service)
            .map(|(_, p)| *p)
    }

    /// Adds a workload of an existing service; listed in the config only after `write_config`.
    pub async fn add_workload(&mut self, service: &str) -> anyhow::Result<usize> {
        let index = self.prepare_workload(service).await?;
        self.start_proxy(index).await?;
        wait_until(Duration::from_secs(10), || self.is_ready(index))
            .await
            .context("new workload never ready")?;
        Ok(index)
    }

    async fn is_ready(&self, index: usize) -> bool {
        let admin = TestClient::new(self.workloads[index].admin, false);
        matches!(admin.get("localhost", "/ready").await, Ok((rsp, _)) if rsp.status() == 200)
    }

    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        for i in 0..self.workloads.len() {
            if wait_until(Duration::from_secs(15), || self.is_ready(i))
                .await
                .is_err()
            {
                let admin = TestClient::new(self.workloads[i].admin, false);
                let why = admin.get("localhost", "/ready").await.map(|(_, b)| b);
                bail!(
                    "workload {i} ({}) not ready: {why:?}",
                    self.workloads[i].service
                );
            }
        }
        Ok(())
    }

    /// GET on a workload's admin port.
    pub async fn admin_get(&self, index: usize, path: &str) -> anyhow::Result<(u16, String)> {
        let (rsp, body) = TestClient::new(self.workloads[index].admin, false)
            .get("localhost", path)
            .await?;
        Ok((
            rsp.status().as_u16(),
            String::from_utf8_lossy(&body).into_owned(),
        ))
    }

    /// A workload's sidecar `/config` document (panics unless it answers 200 with JSON: tests
    /// want the reason).
    pub async fn config_doc(&self, index: usize) -> serde_json::Value {
        match self.admin_get(index, "/config").await {
            Ok((200, body)) => match serde_json::from_str(&body) {
                Ok(doc) => doc,
                Err(e) => panic!("/config is not JSON: {e}: {body}"),
            },
            other => panic!("admin /config of workload {index}: {other:?}"),
        }
    }

    /// The mesh YAML for the current services and listed workloads.
    pub fn render_config(&self) -> String {
        let mut y = format!("trustDomain: {TRUST_DOMAIN}\n{}services:\n", self.mesh_yaml);
        for s in &self.services {
            let port = self
                .app_ports
                .iter()
                .find(|(n, _)| *n == s.name)
                .map(|(_, p)| *p)
                .unwrap_or(80);
            let _ = write!(
                y,
                "  - name: {}\n    namespace: {NAMESPACE}\n    serviceAccount: {}\n    ports:\n      - port: 80\n        targetPort: {port}\n        protocol: {}\n    endpoints:\n",
                s.name,
                s.name,
                s.protocol.yaml()
            );
            let mut any = false;
            for (i, w) in self.workloads_of(&s.name).filter(|w| w.listed).enumerate() {
                let weight = s.weights.get(i).copied().unwrap_or(1);
                let _ = writeln!(
                    y,
                    "      - address: {}\n        weight: {weight}",
                    w.inbound
                );
                any = true;
            }
            for addr in &s.external {
                let _ = writeln!(y, "      - address: {addr}");
                any = true;
            }
            if !any {
                y.truncate(y.len() - "    endpoints:\n".len());
                y.push_str("    endpoints: []\n");
            }
            y.push_str(&s.extra_yaml);
        }
        y
    }

    pub fn write_config(&self) -> anyhow::Result<()> {
        self.write_raw_config(&self.render_config())
    }

    /// Writes the config file atomically (temp file + rename), as an editor or a ConfigMap does.
    pub fn write_raw_config(&self, text: &str) -> anyhow::Result<()> {
        let tmp = self.config_path.with_extension("yaml.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.config_path)?;
        Ok(())
    }

    pub fn service_spiffe_id(&self, name: &str) -> anyhow::Result<String> {
        Ok(self.service(name)?.spiffe_id())
    }
}

/// Polls `check` every 25 ms until it holds or `limit` passes.
pub async fn wait_until<F, Fut>(limit: Duration, mut check: F) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            bail!("condition not met within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A sidecar started by hand (see `Mesh::standalone_sidecar`); stopped on drop.
pub struct Sidecar {
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    /// Edit before `start` (e.g. to point at another control plane).
    pub config: trellis_proxy::ProxyConfig,
    listeners: Option<trellis_proxy::Listeners>,
    stop: Option<oneshot::Sender<()>>,
}

impl Sidecar {
    pub fn start(&mut self) -> anyhow::Result<()> {
        let listeners = self.listeners.take().context("already started")?;
        let (stop, stopped) = oneshot::channel::<()>();
        self.stop = Some(stop);
        let config = self.config.clone();
        tokio::spawn(async move {
            let _ = trellis_proxy::run(config, listeners, async {
                let _ = stopped.await;
            })
            .await;
        });
        Ok(())
    }

    pub async fn admin_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let (rsp, body) = TestClient::new(self.admin, false)
            .get("localhost", path)
            .await?;
        Ok((
            rsp.status().as_u16(),
            String::from_utf8_lossy(&body).into_owned(),
        ))
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
