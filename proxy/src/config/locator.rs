//! Which service an original destination belongs to, from every service's `ServiceAddresses`:
//! what transparent mode on demand holds of the whole mesh. The address index (`addresses.rs`)
//! places a destination only among the services the sidecar holds; a destination it cannot
//! place is looked up here, and if a service not held yet owns it the connection waits for that
//! service's subscription (`listeners::transparent`) instead of passing through as outside the
//! mesh. Built once with each snapshot: a lookup is a few hash probes.

use super::decode::{Decoded, ServiceAddresses};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// How a destination matched a service: the precedence is the address index's (an endpoint's
/// address or a virtual address on one of the service's ports, before another port of a pod).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Located<'a> {
    /// An endpoint's address, or a virtual address on one of the service's ports.
    Exact(&'a str),
    /// Another port of a pod that is one of the service's endpoints.
    Pod(&'a str),
}

/// A service reached at a virtual address, with its ports there (empty: any).
type AtVirtual = (Arc<str>, Vec<u16>);

#[derive(Debug, Default)]
pub struct ServiceLocator {
    /// Endpoint address -> service (the first by name wins a shared address).
    endpoints: HashMap<SocketAddr, Arc<str>>,
    /// Virtual IP -> (service, its ports; empty: any), in name order.
    virtuals: HashMap<IpAddr, Vec<AtVirtual>>,
    /// Endpoint IP -> the first service by name with an endpoint there.
    pods: HashMap<IpAddr, Arc<str>>,
}

impl ServiceLocator {
    /// Indexes the held `ServiceAddresses` resources (name -> (version, decoded)).
    pub fn new(held: &BTreeMap<String, (String, Decoded)>) -> ServiceLocator {
        let mut index = ServiceLocator::default();
        for (name, (_, decoded)) in held {
            let Decoded::Addresses(ServiceAddresses {
                addresses,
                ports,
                endpoints,
            }) = decoded
            else {
                continue;
            };
            let name: Arc<str> = name.as_str().into();
            for addr in endpoints {
                index.endpoints.entry(*addr).or_insert_with(|| name.clone());
                index.pods.entry(addr.ip()).or_insert_with(|| name.clone());
            }
            for ip in addresses {
                let at = index.virtuals.entry(*ip).or_default();
                if !at.iter().any(|(n, _)| *n == name) {
                    at.push((name.clone(), ports.clone()));
                }
            }
        }
        index
    }

    /// The service `dst` belongs to; `None` outside the mesh and for a virtual address on a port
    /// none of its services has (which passes through, as with every service held).
    pub fn locate(&self, dst: SocketAddr) -> Option<Located<'_>> {
        if let Some(name) = self.endpoints.get(&dst) {
            return Some(Located::Exact(name));
        }
        if let Some(at) = self.virtuals.get(&dst.ip()) {
            let on_port = at
                .iter()
                .find(|(_, ports)| ports.is_empty() || ports.contains(&dst.port()));
            return on_port.map(|(name, _)| Located::Exact(name));
        }
        self.pods.get(&dst.ip()).map(|name| Located::Pod(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, virtual addresses, ports, endpoints)
    type Spec<'a> = (&'a str, &'a [&'a str], &'a [u16], &'a [&'a str]);

    fn held(services: &[Spec<'_>]) -> BTreeMap<String, (String, Decoded)> {
        (services.iter())
            .map(|(name, addresses, ports, endpoints)| {
                let decoded = Decoded::Addresses(ServiceAddresses {
                    addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
                    ports: ports.to_vec(),
                    endpoints: endpoints.iter().map(|a| a.parse().unwrap()).collect(),
                });
                (name.to_string(), ("v1".to_string(), decoded))
            })
            .collect()
    }

    #[test]
    fn endpoints_then_virtual_ports_then_pods() {
        let locator = ServiceLocator::new(&held(&[
            (
                "default/web",
                &["10.96.0.10"],
                &[80, 443],
                &["10.1.0.5:8080"],
            ),
            ("default/any", &["10.96.0.20"], &[], &["10.1.0.6:9090"]),
            ("shop/cart", &[], &[8080], &["10.1.0.5:7070"]),
        ]));
        let at = |dst: &str| locator.locate(dst.parse().unwrap());
        assert_eq!(at("10.1.0.5:8080"), Some(Located::Exact("default/web")));
        assert_eq!(at("10.1.0.5:7070"), Some(Located::Exact("shop/cart")));
        assert_eq!(at("10.96.0.10:443"), Some(Located::Exact("default/web")));
        assert_eq!(at("10.96.0.20:1234"), Some(Located::Exact("default/any")));
        // A virtual address on a port its service does not have: not the mesh's to place.
        assert_eq!(at("10.96.0.10:25"), None);
        // Another port of a pod: the first service by name with an endpoint on that pod.
        assert_eq!(at("10.1.0.5:2525"), Some(Located::Pod("default/web")));
        assert_eq!(at("10.1.0.7:8080"), None);
        let nothing = ServiceLocator::new(&BTreeMap::new());
        assert_eq!(nothing.locate("10.1.0.5:8080".parse().unwrap()), None);
    }

    #[test]
    fn two_services_at_one_virtual_address_are_told_apart_by_port() {
        let locator = ServiceLocator::new(&held(&[
            ("default/a", &["10.96.0.10"], &[443], &[]),
            ("default/b", &["10.96.0.10"], &[80], &[]),
        ]));
        let at = |dst: &str| locator.locate(dst.parse().unwrap());
        assert_eq!(at("10.96.0.10:80"), Some(Located::Exact("default/b")));
        assert_eq!(at("10.96.0.10:443"), Some(Located::Exact("default/a")));
    }
}
