//! Raw sockets for the hostile-input tests: bytes exactly as written, with no HTTP library in
//! between to tidy them up. `Http1` writes bytes and reads answers; `Upstream` is an app that
//! records every request it receives (head, body, whether the body was complete), to prove what
//! reached the app; `H2` writes HTTP/2 frames by hand (HPACK as literals without indexing).

use crate::apps::{EchoApp, Protocol};
use crate::mesh::Mesh;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How long a read waits before the peer counts as silent.
const PATIENCE: Duration = Duration::from_secs(10);

/// Reads more bytes into `buf`; false on EOF, error or silence.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>, within: Duration) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    match tokio::time::timeout(within, stream.read(&mut chunk)).await {
        Ok(Ok(n)) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        _ => false,
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A head's start line and headers (names lower-cased).
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

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Reads a body framed by `headers` from `buf` (refilled from `stream`); `None` if the stream
/// ends first. `until_close`: no framing headers means "until the connection closes".
async fn read_body(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    headers: &[(String, String)],
    until_close: bool,
) -> (Vec<u8>, bool) {
    let chunked = header(headers, "transfer-encoding").is_some_and(|v| v.contains("chunked"));
    if chunked {
        let mut body = Vec::new();
        loop {
            while find(buf, b"\r\n").is_none() {
                if !fill(stream, buf, PATIENCE).await {
                    return (body, false);
                }
            }
            let line_end = find(buf, b"\r\n").unwrap_or_default();
            let size_text = String::from_utf8_lossy(&buf[..line_end]).to_string();
            let size_text = size_text.split(';').next().unwrap_or_default().trim();
            let Ok(size) = usize::from_str_radix(size_text, 16) else {
                return (body, false);
            };
            let need = line_end + 2 + size + 2;
            while buf.len() < need {
                if !fill(stream, buf, PATIENCE).await {
                    return (body, false);
                }
            }
            body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
            buf.drain(..need);
            if size == 0 {
                return (body, true);
            }
        }
    }
    match header(headers, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        Some(len) => {
            while buf.len() < len {
                if !fill(stream, buf, PATIENCE).await {
                    return (std::mem::take(buf), false);
                }
            }
            (buf.drain(..len).collect(), true)
        }
        None if until_close => {
            while fill(stream, buf, PATIENCE).await {}
            (std::mem::take(buf), true)
        }
        None => (Vec::new(), true),
    }
}

/// One HTTP/1 answer as the client got it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A raw HTTP/1 client connection.
pub struct Http1 {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Http1 {
    pub async fn connect(addr: SocketAddr) -> Http1 {
        let stream = TcpStream::connect(addr).await.expect("connects");
        let _ = stream.set_nodelay(true);
        Http1 {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes `bytes`; false if the peer already closed.
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok()
    }

    /// The next final answer (1xx skipped); `None` if the connection ends or stays silent first.
    pub async fn answer(&mut self) -> Option<Answer> {
        loop {
            while find(&self.buf, b"\r\n\r\n").is_none() {
                if !fill(&mut self.stream, &mut self.buf, PATIENCE).await {
                    return None;
                }
            }
            let end = find(&self.buf, b"\r\n\r\n")? + 4;
            let head: Vec<u8> = self.buf.drain(..end).collect();
            let (start, headers) = parse_head(&head);
            let status: u16 = start.split(' ').nth(1)?.parse().ok()?;
            if (100..200).contains(&status) {
                continue;
            }
            let (body, complete) = if status == 204 || status == 304 {
                (Vec::new(), true)
            } else {
                read_body(&mut self.stream, &mut self.buf, &headers, true).await
            };
            return complete.then_some(Answer {
                status,
                headers,
                body,
            });
        }
    }

    /// Whether the peer closes the connection within `within` (anything it still sends is
    /// discarded).
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        ends_within(&mut self.stream, within).await
    }
}

/// Whether `stream` ends (EOF or reset) within `within`; bytes still arriving are discarded.
pub async fn ends_within(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// One request as the recording upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body ended as its framing said (false: the connection ended first, or not yet).
    pub complete: bool,
    /// Reading the body is over, one way or the other.
    pub ended: bool,
}

/// An HTTP/1 app that records every request and answers 200 with the request target as body.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start(addr: SocketAddr) -> std::io::Result<Upstream> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(accept(listener, seen.clone()));
        Ok(Upstream { addr, seen, task })
    }

    /// Puts a recording upstream at the address of workload `index`'s echo app, which is
    /// stopped. Do it before any request went to the app (its sidecar pools connections).
    pub async fn replace_app(mesh: &mut Mesh, index: usize) -> Upstream {
        let addr = mesh.workloads[index].app.addr;
        let stand_in = EchoApp::start("stand-in", SocketAddr::new(addr.ip(), 0), Protocol::Http1)
            .await
            .expect("stand-in app starts");
        drop(std::mem::replace(&mut mesh.workloads[index].app, stand_in));
        for _ in 0..100 {
            if let Ok(upstream) = Upstream::start(addr).await {
                return upstream;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the app's address {addr} never became free");
    }

    /// A mesh of `client` and `hello` (its service YAML lines: `hello_yaml`) whose hello app is
    /// a recording upstream, every sidecar with `limits`.
    pub async fn behind_mesh(limits: trellis_proxy::Limits, hello_yaml: &str) -> (Mesh, Upstream) {
        let mut hello = crate::Service::http1("hello");
        if !hello_yaml.is_empty() {
            hello = hello.yaml(hello_yaml);
        }
        let mut mesh = Mesh::builder()
            .service(crate::Service::http1("client"))
            .service(hello)
            .limits(limits)
            .start()
            .await
            .expect("mesh starts");
        let index = (mesh.workloads.iter())
            .position(|w| w.service == "hello")
            .expect("a hello workload");
        let upstream = Upstream::replace_app(&mut mesh, index).await;
        (mesh, upstream)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The targets of the requests received, in order.
    pub fn targets(&self) -> Vec<String> {
        self.seen().into_iter().map(|s| s.target).collect()
    }
}

async fn accept(listener: TcpListener, seen: Arc<Mutex<Vec<Seen>>>) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(record(stream, seen.clone()));
    }
}

async fn record(mut stream: TcpStream, seen: Arc<Mutex<Vec<Seen>>>) {
    let mut buf = Vec::new();
    loop {
        while find(&buf, b"\r\n\r\n").is_none() {
            if !fill(&mut stream, &mut buf, Duration::from_secs(120)).await {
                return;
            }
        }
        let end = find(&buf, b"\r\n\r\n").unwrap_or_default() + 4;
        let head: Vec<u8> = buf.drain(..end).collect();
        let (start, headers) = parse_head(&head);
        let mut parts = start.split(' ');
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        let index = seen.lock().map_or(0, |mut s| {
            s.push(Seen {
                method,
                target: target.clone(),
                headers: headers.clone(),
                body: Vec::new(),
                complete: false,
                ended: false,
            });
            s.len() - 1
        });
        let (body, complete) = read_body(&mut stream, &mut buf, &headers, false).await;
        if let Ok(mut s) = seen.lock() {
            if let Some(entry) = s.get_mut(index) {
                entry.body = body;
                entry.complete = complete;
                entry.ended = true;
            }
        }
        if !complete {
            return;
        }
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-raw-target: {target}\r\n\r\n{target}",
            target.len()
        );
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// HTTP/2 frame types, flags and error codes (RFC 9113 §6, §7).
pub mod h2 {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;

    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;

    pub const NO_ERROR: u32 = 0x0;
    pub const PROTOCOL_ERROR: u32 = 0x1;
    pub const STREAM_CLOSED: u32 = 0x5;
    pub const FRAME_SIZE_ERROR: u32 = 0x6;
    pub const REFUSED_STREAM: u32 = 0x7;
    pub const CANCEL: u32 = 0x8;
    pub const COMPRESSION_ERROR: u32 = 0x9;
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;
}

/// One received HTTP/2 frame.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a GOAWAY or RST_STREAM.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            h2::GOAWAY => 4,
            h2::RST_STREAM => 0,
            _ => return None,
        };
        let bytes: [u8; 4] = self.payload.get(at..at + 4)?.try_into().ok()?;
        Some(u32::from_be_bytes(bytes))
    }
}

/// The bytes of one frame.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1).
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A header block of literals without indexing (no Huffman), in order.
pub fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_int(&mut out, 0x00, 7, name.len());
        out.extend_from_slice(name.as_bytes());
        hpack_int(&mut out, 0x00, 7, value.len());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// The header block of a request to `authority`.
pub fn request_block(method: &str, path: &str, authority: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut fields = vec![
        (":method", method),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
    ];
    fields.extend_from_slice(extra);
    header_block(&fields)
}

/// A raw HTTP/2 (prior knowledge, cleartext) client connection.
pub struct H2 {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl H2 {
    /// Connects, sends the preface and empty SETTINGS, and acknowledges the server's SETTINGS
    /// (so that its limits are in force).
    pub async fn connect(addr: SocketAddr) -> H2 {
        let stream = TcpStream::connect(addr).await.expect("connects");
        let _ = stream.set_nodelay(true);
        let mut h2 = H2 {
            stream,
            buf: Vec::new(),
        };
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(h2::SETTINGS, 0, 0, &[]));
        assert!(h2.send_raw(&hello).await, "preface written");
        let settings = h2
            .until(|f| f.kind == h2::SETTINGS && f.flags & h2::ACK == 0)
            .await;
        assert!(settings.is_some(), "the server sends its SETTINGS");
        h2
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok()
    }

    pub async fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> bool {
        self.send_raw(&frame(kind, flags, stream, payload)).await
    }

    /// The next frame; `None` on EOF, reset or silence. SETTINGS and PING are acknowledged.
    pub async fn next(&mut self) -> Option<Frame> {
        while self.buf.len() < 9 || self.buf.len() < 9 + self.pending_len() {
            if !fill(&mut self.stream, &mut self.buf, PATIENCE).await {
                return None;
            }
        }
        let len = self.pending_len();
        let head: Vec<u8> = self.buf.drain(..9).collect();
        let payload: Vec<u8> = self.buf.drain(..len).collect();
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let frame = Frame {
            kind: head[3],
            flags: head[4],
            stream,
            payload,
        };
        let ack = match frame.kind {
            h2::SETTINGS if frame.flags & h2::ACK == 0 => Some((h2::SETTINGS, Vec::new())),
            h2::PING if frame.flags & h2::ACK == 0 => Some((h2::PING, frame.payload.clone())),
            _ => None,
        };
        if let Some((kind, payload)) = ack {
            let _ = self.send(kind, h2::ACK, 0, &payload).await;
        }
        Some(frame)
    }

    fn pending_len(&self) -> usize {
        match self.buf.get(..3) {
            Some(l) => (l[0] as usize) << 16 | (l[1] as usize) << 8 | l[2] as usize,
            None => 0,
        }
    }

    /// Reads frames until one matches; `None` if the connection ends first.
    pub async fn until(&mut self, mut matches: impl FnMut(&Frame) -> bool) -> Option<Frame> {
        loop {
            let frame = self.next().await?;
            if matches(&frame) {
                return Some(frame);
            }
        }
    }

    /// The error code of the GOAWAY the server sends next; `None` if it closes without one.
    pub async fn goaway(&mut self) -> Option<u32> {
        self.until(|f| f.kind == h2::GOAWAY).await?.error_code()
    }

    /// Whether the server closes the connection within `within`.
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}

/// Stops workload `index`'s echo app (a stand-in keeps its sidecar's config valid) and returns
/// its address, free for another server.
pub async fn free_app_address(mesh: &mut Mesh, index: usize) -> SocketAddr {
    let addr = mesh.workloads[index].app.addr;
    let stand_in = EchoApp::start("stand-in", SocketAddr::new(addr.ip(), 0), Protocol::Http1)
        .await
        .expect("stand-in app starts");
    drop(std::mem::replace(&mut mesh.workloads[index].app, stand_in));
    addr
}

/// What a `LenientApp` has seen, in counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LenientCounts {
    /// Request heads received.
    pub heads: usize,
    /// Requests taken as complete: the connection ended cleanly (EOF) after the head.
    pub complete: usize,
    /// Connections reset (or failed) after a head: nothing to process.
    pub reset: usize,
}

/// An app as lenient as they come: whatever follows a request head until the connection ends is
/// its body, and a clean end of the connection completes the request (as an HTTP/1.0-style
/// server, or a sloppy chunked parser, would take it). It never answers. If the proxy lets a
/// request it refused reach an app, this one counts it.
pub struct LenientApp {
    pub addr: SocketAddr,
    counts: Arc<Mutex<LenientCounts>>,
    task: JoinHandle<()>,
}

impl Drop for LenientApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LenientApp {
    /// A mesh of `client` and `hello` (permissive mTLS, so its inbound also takes plaintext)
    /// whose hello app is a `LenientApp`.
    pub async fn behind_mesh() -> (Mesh, LenientApp) {
        let mut mesh = Mesh::builder()
            .service(crate::Service::http1("client"))
            .service(crate::Service::http1("hello").yaml("mtls: permissive"))
            .start()
            .await
            .expect("mesh starts");
        let index = (mesh.workloads.iter())
            .position(|w| w.service == "hello")
            .expect("a hello workload");
        let addr = free_app_address(&mut mesh, index).await;
        for _ in 0..100 {
            if let Ok(listener) = TcpListener::bind(addr).await {
                let counts = Arc::new(Mutex::new(LenientCounts::default()));
                let task = tokio::spawn(lenient_accept(listener, counts.clone()));
                return (mesh, LenientApp { addr, counts, task });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the app's address {addr} never became free");
    }

    pub fn counts(&self) -> LenientCounts {
        self.counts.lock().map(|c| *c).unwrap_or_default()
    }
}

async fn lenient_accept(listener: TcpListener, counts: Arc<Mutex<LenientCounts>>) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let counts = counts.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 16 * 1024];
            while find(&buf, b"\r\n\r\n").is_none() {
                match stream.read(&mut chunk).await {
                    Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                    _ => return,
                }
            }
            if let Ok(mut c) = counts.lock() {
                c.heads += 1;
            }
            let ended_cleanly = loop {
                match stream.read(&mut chunk).await {
                    Ok(0) => break true,
                    Ok(_) => continue,
                    Err(_) => break false,
                }
            };
            if let Ok(mut c) = counts.lock() {
                match ended_cleanly {
                    true => c.complete += 1,
                    false => c.reset += 1,
                }
            }
        });
    }
}

impl Http1 {
    /// The next final answer's head only (for answers to HEAD, which have no body whatever
    /// their framing headers say); `None` if the connection ends or stays silent first.
    pub async fn answer_head(&mut self) -> Option<Answer> {
        loop {
            while find(&self.buf, b"\r\n\r\n").is_none() {
                if !fill(&mut self.stream, &mut self.buf, PATIENCE).await {
                    return None;
                }
            }
            let end = find(&self.buf, b"\r\n\r\n")? + 4;
            let head: Vec<u8> = self.buf.drain(..end).collect();
            let (start, headers) = parse_head(&head);
            let status: u16 = start.split(' ').nth(1)?.parse().ok()?;
            if (100..200).contains(&status) {
                continue;
            }
            return Some(Answer {
                status,
                headers,
                body: Vec::new(),
            });
        }
    }
}

impl H2 {
    /// Connects without sending anything: the test writes the preface (or what stands for it).
    pub async fn connect_bare(addr: SocketAddr) -> H2 {
        let stream = TcpStream::connect(addr).await.expect("connects");
        let _ = stream.set_nodelay(true);
        H2 {
            stream,
            buf: Vec::new(),
        }
    }
}

/// The `:status` of a response header block whose first field is the status, as h2 encodes it:
/// indexed (RFC 7541 static entries 8-14), or a literal with the name `:status` (index 8) and a
/// plain or Huffman-coded value of digits. `None` for anything else.
pub fn response_status(block: &[u8]) -> Option<u16> {
    const STATIC: [u16; 7] = [200, 204, 206, 304, 400, 404, 500];
    let (&first, rest) = block.split_first()?;
    if first & 0x80 != 0 {
        return STATIC
            .get(usize::from(first & 0x7f).checked_sub(8)?)
            .copied();
    }
    // Literal with incremental indexing (01), without indexing (0000), never indexed (0001).
    let name_index = match first {
        0x40..=0x7f => first & 0x3f,
        0x00..=0x1f => first & 0x0f,
        _ => return None,
    };
    if name_index != 8 {
        return None;
    }
    let (&len, value) = rest.split_first()?;
    let value = value.get(..usize::from(len & 0x7f))?;
    let digits = if len & 0x80 == 0 {
        value.to_vec()
    } else {
        huffman_digits(value)?
    };
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// Decodes a Huffman string of digits (RFC 7541 Appendix B: '0'-'2' are 5 bits, '3'-'9' 6).
fn huffman_digits(bytes: &[u8]) -> Option<Vec<u8>> {
    let bits: Vec<u8> = (bytes.iter())
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let mut out = Vec::new();
    let mut at = 0;
    let code = |from: usize, n: usize| {
        bits.get(from..from + n)
            .map(|b| b.iter().fold(0u8, |acc, &bit| acc << 1 | bit))
    };
    while at < bits.len() {
        // Padding: at most 7 one-bits.
        if bits.len() - at < 8 && bits[at..].iter().all(|&b| b == 1) {
            break;
        }
        match code(at, 5)? {
            c @ 0..=2 => {
                out.push(b'0' + c);
                at += 5;
            }
            _ => match code(at, 6)? {
                c @ 0x19..=0x1f => {
                    out.push(b'3' + (c - 0x19));
                    at += 6;
                }
                _ => return None,
            },
        }
    }
    Some(out)
}

impl H2 {
    /// The socket and any bytes already read past the handshake, for a test that reads and
    /// writes at once (a flood whose answers must be drained and counted while it writes).
    pub fn into_parts(self) -> (TcpStream, Vec<u8>) {
        (self.stream, self.buf)
    }
}

/// What a server sent back on a connection, in counts (see `count_frames`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FrameCounts {
    /// Response heads (HEADERS on a stream) with status 200.
    pub ok: u64,
    /// Other heads (another status, or one `response_status` cannot read: h2 indexes a status
    /// it sends again, such as the 503 of every shed request).
    pub other: u64,
    /// RST_STREAM frames, and those with REFUSED_STREAM.
    pub resets: u64,
    pub refused: u64,
    /// GOAWAY frames, and those with ENHANCE_YOUR_CALM.
    pub goaways: u64,
    pub calm_down: u64,
}

impl FrameCounts {
    pub fn add(&mut self, other: &FrameCounts) {
        self.ok += other.ok;
        self.other += other.other;
        self.resets += other.resets;
        self.refused += other.refused;
        self.goaways += other.goaways;
        self.calm_down += other.calm_down;
    }
}

/// Reads frames from `read` (starting with `buf`) until the connection ends, counting what
/// matters to a flood; acknowledges nothing (the handshake was done by `H2::connect`).
pub async fn count_frames(
    mut read: impl tokio::io::AsyncRead + Unpin,
    mut buf: Vec<u8>,
) -> FrameCounts {
    let mut counts = FrameCounts::default();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        while buf.len() >= 9 {
            let len = (buf[0] as usize) << 16 | (buf[1] as usize) << 8 | buf[2] as usize;
            if buf.len() < 9 + len {
                break;
            }
            let kind = buf[3];
            let payload = &buf[9..9 + len];
            let code = payload
                .get(..4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
            match kind {
                h2::HEADERS => match response_status(payload) {
                    Some(200) => counts.ok += 1,
                    _ => counts.other += 1,
                },
                h2::RST_STREAM => {
                    counts.resets += 1;
                    counts.refused += u64::from(code == Some(h2::REFUSED_STREAM));
                }
                h2::GOAWAY => {
                    let code = payload
                        .get(4..8)
                        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                    counts.goaways += 1;
                    counts.calm_down += u64::from(code == Some(h2::ENHANCE_YOUR_CALM));
                }
                _ => {}
            }
            buf.drain(..9 + len);
        }
        match read.read(&mut chunk).await {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return counts,
        }
    }
}
