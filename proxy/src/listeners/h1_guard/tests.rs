//! The guard on a real hyper connection (over an in-memory pipe), with a stand-in request stack.

use super::*;
use crate::errors::ProxyError;
use crate::http::Body;
use crate::listeners::request_guard::Guarded;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::sync::atomic::AtomicUsize;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// Serves one guarded connection whose service reads the whole body: 200 with the body's length,
/// or, if the body fails, the 502 a failed forward would produce.
fn serve(body_idle: Duration) -> DuplexStream {
    serve_counted(body_idle).0
}

/// `serve`, also counting the requests that reached the service (were "forwarded") and the
/// bodies that failed there.
fn serve_counted(body_idle: Duration) -> (DuplexStream, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (io, findings) = GuardedIo::new(server, 64 * 1024, body_idle);
    let calls = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let (c, f) = (calls.clone(), failed.clone());
    let inner = tower::service_fn(move |req: Request<hyper::body::Incoming>| {
        c.fetch_add(1, Ordering::SeqCst);
        let failed = f.clone();
        async move {
            Ok::<_, Infallible>(match req.into_body().collect().await {
                Ok(body) => Response::new(Body::full(body.to_bytes().len().to_string())),
                Err(e) => {
                    failed.fetch_add(1, Ordering::SeqCst);
                    crate::http::rescue::error_response(
                        &ProxyError::Upstream {
                            addr: ([127, 0, 0, 1], 1).into(),
                            reason: e.to_string(),
                        },
                        false,
                    )
                }
            })
        }
    });
    let service = hyper_util::service::TowerToHyperService::new(Guarded::new(inner, findings));
    tokio::spawn(async move {
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        let _ = builder.serve_connection(TokioIo::new(io), service).await;
    });
    (client, calls, failed)
}

/// Everything the server writes until it closes the connection.
async fn exchange(client: &mut DuplexStream, request: &[u8]) -> String {
    client.write_all(request).await.expect("request written");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the server closed the connection");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn the_refused_request_gets_its_status_after_the_good_ones() {
    let mut client = serve(Duration::from_secs(60));
    let answer = exchange(
        &mut client,
        b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nokPOST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /c HTTP/1.1\r\nHost: h\r\n\r\n",
    )
    .await;
    let statuses: Vec<&str> = answer.matches("HTTP/1.1 ").map(|_| "").collect();
    assert_eq!(
        statuses.len(),
        2,
        "one answer each for /a and /b, none for /c: {answer}"
    );
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.contains("HTTP/1.1 400 Bad Request"), "{answer}");
    assert!(
        answer.contains("both Content-Length and Transfer-Encoding"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_request_sent_before_a_refused_upgrade_was_answered_is_still_judged() {
    // The stand-in answers the WebSocket request 200: refused, the connection stays HTTP/1, and
    // the request pipelined behind it in the same write is judged like any other (two Host
    // lines: refused) rather than passed unseen.
    let (mut client, calls, _) = serve_counted(Duration::from_secs(60));
    let answer = exchange(
        &mut client,
        b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 2, "{answer}");
    assert!(answer.contains("HTTP/1.1 400 Bad Request"), "{answer}");
    assert!(answer.contains("more than one Host header"), "{answer}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "only the upgrade request was served"
    );
}

#[tokio::test]
async fn a_malformed_chunk_is_the_clients_fault() {
    let mut client = serve(Duration::from_secs(60));
    let answer = exchange(
        &mut client,
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400 Bad Request"), "{answer}");
    assert!(answer.contains("chunk size missing"), "{answer}");
}

#[tokio::test]
async fn a_stalled_body_is_answered_408() {
    let mut client = serve(Duration::from_millis(200));
    let started = std::time::Instant::now();
    let answer = exchange(
        &mut client,
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout"),
        "{answer}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn good_requests_pass_untouched() {
    let mut client = serve(Duration::from_millis(200));
    let answer = exchange(
        &mut client,
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 2, "{answer}");
    assert!(!answer.contains("trellis-error"), "{answer}");
}

const CHUNKED_HEAD: &[u8] = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";

#[tokio::test]
async fn a_body_broken_in_its_first_bytes_never_reaches_the_service() {
    for body in [
        &b"zz\r\n"[..],
        b"5\nhello\r\n0\r\n\r\n",
        b"5;a b\r\nhello\r\n0\r\n\r\n",
        b"3\r\nhelloX\r\n0\r\n\r\n",
        b"5\r\nhello\r\n0\r\nbad trailer\r\n\r\n",
    ] {
        let (mut client, calls, _) = serve_counted(Duration::from_secs(60));
        let mut request = CHUNKED_HEAD.to_vec();
        request.extend_from_slice(body);
        let answer = exchange(&mut client, &request).await;
        let shown = String::from_utf8_lossy(body);
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request"),
            "{shown}: {answer}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 0, "{shown}: never forwarded");
    }
}

#[tokio::test]
async fn a_chunked_head_waits_for_its_first_size_line() {
    let (mut client, calls, _) = serve_counted(Duration::from_secs(60));
    let head =
        b"POST / HTTP/1.1\r\nHost: h\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n";
    client.write_all(head).await.expect("head written");
    client
        .write_all(b"5;a=b")
        .await
        .expect("part of the size line");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "held while the line is incomplete"
    );
    client.write_all(b"\r\nhel").await.expect("the line ends");
    let called = async {
        while calls.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    assert!(tokio::time::timeout(Duration::from_secs(5), called)
        .await
        .is_ok());
    let answer = exchange(&mut client, b"lo\r\n0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(
        answer.ends_with("\r\n\r\n5"),
        "the whole body reached the service: {answer}"
    );
}

#[tokio::test]
async fn a_first_size_line_broken_later_is_refused_before_forwarding() {
    let (mut client, calls, _) = serve_counted(Duration::from_secs(60));
    client.write_all(CHUNKED_HEAD).await.expect("head written");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answer = exchange(&mut client, b"5\nhello\r\n0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400 Bad Request"), "{answer}");
    assert!(answer.contains("invalid chunk size"), "{answer}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

/// hyper alone takes a malformed chunk extension (it drops extensions); the guard fails the body
/// at that byte, so what was forwarded is aborted rather than ended.
#[tokio::test]
async fn a_body_broken_after_forwarding_fails_for_the_service() {
    let (mut client, calls, failed) = serve_counted(Duration::from_secs(60));
    let mut first = CHUNKED_HEAD.to_vec();
    first.extend_from_slice(b"5\r\nhello\r\n");
    client
        .write_all(&first)
        .await
        .expect("head and first chunk");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "forwarded once the first line was read"
    );
    let answer = exchange(&mut client, b"3;a b\r\nabc\r\n0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400 Bad Request"), "{answer}");
    assert!(answer.contains("invalid chunk extension"), "{answer}");
    assert_eq!(
        failed.load(Ordering::SeqCst),
        1,
        "the service saw the body fail"
    );
}

#[test]
fn the_goaway_frame_is_well_formed() {
    let goaway = &INVALID_PREFACE_ANSWER[9..];
    let len = u32::from_be_bytes([0, goaway[0], goaway[1], goaway[2]]) as usize;
    assert_eq!(len, goaway.len() - 9, "length field");
    assert_eq!(goaway[3], 0x7, "GOAWAY");
    assert_eq!(&goaway[13..17], &[0, 0, 0, 1], "PROTOCOL_ERROR");
    assert_eq!(
        &INVALID_PREFACE_ANSWER[..9],
        &[0, 0, 0, 4, 0, 0, 0, 0, 0],
        "empty SETTINGS"
    );
}

#[tokio::test]
async fn an_invalid_http2_preface_gets_goaway_and_http1_garbage_gets_400() {
    for preface in [
        &b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"[..],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\r",
        b"PRI * HTTP/2.0 \r\n\r\nSM\r\n\r\n",
        b"PRI * HTTP/2.0\n\nSM\n\n",
    ] {
        let mut client = serve(Duration::from_secs(60));
        let answer = exchange(&mut client, preface).await;
        assert_eq!(
            answer.as_bytes(),
            INVALID_PREFACE_ANSWER,
            "{}",
            String::from_utf8_lossy(preface)
        );
    }
    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        b"PRI * HTTP/1.1\r\n\r\n",
        b"PRI / HTTP/2.0\r\n\r\n",
    ] {
        let mut client = serve(Duration::from_secs(60));
        let answer = exchange(&mut client, garbage).await;
        assert!(answer.starts_with("HTTP/1.1 400 Bad Request"), "{answer}");
    }
}

#[tokio::test]
async fn a_valid_preface_is_served_as_http2_even_in_pieces() {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (io, findings) = GuardedIo::new(server, 64 * 1024, Duration::from_secs(60));
    let inner = tower::service_fn(|_req: Request<hyper::body::Incoming>| async {
        Ok::<_, Infallible>(Response::new(Body::full("h2")))
    });
    let service = hyper_util::service::TowerToHyperService::new(Guarded::new(inner, findings));
    tokio::spawn(async move {
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        let _ = builder.serve_connection(TokioIo::new(io), service).await;
    });
    // The preface a byte at a time: held until it is whole, then handed on.
    let client = Dribble(client);
    let (mut sender, conn) = h2::client::handshake(client).await.expect("handshake");
    tokio::spawn(conn);
    let (rsp, _) = sender
        .send_request(Request::get("http://h/").body(()).expect("request"), true)
        .expect("sent");
    let rsp = rsp.await.expect("answered");
    assert_eq!(rsp.status(), 200);
}

/// Writes one byte per call, so that every read on the other side is split.
struct Dribble(DuplexStream);

impl tokio::io::AsyncRead for Dribble {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Dribble {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let one = buf.len().min(1);
        Pin::new(&mut self.0).poll_write(cx, &buf[..one])
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
