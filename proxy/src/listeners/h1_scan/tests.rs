use super::*;

/// Feeds `bytes` whole and split at every position; every way must find the same thing.
fn scan(bytes: &[u8]) -> Option<Finding> {
    let whole = Scanner::new(64 * 1024).feed(bytes);
    for split in 1..bytes.len() {
        let mut s = Scanner::new(64 * 1024);
        let found = s.feed(&bytes[..split]).or_else(|| s.feed(&bytes[split..]));
        assert_eq!(
            found,
            whole,
            "split at {split} of {:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    whole
}

fn head(request: u64, status: u16) -> Option<(u64, u16)> {
    Some((request, status))
}

fn refused(found: Option<Finding>) -> Option<(u64, u16)> {
    match found {
        Some(Finding {
            request,
            problem: Problem::Head(r),
        }) => Some((request, r.status)),
        _ => None,
    }
}

#[test]
fn pipelined_requests_with_bodies_pass() {
    let bytes = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nGET /bPOST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\nGET\r\n0\r\nTrailer: t\r\n\r\nGET /d HTTP/1.1\r\nHost: h\r\n\r\n";
    assert_eq!(
        scan(bytes),
        None,
        "body bytes that look like a head are not a head"
    );
    let mut s = Scanner::new(64 * 1024);
    assert_eq!(s.feed(bytes), None);
    assert_eq!(
        s.current_request(),
        3,
        "three heads seen, the fourth is next"
    );
}

#[test]
fn the_refused_request_is_named_by_its_index() {
    let bytes = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nPOST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n";
    assert_eq!(refused(scan(bytes)), head(1, 400));
}

#[test]
fn ambiguous_heads_are_refused() {
    let cases: [(&[u8], u16); 6] = [
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400),
        (b"GET / HTTP/1.1\nHost: h\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
    ];
    for (bytes, status) in cases {
        assert_eq!(
            refused(scan(bytes)),
            head(0, status),
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn what_hyper_refuses_itself_stops_the_scan() {
    for bytes in [
        &b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ] {
        let mut s = Scanner::new(64 * 1024);
        assert_eq!(s.feed(bytes), None);
        assert_eq!(s.state, State::Off, "{}", String::from_utf8_lossy(bytes));
    }
}

#[test]
fn malformed_chunks_are_found() {
    for (body, why) in [
        (&b"zz\r\n"[..], "chunk size missing"),
        (b"5\nhello\r\n0\r\n\r\n", "invalid chunk size"),
        (b"5\r\r\nhello\r\n", "chunk size line without CRLF"),
        (b"11111111111111111\r\n", "chunk size overflows"),
        (b"3\r\nabcd\r\n", "chunk data without CRLF"),
    ] {
        let mut bytes =
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        bytes.extend_from_slice(body);
        let found = scan(&bytes);
        assert_eq!(
            found,
            Some(Finding {
                request: 0,
                problem: Problem::MalformedBody(why)
            })
        );
    }
}

#[test]
fn a_head_longer_than_the_bound_stops_the_scan() {
    let mut s = Scanner::new(100);
    let mut bytes = b"GET / HTTP/1.1\r\nHost: h\r\nX: ".to_vec();
    bytes.resize(200, b'a');
    assert_eq!(s.feed(&bytes[..50]), None);
    assert_eq!(s.feed(&bytes[50..]), None);
    assert_eq!(s.state, State::Off);
}

#[test]
fn a_split_head_followed_by_a_large_body_is_still_followed() {
    let mut s = Scanner::new(1024);
    let first = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 4000\r\n\r\n";
    assert_eq!(s.feed(&first[..10]), None);
    let mut rest = first[10..].to_vec();
    rest.extend(std::iter::repeat_n(b'x', 4000));
    rest.extend_from_slice(
        b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    let found = refused(s.feed(&rest));
    assert_eq!(found, head(1, 400), "the second request is still judged");
}

const CHUNKED: &[u8] = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";

/// What the scanner finds in a chunked body (after `CHUNKED`), whole and split anywhere.
fn body_finding(body: &[u8]) -> Option<Finding> {
    let mut bytes = CHUNKED.to_vec();
    bytes.extend_from_slice(body);
    scan(&bytes)
}

fn malformed(why: &'static str) -> Option<Finding> {
    Some(Finding {
        request: 0,
        problem: Problem::MalformedBody(why),
    })
}

#[test]
fn chunk_extensions_follow_the_grammar() {
    for body in [
        &b"5;a\r\nhello\r\n0\r\n\r\n"[..],
        b"5;a=b\r\nhello\r\n0;x=1\r\n\r\n",
        b"5 ; a = b ; c\t;d=\"e\"\r\nhello\r\n0\r\n\r\n",
        b"5;a=\"q \\\" ;x\"\r\nhello\r\n0\r\n\r\n",
        b"5;a=b \r\nhello\r\n0\r\n\r\n",
    ] {
        assert_eq!(
            body_finding(body),
            None,
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    for (body, why) in [
        (&b"5;\r\nhello\r\n"[..], "invalid chunk extension"),
        (b"5;=b\r\nhello\r\n", "invalid chunk extension"),
        (b"5;a=\r\nhello\r\n", "invalid chunk extension"),
        (b"5;a b\r\nhello\r\n", "invalid chunk extension"),
        (b"5;a=b c\r\nhello\r\n", "invalid chunk extension"),
        (b"5;a=\"x\r\nhello\r\n", "invalid chunk extension"),
        (b"5;a\x00\r\nhello\r\n", "invalid chunk extension"),
        (b"5;a=\"\x01\"\r\nhello\r\n", "invalid chunk extension"),
        (b"5;a=b\nhello\r\n", "newline in chunk extension"),
    ] {
        let found = body_finding(body);
        assert_eq!(found, malformed(why), "{}", String::from_utf8_lossy(body));
    }
}

#[test]
fn trailers_are_field_lines() {
    let good = b"0\r\nX-T: t\r\nY:\r\n\r\n";
    assert_eq!(body_finding(good), None);
    for (body, why) in [
        (&b"0\r\nX-T\r\n\r\n"[..], "invalid trailer field"),
        (b"0\r\nX T: t\r\n\r\n", "invalid trailer field"),
        (b"0\r\n X: t\r\n\r\n", "invalid trailer field"),
        (b"0\r\nX: a\x00b\r\n\r\n", "invalid trailer field"),
        (b"0\r\nX: t\n\r\n", "invalid trailer field"),
        (b"0\r\nX: t\r\r\n", "trailer line without CRLF"),
        (b"0\r\n\n", "last chunk without CRLF"),
        (b"0\r\n\r\r", "last chunk without CRLF"),
    ] {
        let found = body_finding(body);
        assert_eq!(found, malformed(why), "{}", String::from_utf8_lossy(body));
    }
}

#[test]
fn a_chunked_request_is_cleared_once_its_first_size_line_is_read() {
    let mut s = Scanner::new(64 * 1024);
    assert_eq!(s.feed(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"), None);
    assert_eq!(
        s.cleared(),
        1,
        "a request without a body is cleared by its head"
    );
    assert_eq!(s.feed(CHUNKED), None);
    assert_eq!(s.cleared(), 1, "not yet: no chunk-size line");
    assert_eq!(s.feed(b"5;a=b\r"), None);
    assert_eq!(s.cleared(), 1, "not yet: the line has not ended");
    assert_eq!(s.feed(b"\nhel"), None);
    assert_eq!(s.cleared(), 2);
    assert_eq!(s.feed(b"lo\r\n3\r\nabc\r\n0\r\n\r\n"), None);
    assert_eq!(s.cleared(), 2, "later chunks change nothing");
    let mut s = Scanner::new(64 * 1024);
    assert_eq!(
        s.feed(b"POST / HTTP/1.1\r\nHost: h\r\nUpgrade: x\r\n\r\n"),
        None
    );
    assert_eq!(
        s.cleared(),
        1,
        "an upgrade request is cleared by its head too"
    );
    s.upgrade_answered(101);
    assert_eq!(s.cleared(), u64::MAX, "once not judging, nothing is held");
}

const WEBSOCKET: &[u8] =
    b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";

#[test]
fn an_upgrade_waits_for_its_answer_and_a_refused_one_leaves_http1() {
    let mut s = Scanner::new(64 * 1024);
    assert_eq!(s.feed(WEBSOCKET), None);
    assert_eq!(s.upgrade_asked(), Some(0));
    assert!(s.upgrade_pending() && !s.awaiting_head());
    s.upgrade_answered(200);
    assert!(!s.upgrade_pending() && s.awaiting_head() && s.upgrade_asked().is_none());
    // The next head is judged as any other.
    assert_eq!(
        refused(s.feed(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")),
        head(1, 400)
    );

    // Accepted (101): what follows is the tunnel's, never judged.
    let mut s = Scanner::new(64 * 1024);
    assert_eq!(s.feed(WEBSOCKET), None);
    s.upgrade_answered(101);
    assert!(!s.awaiting_head() && !s.upgrade_pending());
    assert_eq!(s.feed(b"\x81\x05hello GET / HTTP/1.1\r\n\r\n"), None);

    // CONNECT opens a tunnel with any 2xx; a 200 to a WebSocket request does not.
    let mut s = Scanner::new(64 * 1024);
    assert_eq!(
        s.feed(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"),
        None
    );
    s.upgrade_answered(200);
    assert!(!s.awaiting_head());
    let mut s = Scanner::new(64 * 1024);
    assert_eq!(
        s.feed(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"),
        None
    );
    s.upgrade_answered(403);
    assert!(s.awaiting_head());
}

#[test]
fn an_upgrade_request_body_is_framed_before_the_answer_is_awaited() {
    let mut s = Scanner::new(64 * 1024);
    let head = b"POST / HTTP/1.1\r\nHost: h\r\nUpgrade: x\r\nContent-Length: 4\r\n\r\n";
    assert_eq!(s.feed(head), None);
    assert!(s.in_body() && !s.upgrade_pending());
    assert_eq!(s.feed(b"ab"), None);
    assert_eq!(s.feed(b"cd"), None);
    assert!(s.upgrade_pending());
    s.upgrade_answered(404);
    assert_eq!(s.feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"), None);
    assert_eq!(s.heads(), 2);
    assert!(s.awaiting_head());
}

#[test]
fn bytes_before_the_answer_wait_for_it() {
    // A client sending on before the answer: a tunnel's bytes or a pipelined request, no telling
    // until the answer; they are left untaken, then judged as HTTP/1 after a refusal.
    let next = b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n";
    let mut bytes = WEBSOCKET.to_vec();
    bytes.extend_from_slice(next);
    let mut s = Scanner::new(64 * 1024);
    assert_eq!(s.feed(&bytes), None);
    assert_eq!(
        s.accepted(),
        WEBSOCKET.len(),
        "the pipelined request is not taken"
    );
    assert!(s.upgrade_pending());
    assert_eq!(s.feed(next), None);
    assert_eq!(s.accepted(), 0, "nor while the answer is awaited");
    s.upgrade_answered(404);
    assert_eq!(
        refused(s.feed(next)),
        head(1, 400),
        "the second request, refused"
    );

    // Accepted: the same bytes are the tunnel's, not judged.
    let mut s = Scanner::new(64 * 1024);
    assert_eq!(s.feed(&bytes), None);
    s.upgrade_answered(101);
    assert_eq!(s.feed(next), None);
    assert!(!s.awaiting_head());
}

#[test]
fn accepted_stops_before_the_bad_byte() {
    let mut bytes = CHUNKED.to_vec();
    bytes.extend_from_slice(b"3\r\nabcX\r\n");
    let mut s = Scanner::new(64 * 1024);
    assert_eq!(s.feed(&bytes), malformed("chunk data without CRLF"));
    assert_eq!(s.accepted(), CHUNKED.len() + 6, "up to and excluding the X");
    let mut s = Scanner::new(64 * 1024);
    assert_eq!(s.feed(CHUNKED), None);
    assert_eq!(s.accepted(), CHUNKED.len());
    assert_eq!(s.feed(b"zz"), malformed("chunk size missing"));
    assert_eq!(s.accepted(), 0);
}
