//! Shutdown signalling and waiting: one `Drain` owned by the proxy, any number of `DrainWatch`
//! clones held by listeners and by every connection task. Signalling makes every watcher's
//! `signaled()` complete: listeners stop accepting, connections finish their in-flight requests
//! (HTTP/2 GOAWAY, HTTP/1.1 `Connection: close`). `Drain::drained` completes when the last watch
//! is dropped, that is when the last connection has finished, so the proxy can exit as soon as
//! the work is done rather than after a fixed sleep.

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
    /// Completes once drain is signalled (or the `Drain` is dropped).
    pub async fn signaled(&self) {
        let mut rx = self.signal.clone();
        let _ = rx.wait_for(|v| *v).await;
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
    async fn dropping_the_drain_releases_watchers() {
        let (drain, watch) = super::channel();
        drop(drain);
        watch.signaled().await;
    }
}
