//! Chunked bodies that turn out malformed (RFC 9112 §7.1), against an app that would process
//! whatever it got (`raw::LenientApp`: a clean end of the connection completes its request).
//! The proxy must never let such a request reach the app as something a lenient parser could
//! take as complete: a body broken in what arrived with the head (or in its first chunk-size
//! line) is refused before anything is forwarded, and one broken later is aborted upstream, so
//! the app's connection ends without the last chunk. Every case runs many times in a row: the
//! race that once let the head through "now and then" must be gone, not rarer.

use std::net::SocketAddr;
use std::time::Duration;
use trellis_tests::mesh::wait_until;
use trellis_tests::raw::{Http1, LenientApp, LenientCounts, Upstream};

/// Each case's body is sent after a chunked head; the proxy must answer 400.
const MALFORMED: &[(&str, &str)] = &[
    ("chunk size not hex", "zz\r\nhello\r\n0\r\n\r\n"),
    (
        "chunk size overflows",
        "1ffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    ),
    ("negative chunk size", "-5\r\nhello\r\n0\r\n\r\n"),
    ("0x before the size", "0x5\r\nhello\r\n0\r\n\r\n"),
    ("space before the size", " 5\r\nhello\r\n0\r\n\r\n"),
    ("no chunk size", "\r\nhello\r\n0\r\n\r\n"),
    (
        "chunk data longer than its size",
        "3\r\nhelloX\r\n0\r\n\r\n",
    ),
    ("chunk data shorter than its size", "5\r\nabc\r\n0\r\n\r\n"),
    ("empty chunk extension", "5;\r\nhello\r\n0\r\n\r\n"),
    (
        "space inside an extension name",
        "5;a b\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "extension without a value after =",
        "5;a=\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "unterminated quoted extension",
        "5;a=\"x\r\nhello\r\n0\r\n\r\n",
    ),
    ("NUL in an extension", "5;a\0b\r\nhello\r\n0\r\n\r\n"),
    ("LF in an extension", "5;a=b\nhello\r\n0\r\n\r\n"),
    ("size line ends in LF only", "5\nhello\r\n0\r\n\r\n"),
    ("size line ends in CR only", "5\rhello\r\n0\r\n\r\n"),
    ("chunk data ends in LF only", "5\r\nhello\n0\r\n\r\n"),
    ("last chunk ends in LF only", "5\r\nhello\r\n0\n\r\n"),
    ("final line is LF only", "5\r\nhello\r\n0\r\n\n"),
    (
        "trailer without a colon",
        "5\r\nhello\r\n0\r\nbad trailer\r\n\r\n",
    ),
    (
        "obs-fold in a trailer",
        "5\r\nhello\r\n0\r\nX-T: a\r\n b\r\n\r\n",
    ),
    (
        "trailer line ends in LF only",
        "5\r\nhello\r\n0\r\nX-T: a\n\r\n",
    ),
    (
        "second chunk size not hex",
        "5\r\nhello\r\nzz\r\nabc\r\n0\r\n\r\n",
    ),
];

/// The cases whose first chunk-size line is broken: refused before forwarding even when the
/// head arrives on its own.
const FIRST_LINE_BROKEN: &[usize] = &[0, 2, 3, 5, 9, 13, 14, 15];

const ITERATIONS: usize = 50;

fn request(path: &str, body: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nHost: hello\r\nTransfer-Encoding: chunked\r\n\r\n{body}")
}

/// Sends `bytes` in one write (or `head` first and the rest after a pause) and expects 400 and
/// the connection closed.
async fn refused(listener: SocketAddr, name: &str, head: &str, rest: &str) {
    let mut conn = Http1::connect(listener).await;
    if rest.is_empty() {
        conn.send(head.as_bytes()).await;
    } else {
        conn.send(head.as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        conn.send(rest.as_bytes()).await;
    }
    let answer = conn.answer().await;
    assert_eq!(answer.map(|a| a.status), Some(400), "{name}");
    assert!(
        conn.closed_within(Duration::from_secs(5)).await,
        "{name}: connection closed"
    );
}

async fn malformed_bodies_never_reach_the_app_through(listener: SocketAddr, app: &LenientApp) {
    for (name, body) in MALFORMED {
        for i in 0..ITERATIONS {
            let whole = request(&format!("/whole-{i}"), body);
            refused(listener, name, &whole, "").await;
        }
        assert_eq!(app.counts(), LenientCounts::default(), "{name}, sent whole");
    }
    for &case in FIRST_LINE_BROKEN {
        let (name, body) = MALFORMED[case];
        for i in 0..ITERATIONS {
            let head = request(&format!("/split-{i}"), "");
            refused(listener, name, &head, body).await;
        }
        assert_eq!(app.counts(), LenientCounts::default(), "{name}, head first");
    }
    // The same app does see a well-formed request (it never answers it): the counts above could
    // have been more than zero.
    let mut conn = Http1::connect(listener).await;
    conn.send(request("/control", "5\r\nhello\r\n0\r\n\r\n").as_bytes())
        .await;
    let reached = wait_until(Duration::from_secs(5), || async { app.counts().heads == 1 }).await;
    assert!(
        reached.is_ok(),
        "the control request reached the app: {:?}",
        app.counts()
    );
}

#[tokio::test]
async fn outbound_never_forwards_a_malformed_chunked_request() {
    let (mesh, app) = LenientApp::behind_mesh().await;
    let listener = mesh.workload("client").outbound;
    malformed_bodies_never_reach_the_app_through(listener, &app).await;
}

#[tokio::test]
async fn inbound_plaintext_never_forwards_a_malformed_chunked_request() {
    let (mesh, app) = LenientApp::behind_mesh().await;
    let listener = mesh.workload("hello").inbound;
    malformed_bodies_never_reach_the_app_through(listener, &app).await;
}

/// Bodies that break after the first chunk was forwarded: the client gets 400, and the app's
/// connection ends without the terminating chunk (through the mesh: the far sidecar's request
/// is reset, and it aborts the app's request likewise).
async fn later_breaks_abort_the_app_request_through(listener: SocketAddr, upstream: &Upstream) {
    // (case, what follows the good first chunk, the most of the body the app may get: the
    // data before the byte that breaks the framing may be passed on).
    let later: &[(&str, &str, &[u8])] = &[
        (
            "second chunk size not hex",
            "zz\r\nabc\r\n0\r\n\r\n",
            b"hello",
        ),
        (
            "chunk data longer than its size",
            "3\r\nabcX\r\n0\r\n\r\n",
            b"helloabc",
        ),
        ("bad extension", "3;a b\r\nabc\r\n0\r\n\r\n", b"hello"),
        ("size line ends in LF only", "3\nabc\r\n0\r\n\r\n", b"hello"),
        (
            "trailer without a colon",
            "0\r\nbad trailer\r\n\r\n",
            b"hello",
        ),
    ];
    for (case, (name, rest, most)) in later.iter().enumerate() {
        for i in 0..10 {
            let path = format!("/later-{case}-{i}");
            let mut conn = Http1::connect(listener).await;
            conn.send(request(&path, "5\r\nhello\r\n").as_bytes()).await;
            let forwarded = wait_until(Duration::from_secs(5), || async {
                upstream
                    .seen()
                    .iter()
                    .any(|s| s.target == path && s.body.is_empty())
            })
            .await;
            assert!(forwarded.is_ok(), "{name}: the head was forwarded");
            conn.send(rest.as_bytes()).await;
            let answer = conn.answer().await;
            assert_eq!(answer.map(|a| a.status), Some(400), "{name}");
            let ended = wait_until(Duration::from_secs(5), || async {
                upstream.seen().iter().any(|s| s.target == path && s.ended)
            })
            .await;
            assert!(ended.is_ok(), "{name}: the app's request was ended");
            let seen: Vec<_> = (upstream.seen().into_iter())
                .filter(|s| s.target == path)
                .collect();
            assert_eq!(seen.len(), 1, "{name}");
            assert!(!seen[0].complete, "{name}: no last chunk reached the app");
            let body = &seen[0].body;
            assert!(
                body.starts_with(b"hello") && most.starts_with(body),
                "{name}: the good chunk, nothing past the break: {:?}",
                String::from_utf8_lossy(body)
            );
        }
    }
}

#[tokio::test]
async fn outbound_aborts_a_body_that_breaks_later() {
    let (mesh, upstream) =
        Upstream::behind_mesh(trellis_proxy::Limits::default(), "mtls: permissive").await;
    later_breaks_abort_the_app_request_through(mesh.workload("client").outbound, &upstream).await;
}

#[tokio::test]
async fn inbound_plaintext_aborts_a_body_that_breaks_later() {
    let (mesh, upstream) =
        Upstream::behind_mesh(trellis_proxy::Limits::default(), "mtls: permissive").await;
    later_breaks_abort_the_app_request_through(mesh.workload("hello").inbound, &upstream).await;
}

/// The gap a strict app cannot show: a body that breaks after its head and first chunk were
/// forwarded, against the lenient app. The proxy's connection to the app ends with a reset
/// (`http::app_conn`), never a clean close the app could take as the end of the body.
async fn later_breaks_reset_the_lenient_app_through(listener: SocketAddr, app: &LenientApp) {
    let breaks = [
        "zz\r\nabc\r\n0\r\n\r\n",
        "3\r\nabcX\r\n0\r\n\r\n",
        "3\nabc\r\n0\r\n\r\n",
    ];
    let rounds = 10;
    for (case, rest) in breaks.iter().enumerate() {
        for i in 0..rounds {
            let heads = app.counts().heads;
            let mut conn = Http1::connect(listener).await;
            let path = format!("/lenient-{case}-{i}");
            conn.send(request(&path, "5\r\nhello\r\n").as_bytes()).await;
            let forwarded = wait_until(Duration::from_secs(5), || async {
                app.counts().heads > heads
            })
            .await;
            assert!(forwarded.is_ok(), "case {case}: the head was forwarded");
            conn.send(rest.as_bytes()).await;
            let answer = conn.answer().await;
            assert_eq!(answer.map(|a| a.status), Some(400), "case {case}");
        }
    }
    let sent = breaks.len() * rounds;
    let ended = wait_until(Duration::from_secs(5), || async {
        let c = app.counts();
        c.complete + c.reset == sent
    })
    .await;
    let counts = app.counts();
    assert!(ended.is_ok(), "every app request ended: {counts:?}");
    assert_eq!(
        counts,
        LenientCounts {
            heads: sent,
            complete: 0,
            reset: sent
        },
        "no broken body ended cleanly at the app"
    );
}

#[tokio::test]
async fn outbound_later_breaks_reset_the_lenient_app() {
    let (mesh, app) = LenientApp::behind_mesh().await;
    later_breaks_reset_the_lenient_app_through(mesh.workload("client").outbound, &app).await;
}

#[tokio::test]
async fn inbound_plaintext_later_breaks_reset_the_lenient_app() {
    let (mesh, app) = LenientApp::behind_mesh().await;
    later_breaks_reset_the_lenient_app_through(mesh.workload("hello").inbound, &app).await;
}
