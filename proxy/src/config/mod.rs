//! The configuration the proxy serves with: one immutable `MeshSnapshot`, swapped whole through
//! arc-swap when discovery accepts an update. A request loads the snapshot once and uses that view
//! to the end, so an update never changes the rules under a request in flight. Mutable runtime
//! state (connections, load and outlier tracking, breaker counters, stats) lives in `Arc`s that
//! the next snapshot inherits by name, so updates neither close connections nor reset counters.

mod addresses;
mod build;
mod decode;
mod locator;
pub mod policy;
pub mod routes;

pub use addresses::{AddressIndex, VirtualMatch, VirtualService};
pub use build::{build_snapshot, Changes, ResourceCache};
pub use decode::{decode, DecodeError, Decoded, ServiceAddresses};
pub use locator::{Located, ServiceLocator};
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
    /// Endpoints, pods and virtual addresses by address, for transparent mode; built from
    /// `clusters` and the route configs (`/config` shows the virtual addresses).
    #[serde(rename = "virtualAddresses")]
    pub addresses: AddressIndex,
    /// Transparent mode on demand: every service's addresses, for destinations `addresses` cannot
    /// place because their service is not held yet.
    #[serde(skip)]
    pub locator: ServiceLocator,
    pub trust: Option<TrustBundle>,
    /// Versions accepted per type URL and resource name.
    pub versions: BTreeMap<String, BTreeMap<String, String>>,
    /// On-demand discovery (`None`: wildcard): what the router asks for the services it does not
    /// hold, carried from snapshot to snapshot; `/config` shows the subscription set.
    #[serde(
        rename = "discovery",
        serialize_with = "crate::discovery::serialize_mode"
    )]
    pub demand: Option<Arc<crate::discovery::Demand>>,
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
#[serde(rename_all = "camelCase")]
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
    let mut st = s.serialize_struct("EndpointState", 3)?;
    st.serialize_field("ejected", &state.outlier.is_ejected())?;
    let left = state.outlier.ejected_for().map(human_duration);
    st.serialize_field("ejectedFor", &left)?;
    st.serialize_field("outstanding", &state.load.outstanding())?;
    st.end()
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrustBundle {
    pub trust_domain: String,
    #[serde(serialize_with = "count_roots")]
    pub roots_der: Vec<Vec<u8>>,
}

fn count_roots<S: serde::Serializer>(roots: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{} root(s)", roots.len()))
}

/// A duration as people write it in the mesh YAML: `5s`, `250ms`, `1m30s`; `0s` for zero. Used by
/// `/config` and in logs, where `{"secs":5,"nanos":0}` or `5.000s` would make readers convert.
pub fn human_duration(d: std::time::Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    let secs = d.as_secs();
    let parts = [
        (secs / 3600, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
        (u64::from(d.subsec_millis()), "ms"),
        (u64::from(d.subsec_micros() % 1000), "us"),
        (u64::from(d.subsec_nanos() % 1000), "ns"),
    ];
    let mut out = String::new();
    for (n, unit) in parts {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    out
}

pub(crate) fn ser_duration<S: serde::Serializer>(
    d: &std::time::Duration,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(&human_duration(*d))
}

pub(crate) fn ser_opt_duration<S: serde::Serializer>(
    d: &Option<std::time::Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&human_duration(*d)),
        None => s.serialize_none(),
    }
}

pub(crate) fn ser_display<S: serde::Serializer, T: std::fmt::Display>(
    v: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.to_string())
}

#[cfg(test)]
mod tests {
    use super::human_duration;
    use std::time::Duration;

    #[test]
    fn durations_read_as_in_the_mesh_yaml() {
        let ms = Duration::from_millis;
        for (d, want) in [
            (Duration::ZERO, "0s"),
            (ms(250), "250ms"),
            (ms(5000), "5s"),
            (ms(90_000), "1m30s"),
            (ms(3_600_000 + 1500), "1h1s500ms"),
            (Duration::from_micros(1500), "1ms500us"),
            (Duration::from_nanos(7), "7ns"),
        ] {
            assert_eq!(human_duration(d), want, "{d:?}");
        }
    }
}
