//! Steady background traffic for fault tests: requests from one workload's app to a service, one
//! after another with a short pause, until the test stops it, counting what was sent and what
//! failed (anything but a 200 within 5 s). A fault suite's promise is usually "0 failed out of N".

use crate::client::TestClient;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What a `SteadyTraffic` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrafficCounts {
    pub sent: u64,
    pub failed: u64,
}

impl TrafficCounts {
    pub fn ok(&self) -> u64 {
        self.sent - self.failed
    }
}

/// A running traffic loop; `finish` stops it and returns the counts (dropping it stops it too).
pub struct SteadyTraffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl SteadyTraffic {
    /// GET `authority/` through `client` every `pause` (plus the request's own time).
    pub fn start(client: TestClient, authority: &str, pause: Duration) -> SteadyTraffic {
        let stop = Arc::new(AtomicBool::new(false));
        let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let task = {
            let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
            let authority = authority.to_owned();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    sent.fetch_add(1, Ordering::Relaxed);
                    let answer =
                        tokio::time::timeout(Duration::from_secs(5), client.get(&authority, "/"))
                            .await;
                    if !matches!(answer, Ok(Ok((ref rsp, _))) if rsp.status() == 200) {
                        failed.fetch_add(1, Ordering::Relaxed);
                        let why = answer.map(|a| {
                            a.map(|(r, _)| (r.status(), r.headers().get("trellis-error").cloned()))
                        });
                        eprintln!("request to {authority} failed: {why:?}");
                    }
                    tokio::time::sleep(pause).await;
                }
            })
        };
        SteadyTraffic {
            stop,
            sent,
            failed,
            task,
        }
    }

    /// The counts so far.
    pub fn counts(&self) -> TrafficCounts {
        TrafficCounts {
            sent: self.sent.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }

    /// Stops after the request in flight and returns the counts.
    pub async fn finish(mut self) -> TrafficCounts {
        self.stop.store(true, Ordering::Relaxed);
        let _ = (&mut self.task).await;
        self.counts()
    }
}

impl Drop for SteadyTraffic {
    fn drop(&mut self) {
        self.task.abort();
    }
}
