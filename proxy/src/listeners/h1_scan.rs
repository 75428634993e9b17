//! A second look at HTTP/1 request framing, for what hyper accepts but a proxy must refuse.
//!
//! hyper serves a request carrying both `Content-Length` and `Transfer-Encoding` (it drops the
//! length and reads chunks, RFC 9112 §6.3), accepts bare LF line ends, several `Host` lines and
//! transfer codings it does not implement; none of that is visible on the `Request` it builds.
//! Those are the ambiguities request smuggling lives on, so, like Envoy and nginx, the proxy
//! refuses them. `Scanner` reads the same bytes hyper reads, in the same order, with the same
//! parser (httparse) and the same body framing rules (hyper's chunked decoder, mirrored state for
//! state), so it knows where each request head starts; it reports the first request that must be
//! refused, or whose chunked body is malformed. Where it cannot follow (a head hyper will refuse
//! anyway, an accepted upgrade, HTTP/2) it stops judging rather than guess; after an upgrade request
//! it waits for the answer (`upgrade_answered`), since a refused upgrade leaves HTTP/1, and leaves
//! the bytes that came meanwhile untaken, to be fed again once the answer says what they are.
//!
//! Where hyper is lenient about chunked framing in ways that do not matter to it (it drops chunk
//! extensions and parses trailers only at the end), the scanner holds the body to RFC 9112 §7.1:
//! extensions must follow the `chunk-ext` grammar and trailer lines must be field lines. The
//! guard fails hyper's read at the first byte the scanner refuses, so both agree the body is bad.
//!
//! It also says when a request may be forwarded (`cleared`): at once for a head without a chunked
//! body, and only after its first chunk-size line was read whole for a chunked one, so that a body
//! broken from its first line never lets the head reach the app.
//!
//! `Scanner::feed` is a pure function of the bytes fed so far (however they are split), which is
//! what the fuzz target drives.

/// The most header lines a head may have: hyper's default, so a head this parser gives up on
/// is one hyper refuses itself (431).
const MAX_HEADERS: usize = 100;
/// hyper's bound on chunk-extension bytes in one body.
const CHUNK_EXTENSIONS_LIMIT: u64 = 16 * 1024;
/// hyper's bound on trailer bytes and lines.
const TRAILER_BYTES_LIMIT: usize = 16 * 1024;
const TRAILER_LINES_LIMIT: usize = MAX_HEADERS;

/// The answer to a request that must not be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// The head must be answered with this instead of being served.
    Head(Refusal),
    /// The chunked body is malformed (hyper fails the body too).
    MalformedBody(&'static str),
    /// The client stopped sending the body (found by the connection's idle timer, not here).
    StalledBody,
}

/// A problem with the `request`-th request (0-based) of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    pub request: u64,
    pub problem: Problem,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between requests or inside a head.
    Head,
    /// Content-Length bytes still to come.
    Fixed(u64),
    Chunked(Chunk),
    /// An upgrade request (or CONNECT) was read whole: what follows is HTTP/1 again if it is
    /// refused, the tunnel's bytes if it is accepted, so nothing more is judged until its answer
    /// is known (`upgrade_answered`). Bytes fed meanwhile are not taken (`accepted`): the
    /// reader holds them back and feeds them again after the answer.
    Upgrade,
    /// Stopped judging: lost track, an accepted upgrade, or the connection is over after a
    /// finding.
    Off,
}

/// hyper's chunked decoder states (`proto::h1::decode::ChunkedState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Start,
    Size,
    SizeLws,
    /// After a `;`: whitespace, then an extension name.
    ExtStart,
    ExtName,
    /// Whitespace after a name: `=`, `;` or the line end may follow.
    ExtNameEnd,
    /// After `=`: whitespace, then a token or a quoted string.
    ExtValueStart,
    ExtToken,
    ExtQuoted,
    ExtQuotedPair,
    /// After a value: whitespace, `;` or the line end.
    ExtValueEnd,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a line after the last chunk: a trailer field or the final CRLF.
    EndCr,
    EndLf,
    TrailerName,
    TrailerValue,
    TrailerLf,
}

#[derive(Debug)]
pub struct Scanner {
    state: State,
    /// A head split across reads, kept until it is complete.
    partial: Vec<u8>,
    max_head: usize,
    /// Complete heads seen so far.
    heads: u64,
    chunk_size: u64,
    extension_bytes: u64,
    trailer_bytes: usize,
    trailer_lines: usize,
    /// Requests (counted from the first) that may be forwarded as far as framing goes.
    cleared: u64,
    /// The current chunked body has not finished its first chunk-size line yet.
    first_chunk: bool,
    /// Bytes of the last `feed` taken before its finding (all of them without one).
    accepted: usize,
    /// The request asking for an upgrade, while it is read and until it is answered.
    upgrade: Option<UpgradeAsked>,
}

/// A request whose answer may turn the connection into a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct UpgradeAsked {
    request: u64,
    /// CONNECT: any 2xx opens the tunnel; otherwise only 101 does.
    connect: bool,
}

impl Scanner {
    /// `max_head`: hyper's read buffer size; a longer head is refused by hyper (431).
    pub fn new(max_head: usize) -> Self {
        Scanner {
            state: State::Head,
            partial: Vec::new(),
            max_head,
            heads: 0,
            chunk_size: 0,
            extension_bytes: 0,
            trailer_bytes: 0,
            trailer_lines: 0,
            cleared: 0,
            first_chunk: false,
            accepted: 0,
            upgrade: None,
        }
    }

    /// How many requests, from the connection's first, may be forwarded: their framing is known
    /// good up to the end of their first chunk-size line (the whole head for other bodies). Once
    /// the scanner stopped judging, everything (a finding, if any, decides about its request).
    pub fn cleared(&self) -> u64 {
        match self.state {
            State::Off => u64::MAX,
            _ => self.cleared,
        }
    }

    /// Bytes of the last `feed` before the byte its finding is about, or before the bytes that
    /// followed an upgrade request still unanswered (its whole input otherwise): what the reader
    /// may hand on now.
    pub fn accepted(&self) -> usize {
        self.accepted
    }

    /// Whether the connection is between requests or in a request's head.
    pub fn awaiting_head(&self) -> bool {
        matches!(self.state, State::Head)
    }

    /// Complete heads seen so far.
    pub fn heads(&self) -> u64 {
        self.heads
    }

    /// Whether the current request's body is still arriving.
    pub fn in_body(&self) -> bool {
        matches!(self.state, State::Fixed(_) | State::Chunked(_))
    }

    /// The index of the request whose head or body is being read.
    pub fn current_request(&self) -> u64 {
        match self.state {
            State::Head => self.heads,
            _ => self.heads.saturating_sub(1),
        }
    }

    pub fn stop(&mut self) {
        self.state = State::Off;
        self.partial = Vec::new();
        self.upgrade = None;
    }

    /// The request that asked for an upgrade (or is a CONNECT), from its head until its answer.
    pub fn upgrade_asked(&self) -> Option<u64> {
        self.upgrade.map(|u| u.request)
    }

    /// Whether the upgrade request was read whole and its answer decides what follows.
    pub fn upgrade_pending(&self) -> bool {
        self.state == State::Upgrade
    }

    /// The status the pending upgrade request was answered with: a tunnel from here on (101, or
    /// a 2xx to CONNECT) and nothing more to judge, or HTTP/1 again with the next head.
    pub fn upgrade_answered(&mut self, status: u16) {
        if self.state != State::Upgrade {
            return;
        }
        let connect = self.upgrade.take().is_some_and(|asked| asked.connect);
        let tunnel = status == 101 || (connect && (200..300).contains(&status));
        if tunnel {
            self.stop();
        } else {
            self.state = State::Head;
        }
    }

    /// Reads the next bytes of the connection; the first problem found, if any (after which the
    /// scanner stops: the connection ends with that request).
    pub fn feed(&mut self, input: &[u8]) -> Option<Finding> {
        let (rest, found) = self.feed_inner(input);
        self.accepted = input.len() - rest;
        found
    }

    /// `feed`, also returning how many bytes of `input` were not taken.
    fn feed_inner(&mut self, mut input: &[u8]) -> (usize, Option<Finding>) {
        while !input.is_empty() {
            let used = match self.state {
                State::Off => return (input.len(), None),
                // Bytes before the answer: a tunnel's, or a pipelined request's; no telling
                // until the answer, so they are left to be fed again then.
                State::Upgrade => return (input.len(), None),
                State::Head => match self.head(input) {
                    Ok(used) => used,
                    Err(finding) => {
                        self.stop();
                        return (input.len(), finding);
                    }
                },
                State::Fixed(left) => {
                    let used = left.min(input.len() as u64);
                    self.state = match left - used {
                        0 => State::Head,
                        left => State::Fixed(left),
                    };
                    used as usize
                }
                State::Chunked(Chunk::Data) => {
                    let used = self.chunk_size.min(input.len() as u64);
                    self.chunk_size -= used;
                    if self.chunk_size == 0 {
                        self.state = State::Chunked(Chunk::DataCr);
                    }
                    used as usize
                }
                State::Chunked(at) => match self.chunk_byte(at, input[0]) {
                    Ok(next) => {
                        self.state = next;
                        1
                    }
                    Err(why) => {
                        let request = self.current_request();
                        self.stop();
                        let finding = Finding {
                            request,
                            problem: Problem::MalformedBody(why),
                        };
                        return (input.len(), Some(finding));
                    }
                },
            };
            input = &input[used..];
            if self.state == State::Head && self.upgrade.is_some() {
                self.state = State::Upgrade;
            }
        }
        (0, None)
    }

    /// Consumes head bytes; `Err(None)` when it loses track, `Err(Some)` on a refusal.
    fn head(&mut self, input: &[u8]) -> Result<usize, Option<Finding>> {
        if self.partial.is_empty() {
            return match self.parse_head(input)? {
                Some(used) => Ok(used),
                None => {
                    self.keep_partial(input)?;
                    Ok(input.len())
                }
            };
        }
        // Only as much as a head may still need: what follows it may be a large body.
        let before = self.partial.len();
        let taken = input.len().min(self.max_head.saturating_sub(before));
        self.partial.extend_from_slice(&input[..taken]);
        let buffer = std::mem::take(&mut self.partial);
        let parsed = self.parse_head(&buffer);
        self.partial = buffer;
        match parsed? {
            // The kept part alone was incomplete, so the head ends inside `input`.
            Some(used) => {
                self.partial.clear();
                Ok(used - before)
            }
            None if taken < input.len() => Err(None),
            None => Ok(input.len()),
        }
    }

    fn keep_partial(&mut self, input: &[u8]) -> Result<(), Option<Finding>> {
        if self.partial.len() + input.len() > self.max_head {
            return Err(None);
        }
        self.partial.extend_from_slice(input);
        Ok(())
    }

    /// Parses a head at the start of `bytes`: its length if complete, `None` if incomplete.
    fn parse_head(&mut self, bytes: &[u8]) -> Result<Option<usize>, Option<Finding>> {
        // Left uninitialised: httparse writes the lines it parses, and zeroing a hundred of them
        // per head was most of this function's own cost (callgrind, #15).
        let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let len = match req.parse_with_uninit_headers(bytes, &mut headers) {
            Ok(httparse::Status::Complete(len)) if len <= self.max_head => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Ok(httparse::Status::Complete(_)) => return Err(None),
            Err(_) => return Err(None),
        };
        let request = self.heads;
        self.heads += 1;
        match judge(&req, &bytes[..len]) {
            Judged::Refuse(refusal) => Err(Some(Finding {
                request,
                problem: Problem::Head(refusal),
            })),
            Judged::LostTrack => Err(None),
            Judged::Body(next, upgrade) => {
                self.state = next;
                self.upgrade = upgrade.map(|connect| UpgradeAsked { request, connect });
                self.first_chunk = matches!(next, State::Chunked(_));
                if !self.first_chunk {
                    self.cleared = self.heads;
                }
                self.chunk_size = 0;
                self.extension_bytes = 0;
                self.trailer_bytes = 0;
                self.trailer_lines = 0;
                Ok(Some(len))
            }
        }
    }

    /// One byte of chunked framing, exactly as hyper's decoder takes it.
    fn chunk_byte(&mut self, at: Chunk, b: u8) -> Result<State, &'static str> {
        let next = match at {
            Chunk::Start | Chunk::Size => match (at, b) {
                (_, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                    let digit = (b as char).to_digit(16).map_or(0, u64::from);
                    self.chunk_size = (self.chunk_size.checked_mul(16))
                        .and_then(|s| s.checked_add(digit))
                        .ok_or("chunk size overflows")?;
                    Chunk::Size
                }
                (Chunk::Start, _) => return Err("chunk size missing"),
                (_, b'\t' | b' ') => Chunk::SizeLws,
                (_, b';') => Chunk::ExtStart,
                (_, b'\r') => Chunk::SizeLf,
                _ => return Err("invalid chunk size"),
            },
            Chunk::SizeLws => match b {
                b'\t' | b' ' => Chunk::SizeLws,
                b';' => Chunk::ExtStart,
                b'\r' => Chunk::SizeLf,
                _ => return Err("invalid whitespace after chunk size"),
            },
            Chunk::ExtStart
            | Chunk::ExtName
            | Chunk::ExtNameEnd
            | Chunk::ExtValueStart
            | Chunk::ExtToken
            | Chunk::ExtQuoted
            | Chunk::ExtQuotedPair
            | Chunk::ExtValueEnd => {
                let next = extension_byte(at, b)?;
                // hyper's bound counts every extension byte but the first `;` and the CR.
                if next != Chunk::SizeLf {
                    self.extension_bytes += 1;
                    if self.extension_bytes >= CHUNK_EXTENSIONS_LIMIT {
                        return Err("chunk extensions too long");
                    }
                }
                next
            }
            Chunk::SizeLf => match (b, self.chunk_size) {
                (b'\n', size) => {
                    if self.first_chunk {
                        self.first_chunk = false;
                        self.cleared = self.heads;
                    }
                    if size == 0 {
                        Chunk::EndCr
                    } else {
                        Chunk::Data
                    }
                }
                _ => return Err("chunk size line without CRLF"),
            },
            Chunk::Data => Chunk::Data,
            Chunk::DataCr if b == b'\r' => Chunk::DataLf,
            Chunk::DataLf if b == b'\n' => Chunk::Start,
            Chunk::DataCr | Chunk::DataLf => return Err("chunk data without CRLF"),
            Chunk::EndCr if b == b'\r' => {
                self.trailer(self.trailer_lines > 0)?;
                Chunk::EndLf
            }
            Chunk::EndCr if is_tchar(b) => {
                self.trailer(true)?;
                Chunk::TrailerName
            }
            Chunk::EndCr if b == b'\n' => return Err("last chunk without CRLF"),
            Chunk::EndCr => return Err("invalid trailer field"),
            Chunk::EndLf if b == b'\n' => {
                self.trailer(self.trailer_lines > 0)?;
                return Ok(State::Head);
            }
            Chunk::EndLf => return Err("last chunk without CRLF"),
            // A field line (RFC 9112 §7.1.2, §5): a token, a colon, a value of visible characters,
            // spaces and tabs; httparse holds hyper's trailers to the same.
            Chunk::TrailerName => {
                self.trailer(true)?;
                match b {
                    b':' => Chunk::TrailerValue,
                    b if is_tchar(b) => Chunk::TrailerName,
                    _ => return Err("invalid trailer field"),
                }
            }
            Chunk::TrailerValue => {
                self.trailer(true)?;
                match b {
                    b'\r' => Chunk::TrailerLf,
                    b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff => Chunk::TrailerValue,
                    _ => return Err("invalid trailer field"),
                }
            }
            Chunk::TrailerLf if b == b'\n' => {
                if self.trailer_lines >= TRAILER_LINES_LIMIT {
                    return Err("too many trailer lines");
                }
                self.trailer_lines += 1;
                self.trailer(true)?;
                Chunk::EndCr
            }
            Chunk::TrailerLf => return Err("trailer line without CRLF"),
        };
        if next == Chunk::Start {
            self.chunk_size = 0;
        }
        Ok(State::Chunked(next))
    }

    /// Counts a trailer byte (`counted`: hyper keeps it in its trailer buffer).
    fn trailer(&mut self, counted: bool) -> Result<(), &'static str> {
        if counted {
            self.trailer_bytes += 1;
            if self.trailer_bytes >= TRAILER_BYTES_LIMIT {
                return Err("trailers too long");
            }
        }
        Ok(())
    }
}

/// One byte of a chunk extension (RFC 9112 §7.1.1):
/// `*( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )`, a name being a token and a
/// value a token or a quoted string. Whitespace before the line end is let through, as hyper
/// does after the size: the proxy drops extensions, so they cannot mislead the next hop, and the
/// grammar is enforced only to refuse what is not HTTP.
fn extension_byte(at: Chunk, b: u8) -> Result<Chunk, &'static str> {
    const INVALID: &str = "invalid chunk extension";
    let ows = b == b' ' || b == b'\t';
    Ok(match at {
        _ if b == b'\n' => return Err("newline in chunk extension"),
        Chunk::ExtQuoted => match b {
            b'"' => Chunk::ExtValueEnd,
            b'\\' => Chunk::ExtQuotedPair,
            b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff => Chunk::ExtQuoted,
            _ => return Err(INVALID),
        },
        Chunk::ExtQuotedPair => match b {
            b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff => Chunk::ExtQuoted,
            _ => return Err(INVALID),
        },
        Chunk::ExtStart if ows => Chunk::ExtStart,
        Chunk::ExtStart if is_tchar(b) => Chunk::ExtName,
        Chunk::ExtName if is_tchar(b) => Chunk::ExtName,
        Chunk::ExtValueStart if ows => Chunk::ExtValueStart,
        Chunk::ExtValueStart if is_tchar(b) => Chunk::ExtToken,
        Chunk::ExtValueStart if b == b'"' => Chunk::ExtQuoted,
        Chunk::ExtToken if is_tchar(b) => Chunk::ExtToken,
        Chunk::ExtName | Chunk::ExtNameEnd if ows => Chunk::ExtNameEnd,
        Chunk::ExtName | Chunk::ExtNameEnd if b == b'=' => Chunk::ExtValueStart,
        Chunk::ExtToken | Chunk::ExtValueEnd if ows => Chunk::ExtValueEnd,
        Chunk::ExtName | Chunk::ExtNameEnd | Chunk::ExtToken | Chunk::ExtValueEnd => match b {
            b';' => Chunk::ExtStart,
            b'\r' => Chunk::SizeLf,
            _ => return Err(INVALID),
        },
        _ => return Err(INVALID),
    })
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

enum Judged {
    Refuse(Refusal),
    /// hyper refuses it itself.
    LostTrack,
    /// Served: the framing of its body; `Some(connect)` if it asks for an upgrade (its answer
    /// decides whether HTTP/1 follows it).
    Body(State, Option<bool>),
}

const fn refuse(status: u16, reason: &'static str) -> Judged {
    Judged::Refuse(Refusal { status, reason })
}

/// What to do with a complete, parsed head (`raw`: its bytes).
fn judge(req: &httparse::Request<'_, '_>, raw: &[u8]) -> Judged {
    // RFC 9112 §2.2 lets a recipient accept a bare LF; a proxy must not, since the next hop
    // may not agree where the line ended.
    // One memchr jump per line rather than a look at every byte of the head.
    let bare_lf = memchr::memchr_iter(b'\n', raw).any(|i| i == 0 || raw[i - 1] != b'\r');
    if bare_lf {
        return refuse(400, "bare LF in the request head");
    }
    let http11 = req.version == Some(1);
    let (mut hosts, mut upgrade) = (0, false);
    let (mut te_lines, mut te_last_chunked, mut chunked, mut other_codings) = (0, false, 0, 0);
    let (mut length, mut length_lines) = (None, 0);
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade = true;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te_lines += 1;
            te_last_chunked = false;
            for coding in h.value.split(|&b| b == b',').map(trim_ows) {
                te_last_chunked = coding.eq_ignore_ascii_case(b"chunked");
                match (coding.is_empty(), te_last_chunked) {
                    (true, _) => {}
                    (false, true) => chunked += 1,
                    (false, false) => other_codings += 1,
                }
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            length_lines += 1;
            match (decimal(h.value), length) {
                (None, _) => return Judged::LostTrack,
                (Some(n), Some(seen)) if n != seen => return Judged::LostTrack,
                (Some(n), _) => length = Some(n),
            }
        }
    }
    if hosts > 1 {
        return refuse(400, "more than one Host header");
    }
    if hosts == 0 && http11 {
        return refuse(400, "HTTP/1.1 request without Host");
    }
    if te_lines > 0 && length_lines > 0 {
        return refuse(400, "both Content-Length and Transfer-Encoding");
    }
    let connect = req.method == Some("CONNECT");
    let upgrades = connect || (upgrade && http11);
    let body = if te_lines > 0 {
        if !http11 || !te_last_chunked {
            return Judged::LostTrack;
        }
        if chunked > 1 {
            return refuse(400, "chunked applied more than once");
        }
        if other_codings > 0 {
            return refuse(501, "transfer coding not implemented");
        }
        State::Chunked(Chunk::Start)
    } else {
        match length {
            Some(0) | None => State::Head,
            Some(n) => State::Fixed(n),
        }
    };
    Judged::Body(body, upgrades.then_some(connect))
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// A Content-Length value as hyper reads it: digits only, no sign, no list.
fn decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0u64, |n, &b| match b {
        b'0'..=b'9' => n.checked_mul(10)?.checked_add(u64::from(b - b'0')),
        _ => None,
    })
}

#[cfg(test)]
mod tests;
