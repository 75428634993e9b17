//! The configuration the proxy serves with: one immutable `MeshSnapshot`, swapped whole through
//! arc-swap when discovery accepts an update. A request loads the snapshot once and uses that view
//! to the end, so an update never changes the rules under a request in flight. Mutable runtime
//! state (connections, load and outlier tracking, breaker counters, stats) lives in `Arc`s that
//! the next snapshot inherits by name, so updates neither close connections nor reset counters.

mod build;
mod decode;
pub mod policy;
pub mod routes;

pub use build::{build_snapshot, ResourceCache};
pub use decode::{decode, DecodeError, Decoded};
pub use policy::{
    BreakerLimits, ClusterPolicy, HashKey, LbPolicy, OutlierConfig, RetryOn, RetryPolicy,
};
pub use routes::{
    Backend, Fault, HeaderMatch, HeaderValueMatch, PathMatch, RouteMatch, RouteRule, RouteTable,
};

use crate::balance::{HashRing, Load};
use crate::resilience::breaker::BreakerState;
use crate::resilience::budget::RetryBudget;
use crate::resilience::outlier::OutlierState;
use crate::telemetry::ClusterStats;
use crate::transport::MeshConnection;
use arc_swap::ArcSwap;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

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
    pub authorization: crate::authz::Policy,
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

/// One destination service as the proxy balances over it.
#[derive(Debug, Serialize)]
pub struct Cluster {
    pub name: String,
    pub policy: ClusterPolicy,
    pub endpoints: Vec<Arc<Endpoint>>,
    #[serde(skip)]
    pub state: Arc<ClusterState>,
    /// Built only for consistent hashing.
    #[serde(skip)]
    pub ring: Option<HashRing>,
}

/// Runtime state of a cluster that outlives snapshots.
#[derive(Debug, Default)]
pub struct ClusterState {
    pub breaker: BreakerState,
    pub budget: RetryBudget,
    pub stats: ClusterStats,
    /// Round-robin position.
    pub next: AtomicUsize,
}

#[derive(Debug, Serialize)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub identity: String,
    pub weight: u32,
    /// mTLS disabled at the endpoint: plaintext h2c.
    pub plaintext: bool,
    #[serde(serialize_with = "ser_ejected")]
    pub state: Arc<EndpointState>,
}

/// Runtime state of an endpoint that outlives snapshots (keyed by address and identity).
#[derive(Debug)]
pub struct EndpointState {
    pub conn: MeshConnection,
    pub load: Load,
    pub outlier: OutlierState,
}

fn ser_ejected<S: serde::Serializer>(state: &Arc<EndpointState>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let mut st = s.serialize_struct("EndpointState", 2)?;
    st.serialize_field("ejected", &state.outlier.is_ejected())?;
    st.serialize_field("outstanding", &state.load.outstanding())?;
    st.end()
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

pub(crate) fn ser_display<S: serde::Serializer, T: std::fmt::Display>(
    v: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.to_string())
}
