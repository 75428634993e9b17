//! Each way a request can fail on a mesh connection, produced by a real HTTP/2 server on loopback
//! (the h2 crate, hyper, or raw frames where no library misbehaves on purpose), and the verdict.

use super::*;
use crate::transport::MeshConnection;
use bytes::Bytes;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CONNECT: Duration = Duration::from_secs(2);

async fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    (l, addr)
}

fn post(addr: SocketAddr) -> Request<Body> {
    Request::post(format!("http://{addr}/"))
        .body(Body::full(Bytes::from_static(b"payload")))
        .expect("request")
}

async fn send_on(
    conn: &MeshConnection,
    addr: SocketAddr,
) -> Result<Response<Incoming>, ProxyError> {
    let mut sender = conn.sender(CONNECT).await?;
    send(&mut sender, post(addr), addr).await
}

/// Sends one request to a peer that resets every stream with `reason`.
async fn send_to_a_peer_resetting_with(
    reason: h2::Reason,
) -> Result<Response<Incoming>, ProxyError> {
    let (l, addr) = listener().await;
    tokio::spawn(async move {
        let (tcp, _) = l.accept().await.expect("accept");
        let mut conn = h2::server::handshake(tcp).await.expect("h2 handshake");
        while let Some(Ok((_req, mut respond))) = conn.accept().await {
            respond.send_reset(reason);
        }
    });
    let conn = MeshConnection::plain(addr);
    send_on(&conn, addr).await
}

#[tokio::test]
async fn refused_stream_is_unprocessed() {
    let result = send_to_a_peer_resetting_with(h2::Reason::REFUSED_STREAM).await;
    assert!(
        matches!(result, Err(ProxyError::Unprocessed { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn reset_after_processing_is_not_unprocessed() {
    let result = send_to_a_peer_resetting_with(h2::Reason::INTERNAL_ERROR).await;
    assert!(
        matches!(result, Err(ProxyError::Upstream { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn connection_lost_mid_request_is_not_unprocessed() {
    let (l, addr) = listener().await;
    tokio::spawn(async move {
        let (tcp, _) = l.accept().await.expect("accept");
        let mut conn = h2::server::handshake(tcp).await.expect("h2 handshake");
        // The request arrived (it may have been acted on), then the peer vanished.
        let _request = conn.accept().await;
        drop(conn);
    });
    let conn = MeshConnection::plain(addr);
    let result = send_on(&conn, addr).await;
    assert!(
        matches!(result, Err(ProxyError::Upstream { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn connection_refused_is_unprocessed() {
    let (l, addr) = listener().await;
    drop(l);
    let conn = MeshConnection::plain(addr);
    let result = send_on(&conn, addr).await;
    assert!(
        result.as_ref().is_err_and(ProxyError::is_unprocessed),
        "{result:?}"
    );
}

/// A hyper server drained with `graceful_shutdown`, as the proxy's listeners are: the request in
/// flight completes, and the connection, once it has said GOAWAY, takes no new request; one sent
/// on it anyway comes back as never processed, and the next request opens a new connection.
#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_and_refuses_new_requests() {
    let (l, addr) = listener().await;
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let connections = Arc::new(AtomicUsize::new(0));
    let accepted = connections.clone();
    tokio::spawn(async move {
        // Only the first connection is drained.
        let mut drain_rx = Some(drain_rx);
        while let Ok((tcp, _)) = l.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            let drain_rx = drain_rx.take();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok::<_, std::convert::Infallible>(Response::new(Body::full("done")))
                });
                let conn =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
                tokio::pin!(conn);
                let drained = async {
                    match drain_rx {
                        Some(rx) => {
                            let _ = rx.await;
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = drained => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
        }
    });
    let conn = MeshConnection::plain(addr);
    let mut sender = conn.sender(CONNECT).await.expect("connect");
    let mut in_flight_sender = sender.clone();
    let in_flight =
        tokio::spawn(async move { send(&mut in_flight_sender, post(addr), addr).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = drain_tx.send(());
    tokio::time::sleep(Duration::from_millis(100)).await;

    let late = send(&mut sender, post(addr), addr).await;
    assert!(
        matches!(late, Err(ProxyError::Unprocessed { .. })),
        "a request after GOAWAY: {late:?}"
    );
    let rsp = in_flight
        .await
        .expect("join")
        .expect("in-flight request completes");
    assert_eq!(rsp.status(), 200);
    let body = http_body_util::BodyExt::collect(rsp.into_body())
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(body, Bytes::from_static(b"done"));
    assert!(!conn.is_live(), "the drained connection is not used again");
    let next = send_on(&conn, addr).await;
    assert_eq!(next.map(|r| r.status().as_u16()).ok(), Some(200));
    assert_eq!(connections.load(Ordering::SeqCst), 2, "on a new connection");
}

/// Raw frames, because no server library sends GOAWAY below a stream it has read: the server reads
/// the HEADERS of streams 1 and 3, says GOAWAY with last-stream-id 1, then answers stream 1.
#[tokio::test]
async fn stream_above_goaway_last_stream_id_is_unprocessed() {
    let (l, addr) = listener().await;
    tokio::spawn(async move {
        let (mut tcp, _) = l.accept().await.expect("accept");
        let mut preface = [0u8; 24];
        tcp.read_exact(&mut preface).await.expect("preface");
        write_frame(&mut tcp, 0x4, 0, 0, &[]).await; // SETTINGS
        let mut streams = Vec::new();
        while streams.len() < 2 {
            let (kind, flags, stream) = read_frame(&mut tcp).await;
            match kind {
                0x4 if flags & 1 == 0 => write_frame(&mut tcp, 0x4, 1, 0, &[]).await, // ACK
                0x1 => streams.push(stream),
                _ => {}
            }
        }
        assert_eq!(streams, [1, 3]);
        let mut goaway = 1u32.to_be_bytes().to_vec();
        goaway.extend_from_slice(&0u32.to_be_bytes()); // NO_ERROR
        write_frame(&mut tcp, 0x7, 0, 0, &goaway).await;
        // HEADERS, END_STREAM | END_HEADERS, HPACK static index 8 = `:status: 200`.
        write_frame(&mut tcp, 0x1, 0x5, 1, &[0x88]).await;
        // Keep the connection open while the client reads.
        let mut rest = Vec::new();
        let _ = tcp.read_to_end(&mut rest).await;
    });
    let conn = MeshConnection::plain(addr);
    let mut first = conn.sender(CONNECT).await.expect("connect");
    let mut second = first.clone();
    let one = tokio::spawn(async move { send(&mut first, post(addr), addr).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let three = tokio::spawn(async move { send(&mut second, post(addr), addr).await });
    let three = three.await.expect("join");
    assert!(
        matches!(three, Err(ProxyError::Unprocessed { .. })),
        "stream 3: {three:?}"
    );
    let one = one.await.expect("join");
    assert_eq!(one.map(|r| r.status().as_u16()).ok(), Some(200));
}

async fn write_frame(tcp: &mut TcpStream, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    let mut frame = len.to_be_bytes()[1..].to_vec();
    frame.extend_from_slice(&[kind, flags]);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    tcp.write_all(&frame).await.expect("write frame");
}

/// Reads one frame; returns its type, flags and stream id (the payload is skipped).
async fn read_frame(tcp: &mut TcpStream) -> (u8, u8, u32) {
    let mut head = [0u8; 9];
    tcp.read_exact(&mut head).await.expect("frame header");
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    tcp.read_exact(&mut payload).await.expect("frame payload");
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    (head[3], head[4], stream)
}
