//! Decoding and validating resources from the discovery stream. A resource that does not decode or
//! breaks a rule here is rejected with a reason that names the resource and the field, and the
//! whole response carrying it is NACKed: the proxy never applies half of an update.

use super::policy::{
    BreakerLimits, ClusterPolicy, HashKey, LbPolicy, OutlierConfig, RetryOn, RetryPolicy,
};
use super::routes::{
    anchored_regex, Backend, Fault, HeaderMatch, HeaderValueMatch, PathMatch, RouteMatch,
};
use super::{AppPort, AppProtocol, InboundPolicy, MtlsMode};
use http::{HeaderName, HeaderValue, Method};
use prost::Message;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use trellis_api::config as pb;
use trellis_api::discovery::Resource;
use trellis_api::type_url;

/// A validated resource, ready to be joined into a snapshot.
#[derive(Debug, Clone)]
pub enum Decoded {
    Inbound(InboundPolicy),
    Routes(RouteConfig),
    Cluster(ClusterPolicy),
    Endpoints(Vec<EndpointSpec>),
    Trust(super::TrustBundle),
    Addresses(ServiceAddresses),
}

/// Where a service is reached (`ServiceAddresses`): what transparent mode on demand holds of
/// every service, to tell which one an original destination belongs to (`locator.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAddresses {
    pub addresses: Vec<IpAddr>,
    /// Empty: any port.
    pub ports: Vec<u16>,
    pub endpoints: Vec<SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub hosts: Vec<String>,
    pub ports: Vec<u16>,
    pub routes: Vec<RouteSpec>,
    pub default_cluster: String,
    /// The service's virtual IPs (ClusterIPs).
    pub addresses: Vec<IpAddr>,
    /// The target port behind each of `ports`, at the same index (always as long as `ports`).
    pub target_ports: Vec<u16>,
}

/// A route as decoded; `build` adds the runtime parts (split counter, stats).
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub name: String,
    pub matcher: RouteMatch,
    pub backends: Vec<Backend>,
    pub timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
    pub fault: Option<Fault>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointSpec {
    pub addr: SocketAddr,
    pub identity: String,
    pub weight: u32,
    /// The endpoint's workload has mTLS disabled: plaintext h2c, no identity check.
    pub plaintext: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("{type_url} \"{name}\": {reason}")]
pub struct DecodeError {
    pub type_url: String,
    pub name: String,
    pub reason: String,
}

pub fn decode(type_url: &str, res: &Resource) -> Result<Decoded, DecodeError> {
    let fail = |reason: String| DecodeError {
        type_url: type_url.to_string(),
        name: res.name.clone(),
        reason,
    };
    let payload = res.payload.as_slice();
    match type_url {
        type_url::INBOUND => {
            let msg = pb::InboundConfig::decode(payload).map_err(|e| fail(e.to_string()))?;
            decode_inbound(msg).map(Decoded::Inbound).map_err(fail)
        }
        type_url::ROUTES => {
            let msg = pb::RouteConfig::decode(payload).map_err(|e| fail(e.to_string()))?;
            decode_routes(msg).map(Decoded::Routes).map_err(fail)
        }
        type_url::CLUSTERS => {
            let msg = pb::Cluster::decode(payload).map_err(|e| fail(e.to_string()))?;
            decode_cluster(msg).map(Decoded::Cluster).map_err(fail)
        }
        type_url::ENDPOINTS => {
            let msg = pb::Endpoints::decode(payload).map_err(|e| fail(e.to_string()))?;
            decode_endpoints(msg).map(Decoded::Endpoints).map_err(fail)
        }
        type_url::TRUST_BUNDLE => {
            let msg = pb::TrustBundle::decode(payload).map_err(|e| fail(e.to_string()))?;
            decode_trust(msg).map(Decoded::Trust).map_err(fail)
        }
        type_url::SERVICE_ADDRESSES => {
            let msg = pb::ServiceAddresses::decode(payload).map_err(|e| fail(e.to_string()))?;
            decode_service_addresses(msg)
                .map(Decoded::Addresses)
                .map_err(fail)
        }
        other => Err(fail(format!("unknown type URL {other:?}"))),
    }
}

fn port(value: u32, field: &str) -> Result<u16, String> {
    match u16::try_from(value) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(format!("{field}: {value} is not a port (1-65535)")),
    }
}

fn decode_inbound(msg: pb::InboundConfig) -> Result<InboundPolicy, String> {
    let mtls = match pb::MtlsMode::try_from(msg.mtls_mode) {
        Ok(pb::MtlsMode::Unspecified | pb::MtlsMode::Strict) => MtlsMode::Strict,
        Ok(pb::MtlsMode::Permissive) => MtlsMode::Permissive,
        Ok(pb::MtlsMode::Disabled) => MtlsMode::Disabled,
        Err(_) => return Err(format!("mtls_mode: unknown value {}", msg.mtls_mode)),
    };
    let mut ports = Vec::with_capacity(msg.ports.len());
    for (i, p) in msg.ports.iter().enumerate() {
        let protocol = match pb::AppProtocol::try_from(p.protocol) {
            Ok(pb::AppProtocol::Unspecified | pb::AppProtocol::Http1) => AppProtocol::Http1,
            Ok(pb::AppProtocol::H2c) => AppProtocol::H2c,
            Err(_) => return Err(format!("ports[{i}].protocol: unknown value {}", p.protocol)),
        };
        ports.push(AppPort {
            port: port(p.port, &format!("ports[{i}].port"))?,
            target_port: port(p.target_port, &format!("ports[{i}].target_port"))?,
            protocol,
        });
    }
    let authorization = crate::authz::decode_policy(msg.authorization)?;
    Ok(InboundPolicy {
        ports,
        mtls,
        authorization,
    })
}

fn decode_routes(msg: pb::RouteConfig) -> Result<RouteConfig, String> {
    if msg.hosts.is_empty() {
        return Err("hosts: at least one host is required".into());
    }
    if msg.default_cluster.is_empty() {
        return Err("default_cluster: required".into());
    }
    let ports = msg
        .ports
        .iter()
        .enumerate()
        .map(|(i, p)| port(*p, &format!("ports[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let target_ports = match msg.target_ports.len() {
        0 => ports.clone(),
        n if n == ports.len() => (msg.target_ports.iter().enumerate())
            .map(|(i, p)| port(*p, &format!("target_ports[{i}]")))
            .collect::<Result<Vec<_>, _>>()?,
        n => {
            return Err(format!(
                "target_ports: {n} given for {} ports (one per port, or none)",
                ports.len()
            ))
        }
    };
    let addresses = ip_addresses(&msg.addresses)?;
    let routes = msg
        .routes
        .into_iter()
        .enumerate()
        .map(|(i, r)| decode_route(r).map_err(|e| format!("routes[{i}].{e}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RouteConfig {
        hosts: msg.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
        ports,
        routes,
        default_cluster: msg.default_cluster,
        addresses,
        target_ports,
    })
}

/// A service's virtual IPs, each checked (`addresses[i]` names a bad one).
fn ip_addresses(addresses: &[String]) -> Result<Vec<IpAddr>, String> {
    (addresses.iter().enumerate())
        .map(|(i, a)| {
            a.parse::<IpAddr>()
                .map_err(|_| format!("addresses[{i}]: {a:?} is not an IP address"))
        })
        .collect()
}

fn decode_route(r: pb::Route) -> Result<RouteSpec, String> {
    let m = r.r#match.unwrap_or_default();
    let path = match m.path {
        None => PathMatch::Any,
        Some(pb::route_match::Path::Exact(p)) => PathMatch::Exact(p),
        Some(pb::route_match::Path::Prefix(p)) => PathMatch::Prefix(p),
        Some(pb::route_match::Path::Regex(p)) => {
            PathMatch::Regex(anchored_regex(&p).map_err(|e| format!("match.regex: {e}"))?)
        }
    };
    let method = if m.method.is_empty() {
        None
    } else {
        Some(
            Method::from_bytes(m.method.as_bytes())
                .map_err(|_| format!("match.method: {:?} is not a method", m.method))?,
        )
    };
    let mut headers = Vec::with_capacity(m.headers.len());
    for (i, h) in m.headers.into_iter().enumerate() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| format!("match.headers[{i}].name: {:?} is not a header name", h.name))?;
        let value = match h.value {
            Some(pb::header_match::Value::Exact(v)) => HeaderValueMatch::Exact(
                HeaderValue::from_str(&v)
                    .map_err(|_| format!("match.headers[{i}].exact: not a header value"))?,
            ),
            Some(pb::header_match::Value::Prefix(v)) => HeaderValueMatch::Prefix(v),
            Some(pb::header_match::Value::Regex(v)) => HeaderValueMatch::Regex(
                anchored_regex(&v).map_err(|e| format!("match.headers[{i}].regex: {e}"))?,
            ),
            Some(pb::header_match::Value::Present(p)) => HeaderValueMatch::Present(p),
            None => HeaderValueMatch::Present(true),
        };
        headers.push(HeaderMatch { name, value });
    }
    if r.backends.is_empty() {
        return Err("backends: at least one backend is required".into());
    }
    if r.backends.iter().any(|b| b.cluster.is_empty()) {
        return Err("backends: a backend without a cluster".into());
    }
    if r.backends.len() > 1 && r.backends.iter().all(|b| b.weight == 0) {
        return Err("backends: all weights are zero".into());
    }
    let fault = r.fault.map(decode_fault).transpose()?.flatten();
    let retry = match r.retry {
        Some(p) if p.enabled => Some(decode_retry(p).map_err(|e| format!("retry.{e}"))?),
        _ => None,
    };
    Ok(RouteSpec {
        name: r.name,
        matcher: RouteMatch {
            path,
            method,
            headers,
        },
        backends: r
            .backends
            .into_iter()
            .map(|b| Backend {
                cluster: b.cluster,
                weight: b.weight,
            })
            .collect(),
        timeout: (r.timeout_ms > 0).then(|| Duration::from_millis(r.timeout_ms)),
        retry,
        fault,
    })
}

fn decode_fault(f: pb::FaultInjection) -> Result<Option<Fault>, String> {
    if f.delay_permille > 1000 || f.abort_permille > 1000 {
        return Err("fault: a share over 1000 per mille".into());
    }
    let abort = match f.abort_status {
        0 => None,
        s @ 200..=599 => Some((s as u16, f.abort_permille)),
        s => return Err(format!("fault.abort_status: {s} is not an HTTP status")),
    };
    let delay = (f.delay_ms > 0).then(|| (Duration::from_millis(f.delay_ms), f.delay_permille));
    Ok((delay.is_some() || abort.is_some()).then_some(Fault { delay, abort }))
}

fn ms_or(v: u64, d: Duration) -> Duration {
    if v == 0 {
        d
    } else {
        Duration::from_millis(v)
    }
}

fn decode_retry(p: pb::RetryPolicy) -> Result<RetryPolicy, String> {
    let d = RetryPolicy::default();
    if !(0.0..=1.0).contains(&p.budget_ratio) || p.budget_ratio.is_nan() {
        return Err(format!("budget_ratio: {} is not in [0, 1]", p.budget_ratio));
    }
    let mut retry_on = RetryOn::default();
    for (i, c) in p.retry_on.iter().enumerate() {
        if !retry_on.add(c) {
            return Err(format!("retry_on[{i}]: unknown condition {c:?}"));
        }
    }
    for (i, code) in p.retriable_status_codes.iter().enumerate() {
        match u16::try_from(*code) {
            Ok(c @ 100..=599) => retry_on.status_codes.push(c),
            _ => {
                return Err(format!(
                    "retriable_status_codes[{i}]: {code} is not an HTTP status"
                ))
            }
        }
    }
    Ok(RetryPolicy {
        max_attempts: if p.max_attempts == 0 {
            d.max_attempts
        } else {
            p.max_attempts
        },
        retry_on: if p.retry_on.is_empty() && p.retriable_status_codes.is_empty() {
            d.retry_on
        } else {
            retry_on
        },
        per_try_timeout: (p.per_try_timeout_ms > 0)
            .then(|| Duration::from_millis(p.per_try_timeout_ms)),
        backoff_base: ms_or(p.backoff_base_ms, d.backoff_base),
        backoff_max: ms_or(p.backoff_max_ms, d.backoff_max),
        budget_ratio: p.budget_ratio,
        budget_min_per_second: p.budget_min_per_second,
        non_idempotent: p.retry_non_idempotent,
        replay_buffer: p.replay_buffer_bytes as usize,
    })
}

fn decode_cluster(msg: pb::Cluster) -> Result<ClusterPolicy, String> {
    let d = ClusterPolicy::default();
    let lb = match pb::LbPolicy::try_from(msg.lb_policy) {
        Ok(pb::LbPolicy::Unspecified) => d.lb,
        Ok(pb::LbPolicy::RoundRobin) => LbPolicy::RoundRobin,
        Ok(pb::LbPolicy::P2cEwma) => LbPolicy::P2cEwma,
        Ok(pb::LbPolicy::LeastRequest) => LbPolicy::LeastRequest,
        Ok(pb::LbPolicy::ConsistentHash) => LbPolicy::ConsistentHash,
        Err(_) => return Err(format!("lb_policy: unknown value {}", msg.lb_policy)),
    };
    let hash = match msg.hash_policy.and_then(|h| h.key) {
        Some(pb::hash_policy::Key::Header(h)) => Some(HashKey::Header(
            HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| format!("hash_policy.header: {h:?} is not a header name"))?,
        )),
        Some(pb::hash_policy::Key::Cookie(c)) if !c.is_empty() => Some(HashKey::Cookie(c)),
        Some(pb::hash_policy::Key::Cookie(_)) => {
            return Err("hash_policy.cookie: empty name".into())
        }
        None => None,
    };
    if lb == LbPolicy::ConsistentHash && hash.is_none() {
        return Err("hash_policy: required for consistent hashing".into());
    }
    let retry = match msg.retry {
        Some(p) if p.enabled => decode_retry(p).map_err(|e| format!("retry.{e}"))?,
        _ => d.retry,
    };
    let breaker = match msg.circuit_breaker {
        Some(cb) => {
            let or = |v: u32, d: u32| if v == 0 { d } else { v };
            let db = BreakerLimits::default();
            BreakerLimits {
                max_connections: or(cb.max_connections, db.max_connections),
                max_pending_requests: or(cb.max_pending_requests, db.max_pending_requests),
                max_requests: or(cb.max_requests, db.max_requests),
                max_retries: or(cb.max_retries, db.max_retries),
            }
        }
        None => d.breaker,
    };
    let outlier = match msg.outlier_detection {
        Some(o) => {
            if o.max_ejection_percent > 100 {
                return Err(format!(
                    "outlier_detection.max_ejection_percent: {} is over 100",
                    o.max_ejection_percent
                ));
            }
            let dflt = OutlierConfig::default();
            OutlierConfig {
                consecutive_5xx: o.consecutive_5xx,
                consecutive_gateway_errors: o.consecutive_gateway_errors,
                base_ejection: ms_or(o.base_ejection_ms, dflt.base_ejection),
                max_ejection: ms_or(o.max_ejection_ms, dflt.max_ejection),
                max_ejection_percent: o.max_ejection_percent,
            }
        }
        None => d.outlier,
    };
    Ok(ClusterPolicy {
        lb,
        hash,
        connect_timeout: ms_or(msg.connect_timeout_ms, d.connect_timeout),
        request_timeout: ms_or(msg.request_timeout_ms, d.request_timeout),
        idle_timeout: ms_or(msg.idle_timeout_ms, d.idle_timeout),
        retry,
        breaker,
        outlier,
    })
}

fn decode_endpoints(msg: pb::Endpoints) -> Result<Vec<EndpointSpec>, String> {
    let mut out = Vec::with_capacity(msg.endpoints.len());
    for (i, e) in msg.endpoints.into_iter().enumerate() {
        let addr: SocketAddr = e
            .address
            .parse()
            .map_err(|_| format!("endpoints[{i}].address: {:?} is not ip:port", e.address))?;
        if addr.port() == 0 {
            return Err(format!("endpoints[{i}].address: port 0"));
        }
        if !e.identity.starts_with("spiffe://") {
            return Err(format!(
                "endpoints[{i}].identity: {:?} is not a SPIFFE ID",
                e.identity
            ));
        }
        out.push(EndpointSpec {
            addr,
            identity: e.identity,
            weight: e.weight.max(1),
            plaintext: e.plaintext,
        });
    }
    Ok(out)
}

fn decode_service_addresses(msg: pb::ServiceAddresses) -> Result<ServiceAddresses, String> {
    let ports = (msg.ports.iter().enumerate())
        .map(|(i, p)| port(*p, &format!("ports[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ServiceAddresses {
        addresses: ip_addresses(&msg.addresses)?,
        ports,
        endpoints: (msg.endpoints.iter().enumerate())
            .map(|(i, a)| {
                a.parse::<SocketAddr>()
                    .map_err(|_| format!("endpoints[{i}]: {a:?} is not ip:port"))
            })
            .collect::<Result<Vec<_>, _>>()?,
    })
}

fn decode_trust(msg: pb::TrustBundle) -> Result<super::TrustBundle, String> {
    if msg.roots_der.is_empty() {
        return Err("roots_der: a trust bundle needs at least one root".into());
    }
    for (i, der) in msg.roots_der.iter().enumerate() {
        let cert = rustls_pki_types::CertificateDer::from(der.as_slice());
        webpki::anchor_from_trusted_cert(&cert)
            .map_err(|e| format!("roots_der[{i}]: not a usable root certificate: {e}"))?;
    }
    Ok(super::TrustBundle {
        trust_domain: msg.trust_domain,
        roots_der: msg.roots_der,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource<M: Message>(name: &str, msg: &M) -> Resource {
        Resource {
            name: name.into(),
            version: "1".into(),
            payload: msg.encode_to_vec(),
        }
    }

    #[test]
    fn unknown_lb_policy_is_rejected_with_field() {
        let msg = pb::Cluster {
            name: "default/web".into(),
            lb_policy: 42,
            ..Default::default()
        };
        let err = decode(type_url::CLUSTERS, &resource("default/web", &msg));
        let text = err.map(|_| ()).unwrap_err().to_string();
        assert!(text.contains("default/web"), "{text}");
        assert!(text.contains("lb_policy: unknown value 42"), "{text}");
    }

    #[test]
    fn bad_endpoint_address_is_rejected() {
        let msg = pb::Endpoints {
            cluster: "c".into(),
            endpoints: vec![pb::Endpoint {
                address: "10.0.0.1".into(),
                identity: "spiffe://td/ns/a/sa/b".into(),
                weight: 1,
                plaintext: false,
            }],
        };
        let err = decode(type_url::ENDPOINTS, &resource("c", &msg)).map(|_| ());
        assert!(err.unwrap_err().reason.contains("endpoints[0].address"));
    }

    #[test]
    fn valid_endpoints_decode() {
        let msg = pb::Endpoints {
            cluster: "c".into(),
            endpoints: vec![pb::Endpoint {
                address: "127.0.0.1:4143".into(),
                identity: "spiffe://td/ns/a/sa/b".into(),
                weight: 0,
                plaintext: false,
            }],
        };
        match decode(type_url::ENDPOINTS, &resource("c", &msg)) {
            Ok(Decoded::Endpoints(eps)) => {
                assert_eq!(eps.len(), 1);
                assert_eq!(eps[0].weight, 1, "weight 0 means the default, 1");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    fn routes(addresses: &[&str], ports: &[u32], target_ports: &[u32]) -> pb::RouteConfig {
        pb::RouteConfig {
            hosts: vec!["web".into()],
            ports: ports.to_vec(),
            default_cluster: "default/web".into(),
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            target_ports: target_ports.to_vec(),
            ..Default::default()
        }
    }

    fn decode_routes_err(msg: &pb::RouteConfig) -> String {
        match decode(type_url::ROUTES, &resource("default/web", msg)) {
            Err(e) => e.reason,
            Ok(d) => panic!("accepted {d:?}"),
        }
    }

    #[test]
    fn virtual_addresses_and_target_ports_decode() {
        let msg = routes(&["10.96.0.10", "fd00::10"], &[80, 25], &[8080, 2525]);
        match decode(type_url::ROUTES, &resource("default/web", &msg)) {
            Ok(Decoded::Routes(rc)) => {
                let ips: Vec<IpAddr> =
                    vec!["10.96.0.10".parse().unwrap(), "fd00::10".parse().unwrap()];
                assert_eq!(rc.addresses, ips);
                assert_eq!(rc.target_ports, [8080, 2525]);
            }
            other => panic!("unexpected {other:?}"),
        }
        // Without target ports (an older control plane), each port is its own target.
        match decode(
            type_url::ROUTES,
            &resource("default/web", &routes(&[], &[80], &[])),
        ) {
            Ok(Decoded::Routes(rc)) => assert_eq!(rc.target_ports, [80]),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bad_virtual_addresses_and_target_ports_are_rejected_with_field() {
        assert_eq!(
            decode_routes_err(&routes(&["10.96.0.10", "10.96.0.10:80"], &[80], &[])),
            "addresses[1]: \"10.96.0.10:80\" is not an IP address"
        );
        assert_eq!(
            decode_routes_err(&routes(&[], &[80, 25], &[8080])),
            "target_ports: 1 given for 2 ports (one per port, or none)"
        );
        assert_eq!(
            decode_routes_err(&routes(&[], &[80], &[70000])),
            "target_ports[0]: 70000 is not a port (1-65535)"
        );
    }

    #[test]
    fn service_addresses_decode_and_bad_ones_name_the_field() {
        let msg = |addresses: &[&str], ports: &[u32], endpoints: &[&str]| pb::ServiceAddresses {
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            ports: ports.to_vec(),
            endpoints: endpoints.iter().map(|a| a.to_string()).collect(),
        };
        let decoded = |m: &pb::ServiceAddresses| {
            let res = resource("default/web", m);
            decode(type_url::SERVICE_ADDRESSES, &res).map_err(|e| e.to_string())
        };
        match decoded(&msg(&["fd00::10"], &[80], &["10.1.0.5:4143"])) {
            Ok(Decoded::Addresses(a)) => {
                assert_eq!(a.addresses, ["fd00::10".parse::<IpAddr>().unwrap()]);
                assert_eq!(a.ports, [80]);
                assert_eq!(
                    a.endpoints,
                    ["10.1.0.5:4143".parse::<SocketAddr>().unwrap()]
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        let prefix = "trellis.config.v1.ServiceAddresses \"default/web\": ";
        for (bad, reason) in [
            (
                msg(&["web"], &[], &[]),
                "addresses[0]: \"web\" is not an IP address",
            ),
            (
                msg(&[], &[80, 0], &[]),
                "ports[1]: 0 is not a port (1-65535)",
            ),
            (
                msg(&[], &[], &["10.1.0.5"]),
                "endpoints[0]: \"10.1.0.5\" is not ip:port",
            ),
        ] {
            assert_eq!(
                decoded(&bad).expect_err("refused"),
                format!("{prefix}{reason}")
            );
        }
    }

    #[test]
    fn garbage_payload_is_rejected() {
        let res = Resource {
            name: "x".into(),
            version: "1".into(),
            payload: vec![0xff, 0xff, 0xff],
        };
        assert!(decode(type_url::INBOUND, &res).is_err());
    }
}
