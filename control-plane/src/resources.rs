//! Turns a validated mesh config into the discovery resources proxies consume: one `Snapshot`
//! holding every resource of every type, each with a content-derived version so that an unchanged
//! resource keeps its version across reloads and is never resent.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use trellis_api::config as pb;
use trellis_api::type_url;

use crate::config::{LoadBalancer, MeshConfig, MtlsMode, Protocol, Service};
use crate::files::hex;

/// One encoded resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// Hex of the first 8 bytes of the payload's SHA-256.
    pub version: String,
    /// The prost encoding of the type's message.
    pub payload: Vec<u8>,
}

impl Resource {
    pub fn new(message: &impl Message) -> Resource {
        let payload = message.encode_to_vec();
        let digest = ring::digest::digest(&ring::digest::SHA256, &payload);
        Resource {
            version: hex(&digest.as_ref()[..8]),
            payload,
        }
    }
}

/// Every resource the control plane serves, as of one config version.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Increases by one with every applied config.
    pub system_version: u64,
    /// From the config, for the identity service and the discovery authentication.
    pub trust_domain: String,
    pub certificate_lifetime: Duration,
    /// Type URL -> resource name -> resource; every type in `type_url::ALL` is present.
    pub resources: BTreeMap<&'static str, BTreeMap<String, Resource>>,
}

impl Snapshot {
    /// The resources of one type; empty for unknown types.
    pub fn of_type(&self, type_url: &str) -> Option<&BTreeMap<String, Resource>> {
        self.resources.get(type_url)
    }
}

/// Shared, immutable snapshot as published to the stream tasks.
pub type SharedSnapshot = Arc<Snapshot>;

/// Builds the snapshot for `config`, trusting `roots_der`.
pub fn build(config: &MeshConfig, roots_der: &[Vec<u8>], system_version: u64) -> Snapshot {
    let mut resources: BTreeMap<&'static str, BTreeMap<String, Resource>> = type_url::ALL
        .iter()
        .map(|t| (*t, BTreeMap::new()))
        .collect();
    let mut put = |type_url: &'static str, name: String, resource: Resource| {
        resources
            .entry(type_url)
            .or_default()
            .insert(name, resource);
    };
    put(
        type_url::TRUST_BUNDLE,
        "default".to_owned(),
        Resource::new(&pb::TrustBundle {
            trust_domain: config.trust_domain.clone(),
            roots_der: roots_der.to_vec(),
        }),
    );
    for service in &config.services {
        let name = format!("{}/{}", service.namespace, service.name);
        put(
            type_url::INBOUND,
            name.clone(),
            Resource::new(&inbound(service)),
        );
        put(
            type_url::ROUTES,
            name.clone(),
            Resource::new(&routes(config, service, &name)),
        );
        put(
            type_url::CLUSTERS,
            name.clone(),
            Resource::new(&cluster(service, &name)),
        );
        put(
            type_url::ENDPOINTS,
            name.clone(),
            Resource::new(&endpoints(config, service, &name)),
        );
    }
    Snapshot {
        system_version,
        trust_domain: config.trust_domain.clone(),
        certificate_lifetime: config.certificate_lifetime,
        resources,
    }
}

fn inbound(service: &Service) -> pb::InboundConfig {
    let mtls_mode = match service.mtls {
        MtlsMode::Strict => pb::MtlsMode::Strict,
        MtlsMode::Permissive => pb::MtlsMode::Permissive,
        MtlsMode::Disabled => pb::MtlsMode::Disabled,
    };
    pb::InboundConfig {
        ports: (service.ports.iter())
            .map(|p| pb::AppPort {
                port: p.port.into(),
                target_port: p.target_port.into(),
                protocol: match p.protocol {
                    Protocol::Http1 => pb::AppProtocol::Http1,
                    Protocol::H2c => pb::AppProtocol::H2c,
                } as i32,
            })
            .collect(),
        mtls_mode: mtls_mode as i32,
    }
}

fn routes(config: &MeshConfig, service: &Service, cluster: &str) -> pb::RouteConfig {
    let (n, ns) = (&service.name, &service.namespace);
    pb::RouteConfig {
        hosts: vec![
            n.clone(),
            format!("{n}.{ns}"),
            format!("{n}.{ns}.svc"),
            format!("{n}.{ns}.svc.{}", config.cluster_domain),
        ],
        ports: service.ports.iter().map(|p| p.port.into()).collect(),
        routes: (service.routes.iter())
            .map(|r| pb::Route {
                name: r.name.clone(),
                path_prefix: r.path_prefix.clone(),
                cluster: cluster.to_owned(),
                timeout_ms: r.timeout.map_or(0, millis),
            })
            .collect(),
        default_cluster: cluster.to_owned(),
    }
}

fn cluster(service: &Service, name: &str) -> pb::Cluster {
    let lb = match service.policy.load_balancer {
        LoadBalancer::RoundRobin => pb::LbPolicy::RoundRobin,
        LoadBalancer::P2cEwma => pb::LbPolicy::P2cEwma,
        LoadBalancer::LeastRequest => pb::LbPolicy::LeastRequest,
        LoadBalancer::ConsistentHash => pb::LbPolicy::ConsistentHash,
    };
    pb::Cluster {
        name: name.to_owned(),
        lb_policy: lb as i32,
        connect_timeout_ms: millis(service.policy.connect_timeout),
        request_timeout_ms: millis(service.policy.request_timeout),
        ..Default::default()
    }
}

fn endpoints(config: &MeshConfig, service: &Service, name: &str) -> pb::Endpoints {
    let identity = trellis_api::spiffe_id(
        &config.trust_domain,
        &service.namespace,
        &service.service_account,
    );
    pb::Endpoints {
        cluster: name.to_owned(),
        endpoints: (service.endpoints.iter())
            .map(|e| pb::Endpoint {
                address: e.address.to_string(),
                identity: identity.clone(),
                weight: e.weight,
            })
            .collect(),
    }
}

/// Durations in config are bounded far below u64 milliseconds; saturate rather than wrap anyway.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    const MESH: &str = "\
services:
  - name: hello
    ports: [{port: 80, targetPort: 8081}]
    endpoints: [{address: 127.0.0.1:4143}]
    routes: [{name: api, pathPrefix: /api, timeout: 5s}]
  - name: web
    namespace: shop
    serviceAccount: web-sa
    ports: [{port: 8080, protocol: h2c}]
";

    fn snapshot(text: &str) -> Snapshot {
        build(&parse("mesh.yaml", text).unwrap(), &[vec![1, 2, 3]], 1)
    }

    #[test]
    fn builds_every_type_with_expected_names() {
        let snap = snapshot(MESH);
        for t in type_url::ALL {
            assert!(snap.of_type(t).is_some(), "{t}");
        }
        let names: Vec<_> = snap
            .of_type(type_url::ENDPOINTS)
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(names, ["default/hello", "shop/web"]);
        assert!(snap
            .of_type(type_url::TRUST_BUNDLE)
            .unwrap()
            .contains_key("default"));

        let routes = &snap.of_type(type_url::ROUTES).unwrap()["default/hello"];
        let routes = pb::RouteConfig::decode(routes.payload.as_slice()).unwrap();
        assert_eq!(
            routes.hosts,
            [
                "hello",
                "hello.default",
                "hello.default.svc",
                "hello.default.svc.cluster.local"
            ]
        );
        assert_eq!(routes.ports, [80]);
        assert_eq!(routes.routes[0].timeout_ms, 5000);
        assert_eq!(routes.routes[0].cluster, "default/hello");
        assert_eq!(routes.default_cluster, "default/hello");

        let eps = &snap.of_type(type_url::ENDPOINTS).unwrap()["shop/web"];
        let eps = pb::Endpoints::decode(eps.payload.as_slice()).unwrap();
        assert!(eps.endpoints.is_empty());
        let eps = &snap.of_type(type_url::ENDPOINTS).unwrap()["default/hello"];
        let eps = pb::Endpoints::decode(eps.payload.as_slice()).unwrap();
        assert_eq!(
            eps.endpoints[0].identity,
            "spiffe://trellis.local/ns/default/sa/hello"
        );
        assert_eq!(eps.endpoints[0].weight, 1);

        let cluster = &snap.of_type(type_url::CLUSTERS).unwrap()["default/hello"];
        let cluster = pb::Cluster::decode(cluster.payload.as_slice()).unwrap();
        assert_eq!(cluster.lb_policy, pb::LbPolicy::P2cEwma as i32);
        assert_eq!(
            (cluster.connect_timeout_ms, cluster.request_timeout_ms),
            (1000, 15000)
        );
    }

    #[test]
    fn versions_are_stable_and_follow_content() {
        let a = snapshot(MESH);
        let b = snapshot(MESH);
        assert_eq!(a.resources, b.resources);
        let changed = snapshot(&MESH.replace("127.0.0.1:4143", "127.0.0.2:4143"));
        let eps = |s: &Snapshot| {
            s.of_type(type_url::ENDPOINTS).unwrap()["default/hello"]
                .version
                .clone()
        };
        let cl = |s: &Snapshot| {
            s.of_type(type_url::CLUSTERS).unwrap()["default/hello"]
                .version
                .clone()
        };
        assert_ne!(eps(&a), eps(&changed));
        assert_eq!(cl(&a), cl(&changed));
        assert_eq!(eps(&a).len(), 16);
    }
}
