//! The protocol shared by the Trellis proxy and control plane: the discovery stream, the identity
//! RPC and the resource payloads. Generated from `proto/` at build time; this file adds the type
//! URLs and small helpers both sides need so that neither spells a type URL by hand.
#![forbid(unsafe_code)]

pub mod discovery {
    tonic::include_proto!("trellis.discovery.v1");
}

pub mod identity {
    tonic::include_proto!("trellis.identity.v1");
}

pub mod config {
    tonic::include_proto!("trellis.config.v1");
}

/// Type URLs of the resource types carried on the discovery stream.
pub mod type_url {
    pub const INBOUND: &str = "trellis.config.v1.InboundConfig";
    pub const ROUTES: &str = "trellis.config.v1.RouteConfig";
    pub const CLUSTERS: &str = "trellis.config.v1.Cluster";
    pub const ENDPOINTS: &str = "trellis.config.v1.Endpoints";
    pub const TRUST_BUNDLE: &str = "trellis.config.v1.TrustBundle";
    pub const SERVICE_ADDRESSES: &str = "trellis.config.v1.ServiceAddresses";

    /// Every type, in the order the proxy subscribes (and the control plane answers) on a new
    /// stream: trust first so that peers can be verified, endpoints after the clusters naming them,
    /// service addresses last (only a transparent proxy on demand subscribes to them).
    pub const ALL: [&str; 6] = [
        TRUST_BUNDLE,
        INBOUND,
        CLUSTERS,
        ENDPOINTS,
        ROUTES,
        SERVICE_ADDRESSES,
    ];
}

/// The metadata key carrying the proxy's credential on both RPCs.
pub const AUTHORIZATION: &str = "authorization";

/// Wildcard subscription name.
pub const WILDCARD: &str = "*";

/// The SPIFFE ID of a workload: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}
