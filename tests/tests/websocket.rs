//! WebSockets through the mesh (issue 16, upgrades): a real RFC 6455 client on the client
//! sidecar's outbound listener, a real RFC 6455 server as hello's app (`trellis_tests::websocket`),
//! carried outbound → HTTP/2 extended CONNECT over mTLS (RFC 8441) → inbound → app.

use std::time::Duration;
use trellis_tests::websocket::{
    connect, connect_sending, encode, Frame, WsApp, BINARY, CLOSE, PONG, TEXT,
};
use trellis_tests::{Mesh, Service};

fn index_of(mesh: &Mesh, service: &str) -> usize {
    (mesh.workloads.iter())
        .position(|w| w.service == service)
        .expect("workload")
}

#[tokio::test]
async fn websocket_carries_messages_pings_and_closes_both_ways() {
    trellis_tests::init_logging();
    let (mesh, app) = WsApp::behind_mesh("").await;
    let outbound = mesh.workload("client").outbound;
    let hs = connect(
        outbound,
        "hello",
        "/chat?room=1",
        "websocket",
        &[
            ("Sec-WebSocket-Protocol", "chat, superchat"),
            ("X-App", "kept"),
            ("trellis-client-id", "spiffe://forged"),
        ],
    )
    .await
    .expect("an answer to the handshake");
    let answer = &hs.answer;
    assert_eq!(answer.status, 101, "{answer:?}");
    assert!(
        (answer.header("upgrade")).is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "{answer:?}"
    );
    assert!(
        (answer.header("connection")).is_some_and(|v| v.eq_ignore_ascii_case("upgrade")),
        "{answer:?}"
    );
    assert_eq!(answer.header("sec-websocket-protocol"), Some("chat"));
    assert!(answer.header("trellis-error").is_none(), "{answer:?}");
    let mut ws = hs
        .conn
        .expect("101 with the Sec-WebSocket-Accept of the key sent");

    // Text and binary, both ways.
    assert!(ws.send(&Frame::text("hello, mesh")).await);
    assert_eq!(ws.recv().await, Some(Frame::text("hello, mesh")));
    let binary: Vec<u8> = (0..=255u8).collect();
    assert!(ws.send(&Frame::binary(&binary)).await);
    assert_eq!(ws.recv().await, Some(Frame::binary(&binary)));
    // A 1 MiB message (many HTTP/2 DATA frames and flow-control windows each way).
    let big: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
    assert!(ws.send(&Frame::binary(&big)).await);
    let echoed = ws.recv().await.expect("the 1 MiB echo");
    assert_eq!(echoed.opcode, BINARY);
    assert!(echoed.payload == big, "1 MiB echo differs");
    // Ping → pong with the same payload.
    assert!(
        ws.send(&Frame {
            opcode: 0x9,
            payload: b"are you there".to_vec()
        })
        .await
    );
    let pong = ws.recv().await.expect("a pong");
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (PONG, &b"are you there"[..])
    );
    // Messages the server sends of its own accord.
    assert!(ws.send(&Frame::text("push 3")).await);
    for i in 0..3 {
        assert_eq!(ws.recv().await, Some(Frame::text(&format!("pushed {i}"))));
    }
    // The close handshake with a code: the server echoes it and ends the connection, and the
    // proxies end the client's.
    assert!(ws.send(&Frame::close(4001, "done")).await);
    let close = ws.recv().await.expect("the server's close");
    assert_eq!(close.close_code(), Some(4001));
    assert!(
        ws.ends_within(Duration::from_secs(5)).await,
        "connection ends after the close"
    );

    // What the app saw: an HTTP/1.1 upgrade with a fresh key, the proven caller identity, and
    // the caller's end-to-end headers.
    let seen = app.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let head = &seen[0];
    assert_eq!(head.start, "GET /chat?room=1 HTTP/1.1");
    assert_eq!(head.header("host"), Some("hello"));
    assert_eq!(head.header("upgrade"), Some("websocket"));
    assert!((head.header("connection")).is_some_and(|v| v.eq_ignore_ascii_case("upgrade")));
    assert_eq!(
        head.header("trellis-client-id"),
        Some(Service::http1("client").spiffe_id().as_str())
    );
    let key = head
        .header("sec-websocket-key")
        .expect("a key toward the app");
    assert_ne!(
        key, "dGhlIHNhbXBsZSBub25jZQ==",
        "the inbound's own key (RFC 8441 §5)"
    );
    assert_eq!(key.len(), 24);
    assert_eq!(head.header("sec-websocket-version"), Some("13"));
    assert_eq!(
        head.header("sec-websocket-protocol"),
        Some("chat, superchat")
    );
    assert_eq!(head.header("x-app"), Some("kept"));
    assert!(app.violations().is_empty(), "{:?}", app.violations());

    // Recorded like any request, with its 101.
    let (_, metrics) =
        (mesh.admin_get(index_of(&mesh, "client"), "/metrics").await).expect("metrics");
    let series = "trellis_requests_total{direction=\"outbound\",dst_service=\"default/hello\",route=\"default\",status_class=\"1xx\"";
    assert!(metrics.contains(series), "missing {series} in\n{metrics}");
}

/// A client that sends its first frame with the handshake, before the 101: the proxy holds it
/// back from HTTP/1 parsing until the answer, then carries it as the tunnel's first bytes.
#[tokio::test]
async fn a_frame_sent_with_the_handshake_reaches_the_app() {
    let (mesh, _app) = WsApp::behind_mesh("").await;
    let outbound = mesh.workload("client").outbound;
    let early = encode(&Frame::text("sent early"), Some([1, 2, 3, 4]));
    let hs = connect_sending(outbound, ("hello", "/early"), "websocket", &[], &early)
        .await
        .expect("an answer to the handshake");
    assert_eq!(hs.answer.status, 101, "{:?}", hs.answer);
    let mut ws = hs.conn.expect("101 with the right accept");
    assert_eq!(ws.recv().await, Some(Frame::text("sent early")));
    assert!(ws.send(&Frame::text("then another")).await);
    assert_eq!(ws.recv().await, Some(Frame::text("then another")));
}

#[tokio::test]
async fn the_server_can_start_the_close() {
    let (mesh, _app) = WsApp::behind_mesh("").await;
    let hs = connect(
        mesh.workload("client").outbound,
        "hello",
        "/",
        "websocket",
        &[],
    )
    .await
    .expect("answer");
    let mut ws = hs.conn.expect("upgraded");
    assert!(ws.send(&Frame::text("close-me 4002")).await);
    let close = ws.recv().await.expect("the server's close");
    assert_eq!((close.opcode, close.close_code()), (CLOSE, Some(4002)));
    assert!(ws.send(&Frame::close(4002, "")).await);
    assert!(ws.ends_within(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn a_websocket_outlives_the_request_timeout() {
    let (mesh, _app) = WsApp::behind_mesh("policy:\n  requestTimeout: 1s").await;
    let outbound = mesh.workload("client").outbound;
    // The timeout is in force for ordinary requests: the app answers /slow after 2 s.
    let client = mesh.client("client", false);
    let (rsp, _) = client.get("hello", "/slow").await.expect("an answer");
    assert_eq!(rsp.status(), 504, "{rsp:?}");
    // A WebSocket stays open past it, idle and then busy.
    let hs = connect(outbound, "hello", "/", "websocket", &[])
        .await
        .expect("answer");
    let mut ws = hs.conn.expect("upgraded");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for i in 0..3 {
        let text = format!("still here {i}");
        assert!(ws.send(&Frame::text(&text)).await);
        assert_eq!(ws.recv().await, Some(Frame::text(&text)));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn an_app_that_does_not_switch_is_an_error_not_a_200() {
    let (mesh, app) = WsApp::behind_mesh("").await;
    let outbound = mesh.workload("client").outbound;
    // The app answers the upgrade with a plain 200.
    let hs = connect(outbound, "hello", "/ok200", "websocket", &[])
        .await
        .expect("answer");
    assert_eq!(hs.answer.status, 502, "{:?}", hs.answer);
    let why = hs.answer.header("trellis-error").unwrap_or_default();
    assert!(
        why.contains("refused the upgrade") && why.contains("200"),
        "{why}"
    );
    assert!(hs.conn.is_none());
    // The app's own refusal reaches the client as the app sent it.
    let hs = connect(outbound, "hello", "/forbidden", "websocket", &[])
        .await
        .expect("answer");
    assert_eq!(hs.answer.status, 403, "{:?}", hs.answer);
    assert!(
        hs.answer.header("trellis-error").is_none(),
        "{:?}",
        hs.answer
    );
    assert_eq!(app.seen().len(), 2);
}

#[tokio::test]
async fn upgrades_to_other_protocols_are_refused_and_h2c_is_ignored() {
    let (mesh, app) = WsApp::behind_mesh("").await;
    let outbound = mesh.workload("client").outbound;
    let hs = connect(outbound, "hello", "/foo", "foo/1.0", &[])
        .await
        .expect("answer");
    // Not the client's fault: a protocol switch the proxy does not carry (RFC 9110 §15.6.2).
    assert_eq!(hs.answer.status, 501, "{:?}", hs.answer);
    let why = hs.answer.header("trellis-error").unwrap_or_default();
    assert!(why.contains("other than websocket"), "{why}");
    assert!(
        app.seen().is_empty(),
        "refused before the app: {:?}",
        app.seen()
    );
    // `Upgrade: h2c` (curl --http2 on http://) is ignored: served over HTTP/1.1.
    let hs = connect(outbound, "hello", "/h2c", "h2c", &[])
        .await
        .expect("answer");
    assert_eq!(hs.answer.status, 200, "{:?}", hs.answer);
    assert_eq!(hs.answer.body, b"plain /h2c");
    let seen = app.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].header("upgrade").is_none(), "{seen:?}");
}

#[tokio::test]
async fn ordinary_requests_keep_working_beside_a_websocket() {
    let (mesh, _app) = WsApp::behind_mesh("").await;
    let outbound = mesh.workload("client").outbound;
    let hs = connect(outbound, "hello", "/", "websocket", &[])
        .await
        .expect("answer");
    let mut ws = hs.conn.expect("upgraded");
    // Keep-alive HTTP/1.1 and h2c clients on other connections, over the same mesh connection.
    for h2c in [false, true] {
        let client = mesh.client("client", h2c);
        for i in 0..5 {
            let (rsp, body) = client.get("hello", &format!("/p{i}")).await.expect("get");
            assert_eq!(rsp.status(), 200, "h2c {h2c}");
            assert_eq!(body, format!("plain /p{i}").as_bytes());
        }
        assert!(ws.send(&Frame::text("interleaved")).await);
        assert_eq!(ws.recv().await, Some(Frame::text("interleaved")));
    }
    assert!(ws.send(&Frame::close(1000, "")).await);
    assert_eq!(ws.recv().await.map(|f| f.opcode), Some(CLOSE));
    let client = mesh.client("client", false);
    let (rsp, _) = client.get("hello", "/after").await.expect("get");
    assert_eq!(rsp.status(), 200);
    let _ = TEXT;
}

/// An h2c app may speak WebSocket over HTTP/2 itself (RFC 8441): its extended CONNECT is carried
/// the same way, and answered 200.
#[tokio::test]
async fn an_h2c_client_can_open_a_websocket_with_extended_connect() {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use trellis_tests::websocket::{decode, encode};

    let (mesh, app) = WsApp::behind_mesh("").await;
    let tcp = tokio::net::TcpStream::connect(mesh.workload("client").outbound)
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Empty<bytes::Bytes>>(TokioIo::new(tcp))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    let mut req = http::Request::connect("http://hello/chat")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-protocol", "chat")
        .body(Empty::new())
        .expect("request");
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let rsp = sender.send_request(req).await.expect("response");
    assert_eq!(rsp.status(), 200, "{rsp:?}");
    assert_eq!(rsp.headers()["sec-websocket-protocol"], "chat");
    let mut io = TokioIo::new(hyper::upgrade::on(rsp).await.expect("upgraded stream"));
    let big: Vec<u8> = (0..200_000).map(|i| (i % 253) as u8).collect();
    for frame in [Frame::text("over h2"), Frame::binary(&big)] {
        io.write_all(&encode(&frame, Some([9, 8, 7, 6])))
            .await
            .expect("write");
        let mut buf = Vec::new();
        let echoed = loop {
            if let Some(Ok((f, masked, _))) = decode(&buf) {
                assert!(!masked, "server frames are not masked");
                break f;
            }
            let mut chunk = vec![0u8; 65536];
            let n = tokio::time::timeout(Duration::from_secs(10), io.read(&mut chunk))
                .await
                .expect("echo in time")
                .expect("read");
            assert!(n > 0, "stream ended before the echo");
            buf.extend_from_slice(&chunk[..n]);
        };
        assert!(echoed == frame, "echo differs");
    }
    let seen = app.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].start, "GET /chat HTTP/1.1");
    assert_eq!(seen[0].header("upgrade"), Some("websocket"));
}

/// Authorization applies to the upgrade as to any request, and sees the `GET` the app gets (not
/// the CONNECT that carried it between the sidecars).
#[tokio::test]
async fn authorization_applies_to_the_upgrade_as_a_get() {
    const POLICY: &str = "\
authorization:
  default: deny
  rules:
    - name: client-chat
      action: allow
      from: {identities: [\"spiffe://trellis.local/ns/default/sa/client\"]}
      to: {methods: [GET], paths: [{prefix: /chat}]}
";
    let (mesh, app) = WsApp::behind_mesh(POLICY).await;
    let outbound = mesh.workload("client").outbound;
    let hs = connect(outbound, "hello", "/chat", "websocket", &[])
        .await
        .expect("answer");
    assert_eq!(hs.answer.status, 101, "{:?}", hs.answer);
    let mut ws = hs.conn.expect("upgraded");
    assert!(ws.send(&Frame::text("allowed")).await);
    assert_eq!(ws.recv().await, Some(Frame::text("allowed")));
    let hs = connect(outbound, "hello", "/private", "websocket", &[])
        .await
        .expect("answer");
    assert_eq!(hs.answer.status, 403, "{:?}", hs.answer);
    let why = hs.answer.header("trellis-error").unwrap_or_default();
    assert!(why.contains("forbidden"), "{why}");
    assert!(hs.conn.is_none());
    let paths: Vec<String> = app.seen().iter().map(|h| h.start.clone()).collect();
    assert_eq!(paths, ["GET /chat HTTP/1.1"]);
}

/// Under permissive mTLS a plaintext HTTP/1.1 client may open a WebSocket on the inbound port
/// directly: it reaches the app as an upgrade too, without an identity.
#[tokio::test]
async fn a_plaintext_client_can_open_a_websocket_on_a_permissive_inbound() {
    let (mesh, app) = WsApp::behind_mesh("mtls: permissive").await;
    let inbound = mesh.workload("hello").inbound;
    let hs = connect(
        inbound,
        "hello",
        "/direct",
        "websocket",
        &[("trellis-client-id", "spiffe://forged")],
    )
    .await
    .expect("answer");
    assert_eq!(hs.answer.status, 101, "{:?}", hs.answer);
    let mut ws = hs.conn.expect("101 with the accept of the client's key");
    assert!(ws.send(&Frame::binary(b"direct")).await);
    assert_eq!(ws.recv().await, Some(Frame::binary(b"direct")));
    assert!(ws.send(&Frame::close(1000, "")).await);
    assert_eq!(ws.recv().await.and_then(|f| f.close_code()), Some(1000));
    let seen = app.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].header("trellis-client-id").is_none(), "{seen:?}");
    assert_eq!(seen[0].header("upgrade"), Some("websocket"));
}

/// Either end vanishing without a close ends the other's connection too: nothing is left open.
#[tokio::test]
async fn an_end_that_vanishes_ends_the_other() {
    let (mesh, app) = WsApp::behind_mesh("").await;
    let outbound = mesh.workload("client").outbound;
    // The app drops its connection.
    let hs = connect(outbound, "hello", "/", "websocket", &[])
        .await
        .expect("answer");
    let mut ws = hs.conn.expect("upgraded");
    assert!(ws.send(&Frame::text("die")).await);
    assert!(
        ws.ends_within(Duration::from_secs(5)).await,
        "client connection ends"
    );
    assert_eq!(app.ended(), 1);
    // The client drops its connection.
    let hs = connect(outbound, "hello", "/", "websocket", &[])
        .await
        .expect("answer");
    let mut ws = hs.conn.expect("upgraded");
    assert!(ws.send(&Frame::text("ping?")).await);
    assert_eq!(ws.recv().await, Some(Frame::text("ping?")));
    drop(ws);
    let ended =
        trellis_tests::mesh::wait_until(Duration::from_secs(5), || async { app.ended() == 2 })
            .await;
    assert!(ended.is_ok(), "the app's connection ends: {}", app.ended());
}

/// An h2c app port cannot take an HTTP/1.1 upgrade: a clear 502, not a silent 200.
#[tokio::test]
async fn an_upgrade_to_an_h2c_app_is_refused_clearly() {
    let mesh = Mesh::client_and(Service::h2c("hello")).await;
    let hs = connect(
        mesh.workload("client").outbound,
        "hello",
        "/",
        "websocket",
        &[],
    )
    .await
    .expect("answer");
    assert_eq!(hs.answer.status, 502, "{:?}", hs.answer);
    let why = hs.answer.header("trellis-error").unwrap_or_default();
    assert!(why.contains("h2c"), "{why}");
}

/// A WebSocket keeps its place in the listener's connection cap for as long as it is open (the
/// socket leaves the HTTP server at the 101, its place goes with it): a client cannot open more
/// tunnels than `--max-connections`, and closing one lets the next in.
#[tokio::test]
async fn websockets_count_against_the_connection_cap_while_open() {
    let limits = trellis_proxy::Limits {
        max_connections: 3,
        ..Default::default()
    };
    let mesh = Mesh::builder()
        .limits(limits)
        .service(Service::http1("client"))
        .service(Service::http1("hello"))
        .start()
        .await
        .expect("mesh starts");
    let (mesh, _app) = WsApp::behind(mesh).await;
    let outbound = mesh.workload("client").outbound;
    let mut open = Vec::new();
    for i in 0..3 {
        let hs = connect(outbound, "hello", "/", "websocket", &[]).await;
        open.push(
            hs.and_then(|h| h.conn)
                .unwrap_or_else(|| panic!("websocket {i}")),
        );
    }
    let fourth = connect(outbound, "hello", "/", "websocket", &[]).await;
    assert!(
        fourth.is_none(),
        "a fourth connection is over the cap of 3 while three tunnels are open"
    );
    for ws in &mut open {
        assert!(ws.send(&Frame::text("still here")).await);
        assert_eq!(ws.recv().await, Some(Frame::text("still here")));
    }
    drop(open.pop());
    let freed = trellis_tests::mesh::wait_until(Duration::from_secs(5), || async {
        let hs = connect(outbound, "hello", "/", "websocket", &[]).await;
        hs.is_some_and(|h| h.conn.is_some())
    })
    .await;
    assert!(freed.is_ok(), "a closed tunnel frees its place");
}

/// A WebSocket neither end says anything on is closed after the tunnel idle timeout, on both
/// sides; messages (pings included) keep it open.
#[tokio::test]
async fn a_silent_websocket_is_closed_after_the_idle_timeout() {
    let limits = trellis_proxy::Limits {
        tunnel_idle_timeout: Duration::from_millis(600),
        ..Default::default()
    };
    let mesh = Mesh::builder()
        .limits(limits)
        .service(Service::http1("client"))
        .service(Service::http1("hello"))
        .start()
        .await
        .expect("mesh starts");
    let (mesh, app) = WsApp::behind(mesh).await;
    let hs = connect(
        mesh.workload("client").outbound,
        "hello",
        "/",
        "websocket",
        &[],
    )
    .await
    .expect("answer");
    let mut ws = hs.conn.expect("upgraded");
    // A message every 200 ms for 1.6 s: longer than the timeout, never silent for it.
    for i in 0..8 {
        let text = format!("message {i}");
        assert!(ws.send(&Frame::text(&text)).await);
        assert_eq!(
            ws.recv().await,
            Some(Frame::text(&text)),
            "still open at {i}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let quiet_from = std::time::Instant::now();
    assert!(
        ws.ends_within(Duration::from_secs(5)).await,
        "a silent WebSocket is closed"
    );
    let quiet = quiet_from.elapsed();
    assert!(
        quiet >= Duration::from_millis(350),
        "closed after {quiet:?}"
    );
    assert!(quiet < Duration::from_secs(3), "closed after {quiet:?}");
    let ended =
        trellis_tests::mesh::wait_until(Duration::from_secs(5), || async { app.ended() == 1 })
            .await;
    assert!(
        ended.is_ok(),
        "the app's side is closed too: {}",
        app.ended()
    );
}

/// A draining sidecar waits for an open WebSocket (its socket keeps the claim on drain past
/// the 101), which keeps working meanwhile; once it closes, the sidecar exits.
#[tokio::test]
async fn drain_waits_for_an_open_websocket() {
    let (mut mesh, _app) = WsApp::behind_mesh("").await;
    let hs = connect(
        mesh.workload("client").outbound,
        "hello",
        "/",
        "websocket",
        &[],
    )
    .await
    .expect("answer");
    let mut ws = hs.conn.expect("upgraded");
    assert!(ws.send(&Frame::text("before")).await);
    assert_eq!(ws.recv().await, Some(Frame::text("before")));
    let index = (mesh.workloads.iter())
        .position(|w| w.service == "client")
        .expect("client workload");
    let task = mesh.stop_sidecar(index).expect("running sidecar");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!task.is_finished(), "the sidecar waits for the WebSocket");
    assert!(ws.send(&Frame::text("during drain")).await);
    assert_eq!(ws.recv().await, Some(Frame::text("during drain")));
    assert!(!task.is_finished(), "still waiting");
    drop(ws);
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("the sidecar exits once the WebSocket is gone")
        .expect("join");
}
