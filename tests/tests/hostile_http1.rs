//! Malformed and hostile HTTP/1 from a raw socket: request smuggling attempts, obfuscated
//! framing, forbidden bytes, oversized heads and broken chunked bodies. Each must be refused with
//! its status, never reach the app (a recording upstream proves it), and never desynchronise the
//! next request on the same connection or the pooled connection behind it. Well-formed requests
//! that merely look odd are served. Runs through the outbound listener (the app's way into the
//! mesh) and the inbound listener in permissive mode (plaintext from outside the mesh).

use std::net::SocketAddr;
use std::time::Duration;
use trellis_proxy::Limits;
use trellis_tests::raw::{Http1, Upstream};

/// Requests the proxy must refuse, with the status it must answer. `{p}` is replaced by a path
/// unique to the case; the upstream must never see it.
const REFUSED: &[(&str, &str, u16)] = &[
    ("CL then TE", "POST {p} HTTP/1.1\r\nHost: hello\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE then CL", "POST {p} HTTP/1.1\r\nHost: hello\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400),
    ("TE xchunked", "POST {p} HTTP/1.1\r\nHost: hello\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
    ("TE chunked, identity", "POST {p} HTTP/1.1\r\nHost: hello\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400),
    ("TE chunked twice", "POST {p} HTTP/1.1\r\nHost: hello\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE on two lines", "POST {p} HTTP/1.1\r\nHost: hello\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE gzip, chunked", "POST {p} HTTP/1.1\r\nHost: hello\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    ("space before colon", "POST {p} HTTP/1.1\r\nHost: hello\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    ("vertical tab before TE value", "POST {p} HTTP/1.1\r\nHost: hello\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n", 400),
    ("HTTP/1.0 with TE", "POST {p} HTTP/1.0\r\nHost: hello\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("two different CL", "POST {p} HTTP/1.1\r\nHost: hello\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400),
    ("CL +5", "POST {p} HTTP/1.1\r\nHost: hello\r\nContent-Length: +5\r\n\r\nhello", 400),
    ("CL -5", "POST {p} HTTP/1.1\r\nHost: hello\r\nContent-Length: -5\r\n\r\nhello", 400),
    ("CL list 5, 6", "POST {p} HTTP/1.1\r\nHost: hello\r\nContent-Length: 5, 6\r\n\r\nhello!", 400),
    ("bare CR", "GET {p} HTTP/1.1\r\nHost: hello\r\nX-A: a\rb\r\n\r\n", 400),
    ("bare LF", "GET {p} HTTP/1.1\nHost: hello\nX-A: a\n\n", 400),
    ("bare LF after one header", "GET {p} HTTP/1.1\r\nHost: hello\nX-A: a\r\n\r\n", 400),
    ("obs-fold", "GET {p} HTTP/1.1\r\nHost: hello\r\nX-A: a\r\n b\r\n\r\n", 400),
    ("NUL in a value", "GET {p} HTTP/1.1\r\nHost: hello\r\nX-A: a\0b\r\n\r\n", 400),
    ("two Hosts", "GET {p} HTTP/1.1\r\nHost: hello\r\nHost: other\r\n\r\n", 400),
    ("HTTP/1.1 without Host", "GET {p} HTTP/1.1\r\nX-A: a\r\n\r\n", 400),
    ("chunk size not hex", "POST {p} HTTP/1.1\r\nHost: hello\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk size overflows", "POST {p} HTTP/1.1\r\nHost: hello\r\nTransfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk data without CRLF", "POST {p} HTTP/1.1\r\nHost: hello\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhelloX\r\n0\r\n\r\n", 400),
    ("chunk size line with bare LF", "POST {p} HTTP/1.1\r\nHost: hello\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", 400),
];

/// Odd but well-formed requests: served, and the connection stays usable.
const SERVED: &[(&str, &str)] = &[
    ("tab before chunked", "POST {p} HTTP/1.1\r\nHost: hello\r\nTransfer-Encoding:\tchunked \r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    ("the same CL twice", "POST {p} HTTP/1.1\r\nHost: hello\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
    ("chunk extension and trailer", "POST {p} HTTP/1.1\r\nHost: hello\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\nX-T: t\r\n\r\n"),
    ("a body that looks like a request", "POST {p} HTTP/1.1\r\nHost: hello\r\nContent-Length: 39\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: hello\r\n\r\n"),
];

/// Sends every case to `listener` and checks answers, connections and what the upstream saw.
async fn hostile_requests_through(listener: SocketAddr, upstream: &Upstream) {
    for (i, (name, template, status)) in REFUSED.iter().enumerate() {
        let path = format!("/refused-{i}");
        let mut conn = Http1::connect(listener).await;
        conn.send(template.replace("{p}", &path).as_bytes()).await;
        let answer = conn.answer().await;
        assert_eq!(
            answer.as_ref().map(|a| a.status),
            Some(*status),
            "{name}: {answer:?}"
        );
        assert!(
            conn.closed_within(Duration::from_secs(5)).await,
            "{name}: connection closed"
        );
        // Every refusal, a broken chunked body included, is final before anything is sent on:
        // the scanner reads the whole request (one write) before hyper hands its head over.
        let seen: Vec<_> = (upstream.seen().into_iter())
            .filter(|s| s.target == path)
            .collect();
        assert!(seen.is_empty(), "{name}: the head never reached the app");
    }
    for (i, (name, template)) in SERVED.iter().enumerate() {
        let path = format!("/served-{i}");
        let mut conn = Http1::connect(listener).await;
        conn.send(template.replace("{p}", &path).as_bytes()).await;
        let answer = conn.answer().await.expect(name);
        assert_eq!(
            (answer.status, answer.body_text()),
            (200, path.clone()),
            "{name}"
        );
        let next = format!("/served-{i}-next");
        let request = format!("GET {next} HTTP/1.1\r\nHost: hello\r\n\r\n");
        assert!(
            conn.send(request.as_bytes()).await,
            "{name}: connection still open"
        );
        let answer = conn.answer().await.expect("the next request is answered");
        assert_eq!((answer.status, answer.body_text()), (200, next), "{name}");
    }
    let targets = upstream.targets();
    assert!(
        !targets.iter().any(|t| t.contains("smuggled")),
        "{targets:?}"
    );
    let served = (upstream.seen().into_iter())
        .filter(|s| s.target.starts_with("/served") && s.complete)
        .count();
    assert_eq!(
        served,
        2 * SERVED.len(),
        "each served request reached the app once: {targets:?}"
    );
    let mut bodies = upstream
        .seen()
        .into_iter()
        .filter(|s| s.target == "/served-3");
    let body = bodies
        .next()
        .map(|s| String::from_utf8_lossy(&s.body).into_owned());
    assert_eq!(
        body.as_deref(),
        Some("GET /smuggled HTTP/1.1\r\nHost: hello\r\n\r\n")
    );
}

/// The classic smuggle: a zero length next to chunked framing whose body hides a request.
async fn smuggling_classic_through(listener: SocketAddr, upstream: &Upstream) {
    let attack = "POST /front HTTP/1.1\r\nHost: hello\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: hello\r\n\r\n";
    let mut conn = Http1::connect(listener).await;
    conn.send(attack.as_bytes()).await;
    let answer = conn.answer().await.expect("an answer");
    assert_eq!(answer.status, 400, "{answer:?}");
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(
        conn.answer().await.is_none(),
        "no second answer for the hidden request"
    );
    // A new connection gets its own answer: nothing is left over on the pooled connection.
    for round in 0..3 {
        let mut conn = Http1::connect(listener).await;
        let path = format!("/after-{round}");
        conn.send(format!("GET {path} HTTP/1.1\r\nHost: hello\r\n\r\n").as_bytes())
            .await;
        let answer = conn.answer().await.expect("answered");
        assert_eq!((answer.status, answer.body_text()), (200, path));
    }
    let targets = upstream.targets();
    assert!(
        !targets.iter().any(|t| t == "/smuggled" || t == "/front"),
        "{targets:?}"
    );
}

#[tokio::test]
async fn outbound_refuses_hostile_http1() {
    let (mesh, upstream) = Upstream::behind_mesh(Limits::default(), "mtls: permissive").await;
    let listener = mesh.workload("client").outbound;
    smuggling_classic_through(listener, &upstream).await;
    hostile_requests_through(listener, &upstream).await;
}

#[tokio::test]
async fn inbound_plaintext_refuses_hostile_http1() {
    let (mesh, upstream) = Upstream::behind_mesh(Limits::default(), "mtls: permissive").await;
    let listener = mesh.workload("hello").inbound;
    smuggling_classic_through(listener, &upstream).await;
    hostile_requests_through(listener, &upstream).await;
}

/// Oversized heads are refused by hyper with the specific status RFC 9110 has for them.
#[tokio::test]
async fn oversized_heads_get_431() {
    let (mesh, upstream) = Upstream::behind_mesh(Limits::default(), "mtls: permissive").await;
    let listener = mesh.workload("client").outbound;
    let big_value = "a".repeat(70 * 1024);
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases = [
        (
            "header over 64 KiB",
            format!("GET /big HTTP/1.1\r\nHost: hello\r\nX-Big: {big_value}\r\n\r\n"),
        ),
        (
            "URI over 64 KiB",
            format!("GET /{big_value} HTTP/1.1\r\nHost: hello\r\n\r\n"),
        ),
        (
            "150 headers",
            format!("GET /many HTTP/1.1\r\nHost: hello\r\n{many}\r\n"),
        ),
    ];
    for (name, request) in cases {
        let mut conn = Http1::connect(listener).await;
        conn.send(request.as_bytes()).await;
        let answer = conn.answer().await;
        assert_eq!(answer.map(|a| a.status), Some(431), "{name}");
        assert!(conn.closed_within(Duration::from_secs(5)).await, "{name}");
    }
    assert!(upstream.seen().is_empty(), "{:?}", upstream.targets());
}
