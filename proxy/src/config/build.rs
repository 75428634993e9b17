//! Joins the accepted resources into a `MeshSnapshot`: clusters with their endpoints, route tables
//! indexed by host. Endpoint connections are carried over from the previous snapshot when the
//! endpoint (address and identity) is unchanged, so a config update never closes a connection that
//! is still wanted.

use super::decode::{Decoded, EndpointSpec};
use super::{Cluster, ClusterPolicy, Endpoint, MeshSnapshot, RouteTable};
use crate::transport::{MeshConnection, MeshConnector};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use trellis_api::type_url;

/// Accepted resources: type URL -> name -> (version, decoded value).
pub type ResourceCache = BTreeMap<String, BTreeMap<String, (String, Decoded)>>;

pub fn build_snapshot(
    cache: &ResourceCache,
    previous: &MeshSnapshot,
    connector: &MeshConnector,
) -> MeshSnapshot {
    let mut reusable: HashMap<(SocketAddr, &str), Arc<MeshConnection>> = HashMap::new();
    for cluster in previous.clusters.values() {
        for ep in &cluster.endpoints {
            reusable.insert((ep.addr, ep.identity.as_str()), ep.conn.clone());
        }
    }
    let empty = BTreeMap::new();
    let of_type = |t: &str| cache.get(t).unwrap_or(&empty);

    let mut snapshot = MeshSnapshot::default();
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

    let endpoints_of = |name: &str| -> &[EndpointSpec] {
        match of_type(type_url::ENDPOINTS).get(name) {
            Some((_, Decoded::Endpoints(eps))) => eps,
            _ => &[],
        }
    };
    let mut cluster_names: Vec<&String> = of_type(type_url::CLUSTERS).keys().collect();
    cluster_names.extend(of_type(type_url::ENDPOINTS).keys());
    cluster_names.sort();
    cluster_names.dedup();
    for name in cluster_names {
        let policy = match of_type(type_url::CLUSTERS).get(name) {
            Some((_, Decoded::Cluster(p))) => p.clone(),
            _ => ClusterPolicy::default(),
        };
        let endpoints = endpoints_of(name)
            .iter()
            .map(|spec| {
                let conn = reusable
                    .get(&(spec.addr, spec.identity.as_str()))
                    .cloned()
                    .unwrap_or_else(|| connector.connection(spec.addr, &spec.identity));
                Arc::new(Endpoint {
                    addr: spec.addr,
                    identity: spec.identity.clone(),
                    weight: spec.weight,
                    conn,
                })
            })
            .collect();
        snapshot.clusters.insert(
            name.clone(),
            Arc::new(Cluster::new(name.clone(), policy, endpoints)),
        );
    }

    for (name, (_, decoded)) in of_type(type_url::ROUTES) {
        let Decoded::Routes(rc) = decoded else {
            continue;
        };
        let table = Arc::new(RouteTable {
            name: name.clone(),
            hosts: rc.hosts.clone(),
            ports: rc.ports.clone(),
            routes: rc.routes.clone(),
            default_cluster: rc.default_cluster.clone(),
        });
        for host in &rc.hosts {
            snapshot.routes_by_host.insert(host.clone(), table.clone());
        }
        snapshot.routes.insert(name.clone(), table);
    }
    snapshot
}
