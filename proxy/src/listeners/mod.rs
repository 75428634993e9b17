//! The proxy's sockets: outbound (plain HTTP from the local app), inbound (mTLS from other
//! sidecars) and admin. Binding is separate from serving so that callers (the CLI, the test
//! harness) can learn the ports before the proxy starts. In transparent mode `transparent`
//! classifies each connection by its original destination (`original_dst`, the crate's only
//! `unsafe`), and `opaque` carries non-HTTP streams.

pub mod inbound;
pub mod opaque;
#[allow(unsafe_code)]
pub mod original_dst;
pub mod outbound;
pub mod transparent;

use crate::drain::DrainWatch;
use crate::http::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

pub struct Listeners {
    pub inbound: TcpListener,
    pub outbound: TcpListener,
    pub admin: TcpListener,
    /// Transparent mode (connections arrive through the iptables redirect); `None`: explicit.
    pub transparent: Option<transparent::TransparentConfig>,
}

impl Listeners {
    pub async fn bind(
        inbound: SocketAddr,
        outbound: SocketAddr,
        admin: SocketAddr,
    ) -> std::io::Result<Self> {
        Ok(Listeners {
            inbound: TcpListener::bind(inbound).await?,
            outbound: TcpListener::bind(outbound).await?,
            admin: TcpListener::bind(admin).await?,
            transparent: None,
        })
    }

    /// Serves in transparent mode (see `transparent`).
    pub fn with_transparent(mut self, config: transparent::TransparentConfig) -> Self {
        self.transparent = Some(config);
        self
    }

    pub fn inbound_addr(&self) -> std::io::Result<SocketAddr> {
        self.inbound.local_addr()
    }
    pub fn outbound_addr(&self) -> std::io::Result<SocketAddr> {
        self.outbound.local_addr()
    }
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }
}

/// The HTTP server settings shared by the data-plane listeners (HTTP/1.1 and HTTP/2, detected by
/// the connection preface).
pub fn http_server() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(1000)
        .initial_stream_window_size(2 * 1024 * 1024)
        .initial_connection_window_size(8 * 1024 * 1024)
        .keep_alive_interval(Duration::from_secs(30));
    builder
}

/// Serves one connection until it ends; on drain, lets in-flight requests finish (HTTP/2 GOAWAY,
/// HTTP/1.1 `Connection: close`) and then returns.
pub async fn serve_connection<IO, S>(io: IO, service: S, drain: DrainWatch)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<http::Request<Incoming>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let builder = http_server();
    let conn = builder.serve_connection(
        TokioIo::new(io),
        hyper_util::service::TowerToHyperService::new(service),
    );
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        _ = drain.signaled() => {
            conn.as_mut().graceful_shutdown();
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error while draining");
            }
        }
    }
}
