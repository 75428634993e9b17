//! Reloads the mesh YAML while serving. The file is polled every 200 ms and compared by content
//! (editors and `cp` do not reliably change mtime at our resolution). A change is applied whole
//! or not at all: only once the bytes have stayed the same for the settle time (500 ms by
//! default), because the common way of writing a file (truncate, then write, maybe in pieces)
//! shows readers an empty or half-written file for a while, and applying that would withdraw
//! every route. An empty document is refused by the parser for the same reason. A valid change
//! becomes a new snapshot with the next system version; an invalid one is logged with its
//! file:line:field error and the version kept, and recorded in the status, while the previous
//! snapshot keeps being served. Publishing is `publish.rs`, shared with the Kubernetes source.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::config;
use crate::publish::Publisher;
use crate::resources::SharedSnapshot;
use crate::status::ControlPlaneStatus;

pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How long a changed file must keep the same bytes before it is parsed.
pub const DEFAULT_SETTLE: Duration = Duration::from_millis(500);

pub struct Reloader {
    path: PathBuf,
    /// The content last parsed, valid or not, so a bad file is reported once, not every poll.
    last_parsed: Vec<u8>,
    /// Changed content not applied yet, with when it was first read: it is parsed once it has
    /// been read unchanged for `settle`. Time counts from the first read, so the file has been
    /// stable for at least `settle` (it may have changed up to a poll earlier, never later).
    pending: Option<(Vec<u8>, Instant)>,
    settle: Duration,
    publisher: Publisher,
}

impl Reloader {
    /// `initial` is the content the current snapshot was built from. The settle time is
    /// `DEFAULT_SETTLE` (see `with_settle`).
    pub fn new(
        path: PathBuf,
        initial: Vec<u8>,
        roots_der: Vec<Vec<u8>>,
        snapshots: watch::Sender<SharedSnapshot>,
        status: Arc<watch::Sender<ControlPlaneStatus>>,
    ) -> Self {
        Reloader {
            path,
            last_parsed: initial,
            pending: None,
            settle: DEFAULT_SETTLE,
            publisher: Publisher::new(roots_der, snapshots, status),
        }
    }

    /// Counts reloads in `metrics` (by default, in a private instance).
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::ControlPlaneMetrics>) -> Self {
        self.publisher = self.publisher.with_metrics(metrics);
        self
    }

    /// Applies a change only after it has been stable this long (zero: at the first read).
    pub fn with_settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// Polls until `shutdown` turns true or its sender is dropped.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *shutdown.borrow() {
                return;
            }
            tokio::select! {
                _ = tick.tick() => self.poll_once().await,
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Reads the file once and applies it if its content changed and has settled.
    pub async fn poll_once(&mut self) {
        self.poll_at(Instant::now()).await;
    }

    /// `poll_once` with the time of the read given (tests step time explicitly).
    pub async fn poll_at(&mut self, now: Instant) {
        let file = self.path.display().to_string();
        let bytes = match tokio::fs::read(&self.path).await {
            Ok(bytes) => bytes,
            Err(e) => {
                // Editors may replace the file in two steps, and a process out of descriptors
                // cannot open it: report, keep serving, retry at the next poll.
                self.record_error(format!("{file}: cannot read: {e}"));
                return;
            }
        };
        if bytes == self.last_parsed {
            // Back to what was parsed last (an edit undone, or rewritten with the same bytes).
            self.pending = None;
            return;
        }
        let settled = match &self.pending {
            Some((pending, since)) if *pending == bytes => {
                now.saturating_duration_since(*since) >= self.settle
            }
            _ => {
                self.pending = Some((bytes, now));
                self.settle.is_zero()
            }
        };
        if !settled {
            return;
        }
        let Some((bytes, _)) = self.pending.take() else {
            return;
        };
        self.last_parsed = bytes;
        let parsed = std::str::from_utf8(&self.last_parsed)
            .map_err(|e| format!("{file}: not UTF-8: {e}"))
            .and_then(|text| config::parse(&file, text).map_err(|e| e.to_string()));
        match parsed {
            Ok(mesh) => {
                self.publisher.publish(&mesh, Vec::new());
            }
            Err(error) => self.record_error(error),
        }
    }

    /// Records `error` with what keeps serving, e.g. "…; keeping config version 7".
    fn record_error(&self, error: String) {
        let version = self.publisher.current_version();
        self.publisher
            .record_error(format!("{error}; keeping config version {version}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources;

    const GOOD: &str = "services:\n  - name: a\n    ports: [{port: 80}]\n";
    const SETTLE: Duration = Duration::from_millis(500);

    struct Fixture {
        _dir: tempfile::TempDir,
        path: PathBuf,
        reloader: Reloader,
        snapshots: watch::Receiver<SharedSnapshot>,
        status: watch::Receiver<ControlPlaneStatus>,
    }

    fn fixture(settle: Duration) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.yaml");
        std::fs::write(&path, GOOD).unwrap();
        let mesh = config::parse("mesh.yaml", GOOD).unwrap();
        let (snap_tx, snapshots) = watch::channel(Arc::new(resources::build(&mesh, &[], 1)));
        let (status_tx, status) = watch::channel(ControlPlaneStatus::default());
        let reloader = Reloader::new(
            path.clone(),
            GOOD.as_bytes().to_vec(),
            vec![],
            snap_tx,
            Arc::new(status_tx),
        )
        .with_settle(settle);
        Fixture {
            _dir: dir,
            path,
            reloader,
            snapshots,
            status,
        }
    }

    impl Fixture {
        fn version(&self) -> u64 {
            self.snapshots.borrow().system_version
        }

        fn error(&self) -> Option<String> {
            self.status.borrow().last_error.clone()
        }
    }

    #[tokio::test]
    async fn applies_valid_changes_and_keeps_serving_on_errors() {
        let mut f = fixture(Duration::ZERO);
        f.reloader.poll_once().await;
        assert_eq!(f.version(), 1);

        std::fs::write(&f.path, GOOD.replace("80", "81")).unwrap();
        f.reloader.poll_once().await;
        assert_eq!(f.version(), 2);
        assert_eq!(f.status.borrow().config_version, 2);

        std::fs::write(&f.path, GOOD.replace("80", "0")).unwrap();
        f.reloader.poll_once().await;
        assert_eq!(f.version(), 2);
        let error = f.error().unwrap();
        assert!(
            error.contains("mesh.yaml:3:")
                && error.contains("services[0].ports[0].port")
                && error.ends_with("; keeping config version 2"),
            "{error}"
        );

        std::fs::write(&f.path, GOOD).unwrap();
        f.reloader.poll_once().await;
        assert_eq!(f.version(), 3);
        assert_eq!(f.error(), None);
    }

    #[tokio::test]
    async fn a_change_applies_only_after_it_has_been_stable_for_the_settle_time() {
        let mut f = fixture(SETTLE);
        let t0 = Instant::now();
        let step = |ms: u64| t0 + Duration::from_millis(ms);

        // A truncate-then-write writer: empty, then half, then the whole new file, 200 ms apart.
        let new = GOOD.replace("80", "81");
        std::fs::write(&f.path, "").unwrap();
        f.reloader.poll_at(step(0)).await;
        std::fs::write(&f.path, &new[..new.len() / 2]).unwrap();
        f.reloader.poll_at(step(200)).await;
        std::fs::write(&f.path, &new).unwrap();
        f.reloader.poll_at(step(400)).await;
        f.reloader.poll_at(step(600)).await;
        assert_eq!(f.version(), 1, "stable for 200 ms only");
        assert_eq!(f.error(), None, "nothing half-written was parsed");
        f.reloader.poll_at(step(800)).await;
        assert_eq!(f.version(), 1, "stable for 400 ms only");
        f.reloader.poll_at(step(900)).await;
        assert_eq!(f.version(), 2, "stable for 500 ms");
        assert_eq!(f.error(), None);

        // Rewritten with the same bytes: nothing to apply, nothing pending.
        std::fs::write(&f.path, "").unwrap();
        f.reloader.poll_at(step(1000)).await;
        std::fs::write(&f.path, &new).unwrap();
        f.reloader.poll_at(step(1200)).await;
        f.reloader.poll_at(step(3000)).await;
        assert_eq!(f.version(), 2);
        assert_eq!(f.error(), None);
    }

    #[tokio::test]
    async fn a_file_left_empty_is_refused_naming_the_file_and_the_version_kept() {
        let mut f = fixture(SETTLE);
        let t0 = Instant::now();
        for content in ["", "# only comments\n\n"] {
            std::fs::write(&f.path, content).unwrap();
            f.reloader.poll_at(t0).await;
            f.reloader.poll_at(t0 + SETTLE).await;
            assert_eq!(f.version(), 1);
            let error = f.error().unwrap();
            let file = f.path.display().to_string();
            assert!(
                error.starts_with(&format!("{file}: the file is empty"))
                    && error.ends_with("; keeping config version 1"),
                "{error}"
            );
        }
        // Once written, the real content applies.
        std::fs::write(&f.path, GOOD.replace("80", "82")).unwrap();
        f.reloader.poll_at(t0).await;
        f.reloader.poll_at(t0 + SETTLE).await;
        assert_eq!(f.version(), 2);
        assert_eq!(f.error(), None);
    }

    #[tokio::test]
    async fn services_written_empty_on_purpose_apply() {
        let mut f = fixture(Duration::ZERO);
        let clusters = |f: &Fixture| {
            let snap = f.snapshots.borrow();
            snap.of_type(trellis_api::type_url::CLUSTERS)
                .map_or(0, |c| c.len())
        };
        assert_eq!(clusters(&f), 1);
        std::fs::write(&f.path, "services: []\n").unwrap();
        f.reloader.poll_once().await;
        assert_eq!(f.version(), 2);
        assert_eq!(clusters(&f), 0);
        assert_eq!(f.error(), None);
    }

    #[tokio::test]
    async fn run_applies_after_the_settle_time() {
        let settle = Duration::from_millis(300);
        let f = fixture(settle);
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut snapshots = f.snapshots.clone();
        let task = tokio::spawn(f.reloader.run(stop_rx));
        // Let the first tick read the unchanged file.
        tokio::time::sleep(Duration::from_millis(50)).await;
        std::fs::write(&f.path, GOOD.replace("80", "83")).unwrap();
        let written = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), snapshots.changed())
            .await
            .expect("applied")
            .unwrap();
        let waited = written.elapsed();
        // At least the settle time; at most two polls more (first seen up to a poll after the
        // write, applied at the first poll after it settled), plus scheduling slack.
        assert!(
            waited >= settle && waited <= settle + 2 * POLL_INTERVAL + Duration::from_millis(300),
            "applied after {waited:?}"
        );
        stop_tx.send_replace(true);
        task.await.unwrap();
    }
}
