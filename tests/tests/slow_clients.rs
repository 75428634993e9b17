//! Slow and greedy clients: a head dribbled a byte at a time (slowloris) is cut at the header
//! read timeout; a body that stalls is answered 408 at the body idle timeout and the request to
//! the app is ended with it; connections over the listener's limit are closed at once while the
//! ones already open keep working. Short limits make the tests quick; bounds are generous.

use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trellis_proxy::Limits;
use trellis_tests::mesh::wait_until;
use trellis_tests::raw::{Http1, Upstream};

async fn get_ok(listener: std::net::SocketAddr, path: &str) {
    let mut conn = Http1::connect(listener).await;
    conn.send(format!("GET {path} HTTP/1.1\r\nHost: hello\r\n\r\n").as_bytes())
        .await;
    let answer = conn.answer().await.expect("answered");
    assert_eq!((answer.status, answer.body_text()), (200, path.to_string()));
}

#[tokio::test]
async fn slowloris_is_cut_at_the_header_read_timeout() {
    let limits = Limits {
        header_read_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let (mesh, upstream) = Upstream::behind_mesh(limits, "").await;
    let listener = mesh.workload("client").outbound;
    let mut tcp = TcpStream::connect(listener).await.expect("connects");
    let head = b"GET /slow HTTP/1.1\r\nHost: hello\r\nX-Slow: ";
    let started = Instant::now();
    let mut sent = 0;
    let mut chunk = [0u8; 1024];
    // One byte every 100 ms, the head never finished; stop when the proxy closes.
    let closed_after = loop {
        let byte = head.get(sent).copied().unwrap_or(b'a');
        if tcp.write_all(&[byte]).await.is_err() {
            break started.elapsed();
        }
        sent += 1;
        match tokio::time::timeout(Duration::from_millis(100), tcp.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break started.elapsed(),
            Ok(Ok(_)) | Err(_) => {}
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never cut off");
    };
    assert!(
        closed_after >= Duration::from_millis(800) && closed_after < Duration::from_secs(5),
        "cut after {closed_after:?}, having sent {sent} bytes"
    );
    assert!(upstream.seen().is_empty(), "{:?}", upstream.targets());
    get_ok(listener, "/after").await;
}

/// Opens a connection and asks it for a WebSocket upgrade the app refuses: it answers 200 and no
/// 101, so the proxy answers 502 and keeps the connection.
/// `pipelined` goes in the same write, after the upgrade request.
async fn refused_upgrade(listener: std::net::SocketAddr, path: &str, pipelined: &str) -> Http1 {
    let mut conn = Http1::connect(listener).await;
    conn.send(
        format!(
            "GET {path} HTTP/1.1\r\nHost: hello\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n{pipelined}"
        )
        .as_bytes(),
    )
    .await;
    let refused = conn.answer().await.expect("the upgrade is answered");
    assert_eq!(refused.status, 502, "{refused:?}");
    conn
}

/// An upgrade the app refuses leaves an HTTP/1.1 keep-alive connection, which the header read
/// timeout must still bound: the proxy stops reading heads for an upgrade (what follows a 101 is
/// not HTTP), and a connection left idle after a refused one was never closed by the proxy.
#[tokio::test]
async fn an_idle_connection_after_a_refused_upgrade_is_cut_at_the_header_read_timeout() {
    let limits = Limits {
        header_read_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let (mesh, upstream) = Upstream::behind_mesh(limits, "").await;
    let listener = mesh.workload("client").outbound;
    let mut conn = refused_upgrade(listener, "/upgrade", "").await;
    // Still an HTTP/1.1 connection: the next request is served.
    conn.send(b"GET /next HTTP/1.1\r\nHost: hello\r\n\r\n")
        .await;
    let next = conn.answer().await.expect("the next request is answered");
    assert_eq!((next.status, next.body_text()), (200, "/next".into()));
    let started = Instant::now();
    assert!(
        conn.closed_within(Duration::from_secs(6)).await,
        "an idle connection after a refused upgrade was never closed"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800),
        "closed after {waited:?}"
    );
    assert_eq!(upstream.targets(), ["/upgrade", "/next"]);

    // And its framing still judged: a head with two Host lines after a refused upgrade is refused,
    // not served.
    let mut conn = refused_upgrade(listener, "/upgrade-2", "").await;
    conn.send(b"GET /twice HTTP/1.1\r\nHost: hello\r\nHost: other\r\n\r\n")
        .await;
    assert_eq!(conn.answer().await.map(|a| a.status), Some(400));
    assert!(!upstream.targets().contains(&"/twice".to_string()));

    // The same when the next request was sent before the refusal, in the upgrade's own write:
    // it is held until the answer, then served, and the idle connection is still cut.
    let pipelined = "GET /pipelined HTTP/1.1\r\nHost: hello\r\n\r\n";
    let mut conn = refused_upgrade(listener, "/upgrade-3", pipelined).await;
    let next = conn
        .answer()
        .await
        .expect("the pipelined request is answered");
    assert_eq!((next.status, next.body_text()), (200, "/pipelined".into()));
    let started = Instant::now();
    assert!(
        conn.closed_within(Duration::from_secs(6)).await,
        "idle after a refused upgrade with a pipelined request: never closed"
    );
    assert!(started.elapsed() >= Duration::from_millis(800));
    let twice = "GET /twice-pipelined HTTP/1.1\r\nHost: hello\r\nHost: other\r\n\r\n";
    let mut conn = refused_upgrade(listener, "/upgrade-4", twice).await;
    assert_eq!(conn.answer().await.map(|a| a.status), Some(400));
    assert!(!upstream.targets().contains(&"/twice-pipelined".to_string()));
}

#[tokio::test]
async fn a_stalled_body_is_answered_408_and_the_app_request_ended() {
    let limits = Limits {
        body_idle_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let (mesh, upstream) = Upstream::behind_mesh(limits, "").await;
    let listener = mesh.workload("client").outbound;
    let stalls = [
        ("/stall-length", "Content-Length: 100\r\n\r\nabc"),
        (
            "/stall-chunked",
            "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
        ),
    ];
    for (path, rest) in stalls {
        let mut conn = Http1::connect(listener).await;
        let started = Instant::now();
        conn.send(format!("POST {path} HTTP/1.1\r\nHost: hello\r\n{rest}").as_bytes())
            .await;
        let answer = conn.answer().await.expect("answered");
        let waited = started.elapsed();
        assert_eq!(answer.status, 408, "{path}: {answer:?}");
        assert!(
            waited >= Duration::from_millis(800) && waited < Duration::from_secs(6),
            "{path}: answered after {waited:?}"
        );
        assert!(conn.closed_within(Duration::from_secs(5)).await, "{path}");
        // The app's side of the request is ended too, not left waiting for the rest.
        let ended = wait_until(Duration::from_secs(5), || async {
            (upstream.seen().iter()).any(|s| s.target == path && s.ended)
        })
        .await;
        assert!(ended.is_ok(), "{path}: {:?}", upstream.seen());
        let complete = (upstream.seen().iter()).any(|s| s.target == path && s.complete);
        assert!(!complete, "{path}: the app never saw a complete request");
    }
    get_ok(listener, "/after").await;
}

#[tokio::test]
async fn a_body_that_keeps_coming_is_not_cut() {
    let limits = Limits {
        body_idle_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let (mesh, upstream) = Upstream::behind_mesh(limits, "").await;
    let listener = mesh.workload("client").outbound;
    let mut conn = Http1::connect(listener).await;
    conn.send(b"POST /steady HTTP/1.1\r\nHost: hello\r\nContent-Length: 6\r\n\r\n")
        .await;
    // Slower in total than the idle timeout, but never idle that long.
    for byte in b"steady" {
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(conn.send(&[*byte]).await, "still open");
    }
    let answer = conn.answer().await.expect("answered");
    assert_eq!(
        (answer.status, answer.body_text()),
        (200, "/steady".to_string())
    );
    let seen = upstream.seen();
    assert!(seen
        .iter()
        .any(|s| s.target == "/steady" && s.complete && s.body == b"steady"));
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_at_once() {
    let limits = Limits {
        max_connections: 3,
        ..Limits::default()
    };
    let (mesh, _upstream) = Upstream::behind_mesh(limits, "").await;
    let listener = mesh.workload("client").outbound;
    let mut open = Vec::new();
    for i in 0..3 {
        let mut conn = Http1::connect(listener).await;
        let path = format!("/first-{i}");
        conn.send(format!("GET {path} HTTP/1.1\r\nHost: hello\r\n\r\n").as_bytes())
            .await;
        let answer = conn.answer().await.expect("answered");
        assert_eq!(answer.body_text(), path);
        open.push(conn);
    }
    let mut extra = Http1::connect(listener).await;
    let started = Instant::now();
    extra
        .send(b"GET /extra HTTP/1.1\r\nHost: hello\r\n\r\n")
        .await;
    assert!(
        extra.answer().await.is_none(),
        "the fourth connection is not served"
    );
    assert!(started.elapsed() < Duration::from_secs(2), "closed at once");
    let client = (mesh.workloads.iter())
        .position(|w| w.service == "client")
        .expect("client workload");
    let (_, metrics) = mesh.admin_get(client, "/metrics").await.expect("metrics");
    assert!(
        metrics.contains("trellis_tcp_connections_refused_total{direction=\"outbound\"} 1"),
        "the refusal is counted:\n{metrics}"
    );
    for (i, conn) in open.iter_mut().enumerate() {
        let path = format!("/again-{i}");
        conn.send(format!("GET {path} HTTP/1.1\r\nHost: hello\r\n\r\n").as_bytes())
            .await;
        let answer = conn.answer().await.expect("the first three keep working");
        assert_eq!(answer.body_text(), path);
    }
    // A closed connection frees its place.
    drop(open.pop());
    let freed = wait_until(Duration::from_secs(5), || async {
        let mut conn = Http1::connect(listener).await;
        conn.send(b"GET /freed HTTP/1.1\r\nHost: hello\r\n\r\n")
            .await;
        conn.answer().await.is_some_and(|a| a.status == 200)
    })
    .await;
    assert!(freed.is_ok(), "a new connection is served once one closed");
}
