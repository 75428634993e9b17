//! The configuration the proxy serves with: one immutable `MeshSnapshot`, swapped whole through
//! arc-swap when discovery accepts an update. A request loads the snapshot once and uses that view
//! to the end, so an update never changes the rules under a request in flight, and the endpoint
//! connections carried from one snapshot to the next keep open connections open.

mod build;
mod decode;

pub use build::{build_snapshot, ResourceCache};
pub use decode::{decode, DecodeError, Decoded};

use crate::transport::MeshConnection;
use arc_swap::ArcSwap;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

/// Shared handle to the snapshot in force.
pub type SnapshotStore = Arc<ArcSwap<MeshSnapshot>>;

pub fn new_store() -> SnapshotStore {
    Arc::new(ArcSwap::from_pointee(MeshSnapshot::default()))
}

#[derive(Debug, Default, Serialize)]
pub struct MeshSnapshot {
    pub inbound: Option<InboundPolicy>,
    /// Route tables by host (lower case, no port). Several hosts point at one table.
    #[serde(skip)]
    pub routes_by_host: HashMap<String, Arc<RouteTable>>,
    pub routes: BTreeMap<String, Arc<RouteTable>>,
    pub clusters: BTreeMap<String, Arc<Cluster>>,
    pub trust: Option<TrustBundle>,
    /// Versions accepted per type URL and resource name.
    pub versions: BTreeMap<String, BTreeMap<String, String>>,
}

impl MeshSnapshot {
    /// The route table for a request's authority, or None.
    pub fn route_table(&self, host: &str, port: Option<u16>) -> Option<&Arc<RouteTable>> {
        let table = self.routes_by_host.get(host)?;
        match port {
            Some(p) if !table.ports.is_empty() && !table.ports.contains(&p) => None,
            _ => Some(table),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    Strict,
    Permissive,
    Disabled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    Http1,
    H2c,
}

#[derive(Debug, Clone, Serialize)]
pub struct InboundPolicy {
    pub ports: Vec<AppPort>,
    pub mtls: MtlsMode,
}

impl InboundPolicy {
    /// The app port serving a service port; a workload with one port serves every port with it.
    pub fn app_port(&self, service_port: Option<u16>) -> Option<&AppPort> {
        if let [only] = self.ports.as_slice() {
            return Some(only);
        }
        let port = service_port.unwrap_or(80);
        self.ports.iter().find(|p| p.port == port)
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct AppPort {
    pub port: u16,
    pub target_port: u16,
    pub protocol: AppProtocol,
}

#[derive(Debug, Serialize)]
pub struct RouteTable {
    pub name: String,
    pub hosts: Vec<String>,
    pub ports: Vec<u16>,
    pub routes: Vec<Route>,
    pub default_cluster: String,
}

impl RouteTable {
    /// First route whose prefix matches; the default cluster otherwise.
    pub fn select(&self, path: &str) -> (&str, Option<Duration>) {
        self.routes
            .iter()
            .find(|r| path.starts_with(&r.path_prefix))
            .map(|r| (r.cluster.as_str(), r.timeout))
            .unwrap_or((self.default_cluster.as_str(), None))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Route {
    pub name: String,
    pub path_prefix: String,
    pub cluster: String,
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum LbPolicy {
    RoundRobin,
    P2cEwma,
    LeastRequest,
    ConsistentHash,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterPolicy {
    pub lb: LbPolicy,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

impl Default for ClusterPolicy {
    fn default() -> Self {
        ClusterPolicy {
            lb: LbPolicy::P2cEwma,
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(15),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Cluster {
    pub name: String,
    pub policy: ClusterPolicy,
    pub endpoints: Vec<Arc<Endpoint>>,
    #[serde(skip)]
    next: AtomicUsize,
}

impl Cluster {
    pub fn new(name: String, policy: ClusterPolicy, endpoints: Vec<Arc<Endpoint>>) -> Self {
        Cluster {
            name,
            policy,
            endpoints,
            next: AtomicUsize::new(0),
        }
    }

    /// The balancing decision. Weighted round robin over the endpoints for now; the resilience
    /// work replaces this with P2C over peak-EWMA latency (see `balance`).
    pub fn pick(&self) -> Option<&Arc<Endpoint>> {
        crate::balance::pick(&self.endpoints, &self.next)
    }
}

#[derive(Debug, Serialize)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub identity: String,
    pub weight: u32,
    #[serde(skip)]
    pub conn: Arc<MeshConnection>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrustBundle {
    pub trust_domain: String,
    #[serde(serialize_with = "count_roots")]
    pub roots_der: Vec<Vec<u8>>,
}

fn count_roots<S: serde::Serializer>(roots: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{} root(s)", roots.len()))
}
