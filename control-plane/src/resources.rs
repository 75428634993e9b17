//! Turns a validated mesh config into the discovery resources proxies consume: one `Snapshot`
//! holding every resource of every type, each with a content-derived version so that an unchanged
//! resource keeps its version across reloads and is never resent.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use trellis_api::config as pb;
use trellis_api::type_url;

use crate::config::{
    HashOn, HeaderValueMatch, LoadBalancer, MeshConfig, MtlsMode, PathMatch, Protocol, Retry,
    Route, Service,
};
use crate::files::hex;

mod authz;

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
            roots_der: trust_roots(config, roots_der),
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
        put(
            type_url::SERVICE_ADDRESSES,
            name,
            Resource::new(&service_addresses(service)),
        );
    }
    Snapshot {
        system_version,
        trust_domain: config.trust_domain.clone(),
        certificate_lifetime: config.certificate_lifetime,
        resources,
    }
}

/// The CA's roots, then the config's extra roots (CA rotation), without repeats.
fn trust_roots(config: &MeshConfig, ca_roots: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut roots = ca_roots.to_vec();
    for extra in &config.trust.extra_roots_der {
        if !roots.contains(extra) {
            roots.push(extra.clone());
        }
    }
    roots
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
        authorization: service.authorization.as_ref().map(authz::authorization),
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
        routes: service.routes.iter().map(route).collect(),
        default_cluster: cluster.to_owned(),
        addresses: service.addresses.iter().map(|ip| ip.to_string()).collect(),
        target_ports: (service.ports.iter())
            .map(|p| p.target_port.into())
            .collect(),
    }
}

fn route(r: &Route) -> pb::Route {
    use pb::header_match::Value;
    use pb::route_match::Path;
    let m = &r.r#match;
    pb::Route {
        name: r.name.clone(),
        r#match: Some(pb::RouteMatch {
            path: m.path.as_ref().map(|p| match p {
                PathMatch::Exact(s) => Path::Exact(s.clone()),
                PathMatch::Prefix(s) => Path::Prefix(s.clone()),
                PathMatch::Regex(s) => Path::Regex(s.clone()),
            }),
            method: m.method.clone().unwrap_or_default(),
            headers: (m.headers.iter())
                .map(|h| pb::HeaderMatch {
                    name: h.name.clone(),
                    value: Some(match &h.value {
                        HeaderValueMatch::Exact(s) => Value::Exact(s.clone()),
                        HeaderValueMatch::Prefix(s) => Value::Prefix(s.clone()),
                        HeaderValueMatch::Regex(s) => Value::Regex(s.clone()),
                        HeaderValueMatch::Present(b) => Value::Present(*b),
                    }),
                })
                .collect(),
        }),
        backends: (r.backends.iter())
            .map(|b| pb::WeightedBackend {
                cluster: b.cluster(),
                weight: b.weight,
            })
            .collect(),
        timeout_ms: r.timeout.map_or(0, millis),
        retry: r.retry.as_ref().map(retry),
        fault: r.fault.map(|f| pb::FaultInjection {
            delay_ms: f.delay.map_or(0, |d| millis(d.duration)),
            delay_permille: f.delay.map_or(0, |d| d.permille),
            abort_status: f.abort.map_or(0, |a| a.status.into()),
            abort_permille: f.abort.map_or(0, |a| a.permille),
        }),
    }
}

fn cluster(service: &Service, name: &str) -> pb::Cluster {
    let policy = &service.policy;
    let lb = match policy.load_balancer {
        LoadBalancer::RoundRobin => pb::LbPolicy::RoundRobin,
        LoadBalancer::P2cEwma => pb::LbPolicy::P2cEwma,
        LoadBalancer::LeastRequest => pb::LbPolicy::LeastRequest,
        LoadBalancer::ConsistentHash => pb::LbPolicy::ConsistentHash,
    };
    let (cb, od) = (&policy.circuit_breaker, &policy.outlier_detection);
    pb::Cluster {
        name: name.to_owned(),
        lb_policy: lb as i32,
        connect_timeout_ms: millis(policy.connect_timeout),
        request_timeout_ms: millis(policy.request_timeout),
        idle_timeout_ms: millis(policy.idle_timeout),
        retry: Some(retry(&policy.retry)),
        circuit_breaker: Some(pb::CircuitBreaker {
            max_connections: cb.max_connections,
            max_pending_requests: cb.max_pending_requests,
            max_requests: cb.max_requests,
            max_retries: cb.max_retries,
        }),
        outlier_detection: Some(pb::OutlierDetection {
            consecutive_5xx: od.consecutive_5xx,
            consecutive_gateway_errors: od.consecutive_gateway_errors,
            base_ejection_ms: millis(od.base_ejection_time),
            max_ejection_ms: millis(od.max_ejection_time),
            max_ejection_percent: od.max_ejection_percent,
        }),
        hash_policy: policy.hash_on.as_ref().map(|h| pb::HashPolicy {
            key: Some(match h {
                HashOn::Header(name) => pb::hash_policy::Key::Header(name.clone()),
                HashOn::Cookie(name) => pb::hash_policy::Key::Cookie(name.clone()),
            }),
        }),
    }
}

/// Every field filled in, defaults applied, so the proxy's /config shows what is in force.
fn retry(r: &Retry) -> pb::RetryPolicy {
    pb::RetryPolicy {
        enabled: true,
        max_attempts: r.attempts,
        retry_on: r.retry_on.iter().map(|c| c.as_str().to_owned()).collect(),
        retriable_status_codes: r.status_codes.iter().map(|&c| c.into()).collect(),
        per_try_timeout_ms: r.per_try_timeout.map_or(0, millis),
        backoff_base_ms: millis(r.backoff_base),
        backoff_max_ms: millis(r.backoff_max),
        budget_ratio: r.budget_ratio,
        budget_min_per_second: r.budget_min_per_second,
        retry_non_idempotent: r.non_idempotent,
        replay_buffer_bytes: r.replay_buffer,
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
                plaintext: service.mtls == MtlsMode::Disabled,
            })
            .collect(),
    }
}

/// What a transparent proxy on demand holds of every service: its version changes only with the
/// addresses (an endpoint's weight or the routes do not touch it), so endpoint churn that keeps
/// addresses costs the fleet nothing here.
fn service_addresses(service: &Service) -> pb::ServiceAddresses {
    pb::ServiceAddresses {
        addresses: service.addresses.iter().map(|ip| ip.to_string()).collect(),
        ports: service.ports.iter().map(|p| p.port.into()).collect(),
        endpoints: (service.endpoints.iter())
            .map(|e| e.address.to_string())
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
    routes: [{name: api, match: {path: {prefix: /api}}, timeout: 5s}]
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
        assert_eq!(routes.routes[0].backends[0].cluster, "default/hello");
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
    fn service_addresses_carry_virtual_ips_ports_and_endpoints_and_ignore_weights() {
        let text = MESH.replace(
            "    endpoints: [{address: 127.0.0.1:4143}]\n",
            "    addresses: [10.96.0.10]\n    endpoints: [{address: 127.0.0.1:4143}]\n",
        );
        let snap = snapshot(&text);
        let hello: pb::ServiceAddresses =
            decode(&snap, type_url::SERVICE_ADDRESSES, "default/hello");
        assert_eq!(hello.addresses, ["10.96.0.10"]);
        assert_eq!(hello.ports, [80]);
        assert_eq!(hello.endpoints, ["127.0.0.1:4143"]);
        let web: pb::ServiceAddresses = decode(&snap, type_url::SERVICE_ADDRESSES, "shop/web");
        assert!(web.addresses.is_empty() && web.endpoints.is_empty());
        // A weight is no address: the resource keeps its version, so the fleet is not pushed.
        let version = |s: &Snapshot| {
            s.of_type(type_url::SERVICE_ADDRESSES).unwrap()["default/hello"]
                .version
                .clone()
        };
        let weighted = snapshot(&text.replace(
            "{address: 127.0.0.1:4143}",
            "{address: 127.0.0.1:4143, weight: 5}",
        ));
        assert_eq!(version(&snap), version(&weighted));
        let moved = snapshot(&text.replace("127.0.0.1:4143", "127.0.0.2:4143"));
        assert_ne!(version(&snap), version(&moved));
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

    fn decode<M: Message + Default>(snap: &Snapshot, type_url: &str, name: &str) -> M {
        M::decode(snap.of_type(type_url).unwrap()[name].payload.as_slice()).unwrap()
    }

    #[test]
    fn virtual_addresses_and_target_ports_reach_the_route_config() {
        let snap = snapshot(
            "\
services:
  - name: web
    ports: [{port: 80, targetPort: 8080}, {port: 25, targetPort: 2525}, {port: 9000}]
    addresses: [10.96.0.10, \"fd00::10\"]
  - name: api
    ports: [{port: 80}]
",
        );
        let web: pb::RouteConfig = decode(&snap, type_url::ROUTES, "default/web");
        assert_eq!(web.addresses, ["10.96.0.10", "fd00::10"]);
        assert_eq!(web.ports, [80, 25, 9000]);
        assert_eq!(web.target_ports, [8080, 2525, 9000]);
        let api: pb::RouteConfig = decode(&snap, type_url::ROUTES, "default/api");
        assert!(api.addresses.is_empty());
        assert_eq!(api.target_ports, [80]);
    }

    #[test]
    fn route_with_split_matches_and_fault_encodes() {
        let snap = snapshot(
            "\
services:
  - name: web
    ports: [{port: 80}]
    routes:
      - name: canary
        match:
          path: {regex: \"/users/[0-9]+\"}
          method: GET
          headers:
            - {name: X-Canary, exact: \"true\"}
            - {name: x-tier, prefix: gold}
            - {name: x-trace, regex: \"[a-f0-9]{16}\"}
            - {name: x-debug, present: false}
        backends:
          - {service: web, weight: 90}
          - {service: shop/web-canary, weight: 10}
        timeout: 5s
        retry: {attempts: 3, retryOn: [5xx, retriable-status-codes], statusCodes: [409]}
        fault:
          delay: {duration: 100ms, percent: 12.5}
          abort: {status: 503, percent: 0.1}
      - name: exact
        match: {path: {exact: /healthz}}
        fault: {abort: {status: 500, percent: 100}}
  - name: web-canary
    namespace: shop
    ports: [{port: 80}]
",
        );
        let config: pb::RouteConfig = decode(&snap, type_url::ROUTES, "default/web");
        assert_eq!(config.default_cluster, "default/web");
        assert_eq!(config.ports, [80]);
        use pb::header_match::Value;
        let header = |name: &str, value| pb::HeaderMatch {
            name: name.to_owned(),
            value: Some(value),
        };
        assert_eq!(
            config.routes[0],
            pb::Route {
                name: "canary".into(),
                r#match: Some(pb::RouteMatch {
                    path: Some(pb::route_match::Path::Regex("/users/[0-9]+".into())),
                    method: "GET".into(),
                    headers: vec![
                        header("x-canary", Value::Exact("true".into())),
                        header("x-tier", Value::Prefix("gold".into())),
                        header("x-trace", Value::Regex("[a-f0-9]{16}".into())),
                        header("x-debug", Value::Present(false)),
                    ],
                }),
                backends: vec![
                    pb::WeightedBackend {
                        cluster: "default/web".into(),
                        weight: 90
                    },
                    pb::WeightedBackend {
                        cluster: "shop/web-canary".into(),
                        weight: 10
                    },
                ],
                timeout_ms: 5000,
                // A route's retry is complete: the fields left out carry the defaults.
                retry: Some(pb::RetryPolicy {
                    enabled: true,
                    max_attempts: 3,
                    retry_on: vec!["5xx".into(), "retriable-status-codes".into()],
                    retriable_status_codes: vec![409],
                    per_try_timeout_ms: 0,
                    backoff_base_ms: 25,
                    backoff_max_ms: 250,
                    budget_ratio: 0.2,
                    budget_min_per_second: 10,
                    retry_non_idempotent: false,
                    replay_buffer_bytes: 65536,
                }),
                fault: Some(pb::FaultInjection {
                    delay_ms: 100,
                    delay_permille: 125,
                    abort_status: 503,
                    abort_permille: 1,
                }),
            }
        );
        let exact = &config.routes[1];
        assert_eq!(
            exact.r#match,
            Some(pb::RouteMatch {
                path: Some(pb::route_match::Path::Exact("/healthz".into())),
                ..Default::default()
            })
        );
        // Without backends a route sends to its own service; without retry it has none, so the
        // cluster's applies; an abort-only fault has no delay.
        assert_eq!(
            exact.backends,
            [pb::WeightedBackend {
                cluster: "default/web".into(),
                weight: 1
            }]
        );
        assert_eq!((exact.timeout_ms, &exact.retry), (0, &None));
        assert_eq!(
            exact.fault,
            Some(pb::FaultInjection {
                delay_ms: 0,
                delay_permille: 0,
                abort_status: 500,
                abort_permille: 1000,
            })
        );
    }

    #[test]
    fn cluster_policy_encodes_with_defaults() {
        let snap = snapshot(MESH);
        let cluster: pb::Cluster = decode(&snap, type_url::CLUSTERS, "default/hello");
        assert_eq!(
            cluster,
            pb::Cluster {
                name: "default/hello".into(),
                lb_policy: pb::LbPolicy::P2cEwma as i32,
                connect_timeout_ms: 1000,
                request_timeout_ms: 15000,
                idle_timeout_ms: 60000,
                retry: Some(pb::RetryPolicy {
                    enabled: true,
                    max_attempts: 2,
                    retry_on: vec!["connect-failure".into()],
                    retriable_status_codes: vec![],
                    per_try_timeout_ms: 0,
                    backoff_base_ms: 25,
                    backoff_max_ms: 250,
                    budget_ratio: 0.2,
                    budget_min_per_second: 10,
                    retry_non_idempotent: false,
                    replay_buffer_bytes: 65536,
                }),
                circuit_breaker: Some(pb::CircuitBreaker {
                    max_connections: 1024,
                    max_pending_requests: 1024,
                    max_requests: 1024,
                    max_retries: 3,
                }),
                outlier_detection: Some(pb::OutlierDetection {
                    consecutive_5xx: 0,
                    consecutive_gateway_errors: 7,
                    base_ejection_ms: 30_000,
                    max_ejection_ms: 300_000,
                    max_ejection_percent: 50,
                }),
                hash_policy: None,
            }
        );
    }

    const POLICY_MESH: &str = "\
services:
  - name: web
    ports: [{port: 80}]
    policy:
      loadBalancer: consistentHash
      hashOn: {cookie: session}
      requestTimeout: 2s
      retry:
        attempts: 4
        retryOn: [gateway-error, unavailable]
        perTryTimeout: 300ms
        backoff: {base: 10ms, max: 1s}
        budget: {ratio: 0.5, minPerSecond: 0}
        nonIdempotent: true
        replayBuffer: 1MiB
      circuitBreaker: {maxPendingRequests: 8}
      outlierDetection: {consecutive5xx: 5, maxEjectionPercent: 100}
";

    #[test]
    fn cluster_policy_encodes_given_values() {
        let snap = snapshot(POLICY_MESH);
        let cluster: pb::Cluster = decode(&snap, type_url::CLUSTERS, "default/web");
        assert_eq!(cluster.lb_policy, pb::LbPolicy::ConsistentHash as i32);
        assert_eq!(
            cluster.hash_policy,
            Some(pb::HashPolicy {
                key: Some(pb::hash_policy::Key::Cookie("session".into()))
            })
        );
        assert_eq!(cluster.request_timeout_ms, 2000);
        assert_eq!(
            cluster.retry,
            Some(pb::RetryPolicy {
                enabled: true,
                max_attempts: 4,
                retry_on: vec!["gateway-error".into(), "unavailable".into()],
                retriable_status_codes: vec![],
                per_try_timeout_ms: 300,
                backoff_base_ms: 10,
                backoff_max_ms: 1000,
                budget_ratio: 0.5,
                budget_min_per_second: 0,
                retry_non_idempotent: true,
                replay_buffer_bytes: 1 << 20,
            })
        );
        let cb = cluster.circuit_breaker.unwrap();
        assert_eq!((cb.max_pending_requests, cb.max_connections), (8, 1024));
        let od = cluster.outlier_detection.unwrap();
        assert_eq!(
            (
                od.consecutive_5xx,
                od.consecutive_gateway_errors,
                od.max_ejection_percent
            ),
            (5, 7, 100)
        );
        // Identical input, identical versions, policies included.
        assert_eq!(snapshot(POLICY_MESH).resources, snap.resources);
    }
}
