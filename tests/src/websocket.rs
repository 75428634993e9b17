//! A WebSocket client and server for the upgrade tests, written to RFC 6455 over raw sockets, so
//! that nothing between the test and the wire tidies up what the proxy does: the handshake as
//! bytes (status line, headers, `Sec-WebSocket-Accept` checked against the key sent), then frames
//! with the masking rules of §5.1 (a client masks every frame, a server none; the server here
//! closes with 1002 on an unmasked client frame, and the client fails on a masked server frame).
//!
//! `WsApp` stands in for a workload's app: it answers upgrades to WebSocket on any path and
//! echoes (text, binary, ping → pong, close → close with the same code); `push N` makes it send N
//! messages of its own, `close-me CODE` makes it start the close, `die` makes it drop the TCP
//! connection without a close. It counts WebSocket connections that ended (`ended`). Non-upgrade requests get
//! `200 plain <path>` (or, on `/slow`, the same after 2 s); `/ok200` answers an upgrade with a
//! plain 200 and `/forbidden` with 403, as apps that refuse. It records every request head.

use crate::mesh::Mesh;
use crate::raw::Answer;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use trellis_proxy::http::upgrade::websocket_accept;

pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// How long a read waits before the peer counts as silent.
const PATIENCE: Duration = Duration::from_secs(10);
/// Frames larger than this are refused (the tests send at most 1 MiB).
const MAX_PAYLOAD: u64 = 8 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn text(s: &str) -> Frame {
        Frame {
            opcode: TEXT,
            payload: s.as_bytes().to_vec(),
        }
    }
    pub fn binary(b: &[u8]) -> Frame {
        Frame {
            opcode: BINARY,
            payload: b.to_vec(),
        }
    }
    /// A close frame with a status code and reason (§5.5.1).
    pub fn close(code: u16, reason: &str) -> Frame {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        Frame {
            opcode: CLOSE,
            payload,
        }
    }
    /// A close frame's status code.
    pub fn close_code(&self) -> Option<u16> {
        match (self.opcode, self.payload.as_slice()) {
            (CLOSE, [a, b, ..]) => Some(u16::from_be_bytes([*a, *b])),
            _ => None,
        }
    }
}

/// One frame on the wire (FIN set), masked with `mask` if given.
pub fn encode(frame: &Frame, mask: Option<[u8; 4]>) -> Vec<u8> {
    let len = frame.payload.len();
    let mut out = vec![0x80 | frame.opcode];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= 0xFFFF {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend((frame.payload.iter().enumerate()).map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(&frame.payload),
    }
    out
}

/// Decodes one whole frame from the front of `buf`: the frame, whether it was masked, and its
/// length on the wire; `None` if incomplete. Fragmented messages are not used by these tests.
pub fn decode(buf: &[u8]) -> Option<Result<(Frame, bool, usize), &'static str>> {
    let [b0, b1, ..] = *buf else { return None };
    if b0 & 0x80 == 0 {
        return Some(Err("fragmented frame"));
    }
    if b0 & 0x70 != 0 {
        return Some(Err("reserved bits set"));
    }
    let masked = b1 & 0x80 != 0;
    let (len, mut at) = match b1 & 0x7F {
        126 => (
            u64::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
            4,
        ),
        127 => {
            let bytes: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (u64::from_be_bytes(bytes), 10)
        }
        n => (u64::from(n), 2),
    };
    if len > MAX_PAYLOAD {
        return Some(Err("frame too large"));
    }
    let mask: Option<[u8; 4]> = match masked {
        true => {
            let key = buf.get(at..at + 4)?.try_into().ok()?;
            at += 4;
            Some(key)
        }
        false => None,
    };
    let end = at + len as usize;
    let data = buf.get(at..end)?;
    let payload = match mask {
        Some(key) => (data.iter().enumerate())
            .map(|(i, b)| b ^ key[i % 4])
            .collect(),
        None => data.to_vec(),
    };
    let frame = Frame {
        opcode: b0 & 0x0F,
        payload,
    };
    Some(Ok((frame, masked, end)))
}

/// A WebSocket connection after its handshake, as a client (masking) or a server.
pub struct WsConn {
    stream: TcpStream,
    buf: Vec<u8>,
    client: bool,
}

impl WsConn {
    pub async fn send(&mut self, frame: &Frame) -> bool {
        let mask = self.client.then(|| {
            let n = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0x5a5a_5a5a);
            (n | 1).to_le_bytes()
        });
        self.stream.write_all(&encode(frame, mask)).await.is_ok()
    }

    /// The next frame; `None` on EOF, silence, or a frame breaking the masking rule.
    pub async fn recv(&mut self) -> Option<Frame> {
        loop {
            match decode(&self.buf) {
                Some(Ok((frame, masked, used))) => {
                    self.buf.drain(..used);
                    // §5.1: clients mask, servers do not.
                    if masked == self.client {
                        return None;
                    }
                    return Some(frame);
                }
                Some(Err(_)) => return None,
                None => {}
            }
            let mut chunk = vec![0u8; 64 * 1024];
            match tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    /// Whether the peer ends the TCP connection (EOF or reset) within `within`, reading and
    /// dropping anything before.
    pub async fn ends_within(&mut self, within: Duration) -> bool {
        crate::raw::ends_within(&mut self.stream, within).await
    }
}

/// The answer to a client's handshake: the head, and the connection if it switched (101 with the
/// right `Sec-WebSocket-Accept`).
pub struct Handshake {
    pub answer: Answer,
    pub conn: Option<WsConn>,
}

/// A client's opening handshake (§4.1) to `addr` (a sidecar's outbound listener) for `path` on
/// `host`, with the `Upgrade` token `upgrade` and `extra` headers.
pub async fn connect(
    addr: SocketAddr,
    host: &str,
    path: &str,
    upgrade: &str,
    extra: &[(&str, &str)],
) -> Option<Handshake> {
    connect_sending(addr, (host, path), upgrade, extra, &[]).await
}

/// `connect`, with `early` bytes (frames sent before the answer, as some clients do) in the
/// same write as the handshake.
pub async fn connect_sending(
    addr: SocketAddr,
    (host, path): (&str, &str),
    upgrade: &str,
    extra: &[(&str, &str)],
    early: &[u8],
) -> Option<Handshake> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let mut head = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: {upgrade}\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (n, v) in extra {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(early);
    stream.write_all(&bytes).await.ok()?;
    let (answer, rest) = read_head(&mut stream).await?;
    let accepted = answer.status == 101
        && answer.header("sec-websocket-accept").map(str::as_bytes)
            == Some(websocket_accept(key.as_bytes()).as_bytes());
    let conn = accepted.then_some(WsConn {
        stream,
        buf: rest,
        client: true,
    });
    Some(Handshake { answer, conn })
}

/// Reads a response head (a body, if any, is left unread); the bytes after it.
async fn read_head(stream: &mut TcpStream) -> Option<(Answer, Vec<u8>)> {
    let mut buf = Vec::new();
    let end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(PATIENCE, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    };
    let (start, headers) = parse_head(&buf[..end]);
    let status = start.split(' ').nth(1)?.parse().ok()?;
    let rest = buf[end + 4..].to_vec();
    let answer = Answer {
        status,
        headers,
        body: rest.clone(),
    };
    Some((answer, rest))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_head(head: &[u8]) -> (String, Vec<(String, String)>) {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let start = lines.next().unwrap_or_default().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (start, headers)
}

/// A request head as the app received it.
#[derive(Debug, Clone)]
pub struct SeenHead {
    pub start: String,
    pub headers: Vec<(String, String)>,
}

impl SeenHead {
    pub fn header(&self, name: &str) -> Option<&str> {
        (self.headers.iter())
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The WebSocket app (see the module comment).
pub struct WsApp {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<SeenHead>>>,
    /// Frames the app received that broke the protocol (unmasked, malformed).
    violations: Arc<Mutex<Vec<&'static str>>>,
    ended: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for WsApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WsApp {
    pub async fn start(addr: SocketAddr) -> std::io::Result<WsApp> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let violations = Arc::new(Mutex::new(Vec::new()));
        let ended = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(accept(
            listener,
            seen.clone(),
            violations.clone(),
            ended.clone(),
        ));
        Ok(WsApp {
            addr,
            seen,
            violations,
            ended,
            task,
        })
    }

    /// A mesh of `client` and `hello` (its service YAML lines: `hello_yaml`) whose hello app is
    /// a `WsApp`.
    pub async fn behind_mesh(hello_yaml: &str) -> (Mesh, WsApp) {
        let mut hello = crate::Service::http1("hello");
        if !hello_yaml.is_empty() {
            hello = hello.yaml(hello_yaml);
        }
        let mesh = Mesh::builder()
            .service(crate::Service::http1("client"))
            .service(hello)
            .start()
            .await
            .expect("mesh starts");
        WsApp::behind(mesh).await
    }

    /// Puts a `WsApp` in place of the app of `mesh`'s `hello` workload.
    pub async fn behind(mut mesh: Mesh) -> (Mesh, WsApp) {
        let index = (mesh.workloads.iter())
            .position(|w| w.service == "hello")
            .expect("a hello workload");
        let addr = mesh.workloads[index].app.addr;
        let stand_in = crate::EchoApp::start(
            "stand-in",
            SocketAddr::new(addr.ip(), 0),
            crate::Protocol::Http1,
        )
        .await
        .expect("stand-in app starts");
        drop(std::mem::replace(&mut mesh.workloads[index].app, stand_in));
        for _ in 0..100 {
            if let Ok(app) = WsApp::start(addr).await {
                return (mesh, app);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the app's address {addr} never became free");
    }

    pub fn seen(&self) -> Vec<SeenHead> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// WebSocket connections that ended (close, EOF, reset or `die`).
    pub fn ended(&self) -> usize {
        self.ended.load(Ordering::SeqCst)
    }

    pub fn violations(&self) -> Vec<&'static str> {
        self.violations
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }
}

async fn accept(
    listener: TcpListener,
    seen: Arc<Mutex<Vec<SeenHead>>>,
    violations: Arc<Mutex<Vec<&'static str>>>,
    ended: Arc<AtomicUsize>,
) {
    while let Ok((stream, _)) = listener.accept().await {
        let (seen, violations, ended) = (seen.clone(), violations.clone(), ended.clone());
        tokio::spawn(async move {
            let _ = serve(stream, seen, violations, &ended).await;
        });
    }
}

/// One connection: HTTP/1.1 requests until an upgrade, then WebSocket.
async fn serve(
    mut stream: TcpStream,
    seen: Arc<Mutex<Vec<SeenHead>>>,
    violations: Arc<Mutex<Vec<&'static str>>>,
    ended: &AtomicUsize,
) -> Option<()> {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        };
        let (start, headers) = parse_head(&buf[..end]);
        buf.drain(..end + 4);
        let head = SeenHead { start, headers };
        if let Ok(mut s) = seen.lock() {
            s.push(head.clone());
        }
        let path = head.start.split(' ').nth(1).unwrap_or("/").to_string();
        let upgrade = head
            .header("upgrade")
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
        if !upgrade || path == "/ok200" {
            if path == "/slow" {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            let body = format!("plain {path}");
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(answer.as_bytes()).await.ok()?;
            continue;
        }
        if path == "/forbidden" {
            let answer = "HTTP/1.1 403 Forbidden\r\ncontent-length: 6\r\n\r\nno way";
            stream.write_all(answer.as_bytes()).await.ok()?;
            continue;
        }
        // §4.2.1: the server's checks of the opening handshake.
        let key = head.header("sec-websocket-key")?.to_string();
        if head.header("sec-websocket-version") != Some("13") {
            let answer = "HTTP/1.1 426 Upgrade Required\r\nsec-websocket-version: 13\r\ncontent-length: 0\r\n\r\n";
            stream.write_all(answer.as_bytes()).await.ok()?;
            continue;
        }
        let accept = websocket_accept(key.as_bytes());
        let mut answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n",
            accept.to_str().ok()?
        );
        if let Some(p) = head.header("sec-websocket-protocol") {
            let first = p.split(',').next().unwrap_or_default().trim();
            answer.push_str(&format!("Sec-WebSocket-Protocol: {first}\r\n"));
        }
        answer.push_str("\r\n");
        stream.write_all(answer.as_bytes()).await.ok()?;
        let mut conn = WsConn {
            stream,
            buf,
            client: false,
        };
        let result = echo(&mut conn, &violations).await;
        // Counted before the socket closes, so a test that saw the close also sees the count.
        ended.fetch_add(1, Ordering::SeqCst);
        drop(conn);
        return result;
    }
}

async fn echo(conn: &mut WsConn, violations: &Mutex<Vec<&'static str>>) -> Option<()> {
    let violation = |what: &'static str| {
        if let Ok(mut v) = violations.lock() {
            v.push(what);
        }
    };
    loop {
        let frame = loop {
            match decode(&conn.buf) {
                Some(Ok((frame, masked, used))) => {
                    conn.buf.drain(..used);
                    if !masked {
                        violation("unmasked client frame");
                        conn.send(&Frame::close(1002, "unmasked")).await;
                        return None;
                    }
                    break frame;
                }
                Some(Err(why)) => {
                    violation(why);
                    conn.send(&Frame::close(1002, why)).await;
                    return None;
                }
                None => {}
            }
            let mut chunk = vec![0u8; 64 * 1024];
            match conn.stream.read(&mut chunk).await {
                Ok(n) if n > 0 => conn.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        };
        match frame.opcode {
            PING => {
                conn.send(&Frame {
                    opcode: PONG,
                    payload: frame.payload,
                })
                .await;
            }
            CLOSE => {
                // §5.5.1: answer with a close (the same code), then end the TCP connection.
                conn.send(&frame).await;
                let _ = conn.stream.shutdown().await;
                return Some(());
            }
            TEXT => {
                let text = String::from_utf8_lossy(&frame.payload).to_string();
                if let Some(n) = text.strip_prefix("push ") {
                    for i in 0..n.parse::<usize>().unwrap_or(0) {
                        conn.send(&Frame::text(&format!("pushed {i}"))).await;
                    }
                } else if text == "die" {
                    return None;
                } else if let Some(code) = text.strip_prefix("close-me ") {
                    let code = code.parse().unwrap_or(1000);
                    conn.send(&Frame::close(code, "server says bye")).await;
                } else {
                    conn.send(&frame).await;
                }
            }
            _ => {
                conn.send(&frame).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_with_and_without_mask() {
        for len in [0, 5, 125, 126, 65535, 65536, 200_000] {
            let frame = Frame::binary(&vec![7u8; len]);
            for mask in [None, Some([1, 2, 3, 4])] {
                let bytes = encode(&frame, mask);
                let decoded = decode(&bytes);
                assert!(
                    matches!(decoded, Some(Ok((ref f, m, used))) if *f == frame && m == mask.is_some() && used == bytes.len()),
                    "len {len} mask {mask:?}"
                );
                assert!(decode(&bytes[..bytes.len() - 1]).is_none() || len == 0);
            }
        }
        // RFC 6455 §5.7: a masked "Hello".
        let hello = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert!(matches!(decode(&hello), Some(Ok((f, true, 11))) if f == Frame::text("Hello")));
        assert_eq!(Frame::close(4001, "x").close_code(), Some(4001));
    }
}
