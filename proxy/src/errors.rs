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
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::NoRoute { .. } | ProxyError::NoAppPort { .. } => StatusCode::NOT_FOUND,
            ProxyError::NotReady(_) | ProxyError::NoEndpoints { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
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
        match self {
            ProxyError::BadRequest(_) => INTERNAL,
            ProxyError::NoRoute { .. } | ProxyError::NoAppPort { .. } => UNIMPLEMENTED,
            ProxyError::ConnectTimeout { .. } | ProxyError::Timeout { .. } => DEADLINE_EXCEEDED,
            _ => UNAVAILABLE,
        }
    }
}
