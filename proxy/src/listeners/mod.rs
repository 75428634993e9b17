//! The proxy's sockets: outbound (plain HTTP from the local app), inbound (mTLS from other
//! sidecars) and admin. Binding is separate from serving so that callers (the CLI, the test
//! harness) can learn the ports before the proxy starts. In transparent mode `transparent`
//! classifies each connection by its original destination (`original_dst`, the crate's only
//! `unsafe`), and `opaque` carries non-HTTP streams. What a client may cost is bounded here:
//! open connections per listener (a `limits::Budget` each accept loop takes a slot of for the
//! connection's whole life, opaque TCP and WebSocket tunnels included: `held`), `HttpServer` (hyper's head, header-list,
//! stream and reset limits from `Limits`), the HTTP/1 guard (`h1_scan`, `h1_guard`: ambiguous
//! framing refused, broken or stalled bodies answered as the client's fault and never ended
//! upstream, an invalid HTTP/2 preface answered with GOAWAY) and `request_guard`
//! (answers for those findings; closes connections whose client abandons most requests).
//! `InPlace` hands each request to its connection's tower stack (HTTP/1 without cloning it).

pub mod bind;
pub mod h1_guard;
pub mod h1_scan;
mod head_wait;
pub mod held;
pub mod inbound;
pub mod opaque;
#[allow(unsafe_code)]
pub mod original_dst;
pub mod outbound;
pub mod request_guard;
pub mod transparent;

use crate::drain::DrainWatch;
use crate::http::Body;
use crate::limits::{Share, Slot};
use crate::Limits;
use futures_util::future::Either;
use head_wait::HeadWait;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::cell::RefCell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tower::util::Oneshot;
use tower::ServiceExt;

pub use bind::{ListenAddrs, Listener};

pub struct Listeners {
    pub inbound: Listener,
    pub outbound: Listener,
    pub admin: Listener,
    /// Transparent mode (connections arrive through the iptables redirect); `None`: explicit.
    pub transparent: Option<transparent::TransparentConfig>,
}

impl Listeners {
    /// Each role on one address or several (`ListenAddrs`, see `bind`).
    pub async fn bind(
        inbound: impl Into<ListenAddrs>,
        outbound: impl Into<ListenAddrs>,
        admin: impl Into<ListenAddrs>,
    ) -> std::io::Result<Self> {
        Ok(Listeners {
            inbound: Listener::bind(&inbound.into()).await?,
            outbound: Listener::bind(&outbound.into()).await?,
            admin: Listener::bind(&admin.into()).await?,
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

/// How a listener serves HTTP (HTTP/1.1 and HTTP/2, told apart by the connection preface): the
/// hyper settings derived from `Limits`, built once per listener and shared by its connections.
#[derive(Clone)]
pub struct HttpServer {
    builder: Arc<auto::Builder<TokioExecutor>>,
    /// The same with stream and reset limits sized for a peer sidecar (`for_mesh_peer`).
    mesh_peer: Arc<auto::Builder<TokioExecutor>>,
    max_head: usize,
    body_idle: Duration,
    header_read_timeout: Duration,
    /// Close connections whose client abandons most requests (`request_guard`).
    police_abandons: bool,
}

/// hyper refuses a smaller read buffer.
const MIN_HEAD_BUFFER: usize = 8 * 1024;

impl HttpServer {
    pub fn new(limits: &Limits) -> Self {
        let max_head = limits.max_header_bytes.max(MIN_HEAD_BUFFER);
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            // `h1_guard` keeps this timeout, one timer per connection (`head_wait`); hyper's
            // makes one per request.
            .header_read_timeout(None)
            .max_buf_size(max_head);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(
                (limits.max_client_concurrent_streams).min(limits.max_concurrent_streams),
            )
            .max_header_list_size(limits.max_header_list_size)
            // Rapid reset (CVE-2023-44487): streams a client opens and resets before they are
            // served, and streams the proxy had to reset for the client's protocol errors, are
            // bounded per connection; past the bound the connection ends with GOAWAY
            // ENHANCE_YOUR_CALM.
            .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
            .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESETS)
            // RFC 8441: WebSockets between sidecars (and from h2c apps) as extended CONNECT.
            .enable_connect_protocol()
            .initial_stream_window_size(2 * 1024 * 1024)
            .initial_connection_window_size(8 * 1024 * 1024)
            .keep_alive_interval(Duration::from_secs(30));
        // A peer sidecar multiplexes many apps' requests on one connection, so its resets are
        // the sum of theirs: one app abandoning a thousand streams at once is forwarded as a
        // thousand RST_STREAMs, many arriving before h2 handed their streams over (pending
        // accept). The bound of one anonymous client would close the connection every app
        // shares; each app's own sidecar has already bounded that app's resets, so here the
        // bound only has to stop a peer that floods without end: a few times the streams it may
        // have open. h2 counts local error resets over the connection's whole life (a
        // long-lived shared connection would reach any bound eventually); peers are
        // authenticated, so that count is not bounded for them.
        let mut mesh_peer = builder.clone();
        mesh_peer
            .http2()
            .max_concurrent_streams(limits.max_concurrent_streams)
            .max_pending_accept_reset_streams(mesh_peer_pending_accept_resets(limits))
            .max_local_error_reset_streams(None);
        HttpServer {
            builder: Arc::new(builder),
            mesh_peer: Arc::new(mesh_peer),
            max_head,
            body_idle: limits.body_idle_timeout,
            header_read_timeout: limits.header_read_timeout,
            police_abandons: true,
        }
    }

    /// For connections from peer sidecars (mTLS): they multiplex many apps' requests, whose
    /// cancellations are policed at each app's own sidecar; closing the shared connection would
    /// punish every app on it for one.
    pub fn for_mesh_peer(mut self) -> Self {
        self.police_abandons = false;
        self.builder = self.mesh_peer.clone();
        self
    }
}

/// For an anonymous client (an app, a plaintext caller): h2's own default.
const MAX_PENDING_ACCEPT_RESETS: usize = 20;
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// Streams a peer sidecar may have reset before they were accepted, at once: four times the
/// streams it may have open (every stream abandoned, and abandoned again after being reopened,
/// while the accept loop is behind), at least 4,000.
pub fn mesh_peer_pending_accept_resets(limits: &Limits) -> usize {
    (limits.max_concurrent_streams as usize)
        .saturating_mul(4)
        .max(4_000)
}

/// Serves one connection until it ends; on drain, lets in-flight requests finish (HTTP/2 GOAWAY,
/// HTTP/1.1 `Connection: close`) and then returns. Requests pass the connection's guards
/// (`h1_guard` under hyper, `request_guard` above it) first. `place` is the connection's place in
/// its listener's budget: it stays with the socket, into a WebSocket upgrade too (`held`).
/// `owed` is the connection's share of its listener's in-flight budget (`ShedLayer::share` of
/// the layer in `service`): the requests whose responses have not ended.
pub async fn serve_connection<IO, S>(
    io: IO,
    (place, owed): (Slot, Arc<Share>),
    service: S,
    drain: DrainWatch,
    server: HttpServer,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<http::Request<Incoming>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    // The socket keeps its place and its claim on drain wherever it goes, into a WebSocket too.
    let io = held::Held::new(io, (place, drain.clone()));
    let (mut io, findings) = h1_guard::GuardedIo::new(io, server.max_head, server.body_idle);
    io.wait_for_heads(HeadWait::new(server.header_read_timeout, owed));
    let service = request_guard::Guarded::new(service, findings.clone());
    // While draining, HTTP/1 responses say `Connection: close` (see `crate::drain`).
    let service = crate::drain::CloseOnDrain::new(service, drain.clone());
    // With upgrades: a WebSocket's 101 hands the connection to `crate::http::upgrade`.
    let conn = server
        .builder
        .serve_connection_with_upgrades(TokioIo::new(io), InPlace::new(service));
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        _ = drain.signaled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                res = conn => if let Err(e) = res {
                    tracing::debug!(error = %e, "connection ended with an error while draining");
                },
                _ = drain.aborted() => tracing::debug!("drain grace over; connection closed"),
            }
        }
        _ = findings.abusive(), if server.police_abandons => {
            // Closed at once: a graceful HTTP/2 shutdown would keep accepting streams for a
            // round trip, and the client has shown what it does with them.
            tracing::warn!("closing a connection whose client abandons most requests (rapid reset)");
        }
    }
}

/// The connection's tower stack as hyper's service, HTTP/1 requests called in place. hyper calls
/// its service through `&self`, tower through `&mut self`; hyper-util's `TowerToHyperService`
/// bridges the two by cloning the whole stack for every request (several `Arc`s counted up and
/// down, a watch receiver) and calling the clone when the request's future is first polled:
/// ~400 instructions per request (issue #15). hyper calls one connection's service from that
/// connection's task alone and never from inside a call, so a `RefCell` gives `call` its `&mut`
/// without a clone. An HTTP/1 request's future is polled at once in that same task, so nothing
/// else moves. An HTTP/2 request's future runs in a task of its own, spawned per stream: called in
/// place, every stream's layers (routing, telemetry, authorization, the `request_guard` count)
/// would run in the connection's one task at accept, ahead of the stream's own task, which on
/// a peer's connection serializes what the workers share now, and would count a request as served
/// before it is forwarded. HTTP/2 requests therefore take the clone, as before. Every layer of the
/// proxy's stacks is always ready (none queues); should one ever not be, or the cell be borrowed,
/// the request waits for readiness on a clone too.
struct InPlace<S> {
    service: RefCell<S>,
    spare: S,
}

impl<S: Clone> InPlace<S> {
    fn new(service: S) -> Self {
        InPlace {
            spare: service.clone(),
            service: RefCell::new(service),
        }
    }
}

impl<S> hyper::service::Service<http::Request<Incoming>> for InPlace<S>
where
    S: tower::Service<http::Request<Incoming>, Response = http::Response<Body>, Error = Infallible>
        + Clone,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Either<S::Future, Oneshot<S, http::Request<Incoming>>>;

    fn call(&self, req: http::Request<Incoming>) -> Self::Future {
        if req.version() != http::Version::HTTP_2 {
            if let Ok(mut service) = self.service.try_borrow_mut() {
                // A layer that is not ready would wake this no-op waker; the clone below waits
                // with the connection's own instead.
                let mut cx = Context::from_waker(Waker::noop());
                if let Poll::Ready(Ok(())) = service.poll_ready(&mut cx) {
                    return Either::Left(service.call(req));
                }
            }
        }
        Either::Right(self.spare.clone().oneshot(req))
    }
}
