//! Opaque TCP: byte streams the proxy carries without understanding them (server-speaks-first
//! protocols, TLS from the app, anything not HTTP).
//!
//! Between sidecars an opaque stream still goes over mutual TLS: the client offers only the ALPN
//! protocol `trellis-opaque`, then sends one header line, `dst-port <port>\n`, naming the port the
//! app originally connected to; the server (the destination's inbound listener) checks the peer
//! against its authorization policy as a connection, connects to `app_host:<port>` and copies
//! bytes both ways. See docs/protocol.md. Destinations outside the mesh get a plain TCP
//! connection (`passthrough`).
//!
//! Drain: every stream holds a `DrainWatch` until it ends, so a draining proxy waits for it, up
//! to the grace period. An opaque protocol cannot be asked to wind down, so the stream is left
//! to end on its own and is cut only when the grace period is over.
//!
//! Silence: every connection a stream opens has TCP keepalive, and a stream that carries no byte
//! either way for `Tunnel::idle_timeout` is closed (`limits::idle`), so a vanished peer or an abandoned
//! stream does not hold its slot and descriptors for ever.
//!
//! Expiry: a stream over mTLS is cut when the peer's certificate expires (`crate::tls::expiry`),
//! on both sides: the client here (`to_mesh`), the server through the drain watch the inbound
//! listener gives it (`DrainWatch::until` with no grace), since an opaque protocol cannot be
//! asked to stop at a request boundary.

use crate::authz::{Attributes, AuthzStats, Peer};
use crate::config::SnapshotStore;
use crate::drain::DrainWatch;
use crate::limits::idle::{copy_until_idle, Ended};
use crate::telemetry::metrics::{Direction, ProxyMetrics};
use crate::tls::{record_retired, PeerExpiry, TlsContext};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The ALPN protocol of an opaque stream between sidecars.
pub const ALPN: &[u8] = b"trellis-opaque";
const HEADER_PREFIX: &str = "dst-port ";
/// Longest header line accepted, newline included.
const MAX_HEADER: usize = 32;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How a stream treats silence (`Limits::tcp_keepalive`, `Limits::tunnel_idle_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tunnel {
    pub keepalive: Duration,
    pub idle_timeout: Duration,
}

impl Tunnel {
    pub fn from_limits(limits: &crate::Limits) -> Tunnel {
        Tunnel {
            keepalive: limits.tcp_keepalive,
            idle_timeout: limits.tunnel_idle_timeout,
        }
    }
}

impl Default for Tunnel {
    fn default() -> Self {
        Tunnel::from_limits(&crate::Limits::default())
    }
}

/// What opening a stream to a peer sidecar needs besides its address and identity.
#[derive(Clone, Copy)]
pub struct Dial<'a> {
    pub tls: &'a TlsContext,
    /// Where a stream cut at the peer's certificate expiry is counted.
    pub metrics: &'a ProxyMetrics,
    pub tunnel: Tunnel,
}

#[derive(Debug, thiserror::Error)]
pub enum OpaqueError {
    #[error("connecting to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("mTLS to {addr}: {reason}")]
    Tls { addr: SocketAddr, reason: String },
    #[error("{addr} does not speak trellis-opaque (ALPN not negotiated)")]
    NoAlpn { addr: SocketAddr },
    #[error("bad trellis-opaque header: {0}")]
    Header(&'static str),
    #[error("port {0} is the proxy's own and is not reachable through opaque TCP")]
    OwnPort(u16),
    #[error("{peer} may not open TCP connections to port {port} (rule {rule})")]
    Denied {
        peer: String,
        port: u16,
        rule: String,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The header line the client sends first.
pub fn encode_header(port: u16) -> Vec<u8> {
    format!("{HEADER_PREFIX}{port}\n").into_bytes()
}

/// Parses a header line (without its newline).
pub fn parse_header(line: &[u8]) -> Result<u16, OpaqueError> {
    let text = std::str::from_utf8(line).map_err(|_| OpaqueError::Header("not ASCII"))?;
    let port = text
        .strip_prefix(HEADER_PREFIX)
        .ok_or(OpaqueError::Header("expected `dst-port <port>`"))?;
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(OpaqueError::Header("port is not 1-65535")),
    }
}

/// Reads the header one byte at a time, so no payload byte is consumed with it.
async fn read_header<IO: AsyncRead + Unpin>(io: &mut IO) -> Result<u16, OpaqueError> {
    let mut line = Vec::with_capacity(MAX_HEADER);
    loop {
        let byte = io.read_u8().await?;
        if byte == b'\n' {
            return parse_header(&line);
        }
        if line.len() + 1 >= MAX_HEADER {
            return Err(OpaqueError::Header("line too long"));
        }
        line.push(byte);
    }
}

/// Copies until both directions end; errors are the normal end of many TCP conversations.
/// `drain` is held for as long as bytes flow, and cuts the stream when the grace period ends;
/// a stream silent both ways for `idle_timeout` is closed.
async fn splice<A, B>(a: A, b: B, what: &str, drain: DrainWatch, idle_timeout: Duration)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    tokio::select! {
        ended = copy_until_idle(a, b, idle_timeout) => match ended {
            Ended::Closed(up, down) => tracing::debug!(what, up, down, "opaque stream closed"),
            Ended::Failed(e) => tracing::debug!(what, error = %e, "opaque stream ended with an error"),
            Ended::Idle { bytes } => {
                tracing::info!(what, ?idle_timeout, bytes, "opaque stream idle; closed")
            }
        },
        _ = drain.aborted() => {
            tracing::debug!(what, "drain grace over or peer certificate expired; opaque stream closed")
        }
    }
    if drain.is_draining() {
        tracing::debug!(what, "opaque stream ended during drain");
    }
}

/// A TCP connection for a stream, with `keepalive` (see `bind::keepalive`).
async fn connect(addr: SocketAddr, keepalive: Duration) -> Result<TcpStream, OpaqueError> {
    let fail = |reason: String| OpaqueError::Connect { addr, reason };
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| fail("timed out".into()))?
        .map_err(|e| fail(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let socket = socket2::SockRef::from(&tcp);
    if let Err(e) = socket.set_tcp_keepalive(&super::bind::keepalive(keepalive)) {
        tracing::debug!(%addr, error = %e, "TCP keepalive not set");
    }
    Ok(tcp)
}

/// Carries `app` to a peer sidecar at `endpoint` (which must prove `identity`) over mTLS, for
/// the peer's app port `port`, until either side ends it, it stays silent for the idle timeout
/// or the peer's certificate expires (counted in `dial.metrics`).
pub async fn to_mesh(
    app: TcpStream,
    (endpoint, identity): (SocketAddr, &str),
    port: u16,
    drain: DrainWatch,
    dial: Dial<'_>,
) -> Result<(), OpaqueError> {
    let Dial {
        tls,
        metrics,
        tunnel,
    } = dial;
    let tls_err = |reason: String| OpaqueError::Tls {
        addr: endpoint,
        reason,
    };
    let config = tls
        .client_config(identity)
        .map_err(|e| tls_err(e.to_string()))?;
    let mut config = (*config).clone();
    config.alpn_protocols = vec![ALPN.to_vec()];
    let tcp = connect(endpoint, tunnel.keepalive).await?;
    let mut stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(crate::tls::placeholder_server_name(), tcp)
        .await
        .map_err(|e| tls_err(e.to_string()))?;
    if stream.get_ref().1.alpn_protocol() != Some(ALPN) {
        return Err(OpaqueError::NoAlpn { addr: endpoint });
    }
    let expiry = PeerExpiry::of(stream.get_ref().1)
        .filter(|e| !e.has_passed())
        .ok_or_else(|| tls_err("peer certificate expired".into()))?;
    stream.write_all(&encode_header(port)).await?;
    let (drain, expiring) = drain.until(expiry.at, Duration::ZERO, || {
        record_retired(Some(metrics), Direction::Outbound, identity, &expiry)
    });
    tokio::select! {
        _ = splice(app, stream, "to mesh", drain, tunnel.idle_timeout) => {}
        never = expiring => match never {},
    }
    Ok(())
}

/// A plain TCP connection to a destination outside the mesh.
pub async fn passthrough(
    app: TcpStream,
    dst: SocketAddr,
    drain: DrainWatch,
    tunnel: Tunnel,
) -> Result<(), OpaqueError> {
    let upstream = connect(dst, tunnel.keepalive).await?;
    splice(app, upstream, "passthrough", drain, tunnel.idle_timeout).await;
    Ok(())
}

/// What the inbound side needs to serve opaque streams.
#[derive(Debug, Clone)]
pub struct InboundOpaque {
    pub app_host: IpAddr,
    /// The proxy's listener ports, never reachable this way.
    pub own_ports: Vec<u16>,
    pub store: SnapshotStore,
    pub authz: Arc<AuthzStats>,
    pub tunnel: Tunnel,
}

/// Whether the handshake negotiated `trellis-opaque`.
pub fn is_opaque<IO>(tls: &tokio_rustls::server::TlsStream<IO>) -> bool {
    tls.get_ref().1.alpn_protocol() == Some(ALPN)
}

/// Serves one opaque stream from an authenticated peer: header, authorization, then the app.
pub async fn serve_inbound<IO>(
    mut io: IO,
    peer: Peer,
    ctx: &InboundOpaque,
    drain: DrainWatch,
) -> Result<(), OpaqueError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let port = tokio::time::timeout(HEADER_TIMEOUT, read_header(&mut io))
        .await
        .map_err(|_| OpaqueError::Header("timed out"))??;
    authorize(&peer, port, ctx)?;
    let app = connect(SocketAddr::new(ctx.app_host, port), ctx.tunnel.keepalive).await?;
    splice(io, app, "to app", drain, ctx.tunnel.idle_timeout).await;
    Ok(())
}

/// A plaintext connection that is not HTTP, to a workload whose mTLS mode admits plaintext
/// (transparent mode): to the app on the original destination's `port`, if the policy lets an
/// unauthenticated peer open it.
pub async fn serve_plaintext(
    stream: TcpStream,
    port: u16,
    ctx: &InboundOpaque,
    drain: DrainWatch,
) -> Result<(), OpaqueError> {
    authorize(&Peer::unauthenticated(), port, ctx)?;
    let app = connect(SocketAddr::new(ctx.app_host, port), ctx.tunnel.keepalive).await?;
    let idle_timeout = ctx.tunnel.idle_timeout;
    splice(stream, app, "plaintext to app", drain, idle_timeout).await;
    Ok(())
}

/// The connection-level checks: never the proxy's own ports, and the authorization policy.
fn authorize(peer: &Peer, port: u16, ctx: &InboundOpaque) -> Result<(), OpaqueError> {
    if ctx.own_ports.contains(&port) {
        return Err(OpaqueError::OwnPort(port));
    }
    let snapshot = ctx.store.load();
    let Some(inbound) = snapshot.inbound.as_ref() else {
        return Ok(());
    };
    // Policies name service ports; map the app port back when the config knows it.
    let service_port =
        (inbound.ports.iter().find(|p| p.target_port == port)).map_or(port, |p| p.port);
    let attrs = Attributes {
        port: Some(service_port),
        http: None,
    };
    let decision = inbound.authorization.decide(peer, &attrs);
    ctx.authz.record(&decision);
    if decision.allowed() {
        return Ok(());
    }
    Err(OpaqueError::Denied {
        peer: (peer.identity.clone()).unwrap_or_else(|| "an unauthenticated peer".into()),
        port,
        rule: decision.rule,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_junk() {
        let line = encode_header(5432);
        assert_eq!(line, b"dst-port 5432\n");
        assert_eq!(parse_header(&line[..line.len() - 1]).unwrap(), 5432);
        for bad in [
            &b"dst-port 0"[..],
            b"dst-port 70000",
            b"port 80",
            b"dst-port",
            b"\xff",
        ] {
            assert!(parse_header(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn header_is_read_without_the_payload() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"dst-port 25\nEHLO").await.unwrap();
        assert_eq!(read_header(&mut server).await.unwrap(), 25);
        let mut rest = [0u8; 4];
        server.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"EHLO");
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(&[b'a'; 40]).await.unwrap();
        assert!(read_header(&mut server).await.is_err(), "too long");
    }

    /// An opaque stream over mTLS is cut when the peer's certificate expires: here the server's
    /// expires first, so the client side (`to_mesh`) cuts it and counts it; the server side runs
    /// under the inbound listener's expiry watch (`DrainWatch::until`, no grace) for the client's
    /// later expiry, and counts nothing.
    #[tokio::test]
    async fn an_opaque_stream_is_cut_at_the_peer_certificate_expiry() {
        use crate::telemetry::metrics::ProxyMetrics;
        use crate::tls::test_pki::{unix_now, Ca};
        use crate::tls::PeerExpiry;
        use std::sync::atomic::Ordering;
        const SERVER: &str = "spiffe://trellis.test/ns/default/sa/db";
        let ca = Ca::generate();
        let (server_tls, server_leaf) = ca.context(SERVER, unix_now() + 2);
        let (client_tls, _) = ca.context("spiffe://trellis.test/ns/default/sa/app", unix_now() + 3);
        let expiry = PeerExpiry::of_chain(&[server_leaf]).expect("expiry");

        // The peer sidecar: mTLS, then the opaque header, then an echo "app" on loopback.
        let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = conn.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let ctx = InboundOpaque {
            app_host: echo_addr.ip(),
            own_ports: Vec::new(),
            store: crate::config::new_store(),
            authz: Arc::default(),
            tunnel: Tunnel::default(),
        };
        let peer_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer_addr = peer_listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(server_tls.server_config().unwrap());
        let server_metrics = Arc::new(ProxyMetrics::new("db".into()));
        let counted = server_metrics.clone();
        let (_server_drain, server_watch) = crate::drain::channel();
        tokio::spawn(async move {
            let (tcp, _) = peer_listener.accept().await.unwrap();
            let tls = acceptor.accept(tcp).await.unwrap();
            assert!(is_opaque(&tls));
            let client_expiry = PeerExpiry::of(tls.get_ref().1).unwrap();
            let peer = Peer::authenticated(String::from("spiffe://trellis.test/ns/default/sa/app"));
            let (watch, expiring) = server_watch.until(client_expiry.at, Duration::ZERO, || {
                crate::tls::record_retired(
                    Some(&counted),
                    crate::telemetry::metrics::Direction::Inbound,
                    "app",
                    &client_expiry,
                )
            });
            tokio::select! {
                _ = serve_inbound(tls, peer, &ctx, watch) => {}
                never = expiring => match never {},
            }
        });

        // The client sidecar: the app's connection, carried by `to_mesh`.
        let app_side = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut app = TcpStream::connect(app_side.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = app_side.accept().await.unwrap();
        let client_metrics = Arc::new(ProxyMetrics::new("app".into()));
        let (_client_drain, client_watch) = crate::drain::channel();
        let carried = {
            let metrics = client_metrics.clone();
            tokio::spawn(async move {
                let port = echo_addr.port();
                let dial = Dial {
                    tls: &client_tls,
                    metrics: &metrics,
                    tunnel: Tunnel::default(),
                };
                to_mesh(accepted, (peer_addr, SERVER), port, client_watch, dial).await
            })
        };
        let mut buf = [0u8; 4];
        // Bytes flow until just before the expiry.
        while tokio::time::Instant::now() + Duration::from_millis(300) < expiry.at {
            app.write_all(b"ping").await.unwrap();
            app.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"ping");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Then the stream ends, at the expiry.
        let ended = tokio::time::timeout(Duration::from_secs(3), app.read(&mut buf)).await;
        let late = tokio::time::Instant::now().saturating_duration_since(expiry.at);
        assert!(matches!(ended, Ok(Ok(0)) | Ok(Err(_))), "closed: {ended:?}");
        assert!(
            late < Duration::from_millis(500),
            "{late:?} after the expiry"
        );
        assert!(carried.await.unwrap().is_ok());
        let closes = |m: &ProxyMetrics| {
            let c = |d| m.conns(d).peer_expired_closes.load(Ordering::Relaxed);
            use crate::telemetry::metrics::Direction::*;
            (c(Inbound), c(Outbound))
        };
        assert_eq!(closes(&client_metrics), (0, 1), "the client cut it");
        assert_eq!(
            closes(&server_metrics),
            (0, 0),
            "the client's certificate lives on"
        );
    }

    /// A stream neither side says anything on is closed after the idle timeout, on both sides.
    #[tokio::test]
    async fn a_silent_stream_is_closed_after_the_idle_timeout() {
        let outside = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dst = outside.local_addr().unwrap();
        let (app_side, accepted) = {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            (client, l.accept().await.unwrap().0)
        };
        let tunnel = Tunnel {
            keepalive: Duration::from_secs(9),
            idle_timeout: Duration::from_millis(300),
        };
        let (_drain, watch) = crate::drain::channel();
        let started = tokio::time::Instant::now();
        let carried = tokio::spawn(passthrough(accepted, dst, watch, tunnel));
        let (mut far, _) = outside.accept().await.unwrap();
        let mut app = app_side;
        // One exchange, then silence.
        app.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        far.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        let quiet_from = tokio::time::Instant::now();
        let app_end = tokio::time::timeout(Duration::from_secs(3), app.read(&mut buf)).await;
        assert!(
            matches!(app_end, Ok(Ok(0)) | Ok(Err(_))),
            "app side closed: {app_end:?}"
        );
        let far_end = tokio::time::timeout(Duration::from_secs(3), far.read(&mut buf)).await;
        assert!(
            matches!(far_end, Ok(Ok(0)) | Ok(Err(_))),
            "far side closed: {far_end:?}"
        );
        let quiet = quiet_from.elapsed();
        assert!(
            quiet >= Duration::from_millis(250),
            "closed after {quiet:?} of silence"
        );
        assert!(
            quiet < Duration::from_secs(2),
            "closed after {quiet:?} of silence"
        );
        assert!(carried.await.unwrap().is_ok());
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn streams_connect_with_tcp_keepalive() {
        let far = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = connect(far.local_addr().unwrap(), Duration::from_secs(9))
            .await
            .unwrap();
        let socket = socket2::SockRef::from(&tcp);
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), Duration::from_secs(9));
    }

    /// A draining proxy waits for an opaque stream until it ends (the grace period is the
    /// caller's `timeout` around `drain`).
    #[tokio::test]
    async fn drain_waits_for_an_opaque_stream() {
        let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app_addr = app.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut conn, _) = app.accept().await.unwrap();
            let mut buf = [0u8; 64];
            // Echo until the client closes.
            while let Ok(n @ 1..) = conn.read(&mut buf).await {
                let _ = conn.write_all(&buf[..n]).await;
            }
        });
        let ctx = InboundOpaque {
            app_host: app_addr.ip(),
            own_ports: Vec::new(),
            store: crate::config::new_store(),
            authz: Arc::default(),
            tunnel: Tunnel::default(),
        };
        let (drain, watch) = crate::drain::channel();
        let (mut client, server) = tokio::io::duplex(256);
        let stream = tokio::spawn(async move {
            serve_inbound(server, Peer::unauthenticated(), &ctx, watch).await
        });
        client
            .write_all(&encode_header(app_addr.port()))
            .await
            .unwrap();
        client.write_all(b"ping").await.unwrap();
        let mut echoed = [0u8; 4];
        client.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"ping");

        let drained = tokio::spawn(drain.drain());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!drained.is_finished(), "drain waits for the open stream");
        // Still carried while draining.
        client.write_all(b"pong").await.unwrap();
        client.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"pong");

        drop(client);
        tokio::time::timeout(Duration::from_secs(2), drained)
            .await
            .expect("drain completes once the stream ends")
            .unwrap();
        assert!(stream.await.unwrap().is_ok());
    }
}
