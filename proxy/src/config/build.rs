//! Joins the accepted resources into a `MeshSnapshot`: clusters with their endpoints, route tables
//! indexed by host, and the address index of transparent mode (`addresses.rs`). Runtime state is
//! inherited from the previous snapshot: endpoint state (connection, load, outlier) by address and
//! identity, cluster state (breaker, budget, stats) by cluster name, route stats by table and route
//! name. So a config update never closes a connection that is still wanted nor resets a counter.

use super::decode::{Decoded, EndpointSpec, RouteSpec};
use super::{
    AddressIndex, Cluster, ClusterPolicy, ClusterState, Endpoint, EndpointState, LbPolicy,
    MeshSnapshot, RouteRule, RouteTable, ServiceLocator, VirtualService,
};
use crate::balance::{HashRing, Load};
use crate::resilience::outlier::OutlierState;
use crate::telemetry::RouteStats;
use crate::transport::{MeshConnection, MeshConnector};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use trellis_api::type_url;

/// Accepted resources: type URL -> name -> (version, decoded value).
pub type ResourceCache = BTreeMap<String, BTreeMap<String, (String, Decoded)>>;

/// What one accepted response changed in a type's resources, by name: what the apply log says, so
/// that an operator reads "changed hello (v3 → v4)" rather than a bare version.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// (name, old version, new version)
    pub changed: Vec<(String, String, String)>,
}

impl Changes {
    pub fn between<V>(
        before: Option<&BTreeMap<String, (String, V)>>,
        after: &BTreeMap<String, (String, V)>,
    ) -> Changes {
        let empty = BTreeMap::new();
        let before = before.unwrap_or(&empty);
        let mut changes = Changes::default();
        for (name, (version, _)) in after {
            match before.get(name) {
                None => changes.added.push(name.clone()),
                Some((old, _)) if old != version => {
                    changes
                        .changed
                        .push((name.clone(), old.clone(), version.clone()))
                }
                Some(_) => {}
            }
        }
        let gone = before.keys().filter(|n| !after.contains_key(*n));
        changes.removed = gone.cloned().collect();
        changes
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

impl std::fmt::Display for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if !self.added.is_empty() {
            parts.push(format!("added {}", listed(self.added.iter().cloned())));
        }
        if !self.changed.is_empty() {
            let each = (self.changed.iter()).map(|(n, old, new)| format!("{n} ({old} → {new})"));
            parts.push(format!("changed {}", listed(each)));
        }
        if !self.removed.is_empty() {
            parts.push(format!("removed {}", listed(self.removed.iter().cloned())));
        }
        if parts.is_empty() {
            return f.write_str("no change");
        }
        f.write_str(&parts.join("; "))
    }
}

/// Names joined by commas, the first `LISTED` of them: a fleet's first config would otherwise be
/// one log line of thousands of names.
fn listed(names: impl ExactSizeIterator<Item = String>) -> String {
    const LISTED: usize = 20;
    let total = names.len();
    let mut text = names.take(LISTED).collect::<Vec<_>>().join(", ");
    if total > LISTED {
        text.push_str(&format!(" and {} more", total - LISTED));
    }
    text
}

pub fn build_snapshot(
    cache: &ResourceCache,
    previous: &MeshSnapshot,
    connector: &MeshConnector,
) -> MeshSnapshot {
    let empty = BTreeMap::new();
    let of_type = |t: &str| cache.get(t).unwrap_or(&empty);

    let mut snapshot = MeshSnapshot {
        demand: previous.demand.clone(),
        ..MeshSnapshot::default()
    };
    for (t, resources) in cache {
        snapshot.versions.insert(
            t.clone(),
            resources
                .iter()
                .map(|(name, (version, _))| (name.clone(), version.clone()))
                .collect(),
        );
    }
    snapshot.inbound = of_type(type_url::INBOUND)
        .values()
        .find_map(|(_, d)| match d {
            Decoded::Inbound(i) => Some(i.clone()),
            _ => None,
        });
    snapshot.trust = of_type(type_url::TRUST_BUNDLE)
        .values()
        .find_map(|(_, d)| match d {
            Decoded::Trust(t) => Some(t.clone()),
            _ => None,
        });
    snapshot.clusters = build_clusters(
        of_type(type_url::CLUSTERS),
        of_type(type_url::ENDPOINTS),
        previous,
        connector,
    );
    let mut virtual_services = Vec::new();
    for (name, (_, decoded)) in of_type(type_url::ROUTES) {
        let Decoded::Routes(rc) = decoded else {
            continue;
        };
        let table = Arc::new(build_table(name, rc, previous));
        for host in &rc.hosts {
            snapshot.routes_by_host.insert(host.clone(), table.clone());
        }
        snapshot.routes.insert(name.clone(), table);
        if !rc.addresses.is_empty() {
            virtual_services.push(VirtualService {
                name: name.clone(),
                cluster: rc.default_cluster.clone(),
                addresses: rc.addresses.clone(),
                ports: rc
                    .ports
                    .iter()
                    .copied()
                    .zip(rc.target_ports.iter().copied())
                    .collect(),
            });
        }
    }
    snapshot.addresses = AddressIndex::new(&snapshot.clusters, virtual_services);
    snapshot.locator = ServiceLocator::new(of_type(type_url::SERVICE_ADDRESSES));
    snapshot
}

type Resources = BTreeMap<String, (String, Decoded)>;

fn build_clusters(
    clusters: &Resources,
    endpoints: &Resources,
    previous: &MeshSnapshot,
    connector: &MeshConnector,
) -> BTreeMap<String, Arc<Cluster>> {
    // Keyed by address, identity and plaintext-ness: a change of mTLS mode needs a new connection.
    let mut endpoint_states: HashMap<(SocketAddr, &str, bool), Arc<EndpointState>> = HashMap::new();
    for cluster in previous.clusters.values() {
        for ep in &cluster.endpoints {
            let key = (ep.addr, ep.identity.as_str(), ep.plaintext);
            endpoint_states.insert(key, ep.state.clone());
        }
    }
    let mut names: Vec<&String> = clusters.keys().chain(endpoints.keys()).collect();
    names.sort();
    names.dedup();
    let mut out = BTreeMap::new();
    for name in names {
        let policy = match clusters.get(name) {
            Some((_, Decoded::Cluster(p))) => p.clone(),
            _ => ClusterPolicy::default(),
        };
        let specs: &[EndpointSpec] = match endpoints.get(name) {
            Some((_, Decoded::Endpoints(eps))) => eps,
            _ => &[],
        };
        let members: Vec<Arc<Endpoint>> = specs
            .iter()
            .map(|spec| {
                let state = endpoint_states
                    .get(&(spec.addr, spec.identity.as_str(), spec.plaintext))
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(EndpointState {
                            conn: if spec.plaintext {
                                MeshConnection::plain(spec.addr)
                            } else {
                                connector.connection(spec.addr, &spec.identity)
                            },
                            load: Load::default(),
                            outlier: OutlierState::default(),
                        })
                    });
                Arc::new(Endpoint {
                    addr: spec.addr,
                    identity: spec.identity.clone(),
                    weight: spec.weight,
                    plaintext: spec.plaintext,
                    state,
                })
            })
            .collect();
        let state = previous
            .clusters
            .get(name)
            .map(|c| c.state.clone())
            .unwrap_or_else(|| Arc::new(ClusterState::default()));
        let ring = (policy.lb == LbPolicy::ConsistentHash).then(|| HashRing::new(&members));
        out.insert(
            name.clone(),
            Arc::new(Cluster {
                name: name.clone(),
                policy,
                endpoints: members,
                state,
                ring,
            }),
        );
    }
    out
}

fn build_table(name: &str, rc: &super::decode::RouteConfig, previous: &MeshSnapshot) -> RouteTable {
    let old = previous.routes.get(name);
    let stats_of = |route: &str| -> Arc<RouteStats> {
        old.and_then(|t| {
            t.rules
                .iter()
                .chain(std::iter::once(&t.fallback))
                .find(|r| r.name == route)
        })
        .map(|r| r.stats.clone())
        .unwrap_or_default()
    };
    let rule = |spec: &RouteSpec| {
        Arc::new(RouteRule {
            name: spec.name.clone(),
            matcher: spec.matcher.clone(),
            backends: spec.backends.clone(),
            timeout: spec.timeout,
            retry: spec.retry.clone(),
            fault: spec.fault.clone(),
            split: AtomicU64::new(0),
            stats: stats_of(&spec.name),
        })
    };
    RouteTable {
        name: name.to_string(),
        hosts: rc.hosts.clone(),
        ports: rc.ports.clone(),
        rules: rc.routes.iter().map(rule).collect(),
        fallback: Arc::new(RouteRule::catch_all(
            "default".into(),
            rc.default_cluster.clone(),
            stats_of("default"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::Changes;
    use std::collections::BTreeMap;

    fn held(entries: &[(&str, &str)]) -> BTreeMap<String, (String, ())> {
        (entries.iter())
            .map(|(n, v)| (n.to_string(), (v.to_string(), ())))
            .collect()
    }

    #[test]
    fn changes_name_what_was_added_changed_and_removed() {
        let before = held(&[("hello", "3"), ("echo", "1"), ("old", "2")]);
        let after = held(&[("hello", "4"), ("echo", "1"), ("new", "5")]);
        let changes = Changes::between(Some(&before), &after);
        assert_eq!(
            changes.to_string(),
            "added new; changed hello (3 → 4); removed old"
        );
        assert!(Changes::between(Some(&after), &after).is_empty());
        assert_eq!(
            Changes::between(None, &after).to_string(),
            "added echo, hello, new"
        );
        let many: Vec<(String, &str)> = (0..25).map(|i| (format!("s{i:02}"), "1")).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), *v)).collect();
        let text = Changes::between(None, &held(&many)).to_string();
        assert!(text.starts_with("added s00, s01, "), "{text}");
        assert!(text.ends_with(", s19 and 5 more"), "{text}");
    }
}
