//! Every way a request can fail inside the proxy, as one typed error. Each variant knows the HTTP
//! status and gRPC code it is answered with (see `http::rescue`), so the mapping lives in one place.

use http::StatusCode;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("no route for authority \"{authority}\"")]
    NoRoute { authority: String },
    #[error("proxy not ready: {0}")]
    NotReady(&'static str),
    /// On-demand discovery: the control plane has no service of this name.
    #[error("no service \"{service}\" in the mesh")]
    UnknownService { service: String },
    /// On-demand discovery: the service's configuration did not arrive in time.
    #[error("configuration of service \"{service}\" not received within {after:?}")]
    DiscoveryTimeout { service: String, after: Duration },
    #[error("no endpoints for {cluster}")]
    NoEndpoints { cluster: String },
    #[error("upstream connect timeout {addr} after {after:?}")]
    ConnectTimeout { addr: SocketAddr, after: Duration },
    #[error("upstream connect error {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("upstream tls error {addr}: {reason}")]
    Tls { addr: SocketAddr, reason: String },
    #[error("upstream {addr} failed: {reason}")]
    Upstream { addr: SocketAddr, reason: String },
    #[error("request timeout after {after:?}")]
    Timeout { after: Duration },
    #[error("local app on port {port} unavailable: {reason}")]
    App { port: u16, reason: String },
    #[error("no app port serves port {port}")]
    NoAppPort { port: u16 },
    #[error("circuit breaker: {limit} ({max}) reached for {cluster}")]
    Overflow {
        cluster: String,
        limit: &'static str,
        max: u32,
    },
    #[error("fault injected: abort with {status}")]
    FaultAbort { status: u16 },
    #[error("upstream per-try timeout after {after:?}")]
    PerTryTimeout { after: Duration },
    #[error("forbidden by authorization rule \"{rule}\"")]
    Forbidden { rule: String },
    #[error("overloaded: {max} requests already in flight")]
    Overloaded { max: usize },
    /// A protocol switch the proxy does not carry (RFC 9110 §15.6.2: 501, not the client's
    /// fault): `Upgrade` to anything but WebSocket, a plain CONNECT tunnel.
    #[error("{0}")]
    UpgradeUnsupported(&'static str),
    /// The peer provably never processed the request (RFC 9113 §8.7: refused by GOAWAY or
    /// REFUSED_STREAM, or the connection closed before the request left): safe to send elsewhere.
    #[error("upstream {addr} did not process the request: {reason}")]
    Unprocessed { addr: SocketAddr, reason: String },
}

impl ProxyError {
    /// Nothing reached the endpoint: the request can be sent elsewhere whatever its method.
    pub fn is_connect_failure(&self) -> bool {
        matches!(
            self,
            ProxyError::Connect { .. } | ProxyError::ConnectTimeout { .. } | ProxyError::Tls { .. }
        )
    }

    /// Nothing was processed by the endpoint (a connect failure or a refused stream): the
    /// request can be sent elsewhere whatever its method.
    pub fn is_unprocessed(&self) -> bool {
        self.is_connect_failure() || matches!(self, ProxyError::Unprocessed { .. })
    }

    /// The endpoint the failure is about, if it is about one.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        match self {
            ProxyError::Connect { addr, .. }
            | ProxyError::ConnectTimeout { addr, .. }
            | ProxyError::Tls { addr, .. }
            | ProxyError::Upstream { addr, .. }
            | ProxyError::Unprocessed { addr, .. } => Some(*addr),
            _ => None,
        }
    }

    /// The kind of failure in a few words with nothing internal in it (no address, port or rule
    /// name): what a caller without an identity is told (`http::synthetic`).
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "bad request",
            ProxyError::NoRoute { .. }
            | ProxyError::NoAppPort { .. }
            | ProxyError::UnknownService { .. } => "no route",
            ProxyError::NotReady(_) | ProxyError::DiscoveryTimeout { .. } => "proxy not ready",
            ProxyError::NoEndpoints { .. } => "no endpoints",
            ProxyError::ConnectTimeout { .. } | ProxyError::Timeout { .. } => "timeout",
            ProxyError::PerTryTimeout { .. } => "timeout",
            ProxyError::Connect { .. }
            | ProxyError::Tls { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::Unprocessed { .. }
            | ProxyError::App { .. } => "upstream unavailable",
            ProxyError::Overflow { .. } | ProxyError::Overloaded { .. } => "overloaded",
            ProxyError::FaultAbort { .. } => "fault injected",
            ProxyError::Forbidden { .. } => "forbidden",
            ProxyError::UpgradeUnsupported(_) => "upgrade not supported",
        }
    }

    /// The client's connection should not be reused after this answer: its request was broken,
    /// so what follows it on the connection cannot be trusted to be a request.
    pub fn closes_connection(&self) -> bool {
        matches!(self, ProxyError::BadRequest(_))
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::FaultAbort { status } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
            ProxyError::Overflow { .. } | ProxyError::Overloaded { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ProxyError::UpgradeUnsupported(_) => StatusCode::NOT_IMPLEMENTED,
            ProxyError::PerTryTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::NoRoute { .. }
            | ProxyError::NoAppPort { .. }
            | ProxyError::UnknownService { .. } => StatusCode::NOT_FOUND,
            ProxyError::NotReady(_)
            | ProxyError::DiscoveryTimeout { .. }
            | ProxyError::NoEndpoints { .. }
            | ProxyError::Unprocessed { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ConnectTimeout { .. } | ProxyError::Timeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::Connect { .. }
            | ProxyError::Tls { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::App { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// The gRPC status code (as in grpc/doc/statuscodes.md) a gRPC caller receives.
    pub fn grpc_code(&self) -> u16 {
        const INTERNAL: u16 = 13;
        const UNAVAILABLE: u16 = 14;
        const DEADLINE_EXCEEDED: u16 = 4;
        const UNIMPLEMENTED: u16 = 12;
        const RESOURCE_EXHAUSTED: u16 = 8;
        const PERMISSION_DENIED: u16 = 7;
        match self {
            ProxyError::FaultAbort { status } => match status {
                429 => RESOURCE_EXHAUSTED,
                404 | 501 => UNIMPLEMENTED,
                504 => DEADLINE_EXCEEDED,
                502 | 503 => UNAVAILABLE,
                _ => INTERNAL,
            },
            ProxyError::Overflow { .. } => UNAVAILABLE,
            ProxyError::Forbidden { .. } => PERMISSION_DENIED,
            ProxyError::PerTryTimeout { .. } => DEADLINE_EXCEEDED,
            ProxyError::BadRequest(_) => INTERNAL,
            ProxyError::NoRoute { .. }
            | ProxyError::NoAppPort { .. }
            | ProxyError::UnknownService { .. }
            | ProxyError::UpgradeUnsupported(_) => UNIMPLEMENTED,
            ProxyError::ConnectTimeout { .. } | ProxyError::Timeout { .. } => DEADLINE_EXCEEDED,
            _ => UNAVAILABLE,
        }
    }
}
