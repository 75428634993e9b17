//! The request-head read timeout of HTTP/1 connections (`Limits::header_read_timeout`): a
//! connection that waits that long for a request head, and gets none, is closed. It bounds a head
//! dribbled a byte at a time (slowloris) and the life of an idle keep-alive connection.
//!
//! hyper has this timeout too, but its timer is made for each request and dropped when the head
//! is in: a boxed `Sleep` allocated, registered in tokio's timer wheel and removed again, ~900
//! instructions per request per sidecar (issue #15). Here one timer lives as long as the
//! connection and is looked at only when it fires: if the connection made progress since it was
//! armed (a complete head, a byte of a request body, a byte written), or a response is still
//! owed (`Share::held`: every request holds a slot until its response body ends), it is armed
//! again; otherwise the wait is over. So a connection is cut after waiting between one and two
//! timeouts for a head, where hyper's timer cut it after one: no clock is read per request.
//!
//! `GuardedIo` asks only while hyper's read is pending and the scanner is between requests or in
//! a head. Once the scanner stopped (HTTP/2, an accepted upgrade, a head it lost track of) there
//! is no head to wait for, and the timeout no longer applies: an HTTP/2 connection has its own
//! keep-alive checks, a tunnel its idle timeout. A refused upgrade leaves HTTP/1, and the scanner
//! waits for the answer to learn which (`Scanner::upgrade_answered`), so the timeout holds there.

use super::h1_scan::Scanner;
use crate::limits::Share;
use crate::seldom::{self, Deadline};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

pub struct HeadWait {
    timeout: Duration,
    /// The connection's requests whose responses have not ended.
    owed: Arc<Share>,
    /// Made at the first wait, then re-armed: one timer per connection.
    timer: Option<Deadline>,
    /// Complete heads the scanner had seen when the timer was armed.
    heads_at_arm: u64,
    /// Body bytes read or response bytes written since the timer was armed.
    active: bool,
}

impl HeadWait {
    pub fn new(timeout: Duration, owed: Arc<Share>) -> Self {
        HeadWait {
            timeout,
            owed,
            timer: None,
            heads_at_arm: 0,
            active: false,
        }
    }

    /// Bytes moved that are not a request head's: the connection is not waiting idle.
    pub fn note_activity(&mut self) {
        self.active = true;
    }

    /// Called while the connection's read is pending: `Ready` with the error that ends the
    /// connection once it has waited out the timeout for a head.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>, scanner: &Scanner) -> Poll<io::Error> {
        if !scanner.awaiting_head() {
            return Poll::Pending;
        }
        let timer = match &mut self.timer {
            Some(timer) => timer,
            None => {
                self.heads_at_arm = scanner.heads();
                self.active = false;
                self.timer
                    .insert(seldom::deadline(Instant::now() + self.timeout))
            }
        };
        loop {
            ready!(Pin::new(&mut *timer).poll(cx));
            let progressed = scanner.heads() != self.heads_at_arm
                || std::mem::take(&mut self.active)
                || self.owed.held() > 0;
            if !progressed {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request head read timeout",
                ));
            }
            self.heads_at_arm = scanner.heads();
            timer.reset(Instant::now() + self.timeout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    /// Short, so the tests take a second in all; the bounds leave a scheduler's slack.
    const TIMEOUT: Duration = Duration::from_millis(200);

    /// How long `wait` lasts from now until the timeout ends it, if it does within `limit`.
    async fn waited(wait: &mut HeadWait, scanner: &Scanner, limit: Duration) -> Option<Duration> {
        let started = Instant::now();
        let expired = poll_fn(|cx| wait.poll_expired(cx, scanner));
        tokio::time::timeout(limit, expired)
            .await
            .ok()
            .map(|_| started.elapsed())
    }

    fn armed(wait: &mut HeadWait, scanner: &Scanner) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(wait.poll_expired(&mut cx, scanner).is_pending(), "armed");
    }

    #[tokio::test]
    async fn a_connection_that_never_completes_a_head_is_cut_after_one_timeout() {
        let mut scanner = Scanner::new(8192);
        assert_eq!(scanner.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: "), None);
        let mut wait = HeadWait::new(TIMEOUT, Share::counted());
        let took = waited(&mut wait, &scanner, 4 * TIMEOUT).await;
        assert!(took.is_some_and(|t| t >= TIMEOUT), "{took:?}");
    }

    #[tokio::test]
    async fn progress_since_the_timer_was_armed_buys_another_timeout() {
        let mut scanner = Scanner::new(8192);
        let mut wait = HeadWait::new(TIMEOUT, Share::counted());
        let started = Instant::now();
        armed(&mut wait, &scanner);
        tokio::time::sleep(TIMEOUT / 4).await;
        assert_eq!(scanner.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), None);
        // A head came during the first timeout: cut at the end of the second.
        let took = waited(&mut wait, &scanner, 8 * TIMEOUT).await;
        assert!(took.is_some(), "never cut");
        assert!(started.elapsed() >= 2 * TIMEOUT, "{:?}", started.elapsed());

        let mut wait = HeadWait::new(TIMEOUT, Share::counted());
        let started = Instant::now();
        armed(&mut wait, &scanner);
        wait.note_activity();
        let took = waited(&mut wait, &scanner, 8 * TIMEOUT).await;
        assert!(took.is_some(), "never cut");
        assert!(started.elapsed() >= 2 * TIMEOUT, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_connection_owed_a_response_is_not_cut() {
        let scanner = Scanner::new(8192);
        let owed = Share::counted();
        let budget = crate::limits::Budget::new(10);
        let slot = budget.try_take_for(&owed).expect("a slot");
        let mut wait = HeadWait::new(TIMEOUT, owed);
        let took = waited(&mut wait, &scanner, 4 * TIMEOUT).await;
        assert_eq!(took, None, "cut while a response was owed");
        // The response ends, its last bytes written: not cut before another timeout.
        drop(slot);
        wait.note_activity();
        let took = waited(&mut wait, &scanner, 8 * TIMEOUT).await;
        assert!(took.is_some_and(|t| t >= TIMEOUT), "{took:?}");
    }

    #[tokio::test]
    async fn no_timeout_once_the_scanner_stopped() {
        let mut scanner = Scanner::new(8192);
        assert_eq!(scanner.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), None);
        let mut wait = HeadWait::new(TIMEOUT, Share::counted());
        assert_eq!(waited(&mut wait, &scanner, 3 * TIMEOUT).await, None);
    }
}
