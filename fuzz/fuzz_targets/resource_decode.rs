//! The proxy's decoders for discovery resources (`proxy/src/config/decode.rs`,
//! `proxy/src/authz/decode.rs`): each type as arbitrary bytes (prost's reading and what survives
//! it) and as structured messages built from `arbitrary` (so that the inputs reach our
//! validation). Whatever is accepted is joined into a snapshot twice, the second time inheriting
//! from the first, as discovery does on every update. Accepted values keep the promises the
//! decoder makes: endpoint ports and weights are never 0, hosts are lower case.
#![no_main]

use libfuzzer_sys::{arbitrary, fuzz_target};
use prost::Message;
use std::collections::BTreeMap;
use trellis_api::discovery::Resource;
use trellis_api::type_url;
use trellis_fuzz as gen;
use trellis_proxy::config::{build_snapshot, decode, Decoded, MeshSnapshot, ResourceCache};
use trellis_proxy::tls::TlsContext;
use trellis_proxy::transport::MeshConnector;

#[derive(arbitrary::Arbitrary, Debug)]
enum Item {
    Bytes {
        kind: u8,
        payload: Vec<u8>,
    },
    Inbound(gen::Inbound),
    Routes(gen::RouteConfig),
    Cluster(gen::Cluster),
    Endpoints(gen::Endpoints),
    Trust {
        trust_domain: String,
        roots: Vec<Vec<u8>>,
    },
}

impl Item {
    fn encode(&self) -> (&'static str, Vec<u8>) {
        match self {
            Item::Bytes { kind, payload } => (
                type_url::ALL[*kind as usize % type_url::ALL.len()],
                payload.clone(),
            ),
            Item::Inbound(m) => (type_url::INBOUND, m.to_pb().encode_to_vec()),
            Item::Routes(m) => (type_url::ROUTES, m.to_pb().encode_to_vec()),
            Item::Cluster(m) => (type_url::CLUSTERS, m.to_pb().encode_to_vec()),
            Item::Endpoints(m) => (type_url::ENDPOINTS, m.to_pb().encode_to_vec()),
            Item::Trust {
                trust_domain,
                roots,
            } => {
                let msg = trellis_api::config::TrustBundle {
                    trust_domain: trust_domain.clone(),
                    roots_der: roots.clone(),
                };
                (type_url::TRUST_BUNDLE, msg.encode_to_vec())
            }
        }
    }
}

fn check_promises(decoded: &Decoded) {
    match decoded {
        Decoded::Endpoints(eps) => {
            for e in eps {
                assert_ne!(e.addr.port(), 0);
                assert!(e.weight >= 1);
                assert!(e.identity.starts_with("spiffe://"));
            }
        }
        Decoded::Routes(rc) => {
            assert!(!rc.hosts.is_empty());
            for h in &rc.hosts {
                assert_eq!(*h, h.to_ascii_lowercase());
            }
            for r in &rc.routes {
                assert!(!r.backends.is_empty());
            }
        }
        Decoded::Inbound(inbound) => {
            for p in &inbound.ports {
                assert!(p.port != 0 && p.target_port != 0);
            }
        }
        Decoded::Addresses(a) => {
            assert!(a.ports.iter().all(|p| *p != 0));
        }
        Decoded::Cluster(_) | Decoded::Trust(_) => {}
    }
}

fuzz_target!(|items: Vec<Item>| {
    let mut cache: ResourceCache = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        let (type_url, payload) = item.encode();
        let name = format!("default/r{}", i % 3);
        let resource = Resource {
            name: name.clone(),
            version: i.to_string(),
            payload,
        };
        match decode(type_url, &resource) {
            Ok(decoded) => {
                check_promises(&decoded);
                (cache.entry(type_url.to_string()).or_default())
                    .insert(name, (resource.version, decoded));
            }
            Err(e) => {
                assert_eq!(e.type_url, type_url);
                assert_eq!(e.name, name);
            }
        }
    }
    if cache.is_empty() {
        return;
    }
    let connector = MeshConnector::new(TlsContext::default());
    let first = build_snapshot(&cache, &MeshSnapshot::default(), &connector);
    let second = build_snapshot(&cache, &first, &connector);
    for (name, cluster) in &second.clusters {
        let before = first
            .clusters
            .get(name)
            .expect("same resources, same clusters");
        assert!(
            std::sync::Arc::ptr_eq(&cluster.state, &before.state),
            "an update keeps a cluster's runtime state"
        );
    }
});
