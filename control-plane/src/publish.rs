//! The one path from a validated `MeshConfig` to the proxies, shared by every config source (the
//! YAML reloader in `watch.rs`, the Kubernetes source in `kubernetes/source.rs`): build the
//! snapshot with the next system version, publish it on the watch channel the discovery streams
//! follow, and record the version and errors in the status.
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::MeshConfig;
use crate::resources::{self, SharedSnapshot};
use crate::status::ControlPlaneStatus;

#[derive(Clone)]
pub struct Publisher {
    roots_der: Vec<Vec<u8>>,
    snapshots: watch::Sender<SharedSnapshot>,
    status: Arc<watch::Sender<ControlPlaneStatus>>,
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
        }
    }

    /// Serves `mesh` from now on; returns its system version. `skipped` lists the parts of the
    /// source that were left out (e.g. invalid Kubernetes objects) while the rest applied.
    pub fn publish(&self, mesh: &MeshConfig, skipped: Vec<String>) -> u64 {
        let version = self.snapshots.borrow().system_version + 1;
        let snapshot = resources::build(mesh, &self.roots_der, version);
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
    /// error is logged once.
    pub fn record_error(&self, error: String) {
        let repeated = self.status.borrow().last_error.as_deref() == Some(error.as_str());
        if !repeated {
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
