//! Retirement at the peer's expiry on real mTLS over loopback: a peer sidecar (the proxy's own
//! server TLS config, hyper's HTTP/2 server) whose certificate lives a second or two, and the
//! proxy's client connection to it.

use super::*;
use crate::errors::ProxyError;
use crate::tls::test_pki::{unix_now, Ca};
use crate::tls::TlsContext;
use crate::transport::{send, MeshConnection, MeshConnector};
use bytes::Bytes;
use http::{Request, Response};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const SERVER: &str = "spiffe://trellis.test/ns/default/sa/hello";
const CLIENT: &str = "spiffe://trellis.test/ns/default/sa/client";
const CONNECT: Duration = Duration::from_secs(2);

/// A peer sidecar: mTLS with the proxy's server config, then HTTP/2; `/slow` answers after
/// 800 ms. Counts completed handshakes.
async fn peer(tls: &TlsContext) -> (SocketAddr, Arc<AtomicUsize>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config().expect("server config"));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handshakes = Arc::new(AtomicUsize::new(0));
    let counted = handshakes.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, counted) = (acceptor.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let service =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        if req.uri().path() == "/slow" {
                            tokio::time::sleep(Duration::from_millis(800)).await;
                        }
                        Ok::<_, std::convert::Infallible>(Response::new(Body::full("ok")))
                    });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, handshakes)
}

fn post(addr: SocketAddr, path: &str) -> Request<Body> {
    Request::post(format!("http://{addr}{path}"))
        .body(Body::full(Bytes::from_static(b"payload")))
        .expect("request")
}

async fn status(
    sender: &mut SendRequest<Body>,
    addr: SocketAddr,
    path: &str,
) -> Result<u16, ProxyError> {
    send(sender, post(addr, path), addr)
        .await
        .map(|r| r.status().as_u16())
}

/// The whole life of a connection whose peer's certificate expires: used up to the expiry,
/// taken out of its slot at the expiry (counted), a request in flight then still answered, one
/// sent on the old sender handed back as never processed, and a reconnect refused because the
/// peer still presents the expired certificate.
#[tokio::test]
async fn the_connection_is_retired_at_the_peer_certificate_expiry() {
    let ca = Ca::generate();
    // Whole seconds: the expiry is 1-2 s away.
    let (server_tls, server_leaf) = ca.context(SERVER, unix_now() + 2);
    let (client_tls, _) = ca.context(CLIENT, unix_now() + 3600);
    let expiry = PeerExpiry::of_chain(&[server_leaf]).expect("expiry");
    let (addr, handshakes) = peer(&server_tls).await;
    let metrics = Arc::new(ProxyMetrics::new("test".into()));
    let conn: MeshConnection = MeshConnector::new(client_tls)
        .with_metrics(metrics.clone())
        .connection(addr, SERVER);
    let expired = || metrics.outbound.peer_expired_closes.load(Ordering::Relaxed);

    let mut sender = conn.sender(CONNECT).await.expect("connect");
    assert_eq!(status(&mut sender, addr, "/").await.ok(), Some(200));
    // Until just before the expiry, every request shares the one connection.
    while Instant::now() + Duration::from_millis(400) < expiry.at {
        let mut live = conn.sender(CONNECT).await.expect("live connection");
        assert_eq!(status(&mut live, addr, "/").await.ok(), Some(200));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(conn.is_live());
    assert_eq!(handshakes.load(Ordering::SeqCst), 1, "one connection");
    assert_eq!(expired(), 0);
    // Starts ~400 ms before the expiry and ends ~400 ms after it: within the grace.
    let mut in_flight_sender = sender.clone();
    let in_flight = tokio::spawn(async move { status(&mut in_flight_sender, addr, "/slow").await });

    tokio::time::sleep_until(expiry.at + Duration::from_millis(100)).await;
    assert!(conn.sender.load().is_none(), "taken out of its slot");
    assert!(!conn.is_live());
    assert_eq!(expired(), 1, "counted once, outbound");
    assert_eq!(
        metrics.inbound.peer_expired_closes.load(Ordering::Relaxed),
        0
    );
    let raced = status(&mut sender, addr, "/").await;
    assert!(
        matches!(raced, Err(ProxyError::Unprocessed { .. })),
        "a request on the retired connection is never processed: {raced:?}"
    );
    assert_eq!(
        in_flight.await.expect("join").ok(),
        Some(200),
        "the request in flight finishes"
    );
    let reconnect = conn.sender(CONNECT).await;
    assert!(
        matches!(&reconnect, Err(ProxyError::Tls { reason, .. }) if reason.contains("xpired")),
        "the peer's certificate is refused from its expiry on: {:?}",
        reconnect.map(|_| ())
    );
    assert_eq!(expired(), 1);
}

/// A peer that renews: the retired connection is replaced by one to the peer's new certificate,
/// and requests sent back to back across the expiry all succeed. A request handed to the old
/// connection in the instant it is retired comes back `Unprocessed` (never sent): the retry layer
/// above resends those, and so does this test, once, as it would.
#[tokio::test]
async fn a_renewed_peer_gets_a_new_connection_and_no_request_fails() {
    let ca = Ca::generate();
    let (server_tls, server_leaf) = ca.context(SERVER, unix_now() + 2);
    let (client_tls, _) = ca.context(CLIENT, unix_now() + 3600);
    let expiry = PeerExpiry::of_chain(&[server_leaf]).expect("expiry");
    let (addr, handshakes) = peer(&server_tls).await;
    // Renewal at about half life, as `identity` does: new handshakes get the new certificate.
    let (renewed, _) = ca.context(SERVER, unix_now() + 3600);
    let swap = server_tls.certs.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(key) = renewed.certs.get() {
            swap.set(key);
        }
    });
    let metrics = Arc::new(ProxyMetrics::new("test".into()));
    let conn = MeshConnector::new(client_tls)
        .with_metrics(metrics.clone())
        .connection(addr, SERVER);
    let (mut ok, mut failed, mut resent) = (0, 0, 0);
    while Instant::now() < expiry.at + Duration::from_millis(700) {
        let mut result = Err(ProxyError::NotReady("not sent"));
        for _ in 0..2 {
            result = match conn.sender(CONNECT).await {
                Ok(mut s) => status(&mut s, addr, "/").await,
                Err(e) => Err(e),
            };
            if !matches!(result, Err(ProxyError::Unprocessed { .. })) {
                break;
            }
            resent += 1;
        }
        match result {
            Ok(200) => ok += 1,
            other => {
                failed += 1;
                eprintln!("failed: {other:?}");
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(failed, 0, "{ok} succeeded");
    assert!(
        resent <= 1,
        "only a request at the retirement instant is resent: {resent}"
    );
    assert!(ok > 50, "{ok} requests");
    assert_eq!(
        handshakes.load(Ordering::SeqCst),
        2,
        "the expired connection was replaced"
    );
    assert_eq!(
        metrics.outbound.peer_expired_closes.load(Ordering::Relaxed),
        1
    );
    assert!(conn.is_live());
}

/// Past the cut, the socket fails even while idle (the pending read is woken), and writes fail.
#[tokio::test]
async fn cut_at_fails_the_socket_when_its_time_comes() {
    let (a, mut b) = tokio::io::duplex(64);
    let mut cut = CutAt::new(a, Instant::now() + Duration::from_millis(200));
    b.write_all(b"before").await.expect("write");
    let mut buf = [0u8; 6];
    cut.read_exact(&mut buf).await.expect("read before the cut");
    assert_eq!(&buf, b"before");
    cut.write_all(b"x").await.expect("write before the cut");
    let started = Instant::now();
    let idle_read = cut.read(&mut buf).await;
    let waited = started.elapsed();
    assert_eq!(
        idle_read.map_err(|e| e.kind()),
        Err(io::ErrorKind::ConnectionAborted)
    );
    assert!(
        waited >= Duration::from_millis(150) && waited < Duration::from_secs(2),
        "woken at the cut: {waited:?}"
    );
    let write = cut.write_all(b"y").await;
    assert_eq!(
        write.map_err(|e| e.kind()),
        Err(io::ErrorKind::ConnectionAborted)
    );
}

/// This sidecar's own certificate expired (renewal failing): the peer refuses the handshake,
/// and the request fails with an error that says so rather than a bare connection error.
#[tokio::test]
async fn an_expired_own_certificate_fails_with_a_tls_error() {
    let ca = Ca::generate();
    let (server_tls, _) = ca.context(SERVER, unix_now() + 3600);
    let (client_tls, client_leaf) = ca.context(CLIENT, unix_now() + 1);
    let expiry = PeerExpiry::of_chain(&[client_leaf]).expect("expiry");
    let (addr, handshakes) = peer(&server_tls).await;
    tokio::time::sleep_until(expiry.at + Duration::from_millis(50)).await;
    let conn = MeshConnector::new(client_tls).connection(addr, SERVER);
    let result = match conn.sender(CONNECT).await {
        Ok(mut s) => status(&mut s, addr, "/").await,
        Err(e) => Err(e),
    };
    assert!(
        matches!(&result, Err(ProxyError::Tls { reason, .. }) if reason.contains("xpired")),
        "{result:?}"
    );
    assert_eq!(handshakes.load(Ordering::SeqCst), 0);
}
