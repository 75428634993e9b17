//! Futures that a connection's task polls on every wake-up but that are seldom ready: the drain
//! signal, the abuse alarm, a certificate's deadline. tokio's `Notified` and `Sleep` register the
//! task's waker again each time they are polled (a mutex taken, a timer entry touched: ~100
//! instructions), and a connection's task wakes several times per request; those polls were
//! ~1,000 instructions per request per sidecar (callgrind, issue #15). `SeldomReady` polls its
//! future only when a cheap check says it may have fired, or when the task polling it is not the
//! one the future last registered.
//!
//! Why nothing is missed: the future can only become ready through the event the check looks
//! for, and the waker it holds is the current task's, so a skipped poll would have returned
//! `Pending` and registered nothing new.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

pub struct SeldomReady<F, C> {
    inner: Pin<Box<F>>,
    may_be_ready: C,
    /// The waker `inner` was last polled with (and so will wake).
    armed_for: Option<Waker>,
}

impl<F: Future, C: Fn(&F) -> bool> SeldomReady<F, C> {
    /// `may_be_ready` must return true once `inner` can be ready; it is asked on every poll, so
    /// it must be cheap (an atomic load).
    pub fn new(inner: F, may_be_ready: C) -> Self {
        SeldomReady {
            inner: Box::pin(inner),
            may_be_ready,
            armed_for: None,
        }
    }

    pub fn get(&self) -> &F {
        &self.inner
    }
}

impl<F: Future, C: Fn(&F) -> bool + Unpin> Future for SeldomReady<F, C> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let armed = (this.armed_for.as_ref()).is_some_and(|w| w.will_wake(cx.waker()));
        if armed && !(this.may_be_ready)(&this.inner) {
            return Poll::Pending;
        }
        let polled = this.inner.as_mut().poll(cx);
        if polled.is_pending() && !armed {
            this.armed_for = Some(cx.waker().clone());
        }
        polled
    }
}

/// A deadline polled cheaply (`Sleep::is_elapsed` is one atomic load).
pub type Deadline = SeldomReady<tokio::time::Sleep, fn(&tokio::time::Sleep) -> bool>;

pub fn deadline(at: tokio::time::Instant) -> Deadline {
    SeldomReady::new(tokio::time::sleep_until(at), tokio::time::Sleep::is_elapsed)
}

impl Deadline {
    /// Moves the deadline; the next poll registers the task again.
    pub fn reset(&mut self, at: tokio::time::Instant) {
        self.inner.as_mut().reset(at);
        self.armed_for = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// Counts its polls; ready once `fired` is set.
    struct Probe {
        fired: Arc<AtomicBool>,
        polls: Arc<AtomicUsize>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            match self.fired.load(Ordering::SeqCst) {
                true => Poll::Ready(()),
                false => Poll::Pending,
            }
        }
    }

    /// A task's waker that does nothing; two of them are two tasks (`will_wake` tells them apart).
    struct Task;

    impl std::task::Wake for Task {
        fn wake(self: Arc<Self>) {}
    }

    #[test]
    fn the_inner_future_is_polled_again_only_when_it_may_be_ready_or_the_task_changed() {
        let (fired, polls) = (Arc::new(AtomicBool::new(false)), Arc::default());
        let probe = Probe {
            fired: fired.clone(),
            polls: Arc::clone(&polls),
        };
        let mut seldom = SeldomReady::new(probe, |p: &Probe| p.fired.load(Ordering::SeqCst));
        let (task, other) = (Waker::from(Arc::new(Task)), Waker::from(Arc::new(Task)));
        let mut cx = Context::from_waker(&task);
        for _ in 0..5 {
            assert!(Pin::new(&mut seldom).poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1, "armed once, then skipped");
        // Another task (a waker that does not wake the same one): polled, to register it.
        let mut other_cx = Context::from_waker(&other);
        assert!(Pin::new(&mut seldom).poll(&mut other_cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
        fired.store(true, Ordering::SeqCst);
        assert!(Pin::new(&mut seldom).poll(&mut other_cx).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_deadline_wakes_its_task_and_completes() {
        let started = tokio::time::Instant::now();
        deadline(started + Duration::from_millis(100)).await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(90) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
    }
}
