//! Reloads the mesh YAML while serving. The file is polled every 200 ms and compared by content
//! (editors and `cp` do not reliably change mtime at our resolution); a valid change becomes a new
//! snapshot with the next system version, an invalid one is logged with its file:line:field error
//! and recorded in the status while the previous snapshot keeps being served. Publishing is
//! `publish.rs`, shared with the Kubernetes source.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config;
use crate::publish::Publisher;
use crate::resources::SharedSnapshot;
use crate::status::ControlPlaneStatus;

pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

pub struct Reloader {
    path: PathBuf,
    /// The content last parsed, valid or not, so a bad file is reported once, not every poll.
    last_seen: Vec<u8>,
    publisher: Publisher,
}

impl Reloader {
    /// `initial` is the content the current snapshot was built from.
    pub fn new(
        path: PathBuf,
        initial: Vec<u8>,
        roots_der: Vec<Vec<u8>>,
        snapshots: watch::Sender<SharedSnapshot>,
        status: Arc<watch::Sender<ControlPlaneStatus>>,
    ) -> Self {
        Reloader {
            path,
            last_seen: initial,
            publisher: Publisher::new(roots_der, snapshots, status),
        }
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

    /// Reads the file once and applies it if its content changed.
    pub async fn poll_once(&mut self) {
        let file = self.path.display().to_string();
        let bytes = match tokio::fs::read(&self.path).await {
            Ok(bytes) => bytes,
            Err(e) => {
                // Editors may replace the file in two steps; report, keep serving, retry.
                self.record_error(format!("{file}: cannot read: {e}"));
                return;
            }
        };
        if bytes == self.last_seen {
            return;
        }
        self.last_seen = bytes;
        let parsed = std::str::from_utf8(&self.last_seen)
            .map_err(|e| format!("{file}: not UTF-8: {e}"))
            .and_then(|text| config::parse(&file, text).map_err(|e| e.to_string()));
        match parsed {
            Ok(mesh) => {
                self.publisher.publish(&mesh, Vec::new());
            }
            Err(error) => self.record_error(error),
        }
    }

    fn record_error(&self, error: String) {
        self.publisher.record_error(error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources;

    const GOOD: &str = "services:\n  - name: a\n    ports: [{port: 80}]\n";

    #[tokio::test]
    async fn applies_valid_changes_and_keeps_serving_on_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.yaml");
        std::fs::write(&path, GOOD).unwrap();
        let mesh = config::parse("mesh.yaml", GOOD).unwrap();
        let (snap_tx, snap_rx) = watch::channel(Arc::new(resources::build(&mesh, &[], 1)));
        let (status_tx, status_rx) = watch::channel(ControlPlaneStatus::default());
        let mut reloader = Reloader::new(
            path.clone(),
            GOOD.as_bytes().to_vec(),
            vec![],
            snap_tx,
            Arc::new(status_tx),
        );
        reloader.poll_once().await;
        assert_eq!(snap_rx.borrow().system_version, 1);

        std::fs::write(&path, GOOD.replace("80", "81")).unwrap();
        reloader.poll_once().await;
        assert_eq!(snap_rx.borrow().system_version, 2);
        assert_eq!(status_rx.borrow().config_version, 2);

        std::fs::write(&path, GOOD.replace("80", "0")).unwrap();
        reloader.poll_once().await;
        assert_eq!(snap_rx.borrow().system_version, 2);
        let error = status_rx.borrow().last_error.clone().unwrap();
        assert!(
            error.contains("mesh.yaml:3:") && error.contains("services[0].ports[0].port"),
            "{error}"
        );

        std::fs::write(&path, GOOD).unwrap();
        reloader.poll_once().await;
        assert_eq!(snap_rx.borrow().system_version, 3);
        assert_eq!(status_rx.borrow().last_error, None);
    }
}
