//! The guard on a real hyper connection (over an in-memory pipe), with a stand-in request stack.

use super::*;
use crate::errors::ProxyError;
use crate::http::Body;
use crate::listeners::request_guard::Guarded;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// Serves one guarded connection whose service reads the whole body: 200 with the body's length,
/// or, if the body fails, the 502 a failed forward would produce.
fn serve(body_idle: Duration) -> DuplexStream {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (io, findings) = GuardedIo::new(server, 64 * 1024, body_idle);
    let inner = tower::service_fn(|req: Request<hyper::body::Incoming>| async move {
        Ok::<_, Infallible>(match req.into_body().collect().await {
            Ok(body) => Response::new(Body::full(body.to_bytes().len().to_string())),
            Err(e) => crate::http::rescue::error_response(
                &ProxyError::Upstream {
                    addr: ([127, 0, 0, 1], 1).into(),
                    reason: e.to_string(),
                },
                false,
            ),
        })
    });
    let service = hyper_util::service::TowerToHyperService::new(Guarded::new(inner, findings));
    tokio::spawn(async move {
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        let _ = builder.serve_connection(TokioIo::new(io), service).await;
    });
    client
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
