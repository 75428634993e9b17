//! Decoding and validating resources from the discovery stream. A resource that does not decode or
//! breaks a rule here is rejected with a reason that names the resource and the field, and the
//! whole response carrying it is NACKed: the proxy never applies half of an update.

use super::{AppPort, AppProtocol, ClusterPolicy, InboundPolicy, LbPolicy, MtlsMode, Route};
use prost::Message;
use std::net::SocketAddr;
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
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub hosts: Vec<String>,
    pub ports: Vec<u16>,
    pub routes: Vec<Route>,
    pub default_cluster: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointSpec {
    pub addr: SocketAddr,
    pub identity: String,
    pub weight: u32,
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
    Ok(InboundPolicy { ports, mtls })
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
    let mut routes = Vec::with_capacity(msg.routes.len());
    for (i, r) in msg.routes.into_iter().enumerate() {
        if !r.path_prefix.is_empty() && !r.path_prefix.starts_with('/') {
            return Err(format!("routes[{i}].path_prefix: must start with '/'"));
        }
        if r.cluster.is_empty() {
            return Err(format!("routes[{i}].cluster: required"));
        }
        routes.push(Route {
            name: r.name,
            path_prefix: r.path_prefix,
            cluster: r.cluster,
            timeout: (r.timeout_ms > 0).then(|| Duration::from_millis(r.timeout_ms)),
        });
    }
    Ok(RouteConfig {
        hosts: msg.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
        ports,
        routes,
        default_cluster: msg.default_cluster,
    })
}

fn decode_cluster(msg: pb::Cluster) -> Result<ClusterPolicy, String> {
    let defaults = ClusterPolicy::default();
    let lb = match pb::LbPolicy::try_from(msg.lb_policy) {
        Ok(pb::LbPolicy::Unspecified) => defaults.lb,
        Ok(pb::LbPolicy::RoundRobin) => LbPolicy::RoundRobin,
        Ok(pb::LbPolicy::P2cEwma) => LbPolicy::P2cEwma,
        Ok(pb::LbPolicy::LeastRequest) => LbPolicy::LeastRequest,
        Ok(pb::LbPolicy::ConsistentHash) => LbPolicy::ConsistentHash,
        Err(_) => return Err(format!("lb_policy: unknown value {}", msg.lb_policy)),
    };
    let ms = |v: u64, d: Duration| if v == 0 { d } else { Duration::from_millis(v) };
    Ok(ClusterPolicy {
        lb,
        connect_timeout: ms(msg.connect_timeout_ms, defaults.connect_timeout),
        request_timeout: ms(msg.request_timeout_ms, defaults.request_timeout),
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
        });
    }
    Ok(out)
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
