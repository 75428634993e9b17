//! Shutdown signalling and waiting: one `Drain` owned by the proxy, any number of `DrainWatch`
//! clones held by listeners and by every connection task. Signalling makes every watcher's
//! `signaled()` complete: listeners stop accepting, connections finish their in-flight requests
//! (HTTP/2 GOAWAY, HTTP/1.1 `Connection: close`). `Drain::drained` completes when the last watch
//! is dropped, that is when the last connection has finished, so the proxy can exit as soon as
//! the work is done rather than after a fixed sleep. `DrainWatch::until` gives one connection
//! its own earlier drain (at its peer's certificate expiry), reusing the same wind-down.
//!
//! hyper's graceful shutdown closes an HTTP/1.1 connection after the response in progress but
//! does not say so; `CloseOnDrain` adds `Connection: close` (RFC 9112 §9.6) to HTTP/1 responses
//! written once drain has begun, so the client knows not to reuse the connection.

use crate::seldom::SeldomReady;
use http::{header, HeaderValue, Request, Response, Version};
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::sync::{mpsc, watch};

#[derive(Debug)]
pub struct Drain {
    signal: watch::Sender<bool>,
    released: mpsc::Receiver<()>,
}

/// A claim on the proxy staying up, plus the means to learn that it should wind down.
#[derive(Debug, Clone)]
pub struct DrainWatch {
    signal: watch::Receiver<bool>,
    // Never sent on: its only job is to be dropped.
    _hold: mpsc::Sender<()>,
}

pub fn channel() -> (Drain, DrainWatch) {
    let (signal, signal_rx) = watch::channel(false);
    let (hold, released) = mpsc::channel(1);
    (
        Drain { signal, released },
        DrainWatch {
            signal: signal_rx,
            _hold: hold,
        },
    )
}

impl Drain {
    /// Signals every watcher, then waits until all of them are dropped.
    pub async fn drain(mut self) {
        let _ = self.signal.send(true);
        // recv() returns None once every sender (held by the watches) is gone.
        let _ = self.released.recv().await;
    }
}

impl DrainWatch {
    /// Completes once drain is signalled (or the `Drain` is dropped). Cheap to poll again
    /// (`seldom`): every connection's task polls it at each wake-up.
    pub fn signaled(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.signal.clone();
        let sent = self.signal.clone();
        let wait = async move {
            let _ = rx.wait_for(|v| *v).await;
        };
        // Anything sent (only `true` ever is) or the sender gone: poll the wait.
        SeldomReady::new(wait, move |_: &_| sent.has_changed().unwrap_or(true))
    }

    /// Completes once the `Drain` is gone: the grace period ran out (its `drain()` future was
    /// dropped) or the proxy stopped. Connections still open then are closed at once, so an
    /// in-process proxy ends its work as surely as a process whose runtime is dropped.
    pub async fn aborted(&self) {
        let mut rx = self.signal.clone();
        while rx.changed().await.is_ok() {}
    }

    /// Whether drain has been signalled.
    pub fn is_draining(&self) -> bool {
        *self.signal.borrow()
    }

    /// A watch for one connection that must also wind down at `deadline` (its peer's certificate
    /// expires: `tls::expiry`): it signals then, or when this one does, and aborts `grace` after
    /// the deadline, or when this one aborts; `on_deadline` runs if the deadline comes first. The
    /// connection is then retired exactly as in a drain. The returned future drives the watch:
    /// poll it alongside the connection; it never completes.
    pub fn until(
        &self,
        deadline: tokio::time::Instant,
        grace: std::time::Duration,
        on_deadline: impl FnOnce(),
    ) -> (DrainWatch, impl Future<Output = std::convert::Infallible>) {
        let (signal, signal_rx) = watch::channel(self.is_draining());
        let child = DrainWatch {
            signal: signal_rx,
            _hold: self._hold.clone(),
        };
        let parent = self.clone();
        let driver = async move {
            tokio::select! {
                _ = parent.signaled() => {
                    let _ = signal.send(true);
                    parent.aborted().await;
                }
                _ = tokio::time::sleep_until(deadline) => {
                    on_deadline();
                    let _ = signal.send(true);
                    tokio::select! {
                        _ = parent.aborted() => {}
                        _ = tokio::time::sleep(grace) => {}
                    }
                }
            }
            // Dropping the sender is what `aborted()` waits for.
            drop(signal);
            std::future::pending().await
        };
        (child, driver)
    }
}

/// Runs `serve` once `ready` completes, unless drain begins first. Until then the listener's
/// connections wait in the kernel's backlog (a peer that gives up has had nothing processed).
pub async fn once_ready(
    ready: impl Future<Output = ()>,
    drain: DrainWatch,
    serve: impl Future<Output = ()>,
) {
    tokio::select! {
        _ = ready => serve.await,
        _ = drain.signaled() => {}
    }
}

/// Wraps a connection's service: HTTP/1 responses produced after drain began carry
/// `Connection: close`. Holds the connection's `DrainWatch` clone, so it costs no extra claim;
/// per request it costs one clone of the drain signal's receiver, for HTTP/1 only.
#[derive(Clone, Debug)]
pub struct CloseOnDrain<S> {
    inner: S,
    drain: DrainWatch,
}

impl<S> CloseOnDrain<S> {
    pub fn new(inner: S, drain: DrainWatch) -> Self {
        CloseOnDrain { inner, drain }
    }
}

impl<S, B, R> tower::Service<Request<B>> for CloseOnDrain<S>
where
    S: tower::Service<Request<B>, Response = Response<R>>,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = CloseOnDrainFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let http1 = matches!(req.version(), Version::HTTP_10 | Version::HTTP_11);
        CloseOnDrainFuture {
            signal: http1.then(|| self.drain.signal.clone()),
            inner: self.inner.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner response, with `Connection: close` added if drain has begun by the time it is
    /// ready (HTTP/1 only: `signal` is `None` for HTTP/2). Not boxed: it runs per request.
    pub struct CloseOnDrainFuture<F> {
        #[pin]
        inner: F,
        signal: Option<watch::Receiver<bool>>,
    }
}

impl<F, R, E> Future for CloseOnDrainFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = Result<Response<R>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut rsp = ready!(this.inner.poll(cx))?;
        // A 101 hands the connection over (a WebSocket): its `Connection: upgrade` must stand,
        // and the upgraded stream is not an HTTP connection that drain could close after it.
        let switching = rsp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
        if !switching && this.signal.as_ref().is_some_and(|s| *s.borrow()) {
            rsp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        Poll::Ready(Ok(rsp))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[tokio::test]
    async fn drain_waits_for_every_watch_to_finish() {
        let (drain, watch) = super::channel();
        let connection = tokio::spawn(async move {
            watch.signaled().await;
            // Finishing in-flight work after the signal.
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(watch);
        });
        let started = tokio::time::Instant::now();
        drain.drain().await;
        assert!(
            started.elapsed() >= Duration::from_millis(50),
            "waited for the connection"
        );
        assert!(connection.await.is_ok());
    }

    #[tokio::test]
    async fn http1_responses_after_drain_began_say_connection_close() {
        use tower::ServiceExt;
        let (drain, watch) = super::channel();
        let app = tower::service_fn(|_req: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(()))
        });
        let service = super::CloseOnDrain::new(app, watch.clone());
        let request = |version| {
            let mut req = http::Request::new(());
            *req.version_mut() = version;
            req
        };
        let connection = |rsp: Result<http::Response<()>, _>| {
            rsp.ok()
                .and_then(|r| r.headers().get("connection").cloned())
        };
        let before = service
            .clone()
            .oneshot(request(http::Version::HTTP_11))
            .await;
        assert_eq!(connection(before), None);
        let draining = tokio::spawn(drain.drain());
        watch.signaled().await;
        let after = service
            .clone()
            .oneshot(request(http::Version::HTTP_11))
            .await;
        assert_eq!(
            connection(after).as_ref().map(|v| v.as_bytes()),
            Some(&b"close"[..])
        );
        let h2 = service
            .clone()
            .oneshot(request(http::Version::HTTP_2))
            .await;
        assert_eq!(
            connection(h2),
            None,
            "HTTP/2 has no Connection header; it gets GOAWAY"
        );
        drop((service, watch));
        assert!(draining.await.is_ok());
    }

    #[tokio::test]
    async fn once_ready_serves_only_after_ready_and_never_once_draining() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let served = Arc::new(AtomicBool::new(false));
        let serve = |flag: Arc<AtomicBool>| async move { flag.store(true, Ordering::SeqCst) };
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        let (_drain, watch) = super::channel();
        let task = tokio::spawn(super::once_ready(
            async {
                let _ = ready_rx.await;
            },
            watch,
            serve(served.clone()),
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!served.load(Ordering::SeqCst), "not before ready");
        let _ = ready_tx.send(());
        assert!(task.await.is_ok());
        assert!(served.load(Ordering::SeqCst), "served once ready");

        let never = Arc::new(AtomicBool::new(false));
        let (drain, watch) = super::channel();
        let task = tokio::spawn(super::once_ready(
            std::future::pending(),
            watch,
            serve(never.clone()),
        ));
        drain.drain().await;
        assert!(task.await.is_ok());
        assert!(
            !never.load(Ordering::SeqCst),
            "drain before ready: never served"
        );
    }

    /// A connection's own deadline drains it alone: signalled at the deadline, aborted after the
    /// grace; the proxy's drain still waits for it meanwhile, and the proxy's own drain reaches
    /// it before the deadline.
    #[tokio::test]
    async fn until_signals_at_the_deadline_and_aborts_after_the_grace() {
        use tokio::time::Instant;
        let ms = Duration::from_millis;
        let (drain, watch) = super::channel();
        let fired = std::cell::Cell::new(0);
        let start = Instant::now();
        let (conn, driver) = watch.until(start + ms(300), ms(200), || fired.set(fired.get() + 1));
        let connection = async {
            conn.signaled().await;
            let signaled = start.elapsed();
            assert!(conn.is_draining());
            assert!(!watch.is_draining(), "the proxy is not draining");
            conn.aborted().await;
            (signaled, start.elapsed())
        };
        let (signaled, aborted) = tokio::select! {
            times = connection => times,
            never = driver => match never {},
        };
        assert!(
            signaled >= ms(300) && signaled < ms(450),
            "at the deadline: {signaled:?}"
        );
        assert!(
            aborted >= ms(500) && aborted < ms(700),
            "after the grace: {aborted:?}"
        );
        assert_eq!(fired.get(), 1);
        drop(conn);

        // The proxy drains first: signalled at once, the deadline never runs.
        let (conn, driver) = watch.until(Instant::now() + ms(300), Duration::ZERO, || {
            fired.set(fired.get() + 1)
        });
        drop(watch);
        let draining = tokio::spawn(tokio::time::timeout(ms(2000), drain.drain()));
        let before = Instant::now();
        tokio::select! {
            _ = conn.signaled() => {}
            never = driver => match never {},
        }
        assert!(before.elapsed() < ms(200), "signalled by the drain");
        tokio::time::sleep(ms(400)).await;
        assert_eq!(fired.get(), 1, "no deadline callback once draining");
        assert!(
            !draining.is_finished(),
            "the drain waits for the connection"
        );
        drop(conn);
        assert!(
            draining.await.expect("join").is_ok(),
            "and for nothing else"
        );
    }

    #[tokio::test]
    async fn dropping_the_drain_releases_watchers() {
        let (drain, watch) = super::channel();
        drop(drain);
        watch.signaled().await;
    }

    #[tokio::test]
    async fn aborted_waits_for_the_grace_period_to_end() {
        let (drain, watch) = super::channel();
        let aborted = {
            let watch = watch.clone();
            tokio::spawn(async move { watch.aborted().await })
        };
        let grace = tokio::spawn(tokio::time::timeout(
            Duration::from_millis(200),
            drain.drain(),
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Draining is not aborting: the connection still gets its grace period.
        assert!(
            !aborted.is_finished(),
            "not aborted during the grace period"
        );
        let grace = grace.await.expect("join");
        assert!(grace.is_err(), "drain waits for the watch still held");
        tokio::time::timeout(Duration::from_secs(2), aborted)
            .await
            .expect("aborted completes once the grace is over")
            .expect("join");
        drop(watch);
    }
}
