//! The HTTP/1 guard: `h1_scan` wired into a connection. `GuardedIo` sits under hyper, feeds every
//! byte hyper reads to the scanner and bounds how long a request body may stall; the request
//! service above hyper (`request_guard::Guarded`) answers for what the scanner found:
//!
//! - a refused head is answered with its status (400, 501) and `Connection: close` instead of
//!   being served;
//! - a request whose body was malformed (400) or stalled past `Limits::body_idle_timeout` (408)
//!   gets that status instead of the 502 the failed forward produced: the fault was the
//!   client's, and nothing upstream saw a complete request.
//!
//! A chunked body the scanner refuses is also cut where the scanner stopped: hyper gets the bytes
//! before the bad one and then a read error, so its body fails (hyper alone lets some of those
//! through, and forwards what it saw) and the request is aborted upstream, never ended. Before
//! forwarding a chunked request, `request_guard` waits until the scanner `cleared` it (its first
//! chunk-size line was read whole), so a body broken from its first line never lets the head go.
//!
//! The guard also checks the connection preface, for listeners that tell HTTP/1 from h2c by it:
//! bytes that begin like the HTTP/2 preface (`PRI * HTTP/2.0`) but are not exactly it are an
//! invalid preface, a connection error of type PROTOCOL_ERROR (RFC 9113 §3.4), answered with an
//! empty SETTINGS (the server preface) and GOAWAY; hyper would take them for an HTTP/1.1 request
//! and answer 400. Until the first bytes decide, at most 24 of them are held back from hyper.
//!
//! The guard also keeps the connection's request-head read timeout (`head_wait`), where the
//! scanner says whether a head is awaited.
//!
//! After an upgrade request (WebSocket, CONNECT) nothing more is read until its answer: a 101
//! makes what follows a tunnel, anything else leaves HTTP/1. Bytes the client sent on in the same
//! read are parked meanwhile and handed to hyper after the answer, judged as HTTP/1 if it was a
//! refusal, so a request pipelined behind a refused upgrade gets the same checks and head
//! timeout as any other.
//!
//! hyper serves an HTTP/1 connection's requests one at a time and in order, so the n-th call of
//! the service is the n-th head the scanner saw; one finding per connection is enough, since the
//! connection ends with the request it names. Per request this costs one atomic increment and
//! one atomic load; the scanner parses each head once more with httparse (a few hundred
//! nanoseconds for a typical head) and walks chunk framing byte by byte only for chunk-size
//! lines, skipping chunk data and Content-Length bodies in one step.

use super::h1_scan::{Finding, Problem, Scanner};
use super::head_wait::HeadWait;
use crate::seldom::SeldomReady;
use bytes::BytesMut;
use futures_util::task::AtomicWaker;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

/// What a connection's reader found, shared with its request service (`request_guard`).
#[derive(Debug)]
pub struct Findings {
    found: OnceLock<Finding>,
    /// Requests handed to the service so far.
    pub(super) served: AtomicU64,
    /// Requests the client gave up on before their response began.
    pub(super) abandoned: AtomicU64,
    /// Signalled once the connection is to be closed for abuse (`mark_abusive`).
    abusive: Notify,
    /// Set before `abusive` is signalled: what `abusive()` looks at on a wake-up.
    abusive_marked: AtomicBool,
    /// `Scanner::cleared`: requests that may be forwarded as far as their framing goes.
    cleared: AtomicU64,
    /// The request waiting to be cleared (HTTP/1 has one at a time).
    gate: AtomicWaker,
    /// The request that asked for an upgrade (`u64::MAX`: none) and, once answered, its status
    /// (0 until then): the reader waits for it before reading on (`Scanner::upgrade_answered`).
    upgrade_asked: AtomicU64,
    upgrade_status: AtomicU16,
    upgrade_answer: AtomicWaker,
}

impl Default for Findings {
    /// Without a reader (`GuardedIo` starts it at 0), nothing is held.
    fn default() -> Self {
        Findings {
            found: OnceLock::new(),
            served: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            abusive: Notify::new(),
            abusive_marked: AtomicBool::new(false),
            cleared: AtomicU64::new(u64::MAX),
            gate: AtomicWaker::new(),
            upgrade_asked: AtomicU64::new(u64::MAX),
            upgrade_status: AtomicU16::new(0),
            upgrade_answer: AtomicWaker::new(),
        }
    }
}

impl Findings {
    fn record(&self, finding: Finding) {
        // Only the first counts: the connection ends with the request it names.
        let _ = self.found.set(finding);
        self.gate.wake();
    }

    /// Publishes the scanner's progress after each read, before hyper hands the requests it
    /// read to the service: how many requests are cleared, and which one asked for an upgrade.
    /// A finding is recorded before, so that a request seen as cleared also sees the finding
    /// about it.
    fn publish(&self, scanner: &Scanner) {
        if let Some(request) = scanner.upgrade_asked() {
            if self.upgrade_asked.load(Ordering::Relaxed) != request {
                self.upgrade_status.store(0, Ordering::Relaxed);
                self.upgrade_asked.store(request, Ordering::Release);
            }
        }
        let cleared = scanner.cleared();
        if self.cleared.load(Ordering::Relaxed) != cleared {
            self.cleared.store(cleared, Ordering::Release);
            self.gate.wake();
        }
    }

    /// The response to `request` began with `status`: if it was the upgrade request, the reader
    /// may read on.
    pub(super) fn answered(&self, request: u64, status: http::StatusCode) {
        if self.upgrade_asked.load(Ordering::Acquire) == request {
            self.upgrade_status
                .store(status.as_u16(), Ordering::Release);
            self.upgrade_answer.wake();
        }
    }

    /// The status the upgrade request was answered with, once it was.
    fn poll_upgrade_answer(&self, cx: &mut Context<'_>) -> Poll<u16> {
        let status = || match self.upgrade_status.load(Ordering::Acquire) {
            0 => None,
            status => Some(status),
        };
        if let Some(status) = status() {
            return Poll::Ready(status);
        }
        self.upgrade_answer.register(cx.waker());
        status().map_or(Poll::Pending, Poll::Ready)
    }

    /// Whether `request` may be forwarded as far as its framing goes.
    pub(super) fn is_cleared(&self, request: u64) -> bool {
        self.cleared.load(Ordering::Acquire) > request
    }

    /// Whether `request` may be forwarded yet; if not, `cx` is woken when that may change.
    pub(super) fn poll_cleared(&self, request: u64, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_cleared(request) || self.about(request).is_some() {
            return Poll::Ready(());
        }
        self.gate.register(cx.waker());
        // Progress made between the check and the registration would not wake us.
        if self.is_cleared(request) || self.about(request).is_some() {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// The finding about `request`, if there is one.
    pub(super) fn about(&self, request: u64) -> Option<Problem> {
        self.found
            .get()
            .filter(|f| f.request == request)
            .map(|f| f.problem)
    }

    /// Resolves when the connection should be closed for abuse (see `request_guard`). Cheap to
    /// poll again (`seldom`): the connection's task polls it at each wake-up.
    pub fn abusive(&self) -> impl Future<Output = ()> + Send + '_ {
        SeldomReady::new(self.abusive.notified(), |_: &_| {
            self.abusive_marked.load(Ordering::Acquire)
        })
    }

    pub(super) fn mark_abusive(&self) {
        self.abusive_marked.store(true, Ordering::Release);
        self.abusive.notify_one();
    }
}

pin_project_lite::pin_project! {
    /// The connection's bytes, as read by hyper, also read by the scanner.
    pub struct GuardedIo<IO> {
        #[pin]
        inner: IO,
        scanner: Scanner,
        findings: Arc<Findings>,
        body_idle: Duration,
        // Created on the first stall, then reset: no allocation per request.
        idle_timer: Option<Pin<Box<Sleep>>>,
        idle_armed: bool,
        preface: Preface,
        // The scanner refused the body: reads fail from here on.
        failed: Option<&'static str>,
        head_wait: Option<HeadWait>,
        // Bytes read after an upgrade request, held back from hyper until its answer says
        // whether they are HTTP/1 (judged then) or the tunnel's (`Scanner::upgrade_answered`).
        parked: BytesMut,
    }
}

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Bytes that begin like this are meant as the HTTP/2 preface; anything shorter that diverges
/// is HTTP/1 (a method `PRI` with another target or version is an HTTP/1 request).
const H2_PREFACE_START: usize = b"PRI * HTTP/2.0".len();
/// The answer to an invalid preface: the server's preface (an empty SETTINGS frame, which must
/// be its first frame), then GOAWAY with last-stream-id 0 and PROTOCOL_ERROR, with debug data.
const INVALID_PREFACE_ANSWER: &[u8] = b"\
\x00\x00\x00\x04\x00\x00\x00\x00\x00\
\x00\x00\x29\x07\x00\x00\x00\x00\x00\
\x00\x00\x00\x00\x00\x00\x00\x01\
invalid HTTP/2 connection preface";

/// Where the connection stands with the preface check.
#[derive(Debug)]
enum Preface {
    /// The first bytes, all a prefix of the HTTP/2 preface so far.
    Checking {
        held: [u8; 24],
        len: usize,
    },
    /// Decided for HTTP/1 or HTTP/2: the held bytes go to hyper first.
    Releasing {
        held: [u8; 24],
        from: usize,
        len: usize,
    },
    Passed,
    /// An invalid HTTP/2 preface: `written` bytes of the answer are out.
    Refusing {
        written: usize,
    },
    /// Answered: hyper sees the end of the connection.
    Refused,
}

/// What the first bytes say: `Some(true)` let them through (HTTP/1, or the HTTP/2 preface),
/// `Some(false)` an invalid HTTP/2 preface, `None` not yet known.
fn preface_verdict(held: &[u8]) -> Option<bool> {
    let matching = held
        .iter()
        .zip(H2_PREFACE)
        .take_while(|(a, b)| a == b)
        .count();
    if matching == H2_PREFACE.len() {
        Some(true)
    } else if matching < held.len() {
        // Diverged: HTTP/1 unless it began as the HTTP/2 preface does.
        Some(matching < H2_PREFACE_START)
    } else {
        None
    }
}

impl<IO> GuardedIo<IO> {
    pub fn new(inner: IO, max_head: usize, body_idle: Duration) -> (Self, Arc<Findings>) {
        let findings = Arc::new(Findings::default());
        findings.cleared.store(0, Ordering::Release);
        let io = GuardedIo {
            inner,
            scanner: Scanner::new(max_head),
            findings: findings.clone(),
            body_idle,
            idle_timer: None,
            idle_armed: false,
            preface: Preface::Checking {
                held: [0; 24],
                len: 0,
            },
            failed: None,
            head_wait: None,
            parked: BytesMut::new(),
        };
        (io, findings)
    }

    /// Ends the connection when it waits too long for a request head (`head_wait`).
    pub fn wait_for_heads(&mut self, wait: HeadWait) {
        self.head_wait = Some(wait);
    }
}

impl<IO: AsyncRead + AsyncWrite> GuardedIo<IO> {
    /// Runs the preface check; `Ready(Ok(true))` once the connection's bytes may flow to hyper
    /// (held bytes first), `Ready(Ok(false))` for the end of the connection.
    fn poll_preface(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<bool>> {
        let mut this = self.project();
        loop {
            match this.preface {
                Preface::Passed => return Poll::Ready(Ok(true)),
                Preface::Refused => return Poll::Ready(Ok(false)),
                Preface::Checking { held, len } => {
                    let mut first = ReadBuf::new(&mut held[*len..]);
                    ready!(this.inner.as_mut().poll_read(cx, &mut first))?;
                    let read = first.filled().len();
                    *len += read;
                    let verdict = match read {
                        0 => Some(true),
                        _ => preface_verdict(&held[..*len]),
                    };
                    *this.preface = match verdict {
                        None => continue,
                        Some(true) => Preface::Releasing {
                            held: *held,
                            from: 0,
                            len: *len,
                        },
                        Some(false) => Preface::Refusing { written: 0 },
                    };
                }
                Preface::Releasing { held, from, len } => {
                    let n = (*len - *from).min(buf.remaining());
                    let before = buf.filled().len();
                    buf.put_slice(&held[*from..*from + n]);
                    *from += n;
                    if *from == *len {
                        *this.preface = Preface::Passed;
                    }
                    if let Some(finding) = this.scanner.feed(&buf.filled()[before..]) {
                        this.findings.record(finding);
                    }
                    this.findings.publish(this.scanner);
                    return Poll::Ready(Ok(true));
                }
                Preface::Refusing { written } => {
                    while *written < INVALID_PREFACE_ANSWER.len() {
                        let rest = &INVALID_PREFACE_ANSWER[*written..];
                        match ready!(this.inner.as_mut().poll_write(cx, rest))? {
                            0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                            n => *written += n,
                        }
                    }
                    ready!(this.inner.as_mut().poll_flush(cx))?;
                    tracing::debug!("invalid HTTP/2 connection preface; GOAWAY sent");
                    // What the client already sent is read and dropped: closing a socket with
                    // unread bytes resets it, and the reset can destroy the GOAWAY in flight.
                    let mut sink = [0u8; 4096];
                    for _ in 0..16 {
                        let mut discard = ReadBuf::new(&mut sink);
                        match this.inner.as_mut().poll_read(cx, &mut discard) {
                            Poll::Ready(Ok(())) if !discard.filled().is_empty() => continue,
                            _ => break,
                        }
                    }
                    *this.preface = Preface::Refused;
                }
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite> AsyncRead for GuardedIo<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let polled = self.as_mut().poll_read_judged(cx, buf);
        if polled.is_pending() {
            let this = self.project();
            if let Some(wait) = this.head_wait {
                if let Poll::Ready(timed_out) = wait.poll_expired(cx, this.scanner) {
                    return Poll::Ready(Err(timed_out));
                }
            }
        }
        polled
    }
}

impl<IO: AsyncRead + AsyncWrite> GuardedIo<IO> {
    /// The read as hyper sees it: preface check, scanner, body idle timeout.
    fn poll_read_judged(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !matches!(self.preface, Preface::Passed) {
            let before = buf.filled().len();
            if !ready!(self.as_mut().poll_preface(cx, buf))? || buf.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
        }
        let this = self.project();
        if let Some(why) = this.failed {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, *why)));
        }
        if this.scanner.upgrade_pending() {
            // Not a byte read until the answer says what the next bytes are: HTTP/1 to judge
            // (a refused upgrade keeps the connection, and its head timeout) or a tunnel's.
            let status = ready!(this.findings.poll_upgrade_answer(cx));
            this.scanner.upgrade_answered(status);
        }
        let before = buf.filled().len();
        if !this.parked.is_empty() {
            let n = this.parked.len().min(buf.remaining());
            buf.put_slice(&this.parked.split_to(n));
        } else {
            match this.inner.poll_read(cx, buf) {
                Poll::Ready(Ok(())) => {
                    *this.idle_armed = false;
                    if let Some(wait) = this.head_wait.as_mut().filter(|_| this.scanner.in_body()) {
                        wait.note_activity();
                    }
                }
                Poll::Pending if this.scanner.in_body() => {
                    // hyper reads body bytes only when the request's consumer wants them, so a
                    // stall seen here is the client's, not backpressure from upstream.
                    let idle = *this.body_idle;
                    let timer =
                        (this.idle_timer).get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                    if !*this.idle_armed {
                        timer.as_mut().reset(Instant::now() + idle);
                        *this.idle_armed = true;
                    }
                    ready!(timer.as_mut().poll(cx));
                    let request = this.scanner.current_request();
                    this.scanner.stop();
                    this.findings.record(Finding {
                        request,
                        problem: Problem::StalledBody,
                    });
                    this.findings.publish(this.scanner);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request body idle timeout",
                    )));
                }
                other => return other,
            }
        }
        let judged = judge(
            this.scanner,
            this.findings,
            this.failed,
            this.parked,
            buf,
            before,
        );
        Poll::Ready(judged)
    }
}

/// Feeds the bytes just put in `buf` (from `before`) to the scanner and acts on what it says:
/// a malformed body is cut before its bad byte (hyper's read fails from there, whatever it would
/// have made of the rest); bytes after an unanswered upgrade request go back in front of
/// `parked`, for hyper to read once the answer is known.
fn judge(
    scanner: &mut Scanner,
    findings: &Findings,
    failed: &mut Option<&'static str>,
    parked: &mut BytesMut,
    buf: &mut ReadBuf<'_>,
    before: usize,
) -> io::Result<()> {
    let found = scanner.feed(&buf.filled()[before..]);
    let taken = before + scanner.accepted();
    if let Some(finding) = found {
        if let Problem::MalformedBody(why) = finding.problem {
            buf.set_filled(taken);
            *failed = Some(why);
        }
        findings.record(finding);
    } else if scanner.upgrade_pending() && taken < buf.filled().len() {
        let mut held = BytesMut::from(&buf.filled()[taken..]);
        held.unsplit(std::mem::take(parked));
        *parked = held;
        buf.set_filled(taken);
    }
    findings.publish(scanner);
    match failed {
        Some(why) if buf.filled().len() == before => {
            Err(io::Error::new(io::ErrorKind::InvalidData, *why))
        }
        _ => Ok(()),
    }
}

impl<IO: AsyncWrite> AsyncWrite for GuardedIo<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        if let Some(wait) = this.head_wait {
            wait.note_activity();
        }
        this.inner.poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        if let Some(wait) = this.head_wait {
            wait.note_activity();
        }
        this.inner.poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
