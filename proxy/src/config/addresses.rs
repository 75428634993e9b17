//! The index transparent mode classifies original destinations with: endpoint addresses, the pods
//! behind them, and services' virtual addresses (Kubernetes ClusterIPs). Built once with each
//! snapshot, so that classifying a connection costs a few hash lookups however big the mesh is.

use super::{Cluster, Endpoint};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// A service as reached at its virtual addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VirtualService {
    /// The route config's name, `<namespace>/<service>`.
    pub name: String,
    /// Where connections to the service go: its route config's default cluster.
    pub cluster: String,
    #[serde(skip)]
    pub addresses: Vec<IpAddr>,
    /// (service port, target port). Empty: every port, each its own target (a route config
    /// without ports answers for any port).
    pub ports: Vec<(u16, u16)>,
}

impl VirtualService {
    /// The target port behind service port `port`, if the service has that port.
    fn target_port(&self, port: u16) -> Option<u16> {
        if self.ports.is_empty() {
            return Some(port);
        }
        (self.ports.iter()).find_map(|&(p, target)| (p == port).then_some(target))
    }
}

/// What a destination on a virtual address is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VirtualMatch<'a> {
    /// One of the service's ports, with the port its workloads listen on behind it.
    Port {
        service: &'a Arc<VirtualService>,
        target_port: u16,
    },
    /// A virtual address, but no service there has this port.
    NoSuchPort,
}

#[derive(Debug, Default)]
pub struct AddressIndex {
    /// Endpoint address -> (cluster, endpoint); the first cluster by name wins a shared address.
    endpoints: HashMap<SocketAddr, (String, Arc<Endpoint>)>,
    /// Endpoint IP -> the first endpoint with that IP (the pod's).
    pods: HashMap<IpAddr, Arc<Endpoint>>,
    /// Virtual IP -> the services reached at it (one, unless a config gives two the same IP on
    /// different ports), in name order.
    services: HashMap<IpAddr, Vec<Arc<VirtualService>>>,
}

impl AddressIndex {
    pub fn new(
        clusters: &BTreeMap<String, Arc<Cluster>>,
        services: impl IntoIterator<Item = VirtualService>,
    ) -> AddressIndex {
        let mut index = AddressIndex::default();
        for (name, cluster) in clusters {
            for endpoint in &cluster.endpoints {
                (index.endpoints.entry(endpoint.addr))
                    .or_insert_with(|| (name.clone(), endpoint.clone()));
                (index.pods.entry(endpoint.addr.ip())).or_insert_with(|| endpoint.clone());
            }
        }
        for service in services {
            let service = Arc::new(service);
            for ip in &service.addresses {
                let at = index.services.entry(*ip).or_default();
                if !at.iter().any(|s| Arc::ptr_eq(s, &service)) {
                    at.push(service.clone());
                }
            }
        }
        for at in index.services.values_mut() {
            at.sort_by(|a, b| a.name.cmp(&b.name));
        }
        index
    }

    /// The cluster and endpoint whose address is `dst`.
    pub fn endpoint(&self, dst: SocketAddr) -> Option<(&str, &Arc<Endpoint>)> {
        (self.endpoints.get(&dst)).map(|(cluster, endpoint)| (cluster.as_str(), endpoint))
    }

    /// An endpoint on the pod with IP `ip`.
    pub fn pod(&self, ip: IpAddr) -> Option<&Arc<Endpoint>> {
        self.pods.get(&ip)
    }

    /// The service whose virtual address and port `dst` is; `None` when its IP is no virtual
    /// address.
    pub fn service(&self, dst: SocketAddr) -> Option<VirtualMatch<'_>> {
        let at = self.services.get(&dst.ip())?;
        let found = at.iter().find_map(|service| {
            let target_port = service.target_port(dst.port())?;
            Some(VirtualMatch::Port {
                service,
                target_port,
            })
        });
        Some(found.unwrap_or(VirtualMatch::NoSuchPort))
    }
}

/// For `/config`: each virtual address with the services at it, sorted.
impl Serialize for AddressIndex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let sorted: BTreeMap<IpAddr, &Vec<Arc<VirtualService>>> =
            self.services.iter().map(|(ip, at)| (*ip, at)).collect();
        sorted.serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::tests_support::cluster;
    use crate::config::LbPolicy;

    fn service(name: &str, addresses: &[&str], ports: &[(u16, u16)]) -> VirtualService {
        VirtualService {
            name: name.into(),
            cluster: name.into(),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            ports: ports.to_vec(),
        }
    }

    #[test]
    fn virtual_addresses_resolve_by_ip_and_port() {
        let index = AddressIndex::new(
            &BTreeMap::new(),
            [
                service(
                    "default/web",
                    &["10.96.0.10", "fd00::10"],
                    &[(80, 8080), (25, 2525)],
                ),
                service("default/any", &["10.96.0.20"], &[]),
            ],
        );
        let at = |dst: &str| index.service(dst.parse().unwrap());
        for dst in ["10.96.0.10:80", "[fd00::10]:80"] {
            match at(dst) {
                Some(VirtualMatch::Port {
                    service,
                    target_port,
                }) => {
                    assert_eq!(
                        (service.cluster.as_str(), target_port),
                        ("default/web", 8080)
                    );
                }
                other => panic!("{dst}: {other:?}"),
            }
        }
        assert!(matches!(
            at("10.96.0.10:25"),
            Some(VirtualMatch::Port {
                target_port: 2525,
                ..
            })
        ));
        assert_eq!(at("10.96.0.10:8080"), Some(VirtualMatch::NoSuchPort));
        assert!(matches!(
            at("10.96.0.20:7000"),
            Some(VirtualMatch::Port {
                target_port: 7000,
                ..
            })
        ));
        assert_eq!(at("10.96.0.11:80"), None);
    }

    #[test]
    fn two_services_on_one_address_are_told_apart_by_port() {
        let index = AddressIndex::new(
            &BTreeMap::new(),
            [
                service("default/b", &["10.96.0.10"], &[(80, 8080)]),
                service("default/a", &["10.96.0.10"], &[(443, 8443)]),
            ],
        );
        let cluster_at = |dst: &str| match index.service(dst.parse().unwrap()) {
            Some(VirtualMatch::Port { service, .. }) => service.cluster.clone(),
            other => panic!("{dst}: {other:?}"),
        };
        assert_eq!(cluster_at("10.96.0.10:80"), "default/b");
        assert_eq!(cluster_at("10.96.0.10:443"), "default/a");
    }

    #[test]
    fn endpoints_and_pods_are_indexed_first_cluster_wins() {
        let mut clusters = BTreeMap::new();
        clusters.insert("a".to_string(), cluster(LbPolicy::RoundRobin, &[1]));
        clusters.insert("b".to_string(), cluster(LbPolicy::RoundRobin, &[1, 1]));
        let index = AddressIndex::new(&clusters, []);
        // Both clusters have 127.0.0.1:1000; only b has :1001.
        let dst: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let (name, endpoint) = index.endpoint(dst).expect("an endpoint");
        assert_eq!((name, endpoint.addr), ("a", dst));
        assert_eq!(
            index
                .endpoint("127.0.0.1:1001".parse().unwrap())
                .map(|(n, _)| n),
            Some("b")
        );
        assert!(index.endpoint("127.0.0.1:1002".parse().unwrap()).is_none());
        assert!(index.pod("127.0.0.1".parse().unwrap()).is_some());
        assert!(index.pod("127.0.0.2".parse().unwrap()).is_none());
        assert!(index.service(dst).is_none());
    }
}
