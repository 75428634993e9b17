//! What each simulated proxy subscribes to, per type, named as `proxy/src/discovery/
//! subscriptions.rs` names them, and from those lists which proxies a push must reach. The
//! expected receivers of a push are derived from the very lists the proxies send, not from a
//! second formula that could drift from them (with `--transparent` every proxy holds every
//! service's addresses, so every proxy receives an endpoint move).

use super::{service_name, NAMESPACE};
use trellis_api::discovery::Node;
use trellis_api::type_url;

/// Resource types on a stream.
pub const TYPES: usize = type_url::ALL.len();

/// Names per type, in `type_url::ALL` order.
pub type Subscriptions = [Vec<String>; TYPES];

/// The index of a type URL in `type_url::ALL` (bit `1 << index` in a type mask).
pub fn type_index(t: &str) -> Option<usize> {
    type_url::ALL.iter().position(|u| *u == t)
}

/// What a push round changes (`fleet::mesh_yaml` moves one endpoint of one service): the
/// service's `Endpoints` and, since it lists every endpoint's address, its `ServiceAddresses`
/// (`service_addresses` in control-plane/src/resources.rs). Its routes and cluster do not change.
pub const MOVED_ENDPOINT_CHANGES: [&str; 2] = [type_url::ENDPOINTS, type_url::SERVICE_ADDRESSES];

/// How the fleet's proxies subscribe.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub services: usize,
    /// K services by name per proxy (on-demand mode); `None`: the wildcard mode.
    pub on_demand: Option<usize>,
    /// A transparent sidecar on demand: every service's addresses with the wildcard as well.
    pub transparent: bool,
}

impl Plan {
    /// The services proxy `index` calls on demand: the K after its own (modulo the mesh), all of
    /// them when K ≥ the mesh.
    pub fn called(&self, index: usize, k: usize) -> Vec<usize> {
        (1..=k.min(self.services))
            .map(|d| (index + d) % self.services)
            .collect()
    }

    /// What a sidecar subscribes to: its own inbound config (`<namespace>/<service>`) and the
    /// trust bundle (`default`) by name; routes, clusters and endpoints with the wildcard, or on
    /// demand by the names `<namespace>/<service>` of the services its app calls (services here
    /// have no backends besides themselves); service addresses with the wildcard in transparent
    /// mode on demand, an empty list otherwise (the first answer still comes, empty). A sidecar
    /// adds the called services as its app calls them; the fleet opens with the set, as a
    /// sidecar's stream does on a reconnect, which holds the same subscriptions.
    pub fn subscriptions(&self, node: &Node, index: usize) -> Subscriptions {
        let by_name = |k: usize| -> Vec<String> {
            let mut names: Vec<String> = (self.called(index, k).into_iter())
                .map(|s| format!("{NAMESPACE}/{}", service_name(s)))
                .collect();
            names.sort();
            names
        };
        type_url::ALL.map(|t| match (t, self.on_demand) {
            (type_url::INBOUND, _) => vec![format!("{}/{}", node.namespace, node.service)],
            (type_url::TRUST_BUNDLE, _) => vec!["default".to_owned()],
            (type_url::SERVICE_ADDRESSES, Some(_)) if self.transparent => {
                vec![trellis_api::WILDCARD.to_owned()]
            }
            (type_url::SERVICE_ADDRESSES, _) => Vec::new(),
            (_, None) => vec![trellis_api::WILDCARD.to_owned()],
            (_, Some(k)) => by_name(k),
        })
    }
}

/// The types among `changed` whose resource `name` a proxy subscribed with `subs` holds, as a
/// mask of bits `1 << type_index`: the responses it must receive for the change (0: none).
pub fn expected_mask(subs: &Subscriptions, changed: &[&str], name: &str) -> u32 {
    (changed.iter())
        .filter_map(|t| type_index(t))
        .filter(|i| (subs[*i].iter()).any(|n| n == name || n.as_str() == trellis_api::WILDCARD))
        .fold(0, |mask, i| mask | 1 << i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(i: usize) -> Node {
        Node {
            namespace: NAMESPACE.into(),
            service: service_name(i % 10),
            ..Default::default()
        }
    }

    fn of(subs: &Subscriptions, t: &str) -> Vec<String> {
        subs[type_index(t).expect("a known type")].clone()
    }

    fn plan(on_demand: Option<usize>, transparent: bool) -> Plan {
        Plan {
            services: 10,
            on_demand,
            transparent,
        }
    }

    const PER_SERVICE: [&str; 3] = [type_url::ROUTES, type_url::CLUSTERS, type_url::ENDPOINTS];

    #[test]
    fn every_type_is_subscribed_in_order() {
        assert_eq!(TYPES, 6);
        for p in [plan(None, false), plan(Some(3), false), plan(Some(3), true)] {
            let subs = p.subscriptions(&node(8), 8);
            assert_eq!(subs.len(), type_url::ALL.len());
            assert_eq!(of(&subs, type_url::INBOUND), ["default/svc-0008"]);
            assert_eq!(of(&subs, type_url::TRUST_BUNDLE), ["default"]);
        }
    }

    #[test]
    fn on_demand_proxies_name_the_k_services_after_their_own() {
        let names = ["default/svc-0000", "default/svc-0001", "default/svc-0009"];
        for transparent in [false, true] {
            let subs = plan(Some(3), transparent).subscriptions(&node(8), 8);
            for t in PER_SERVICE {
                assert_eq!(of(&subs, t), names, "{t}");
            }
        }
        let wildcard = plan(None, false).subscriptions(&node(8), 8);
        for t in PER_SERVICE {
            assert_eq!(of(&wildcard, t), [trellis_api::WILDCARD], "{t}");
        }
        // K beyond the mesh: every service, once.
        assert_eq!(plan(Some(12), false).called(2, 12).len(), 10);
        let few = Plan {
            services: 4,
            on_demand: Some(9),
            transparent: false,
        };
        assert_eq!(few.called(2, 9), [3, 0, 1, 2]);
    }

    #[test]
    fn service_addresses_are_held_only_by_transparent_proxies_on_demand() {
        let addresses = |p: Plan| of(&p.subscriptions(&node(8), 8), type_url::SERVICE_ADDRESSES);
        // Empty, as a real sidecar's first request for the type is: subscribed to nothing.
        assert!(addresses(plan(None, false)).is_empty());
        assert!(addresses(plan(None, true)).is_empty());
        assert!(addresses(plan(Some(3), false)).is_empty());
        assert_eq!(addresses(plan(Some(3), true)), [trellis_api::WILDCARD]);
    }

    #[test]
    fn a_moved_endpoint_reaches_who_holds_either_resource() {
        let endpoints = 1 << type_index(type_url::ENDPOINTS).expect("endpoints");
        let addresses = 1 << type_index(type_url::SERVICE_ADDRESSES).expect("addresses");
        let receivers = |p: Plan, service: usize| -> Vec<u32> {
            let name = format!("default/{}", service_name(service));
            (0..100)
                .map(|i| {
                    expected_mask(
                        &p.subscriptions(&node(i), i),
                        &MOVED_ENDPOINT_CHANGES,
                        &name,
                    )
                })
                .collect()
        };
        for service in 0..10 {
            // Wildcard: everyone gets the endpoints, nobody holds addresses.
            assert!(receivers(plan(None, false), service)
                .iter()
                .all(|m| *m == endpoints));
            // On demand: the endpoints to the 3 of every 10 proxies that call the service.
            let on_demand = receivers(plan(Some(3), false), service);
            assert_eq!(on_demand.iter().filter(|m| **m == endpoints).count(), 30);
            assert_eq!(on_demand.iter().filter(|m| **m == 0).count(), 70);
            for (i, m) in on_demand.iter().enumerate() {
                let calls = plan(Some(3), false).called(i, 3).contains(&service);
                assert_eq!(*m != 0, calls, "proxy {i}, service {service}");
            }
            // Transparent on demand: the addresses to every proxy, the endpoints to the 30 too.
            let transparent = receivers(plan(Some(3), true), service);
            assert!(transparent.iter().all(|m| m & addresses != 0));
            let both = transparent.iter().filter(|m| **m == endpoints | addresses);
            assert_eq!(both.count(), 30);
        }
    }
}
