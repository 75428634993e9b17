//! The aggregated discovery service: one delta stream per proxy carrying every resource type.
//! Each stream task owns its subscriptions and what the proxy holds (see `diff`), and selects on
//! the proxy's requests and on snapshot changes, so a reload reaches every proxy without any
//! shared per-stream state. Only changed or removed resources are sent; NACKs are logged and
//! recorded in the status, and the rejected versions are not resent. How many streams may be
//! open (in total, per identity) is `limits.rs`. Each task counts what it does in the shared
//! `ControlPlaneMetrics` (relaxed atomic adds only: this is the push path).
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use trellis_api::discovery::aggregated_discovery_server::AggregatedDiscovery;
use trellis_api::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use trellis_api::type_url;

use crate::authn::{grant_from_metadata, Authenticator};
use crate::metrics::ControlPlaneMetrics;
use crate::resources::{SharedSnapshot, Snapshot};
use crate::status::{ControlPlaneStatus, NackRecord};

mod diff;
mod limits;
pub use diff::{diff, Delta, TypeState};
pub use limits::{StreamCaps, StreamLimits, StreamPermit, PUSHBACK_KEY};

/// Responses buffered per stream before the task waits for the proxy to read.
const STREAM_BUFFER: usize = 16;

/// Gives every stream a distinct nonce prefix, also across instances in one process.
static NEXT_STREAM: AtomicU64 = AtomicU64::new(1);

#[derive(Clone)]
pub struct DiscoveryService {
    auth: Arc<dyn Authenticator>,
    snapshots: watch::Receiver<SharedSnapshot>,
    status: Arc<watch::Sender<ControlPlaneStatus>>,
    shutdown: watch::Receiver<bool>,
    limits: Arc<StreamLimits>,
    metrics: Arc<ControlPlaneMetrics>,
}

impl DiscoveryService {
    /// A service with the default stream caps (`StreamCaps::default`).
    pub fn new(
        auth: Arc<dyn Authenticator>,
        snapshots: watch::Receiver<SharedSnapshot>,
        status: Arc<watch::Sender<ControlPlaneStatus>>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        DiscoveryService {
            auth,
            snapshots,
            status,
            shutdown,
            limits: StreamLimits::new(StreamCaps::default()),
            metrics: ControlPlaneMetrics::new(),
        }
    }

    /// Counts streams, responses and NACKs in `metrics` (by default, in a private instance).
    pub fn with_metrics(mut self, metrics: Arc<ControlPlaneMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Counts streams against `limits` instead.
    pub fn with_limits(mut self, limits: Arc<StreamLimits>) -> Self {
        self.limits = limits;
        self
    }
}

type Reply = Result<DeltaDiscoveryResponse, Status>;

#[tonic::async_trait]
impl AggregatedDiscovery for DiscoveryService {
    type DeltaResourcesStream = ReceiverStream<Reply>;

    async fn delta_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaResourcesStream>, Status> {
        let grant = grant_from_metadata(self.auth.as_ref(), request.metadata()).await?;
        let identity = {
            let snap = self.snapshots.borrow();
            trellis_api::spiffe_id(&snap.trust_domain, &grant.namespace, &grant.service_account)
        };
        let permit = self.limits.acquire(&identity)?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let stream = StreamTask {
            id: NEXT_STREAM.fetch_add(1, Ordering::Relaxed),
            next_nonce: 0,
            node_id: String::new(),
            types: HashMap::new(),
            tx,
            status: self.status.clone(),
            metrics: self.metrics.clone(),
        };
        // The node is checked inside the task: waiting for the first message here would delay the
        // response headers until the proxy sends, which some clients only do after the headers.
        let (snapshots, shutdown) = (self.snapshots.clone(), self.shutdown.clone());
        tokio::spawn(async move {
            // Held for the task's life: the place is released however the stream ends.
            let _permit = permit;
            stream
                .run(grant, request.into_inner(), snapshots, shutdown)
                .await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

struct StreamTask {
    id: u64,
    next_nonce: u64,
    node_id: String,
    types: HashMap<String, TypeState>,
    tx: mpsc::Sender<Reply>,
    status: Arc<watch::Sender<ControlPlaneStatus>>,
    metrics: Arc<ControlPlaneMetrics>,
}

/// The proxy went away; the stream task ends.
struct Closed;

impl StreamTask {
    async fn run(
        mut self,
        grant: crate::token::Grant,
        mut requests: Streaming<DeltaDiscoveryRequest>,
        mut snapshots: watch::Receiver<SharedSnapshot>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let first = match requests.message().await {
            Ok(Some(first)) => first,
            Ok(None) | Err(_) => return,
        };
        let Some(node) = first.node.clone() else {
            let _ = (self.tx)
                .send(Err(Status::invalid_argument(
                    "the first request must carry a node",
                )))
                .await;
            return;
        };
        let granted = {
            let snap = snapshots.borrow();
            trellis_api::spiffe_id(&snap.trust_domain, &grant.namespace, &grant.service_account)
        };
        if !node.identity.is_empty() && node.identity != granted {
            tracing::warn!(node_id = %node.id, asked = %node.identity, %granted, "discovery identity mismatch");
            let msg = format!(
                "node identity {} is not the granted {granted}",
                node.identity
            );
            let _ = self.tx.send(Err(Status::permission_denied(msg))).await;
            return;
        }
        self.node_id = node.id;
        tracing::info!(node_id = %self.node_id, identity = %granted, "discovery stream connected");
        let _connected = self.metrics.stream_connected();
        let snap = snapshots.borrow().clone();
        if self.handle(first, &snap).await.is_ok() {
            self.serve(&mut requests, &mut snapshots, &mut shutdown)
                .await;
        }
        tracing::info!(node_id = %self.node_id, "discovery stream disconnected");
    }

    async fn serve(
        &mut self,
        requests: &mut Streaming<DeltaDiscoveryRequest>,
        snapshots: &mut watch::Receiver<SharedSnapshot>,
        shutdown: &mut watch::Receiver<bool>,
    ) {
        loop {
            if *shutdown.borrow() {
                return;
            }
            let step = tokio::select! {
                request = requests.message() => match request {
                    Ok(Some(request)) => {
                        let snap = snapshots.borrow().clone();
                        self.handle(request, &snap).await
                    }
                    Ok(None) => Err(Closed),
                    Err(status) => {
                        tracing::debug!(node_id = %self.node_id, %status, "discovery stream error");
                        Err(Closed)
                    }
                },
                changed = snapshots.changed() => match changed {
                    Ok(()) => {
                        let snap = snapshots.borrow_and_update().clone();
                        self.push_changes(&snap).await
                    }
                    Err(_) => Err(Closed),
                },
                // Either a stop signal or a dropped sender means the server is going away.
                _ = shutdown.changed() => Err(Closed),
            };
            if step.is_err() {
                return;
            }
        }
    }

    async fn handle(&mut self, req: DeltaDiscoveryRequest, snap: &Snapshot) -> Result<(), Closed> {
        let type_url = req.type_url.as_str();
        let Some(current) = snap.of_type(type_url) else {
            tracing::warn!(node_id = %self.node_id, type_url, "unknown type URL, ignored");
            return Ok(());
        };
        if !req.response_nonce.is_empty() {
            self.acknowledge(&req);
        }
        let first_for_type = !self.types.contains_key(type_url);
        let state = self.types.entry(type_url.to_owned()).or_default();
        if first_for_type {
            state.known = req.initial_resource_versions.clone().into_iter().collect();
        } else if req.resource_names_subscribe.is_empty()
            && req.resource_names_unsubscribe.is_empty()
        {
            return Ok(());
        }
        state.update_subscription(
            &req.resource_names_subscribe,
            &req.resource_names_unsubscribe,
        );
        let delta = diff(state, current);
        // The first response for a type is sent even when empty, so the proxy knows the type is
        // in sync; later subscription changes answer only when there is something to say.
        if first_for_type || !delta.is_empty() {
            self.send(type_url, delta, snap).await?;
        }
        Ok(())
    }

    fn acknowledge(&self, req: &DeltaDiscoveryRequest) {
        let Some(error) = &req.error_detail else {
            tracing::debug!(node_id = %self.node_id, type_url = %req.type_url, nonce = %req.response_nonce, "ACK");
            return;
        };
        tracing::warn!(
            node_id = %self.node_id,
            type_url = %req.type_url,
            nonce = %req.response_nonce,
            code = error.code,
            message = %error.message,
            "NACK: the proxy rejected a response"
        );
        self.metrics.nack(&req.type_url);
        let received_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.status.send_modify(|status| {
            status.record_nack(NackRecord {
                node_id: self.node_id.clone(),
                type_url: req.type_url.clone(),
                nonce: req.response_nonce.clone(),
                message: error.message.clone(),
                received_unix_ms,
            })
        });
    }

    /// One response per type with changes, in `type_url::ALL` order.
    async fn push_changes(&mut self, snap: &Snapshot) -> Result<(), Closed> {
        for type_url in type_url::ALL {
            let (Some(state), Some(current)) = (self.types.get(type_url), snap.of_type(type_url))
            else {
                continue;
            };
            let delta = diff(state, current);
            if !delta.is_empty() {
                self.send(type_url, delta, snap).await?;
                // After the send: a full buffer (a slow proxy) is part of the latency.
                self.metrics.push_done(snap.system_version, Instant::now());
            }
        }
        Ok(())
    }

    async fn send(&mut self, type_url: &str, delta: Delta, snap: &Snapshot) -> Result<(), Closed> {
        if let Some(state) = self.types.get_mut(type_url) {
            state.record_sent(&delta);
        }
        self.next_nonce += 1;
        let nonce = format!("{:x}-{}", self.id, self.next_nonce);
        tracing::debug!(
            node_id = %self.node_id,
            type_url,
            %nonce,
            resources = delta.resources.len(),
            removed = delta.removed.len(),
            "sending"
        );
        let response = DeltaDiscoveryResponse {
            type_url: type_url.to_owned(),
            system_version_info: snap.system_version.to_string(),
            resources: delta.resources,
            removed_resources: delta.removed,
            nonce,
        };
        self.tx.send(Ok(response)).await.map_err(|_| Closed)?;
        self.metrics.response_sent(type_url);
        Ok(())
    }
}
