//! The discovery client: one delta-xDS stream to the control plane carrying every resource type.
//!
//! Invariants (see docs/protocol.md):
//! - every response is answered by exactly one ACK or NACK naming its nonce;
//! - a response is applied whole or not at all: one bad resource NACKs it, and the snapshot in
//!   force keeps serving;
//! - on reconnect the proxy tells the control plane the versions it holds, keeps serving them while
//!   disconnected, and backs off with jitter between attempts (at least as long as the control
//!   plane's retry pushback, when it refuses the stream over its caps);
//! - a stream that stays silent longer than `LinkSettings::max_silence` is reopened, so a hung
//!   control plane cannot hold the proxy's config (dead connections are found sooner, by the
//!   channel's keepalive: see `control_plane`).
//! - on demand (`demand.rs`), the per-service types are subscribed by name, as the app calls
//!   services; subscription changes go on the same stream between responses, and a reconnect
//!   opens with the current set and the versions held (`subscriptions.rs`).

mod demand;
mod subscriptions;
mod tracker;

pub use demand::{serialize_mode, Demand, DiscoveryMode, DiscoverySettings, Lookup, Waiter};
pub use tracker::{Tracker, Want};

use crate::config::{decode, ResourceCache, SnapshotStore};
use crate::control_plane::{self, LinkSettings, LinkStatus};
use crate::identity::{backoff, IdentityError};
use crate::tls::TlsContext;
use crate::transport::MeshConnector;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use trellis_api::discovery::{
    aggregated_discovery_client::AggregatedDiscoveryClient, DeltaDiscoveryRequest,
    DeltaDiscoveryResponse, ErrorDetail, Node,
};
use trellis_api::type_url;

/// What the admin port and readiness need to know about discovery.
#[derive(Debug, Default)]
pub struct DiscoveryStatus {
    pub connected: bool,
    /// Types for which at least one response was accepted since start.
    pub received: HashSet<String>,
    pub last_nack: Option<String>,
    /// (ACKs, NACKs) sent, by type URL.
    pub responses: std::collections::HashMap<String, (u64, u64)>,
    /// Streams that failed or were closed since start (each one followed by a backoff).
    pub failed_streams: u64,
    /// Failed attempts since a response last arrived: what the current backoff step is based on.
    pub consecutive_failures: u32,
    /// Failures of calls to the control plane (discovery and certificates), by cause.
    pub link: LinkStatus,
}

pub type SharedStatus = Arc<Mutex<DiscoveryStatus>>;

pub struct DiscoveryClient {
    pub client: AggregatedDiscoveryClient<Channel>,
    pub token: String,
    pub node: Node,
    pub store: SnapshotStore,
    pub connector: MeshConnector,
    pub tls: TlsContext,
    pub status: SharedStatus,
    pub link: LinkSettings,
    /// The name the control plane's certificate must carry, for error messages.
    pub control_plane_name: String,
    /// On-demand discovery; `None` subscribes to every service (wildcard).
    pub demand: Option<Arc<Demand>>,
}

impl DiscoveryClient {
    pub async fn run(mut self) {
        let mut cache = ResourceCache::new();
        let mut failures = 0u32;
        self.install_demand();
        loop {
            let outcome = self.stream(&mut cache, &mut failures).await;
            failures += 1;
            let mut delay = backoff(failures);
            match outcome {
                Ok(()) => {
                    tracing::info!(retry_in = ?delay, "discovery stream closed by the control plane")
                }
                Err(status) => {
                    let diagnosis = control_plane::diagnose(&status);
                    delay = delay.max(diagnosis.pushback.unwrap_or_default());
                    control_plane::log_failure(
                        "discovery",
                        &diagnosis,
                        delay,
                        &self.control_plane_name,
                    );
                    self.set_status(|s| s.link.record("discovery", &diagnosis));
                }
            }
            self.set_status(|s| {
                s.connected = false;
                s.failed_streams += 1;
                s.consecutive_failures = failures;
            });
            tokio::time::sleep(delay).await;
        }
    }

    async fn stream(
        &mut self,
        cache: &mut ResourceCache,
        failures: &mut u32,
    ) -> Result<(), tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        for (i, t) in type_url::ALL.into_iter().enumerate() {
            let initial_resource_versions = cache
                .get(t)
                .map(|m| m.iter().map(|(n, (v, _))| (n.clone(), v.clone())).collect())
                .unwrap_or_default();
            let req = DeltaDiscoveryRequest {
                node: (i == 0).then(|| self.node.clone()),
                type_url: t.to_string(),
                resource_names_subscribe: self.subscriptions(t, cache),
                initial_resource_versions,
                ..Default::default()
            };
            // The channel holds 16 and we send 5: this cannot fail while rx is alive.
            let _ = tx.send(req).await;
        }
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        let bearer = format!("Bearer {}", self.token)
            .parse()
            .map_err(|_| tonic::Status::unauthenticated(IdentityError::Credential.to_string()))?;
        request
            .metadata_mut()
            .insert(trellis_api::AUTHORIZATION, bearer);
        let mut responses = self.client.delta_resources(request).await?.into_inner();
        self.set_status(|s| {
            s.connected = true;
            s.link.clear("discovery");
        });
        tracing::info!("discovery stream established");
        let max_silence = self.link.max_silence;
        let mut silent_until = tokio::time::Instant::now() + max_silence;
        let demand = self.demand.clone();
        let wanted = || async {
            match &demand {
                Some(d) => d.wanted.notified().await,
                None => std::future::pending().await,
            }
        };
        let mut sweep = tokio::time::interval(self.sweep_every());
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let event = tokio::select! {
                next = responses.message() => Event::Message(next?),
                _ = tokio::time::sleep_until(silent_until) => {
                    return Err(tonic::Status::deadline_exceeded(format!(
                        "no message on the discovery stream for {max_silence:?}; reopening it"
                    )));
                }
                _ = wanted() => Event::Wanted,
                _ = sweep.tick(), if demand.is_some() => Event::Sweep,
            };
            let mut out = Vec::new();
            match event {
                Event::Message(None) => break,
                Event::Message(Some(rsp)) => {
                    silent_until = tokio::time::Instant::now() + max_silence;
                    if *failures > 0 {
                        *failures = 0;
                        self.set_status(|s| s.consecutive_failures = 0);
                    }
                    out.push(self.apply(cache, rsp));
                }
                Event::Sweep => self.sweep(),
                Event::Wanted => {}
            }
            // On demand: new services, backends named by new route configs, idle ones dropped.
            out.extend(self.resubscribe(cache));
            self.wake_waiters();
            for req in out {
                if tx.send(req).await.is_err() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Applies one response and returns its ACK or NACK.
    fn apply(
        &self,
        cache: &mut ResourceCache,
        rsp: DeltaDiscoveryResponse,
    ) -> DeltaDiscoveryRequest {
        let mut ack = DeltaDiscoveryRequest {
            type_url: rsp.type_url.clone(),
            response_nonce: rsp.nonce.clone(),
            ..Default::default()
        };
        match stage(cache, &rsp) {
            Ok(mut staged) => {
                self.keep_subscribed(&rsp.type_url, &mut staged);
                let changes = crate::config::Changes::between(cache.get(&rsp.type_url), &staged);
                cache.insert(rsp.type_url.clone(), staged);
                self.publish(cache);
                self.answered(&rsp);
                let kind = rsp.type_url.rsplit('.').next().unwrap_or_default();
                match changes.is_empty() {
                    true => {
                        tracing::debug!(type_url = %rsp.type_url, nonce = %rsp.nonce, "accepted")
                    }
                    false => {
                        tracing::info!(type_url = %rsp.type_url, "config applied: {kind} {changes}")
                    }
                }
                self.set_status(|s| {
                    s.received.insert(rsp.type_url.clone());
                    s.responses.entry(rsp.type_url.clone()).or_default().0 += 1;
                });
            }
            Err(reason) => {
                tracing::warn!(type_url = %rsp.type_url, nonce = %rsp.nonce, %reason, "rejected update (NACK): the control plane sent config this sidecar cannot use; fix the mesh config it names (the control plane's /status lists NACKs). Keeping the previous config");
                self.set_status(|s| {
                    s.last_nack = Some(reason.clone());
                    s.responses.entry(rsp.type_url.clone()).or_default().1 += 1;
                });
                ack.error_detail = Some(ErrorDetail {
                    code: tonic::Code::InvalidArgument as i32,
                    message: reason,
                });
            }
        }
        ack
    }

    fn set_status(&self, f: impl FnOnce(&mut DiscoveryStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }
}

/// What wakes the stream loop.
enum Event {
    /// A response, or the end of the stream.
    Message(Option<DeltaDiscoveryResponse>),
    /// The router wants a service not subscribed yet.
    Wanted,
    /// Time to look for idle services.
    Sweep,
}

/// The type's resources after the response, or every reason it cannot be applied.
fn stage(
    cache: &ResourceCache,
    rsp: &DeltaDiscoveryResponse,
) -> Result<BTreeMap<String, (String, crate::config::Decoded)>, String> {
    if !type_url::ALL.contains(&rsp.type_url.as_str()) {
        return Err(format!("unknown type URL {:?}", rsp.type_url));
    }
    let mut staged = cache.get(&rsp.type_url).cloned().unwrap_or_default();
    let mut errors = Vec::new();
    for res in &rsp.resources {
        match decode(&rsp.type_url, res) {
            Ok(decoded) => {
                staged.insert(res.name.clone(), (res.version.clone(), decoded));
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    for name in &rsp.removed_resources {
        staged.remove(name);
    }
    if errors.is_empty() {
        Ok(staged)
    } else {
        Err(errors.join("; "))
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod resume_tests;
