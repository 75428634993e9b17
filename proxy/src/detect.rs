//! Protocol detection from the first bytes of a connection, without consuming them (the caller
//! peeks). `detect` tells a TLS ClientHello from anything else, which is how the inbound listener
//! serves mTLS and plaintext on one port in permissive mode; `detect_protocol` and
//! `peek_protocol` tell HTTP/1.x, the HTTP/2 preface, TLS and anything else (opaque TCP) apart
//! for transparent outbound connections, where no bytes within the timeout (a server-speaks-first
//! protocol) also means opaque.

use std::time::Duration;
use tokio::net::TcpStream;

/// What the first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// A TLS handshake record (a ClientHello on a server socket).
    Tls,
    /// Anything that is not TLS.
    Plaintext,
    /// Too few bytes to tell.
    NeedMore,
}

/// The TLS record header: content type 22 (handshake), legacy version 3.x (SSL 3.0 to TLS 1.3 all
/// write 0x03 0x00..=0x04), and, when the sixth byte is there, handshake type 1 (ClientHello).
pub fn detect(bytes: &[u8]) -> Detected {
    const HANDSHAKE: u8 = 0x16;
    const CLIENT_HELLO: u8 = 0x01;
    match bytes {
        [] => Detected::NeedMore,
        [first, ..] if *first != HANDSHAKE => Detected::Plaintext,
        [_] | [_, _] => Detected::NeedMore,
        [_, 0x03, minor, rest @ ..] if *minor <= 0x04 => match rest {
            [_, _, kind, ..] if *kind != CLIENT_HELLO => Detected::Plaintext,
            _ => Detected::Tls,
        },
        _ => Detected::Plaintext,
    }
}

/// Peeks at `stream` until `detect` can tell (or `limit` passes, which counts as plaintext never
/// arriving: the caller gets `NeedMore` and closes). `Ok(None)` means the peer closed first.
pub async fn peek(stream: &TcpStream, limit: Duration) -> std::io::Result<Option<Detected>> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; 6];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(read) => read?,
            Err(_) => return Ok(Some(Detected::NeedMore)),
        };
        if n == 0 {
            return Ok(None);
        }
        match detect(&buf[..n]) {
            // The header almost always arrives in one segment; wait briefly for the rest.
            Detected::NeedMore if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            other => return Ok(Some(other)),
        }
    }
}

/// What a transparent outbound connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// An HTTP/1.x request line.
    Http1,
    /// The HTTP/2 connection preface (prior knowledge h2c).
    Http2,
    /// A TLS ClientHello: passed through untouched as opaque bytes.
    Tls,
    /// Anything else, or nothing within the detection timeout.
    Opaque,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How many bytes detection looks at; a request line longer than this is treated as opaque.
pub const PEEK_LIMIT: usize = 4096;

/// `None` while more bytes could change the answer.
pub fn detect_protocol(bytes: &[u8]) -> Option<Protocol> {
    let prefix = bytes.len().min(H2_PREFACE.len());
    if bytes[..prefix] == H2_PREFACE[..prefix] {
        return (bytes.len() >= H2_PREFACE.len()).then_some(Protocol::Http2);
    }
    match detect(bytes) {
        Detected::Tls => return Some(Protocol::Tls),
        Detected::NeedMore => return None,
        Detected::Plaintext => {}
    }
    http1_request_line(bytes)
}

/// `METHOD SP target SP HTTP/1.x CRLF`, with a method of 1 to 20 upper-case letters.
fn http1_request_line(bytes: &[u8]) -> Option<Protocol> {
    let method_len = bytes.iter().take_while(|b| b.is_ascii_uppercase()).count();
    match bytes.get(method_len) {
        None if method_len <= 20 => return None,
        Some(b' ') if (1..=20).contains(&method_len) => {}
        _ => return Some(Protocol::Opaque),
    }
    let Some(end) = bytes.windows(2).position(|w| w == b"\r\n") else {
        let printable = bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ');
        return match printable && bytes.len() < PEEK_LIMIT {
            true => None,
            false => Some(Protocol::Opaque),
        };
    };
    let line = &bytes[..end];
    let http1 = line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0");
    Some(if http1 {
        Protocol::Http1
    } else {
        Protocol::Opaque
    })
}

/// Peeks at `stream` until `detect_protocol` can tell; no bytes (or too few to tell) within
/// `limit` is `Opaque`. `Ok(None)` means the peer closed before sending anything.
pub async fn peek_protocol(
    stream: &TcpStream,
    limit: Duration,
) -> std::io::Result<Option<Protocol>> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = vec![0u8; PEEK_LIMIT];
    let mut seen = 0;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(read) => read?,
            Err(_) => return Ok(Some(Protocol::Opaque)),
        };
        if n == 0 {
            return Ok(if seen == 0 {
                None
            } else {
                Some(Protocol::Opaque)
            });
        }
        if let Some(p) = detect_protocol(&buf[..n]) {
            return Ok(Some(p));
        }
        seen = n;
        // peek returns at once while bytes are queued: wait for more to arrive.
        if tokio::time::Instant::now() >= deadline {
            return Ok(Some(Protocol::Opaque));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_hello_is_tls() {
        // TLS 1.2/1.3 ClientHellos carry record version 0x0301 or 0x0303.
        assert_eq!(
            detect(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0xfc]),
            Detected::Tls
        );
        assert_eq!(detect(&[0x16, 0x03, 0x03, 0x00, 0x50, 0x01]), Detected::Tls);
        assert_eq!(detect(&[0x16, 0x03, 0x01]), Detected::Tls);
    }

    #[test]
    fn http_and_other_bytes_are_plaintext() {
        assert_eq!(detect(b"GET / HTTP/1.1\r\n"), Detected::Plaintext);
        assert_eq!(detect(b"PRI * HTTP/2.0\r\n"), Detected::Plaintext);
        assert_eq!(
            detect(&[0x16, 0x02, 0x00]),
            Detected::Plaintext,
            "not version 3.x"
        );
        assert_eq!(
            detect(&[0x16, 0x03, 0x09]),
            Detected::Plaintext,
            "no such minor"
        );
        assert_eq!(
            detect(&[0x16, 0x03, 0x03, 0x00, 0x10, 0x02]),
            Detected::Plaintext,
            "a ServerHello is not what a server expects"
        );
    }

    #[test]
    fn short_input_needs_more() {
        assert_eq!(detect(&[]), Detected::NeedMore);
        assert_eq!(detect(&[0x16]), Detected::NeedMore);
        assert_eq!(detect(&[0x16, 0x03]), Detected::NeedMore);
        assert_eq!(
            detect(b"G"),
            Detected::Plaintext,
            "one byte is enough for HTTP"
        );
    }

    #[tokio::test]
    async fn peeks_without_consuming() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = tokio::spawn(async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
            c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
            c
        });
        let (mut server, _) = listener.accept().await.expect("accept");
        let seen = peek(&server, Duration::from_secs(2)).await.expect("peek");
        assert_eq!(seen, Some(Detected::Plaintext));
        let mut first = [0u8; 3];
        server.read_exact(&mut first).await.expect("read");
        assert_eq!(&first, b"GET");
        drop(client.await);
    }

    #[test]
    fn outbound_protocols() {
        use Protocol::*;
        assert_eq!(
            detect_protocol(b"GET / HTTP/1.1\r\nHost: a\r\n"),
            Some(Http1)
        );
        assert_eq!(detect_protocol(b"POST /x?y HTTP/1.0\r\n"), Some(Http1));
        assert_eq!(
            detect_protocol(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Some(Http2)
        );
        assert_eq!(
            detect_protocol(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]),
            Some(Tls)
        );
        assert_eq!(detect_protocol(b"\x00\x01binary"), Some(Opaque));
        assert_eq!(
            detect_protocol(b"get / HTTP/1.1\r\n"),
            Some(Opaque),
            "methods are upper case"
        );
        assert_eq!(detect_protocol(b"HELO mail.example\r\n"), Some(Opaque));
        assert_eq!(detect_protocol(b"GET / SPDY/3\r\n"), Some(Opaque));
    }

    #[test]
    fn partial_input_waits() {
        assert_eq!(detect_protocol(b""), None);
        assert_eq!(
            detect_protocol(b"PRI * HT"),
            None,
            "could still be the h2 preface"
        );
        assert_eq!(detect_protocol(b"GE"), None);
        assert_eq!(detect_protocol(b"GET /long/path"), None);
        let long = [b"GET /".as_slice(), &[b'a'; PEEK_LIMIT]].concat();
        assert_eq!(detect_protocol(&long), Some(Protocol::Opaque));
    }

    #[tokio::test]
    async fn silence_is_opaque_and_http_is_http() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let quiet = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let seen = peek_protocol(&server, Duration::from_millis(100))
            .await
            .expect("peek");
        assert_eq!(
            seen,
            Some(Protocol::Opaque),
            "server-speaks-first: nothing to read"
        );
        drop(quiet);

        let mut talker = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        talker.write_all(b"GET / HT").await.expect("write");
        let later = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            talker.write_all(b"TP/1.1\r\n\r\n").await.expect("write");
            talker
        });
        let seen = peek_protocol(&server, Duration::from_secs(2))
            .await
            .expect("peek");
        assert_eq!(seen, Some(Protocol::Http1));
        drop(later.await);
    }
}
