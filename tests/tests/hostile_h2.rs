//! HTTP/2 conformance and floods, with frames written by hand (`raw::H2`) to the outbound
//! listener (h2c with prior knowledge, as an app speaks it). Each protocol violation gets the
//! error RFC 9113 names for it; rapid reset (CVE-2023-44487) and CONTINUATION floods end the
//! connection after a bounded amount of work; streams over the concurrency limit are refused.
//! After every connection-level error a new connection is served normally.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use trellis_proxy::listeners::request_guard::ABUSE_MIN_REQUESTS;
use trellis_proxy::Limits;
use trellis_tests::mesh::wait_until;
use trellis_tests::raw::{
    frame, h2, header_block, request_block, response_status, Frame, Http1, Upstream, H2,
};
use trellis_tests::{Mesh, Service};

/// `:status 200` is static-table entry 8, which h2 sends as the single byte 0x88.
fn is_200(f: &Frame) -> bool {
    f.kind == h2::HEADERS && f.payload.first() == Some(&0x88)
}

/// A GET on a new connection is answered 200: the listener is unharmed.
async fn still_served(listener: SocketAddr) {
    let mut conn = H2::connect(listener).await;
    let block = request_block("GET", "/still-served", "hello", &[]);
    conn.send(h2::HEADERS, h2::END_HEADERS | h2::END_STREAM, 1, &block)
        .await;
    let answer = conn.until(|f| f.stream == 1 && f.kind == h2::HEADERS).await;
    assert!(answer.as_ref().is_some_and(is_200), "{answer:?}");
}

/// Opens a connection, sends `bytes` and returns the GOAWAY error code the server answers with.
async fn goaway_for(listener: SocketAddr, bytes: &[u8]) -> Option<u32> {
    let mut conn = H2::connect(listener).await;
    conn.send_raw(bytes).await;
    let code = conn.goaway().await;
    assert!(
        conn.closed_within(Duration::from_secs(5)).await,
        "closed after GOAWAY"
    );
    code
}

#[tokio::test]
async fn protocol_violations_get_the_rfc_9113_errors() {
    let (mesh, upstream) = Upstream::behind_mesh(Limits::default(), "").await;
    let listener = mesh.workload("client").outbound;
    let get = request_block("GET", "/violation", "hello", &[]);
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        // §6.1: DATA must be on a stream.
        (
            "DATA on stream 0",
            frame(h2::DATA, 0, 0, b"hello"),
            h2::PROTOCOL_ERROR,
        ),
        // §4.2: over SETTINGS_MAX_FRAME_SIZE (16384 by default).
        (
            "frame over max size",
            frame(h2::HEADERS, h2::END_HEADERS, 1, &vec![0u8; 16_385]),
            h2::FRAME_SIZE_ERROR,
        ),
        // RFC 7541 §6.1: index 0 is not a valid index. RFC 9113 §4.3 names COMPRESSION_ERROR
        // for this; the h2 crate sends PROTOCOL_ERROR (still a connection error, the HPACK state
        // is dropped with the connection). Asserted as is, so a change in h2 is noticed.
        (
            "invalid HPACK",
            frame(h2::HEADERS, h2::END_HEADERS, 1, &[0x80]),
            h2::PROTOCOL_ERROR,
        ),
        // §5.1.1: client streams are odd.
        (
            "even stream id",
            frame(h2::HEADERS, h2::END_HEADERS | h2::END_STREAM, 2, &get),
            h2::PROTOCOL_ERROR,
        ),
        // §6.10: CONTINUATION must follow a HEADERS without END_HEADERS.
        (
            "stray CONTINUATION",
            frame(h2::CONTINUATION, h2::END_HEADERS, 1, &get),
            h2::PROTOCOL_ERROR,
        ),
        // §6.3: PRIORITY is exactly 5 bytes; RFC 9113 names a FRAME_SIZE_ERROR stream error,
        // h2 ends the connection with PROTOCOL_ERROR (stricter; asserted as is).
        (
            "short PRIORITY",
            frame(h2::PRIORITY, 0, 1, &[0, 0, 0]),
            h2::PROTOCOL_ERROR,
        ),
        // §6.9: a zero increment on the connection.
        (
            "zero WINDOW_UPDATE",
            frame(h2::WINDOW_UPDATE, 0, 0, &[0, 0, 0, 0]),
            h2::PROTOCOL_ERROR,
        ),
    ];
    for (name, bytes, code) in cases {
        assert_eq!(goaway_for(listener, &bytes).await, Some(code), "{name}");
    }
    assert!(upstream.seen().is_empty(), "{:?}", upstream.targets());
    still_served(listener).await;
}

#[tokio::test]
async fn content_length_mismatch_resets_the_stream_and_nothing_complete_reaches_the_app() {
    let (mesh, upstream) = Upstream::behind_mesh(Limits::default(), "").await;
    let listener = mesh.workload("client").outbound;
    let mut conn = H2::connect(listener).await;
    for (stream, data) in [(1u32, &b"abc"[..]), (3, b"much more than ten bytes")] {
        let path = format!("/mismatch-{stream}");
        let block = request_block("POST", &path, "hello", &[("content-length", "10")]);
        conn.send(h2::HEADERS, h2::END_HEADERS, stream, &block)
            .await;
        conn.send(h2::DATA, h2::END_STREAM, stream, data).await;
        let reset = conn
            .until(|f| f.stream == stream && f.kind == h2::RST_STREAM)
            .await;
        assert_eq!(
            reset.and_then(|f| f.error_code()),
            Some(h2::PROTOCOL_ERROR),
            "{path}"
        );
    }
    // §8.1.1 makes this a stream error: the connection goes on.
    let block = request_block("GET", "/same-connection", "hello", &[]);
    conn.send(h2::HEADERS, h2::END_HEADERS | h2::END_STREAM, 5, &block)
        .await;
    let answer = conn.until(|f| f.stream == 5 && f.kind == h2::HEADERS).await;
    assert!(answer.as_ref().is_some_and(is_200), "{answer:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let complete: Vec<_> = (upstream.seen().into_iter())
        .filter(|s| s.target.starts_with("/mismatch") && s.complete)
        .collect();
    assert!(complete.is_empty(), "{complete:?}");
}

#[tokio::test]
async fn frames_on_closed_streams_are_refused() {
    let (mesh, _upstream) = Upstream::behind_mesh(Limits::default(), "").await;
    let listener = mesh.workload("client").outbound;
    let block = request_block("GET", "/once", "hello", &[]);
    // DATA on a stream that is over: §5.1 "closed", a STREAM_CLOSED stream error; the
    // connection goes on.
    let mut conn = H2::connect(listener).await;
    conn.send(h2::HEADERS, h2::END_HEADERS | h2::END_STREAM, 1, &block)
        .await;
    let done = conn
        .until(|f| f.stream == 1 && f.flags & h2::END_STREAM != 0)
        .await;
    assert!(done.is_some(), "the request completes");
    conn.send(h2::DATA, 0, 1, b"late").await;
    let reset = conn
        .until(|f| f.stream == 1 && f.kind == h2::RST_STREAM)
        .await;
    assert_eq!(reset.and_then(|f| f.error_code()), Some(h2::STREAM_CLOSED));
    conn.send(h2::HEADERS, h2::END_HEADERS | h2::END_STREAM, 3, &block)
        .await;
    let answer = conn.until(|f| f.stream == 3 && f.kind == h2::HEADERS).await;
    assert!(answer.as_ref().is_some_and(is_200), "{answer:?}");
    // DATA right after END_STREAM (half-closed remote): RFC 9113 names a STREAM_CLOSED stream
    // error; h2 ends the connection with PROTOCOL_ERROR (stricter; asserted as is).
    let mut conn = H2::connect(listener).await;
    let mut bytes = frame(h2::HEADERS, h2::END_HEADERS | h2::END_STREAM, 1, &block);
    bytes.extend(frame(h2::DATA, 0, 1, b"late"));
    conn.send_raw(&bytes).await;
    assert_eq!(conn.goaway().await, Some(h2::PROTOCOL_ERROR));
    // Reusing a finished stream's identifier: §5.1.1 makes that a PROTOCOL_ERROR.
    let mut conn = H2::connect(listener).await;
    conn.send(h2::HEADERS, h2::END_HEADERS | h2::END_STREAM, 1, &block)
        .await;
    let done = conn
        .until(|f| f.stream == 1 && f.flags & h2::END_STREAM != 0)
        .await;
    assert!(done.is_some(), "the first request completes");
    conn.send(h2::HEADERS, h2::END_HEADERS | h2::END_STREAM, 1, &block)
        .await;
    assert_eq!(conn.goaway().await, Some(h2::PROTOCOL_ERROR));
    still_served(listener).await;
}

#[tokio::test]
async fn streams_over_the_concurrency_limit_are_refused() {
    let limits = Limits {
        max_concurrent_streams: 5,
        ..Limits::default()
    };
    let (mesh, _upstream) = Upstream::behind_mesh(limits, "").await;
    let listener = mesh.workload("client").outbound;
    let mut conn = H2::connect(listener).await;
    // Requests whose bodies never end keep their streams open.
    for i in 0..6u32 {
        let block = request_block("POST", &format!("/open-{i}"), "hello", &[]);
        conn.send(h2::HEADERS, h2::END_HEADERS, 1 + 2 * i, &block)
            .await;
    }
    let refused = conn.until(|f| f.kind == h2::RST_STREAM).await;
    let refused = refused.map(|f| (f.stream, f.error_code()));
    assert_eq!(
        refused,
        Some((11, Some(h2::REFUSED_STREAM))),
        "the sixth stream is refused"
    );
}

/// Resident memory of this process (the proxies run in it), in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = (status.lines())
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    kb.unwrap_or(0) * 1024
}

#[tokio::test]
async fn rapid_reset_is_cut_off_after_a_bounded_number_of_streams() {
    let (mesh, upstream) = Upstream::behind_mesh(Limits::default(), "").await;
    let listener = mesh.workload("client").outbound;
    let mut conn = H2::connect(listener).await;
    let block = request_block("GET", "/reset", "hello", &[]);
    let cancel = h2::CANCEL.to_be_bytes();
    let (mut sent, mut stream) = (0u32, 1u32);
    let started = Instant::now();
    // Batches of HEADERS + RST_STREAM pairs, as the attack sends them, until the server stops
    // reading.
    while sent < 20_000 {
        let mut batch = Vec::new();
        for _ in 0..100 {
            batch.extend(frame(
                h2::HEADERS,
                h2::END_HEADERS | h2::END_STREAM,
                stream,
                &block,
            ));
            batch.extend(frame(h2::RST_STREAM, 0, stream, &cancel));
            stream += 2;
        }
        if !conn.send_raw(&batch).await {
            break;
        }
        sent += 100;
    }
    let code = conn.goaway().await;
    assert_eq!(code, Some(h2::ENHANCE_YOUR_CALM), "after {sent} pairs");
    assert!(conn.closed_within(Duration::from_secs(5)).await);
    assert!(started.elapsed() < Duration::from_secs(20));
    let reached = upstream.seen().len();
    assert!(
        reached < 1_000,
        "{reached} of {sent} reset requests reached the app"
    );
    still_served(listener).await;
}

#[tokio::test]
async fn a_continuation_flood_is_cut_off_with_bounded_memory() {
    let (mesh, upstream) = Upstream::behind_mesh(Limits::default(), "").await;
    let listener = mesh.workload("client").outbound;
    let before = rss();
    let mut conn = H2::connect(listener).await;
    let mut block = request_block("GET", "/flood", "hello", &[]);
    let filler = "v".repeat(4000);
    let piece = header_block(&[("x-flood", filler.as_str()); 4]);
    block.extend_from_slice(&piece);
    conn.send(h2::HEADERS, 0, 1, &block).await;
    // 64 MiB of header block that never ends (no END_HEADERS).
    let one = frame(h2::CONTINUATION, 0, 1, &piece);
    let mut written = block.len();
    while written < 64 << 20 {
        let batch = one.repeat(16);
        if !conn.send_raw(&batch).await {
            break;
        }
        written += batch.len();
    }
    let code = conn.goaway().await;
    assert!(
        conn.closed_within(Duration::from_secs(5)).await,
        "the connection is closed"
    );
    // h2 stops at the abuse limit for continuation frames (derived from max_header_list_size).
    assert_eq!(code, Some(h2::ENHANCE_YOUR_CALM));
    assert!(
        written < 32 << 20,
        "the server stopped reading after {written} bytes"
    );
    let grown = rss().saturating_sub(before);
    assert!(grown < 32 << 20, "resident memory grew by {grown} bytes");
    assert!(upstream.seen().is_empty());
    still_served(listener).await;
}

/// The variant that slips past h2's accept-queue bound: each stream is reset only after it was
/// accepted and its request forwarded. The proxy closes the connection once it has carried
/// `ABUSE_MIN_REQUESTS` and most were abandoned (`request_guard`), so the app sees no more.
#[tokio::test]
async fn resets_after_accept_close_the_connection() {
    let mesh = Mesh::client_and(Service::http1("hello")).await;
    mesh.workload("hello").app.delay(Duration::from_secs(8));
    let listener = mesh.workload("client").outbound;
    // A well-behaved request from another connection of the app, sharing the sidecars' mesh
    // connection with the attack: it must not be closed along with the attacker's.
    let bystander = mesh.client("client", false);
    let bystander = tokio::spawn(async move { bystander.get("hello", "/bystander").await });
    let app = &mesh.workload("hello").app;
    let started = wait_until(Duration::from_secs(5), || async { app.requests() == 1 }).await;
    assert!(started.is_ok(), "the bystander's request reached the app");
    let mut conn = H2::connect(listener).await;
    let block = request_block("GET", "/slow", "hello", &[]);
    let cancel = h2::CANCEL.to_be_bytes();
    let (mut stream, mut sent) = (1u32, 0u32);
    let started = Instant::now();
    while sent < 3_000 {
        let first = stream;
        let mut batch = Vec::new();
        for _ in 0..10 {
            batch.extend(frame(
                h2::HEADERS,
                h2::END_HEADERS | h2::END_STREAM,
                stream,
                &block,
            ));
            stream += 2;
        }
        if !conn.send_raw(&batch).await {
            break;
        }
        // Reset only once the requests reached the app (h2's own bound is for streams reset
        // before they are accepted).
        let forwarded = wait_until(Duration::from_secs(2), || async {
            app.requests() >= (sent + 11) as usize
        })
        .await;
        if forwarded.is_err() {
            break;
        }
        let resets: Vec<u8> = (first..stream)
            .step_by(2)
            .flat_map(|id| frame(h2::RST_STREAM, 0, id, &cancel))
            .collect();
        if !conn.send_raw(&resets).await {
            break;
        }
        sent += 10;
    }
    assert!(
        conn.closed_within(Duration::from_secs(5)).await,
        "closed after {sent} streams"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    let reached = mesh.workload("hello").app.requests() as u64 - 1;
    assert!(
        (ABUSE_MIN_REQUESTS..ABUSE_MIN_REQUESTS + 20).contains(&reached),
        "{reached} of {sent} abandoned requests reached the app"
    );
    let bystander = bystander.await.expect("bystander task");
    let status = bystander.map(|(rsp, _)| rsp.status().as_u16()).ok();
    assert_eq!(status, Some(200), "the bystander's request completed");
    mesh.workload("hello").app.delay(Duration::ZERO);
    still_served(listener).await;
}

/// A header list over `max_header_list_size` that does end: refused for that stream only
/// (h2 answers 431), and the connection goes on.
#[tokio::test]
async fn an_oversized_header_list_is_refused_on_its_stream() {
    let limits = Limits {
        max_header_list_size: 16 * 1024,
        ..Limits::default()
    };
    let (mesh, upstream) = Upstream::behind_mesh(limits, "").await;
    let listener = mesh.workload("client").outbound;
    let mut conn = H2::connect(listener).await;
    let big = "v".repeat(8000);
    let mut block = request_block("GET", "/big", "hello", &[]);
    let piece = header_block(&[("x-big", big.as_str())]);
    block.extend_from_slice(&piece);
    conn.send(h2::HEADERS, h2::END_STREAM, 1, &block).await;
    conn.send(h2::CONTINUATION, 0, 1, &piece).await;
    conn.send(h2::CONTINUATION, h2::END_HEADERS, 1, &piece)
        .await;
    let answer = conn
        .until(|f| f.stream == 1 && matches!(f.kind, h2::HEADERS | h2::RST_STREAM))
        .await;
    // `:status 431`: literal with indexed name 8, Huffman-coded "431" (as h2 encodes it).
    let status = answer.map(|f| (f.kind, f.payload));
    assert_eq!(
        status,
        Some((h2::HEADERS, vec![0x48, 0x83, 0x69, 0x90, 0xff]))
    );
    let small = request_block("GET", "/small", "hello", &[]);
    conn.send(h2::HEADERS, h2::END_HEADERS | h2::END_STREAM, 3, &small)
        .await;
    let answer = conn.until(|f| f.stream == 3 && f.kind == h2::HEADERS).await;
    assert!(answer.as_ref().is_some_and(is_200), "{answer:?}");
    assert_eq!(upstream.targets(), vec!["/small".to_string()]);
}

/// A mesh of `client`, `hello` (its `/fault` route answers 503 by injected abort; permissive, so
/// its inbound takes plaintext too) and `gone`, whose only endpoint refuses connections.
async fn mesh_with_local_answers() -> (Mesh, Upstream) {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let hello = Service::http1("hello").yaml(
        "mtls: permissive\nroutes:\n  - name: broken\n    match:\n      path: {prefix: /fault}\n    fault:\n      abort: {status: 503, percent: 100}\n",
    );
    let mut mesh = Mesh::builder()
        .service(Service::http1("client"))
        .service(hello)
        .service(Service::external("gone", &[closed]))
        .start()
        .await
        .expect("mesh starts");
    let index = (mesh.workloads.iter())
        .position(|w| w.service == "hello")
        .expect("a hello workload");
    let upstream = Upstream::replace_app(&mut mesh, index).await;
    (mesh, upstream)
}

/// Answers the proxy makes itself, as (authority, path, status).
const LOCAL_ANSWERS: &[(&str, &str, u16)] = &[
    ("nowhere", "/", 404),
    ("gone", "/", 502),
    ("hello", "/fault", 503),
];

/// RFC 9110 §9.3.2: the answer to HEAD is the GET answer's status and headers without content.
/// Over HTTP/2 that is one HEADERS frame with END_STREAM: no DATA, no RST_STREAM.
#[tokio::test]
async fn local_answers_to_head_have_no_data() {
    let (mesh, _upstream) = mesh_with_local_answers().await;
    let listener = mesh.workload("client").outbound;
    for &(authority, path, status) in LOCAL_ANSWERS {
        for method in ["HEAD", "GET"] {
            let mut conn = H2::connect(listener).await;
            let block = request_block(method, path, authority, &[]);
            conn.send(h2::HEADERS, h2::END_HEADERS | h2::END_STREAM, 1, &block)
                .await;
            let mut frames = Vec::new();
            while let Some(f) = conn.until(|f| f.stream == 1).await {
                let last = f.flags & h2::END_STREAM != 0 || f.kind == h2::RST_STREAM;
                frames.push(f);
                if last {
                    break;
                }
            }
            let kinds: Vec<(u8, bool)> = (frames.iter())
                .map(|f| (f.kind, f.flags & h2::END_STREAM != 0))
                .collect();
            let first_status = frames.first().and_then(|f| response_status(&f.payload));
            assert_eq!(first_status, Some(status), "{method} {authority}{path}");
            match method {
                "HEAD" => assert_eq!(
                    kinds,
                    [(h2::HEADERS, true)],
                    "HEAD {authority}{path}: one HEADERS with END_STREAM"
                ),
                _ => assert!(
                    kinds.len() >= 2 && kinds.iter().skip(1).all(|(k, _)| *k == h2::DATA),
                    "GET {authority}{path}: the same answer has a body: {kinds:?}"
                ),
            }
        }
    }
    still_served(listener).await;
}

/// Over HTTP/1.1 the HEAD answer's head is the GET answer's (the same Content-Length), and no
/// body bytes follow it: the next answer on the connection starts right after.
#[tokio::test]
async fn local_answers_to_head_over_http1_have_no_body() {
    let (mesh, _upstream) = mesh_with_local_answers().await;
    let listener = mesh.workload("client").outbound;
    for &(authority, path, status) in LOCAL_ANSWERS {
        let mut conn = Http1::connect(listener).await;
        let both = format!(
            "HEAD {path} HTTP/1.1\r\nHost: {authority}\r\n\r\nGET {path} HTTP/1.1\r\nHost: {authority}\r\n\r\n"
        );
        conn.send(both.as_bytes()).await;
        let head = conn.answer_head().await.expect("HEAD answered");
        let get = conn.answer().await.expect("GET answered after it");
        assert_eq!(
            (head.status, get.status),
            (status, status),
            "{authority}{path}"
        );
        let get_length = get.body.len().to_string();
        assert_eq!(head.header("content-length"), Some(get_length.as_str()));
        assert_eq!(head.header("trellis-error"), get.header("trellis-error"));
    }
}

/// RFC 9113 §3.4: an invalid connection preface is a connection error of type PROTOCOL_ERROR.
/// On listeners that tell HTTP/1 from h2c by the preface, bytes that start as it does
/// (`PRI * HTTP/2.0`) but are not it get SETTINGS and GOAWAY, then the connection is closed;
/// anything else is HTTP/1 and HTTP/1 garbage still gets 400.
#[tokio::test]
async fn an_invalid_preface_gets_goaway_protocol_error() {
    let (mesh, upstream) = Upstream::behind_mesh(Limits::default(), "mtls: permissive").await;
    let invalid: [&[u8]; 4] = [
        b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\r\0\0\0\x04\0\0\0\0\0",
        b"PRI * HTTP/2.0 \r\n\r\nSM\r\n\r\n",
        b"PRI * HTTP/2.0\n\nSM\n\n",
    ];
    for listener in [
        mesh.workload("client").outbound,
        mesh.workload("hello").inbound,
    ] {
        for preface in invalid {
            let mut conn = H2::connect_bare(listener).await;
            conn.send_raw(preface).await;
            let mut kinds = Vec::new();
            let mut code = None;
            while let Some(f) = conn.next().await {
                kinds.push(f.kind);
                if f.kind == h2::GOAWAY {
                    code = f.error_code();
                    break;
                }
            }
            let shown = String::from_utf8_lossy(preface);
            assert_eq!(kinds, [h2::SETTINGS, h2::GOAWAY], "{shown}");
            assert_eq!(code, Some(h2::PROTOCOL_ERROR), "{shown}");
            assert!(conn.closed_within(Duration::from_secs(5)).await, "{shown}");
        }
        for garbage in [
            "GARBAGE\r\n\r\n",
            "PRI * HTTP/1.1\r\n\r\n",
            "PRI / HTTP/2.0\r\n\r\n",
        ] {
            let mut conn = Http1::connect(listener).await;
            conn.send(garbage.as_bytes()).await;
            let answer = conn.answer().await;
            assert_eq!(answer.map(|a| a.status), Some(400), "{garbage:?}");
        }
        still_served(mesh.workload("client").outbound).await;
    }
    let targets = upstream.targets();
    assert!(
        targets.iter().all(|t| t == "/still-served"),
        "only the checks after each listener reached the app: {targets:?}"
    );
}

/// RFC 9113 §8.1.1: a malformed request is a stream error of type PROTOCOL_ERROR; the
/// connection goes on (the next stream on it is served) and nothing reaches the app.
#[tokio::test]
async fn malformed_requests_are_stream_errors() {
    let (mesh, upstream) = Upstream::behind_mesh(Limits::default(), "").await;
    let listener = mesh.workload("client").outbound;
    let pseudo = |path: &'static str| {
        vec![
            (":method", "GET"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "hello"),
        ]
    };
    let with = |path: &'static str, extra: &[(&'static str, &'static str)]| {
        let mut fields = pseudo(path);
        fields.extend_from_slice(extra);
        fields
    };
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        // §8.2: field names are lower case.
        ("upper-case name", with("/m-0", &[("X-Upper", "1")])),
        // §8.2.2: connection-specific fields.
        ("connection", with("/m-1", &[("connection", "keep-alive")])),
        (
            "transfer-encoding",
            with("/m-2", &[("transfer-encoding", "chunked")]),
        ),
        ("keep-alive", with("/m-3", &[("keep-alive", "5")])),
        (
            "proxy-connection",
            with("/m-4", &[("proxy-connection", "x")]),
        ),
        ("upgrade", with("/m-5", &[("upgrade", "h2c")])),
        ("te other than trailers", with("/m-6", &[("te", "gzip")])),
        // §8.3: pseudo-header rules.
        (
            "pseudo-header after a field",
            vec![
                (":method", "GET"),
                (":scheme", "http"),
                ("x-a", "1"),
                (":path", "/m-7"),
                (":authority", "hello"),
            ],
        ),
        ("unknown pseudo-header", with("/m-8", &[(":foo", "1")])),
        (
            "response pseudo-header",
            with("/m-9", &[(":status", "200")]),
        ),
        (
            "duplicate :path",
            vec![
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/m-10"),
                (":path", "/m-10b"),
                (":authority", "hello"),
            ],
        ),
        (
            "no :method",
            vec![
                (":scheme", "http"),
                (":path", "/m-11"),
                (":authority", "hello"),
            ],
        ),
        (
            "no :path",
            vec![
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "hello"),
            ],
        ),
        ("empty :path", with("", &[])),
        // §8.2.1: field values.
        ("NUL in a value", with("/m-14", &[("x-a", "a\0b")])),
        ("CR in a value", with("/m-15", &[("x-a", "a\rb")])),
        ("LF in a value", with("/m-16", &[("x-a", "a\nb")])),
        ("space in a name", with("/m-17", &[("x a", "1")])),
    ];
    let mut outcomes = Vec::new();
    for (name, fields) in &cases {
        let mut conn = H2::connect(listener).await;
        let block = header_block(fields);
        conn.send(h2::HEADERS, h2::END_HEADERS | h2::END_STREAM, 1, &block)
            .await;
        let answer = conn
            .until(|f| {
                (f.stream == 1 && matches!(f.kind, h2::HEADERS | h2::RST_STREAM))
                    || f.kind == h2::GOAWAY
            })
            .await;
        let outcome = answer.map(|f| match f.kind {
            h2::HEADERS => ("status", response_status(&f.payload).map(u32::from)),
            h2::RST_STREAM => ("RST_STREAM", f.error_code()),
            _ => ("GOAWAY", f.error_code()),
        });
        outcomes.push((name, outcome));
        if outcome.is_some_and(|(kind, _)| kind == "RST_STREAM") {
            // A stream error: the same connection serves the next stream.
            let ok = request_block("GET", "/after", "hello", &[]);
            conn.send(h2::HEADERS, h2::END_HEADERS | h2::END_STREAM, 3, &ok)
                .await;
            let answer = conn.until(|f| f.stream == 3 && f.kind == h2::HEADERS).await;
            assert!(answer.as_ref().is_some_and(is_200), "{name}: {answer:?}");
        }
    }
    // h2 rejects these while decoding the header block (its HPACK decoder builds `http`
    // header names and values, which refuse them) and ends the connection with PROTOCOL_ERROR
    // instead of resetting the stream: stricter than RFC 9113 (the other streams of the
    // connection go too), and still nothing reaches the app. Asserted as is, so that a change
    // in h2 is noticed.
    const CONNECTION_ERRORS_IN_H2: &[&str] = &[
        "upper-case name",
        "unknown pseudo-header",
        "NUL in a value",
        "CR in a value",
        "LF in a value",
        "space in a name",
    ];
    for (name, outcome) in &outcomes {
        let kind = match CONNECTION_ERRORS_IN_H2.contains(name) {
            true => "GOAWAY",
            false => "RST_STREAM",
        };
        assert_eq!(*outcome, Some((kind, Some(h2::PROTOCOL_ERROR))), "{name}");
    }
    let reached: Vec<_> = (upstream.targets().into_iter())
        .filter(|t| t.starts_with("/m-") || t.is_empty())
        .collect();
    assert!(reached.is_empty(), "{reached:?}");
}
