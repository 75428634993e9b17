//! The one path from a validated `MeshConfig` to the proxies, shared by every config source (the
//! YAML reloader in `watch.rs`, the Kubernetes source in `kubernetes/source.rs`): build the
//! snapshot with the next system version, publish it on the watch channel the discovery streams
//! follow, and record the version and errors in the status and the metrics (reloads applied and
//! rejected; when each version was published, from which pushes measure their latency).
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use crate::config::MeshConfig;
use crate::metrics::ControlPlaneMetrics;
use crate::resources::{self, SharedSnapshot};
use crate::status::ControlPlaneStatus;

#[derive(Clone)]
pub struct Publisher {
    roots_der: Vec<Vec<u8>>,
    snapshots: watch::Sender<SharedSnapshot>,
    status: Arc<watch::Sender<ControlPlaneStatus>>,
    metrics: Arc<ControlPlaneMetrics>,
}

impl Publisher {
    pub fn new(
        roots_der: Vec<Vec<u8>>,
        snapshots: watch::Sender<SharedSnapshot>,
        status: Arc<watch::Sender<ControlPlaneStatus>>,
    ) -> Self {
        Publisher {
            roots_der,
            snapshots,
            status,
            metrics: ControlPlaneMetrics::new(),
        }
    }

    /// Counts reloads and publication times in `metrics` (by default, in a private instance).
    pub fn with_metrics(mut self, metrics: Arc<ControlPlaneMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Serves `mesh` from now on; returns its system version. `skipped` lists the parts of the
    /// source that were left out (e.g. invalid Kubernetes objects) while the rest applied.
    pub fn publish(&self, mesh: &MeshConfig, skipped: Vec<String>) -> u64 {
        let version = self.snapshots.borrow().system_version + 1;
        let snapshot = resources::build(mesh, &self.roots_der, version);
        // Recorded before the streams can see the snapshot, so none looks it up too early.
        self.metrics.config_applied(version, Instant::now());
        self.snapshots.send_replace(Arc::new(snapshot));
        self.status.send_modify(|s| {
            s.config_version = version;
            s.last_error = None;
            s.skipped = skipped;
        });
        tracing::info!("config version {version} applied");
        version
    }

    /// The system version being served.
    pub fn current_version(&self) -> u64 {
        self.snapshots.borrow().system_version
    }

    /// Reports a config that could not be applied; the previous one keeps serving. A repeated
    /// error is logged and counted once: the file source reports an unreadable file at every
    /// poll.
    pub fn record_error(&self, error: String) {
        let repeated = self.status.borrow().last_error.as_deref() == Some(error.as_str());
        if !repeated {
            self.metrics.config_rejected();
            tracing::error!("config not applied, still serving the previous one: {error}");
            self.status.send_modify(|s| s.last_error = Some(error));
        }
    }

    /// Updates what the source left out when the applied config itself did not change.
    pub fn set_skipped(&self, skipped: Vec<String>) {
        self.status.send_modify(|s| s.skipped = skipped);
    }

    /// A receiver of the published snapshots.
    pub fn subscribe(&self) -> watch::Receiver<SharedSnapshot> {
        self.snapshots.subscribe()
    }
}
