//! The aggregated discovery service: one delta stream per proxy carrying every resource type.
//! Each stream task owns its subscriptions and what the proxy holds (see `diff`), and selects on
//! the proxy's requests and on being woken for a new config version. What the streams share is
//! the `Catalog` of each version (`catalog.rs`: every resource encoded once, and the names that
//! changed) and the subscriber index (`fanout.rs`), whose hub task wakes only the streams
//! subscribed to something that changed; each woken stream sends only those changes. Only changed or removed resources are sent; NACKs are
//! logged and recorded in the status, and the rejected versions are not resent. The RPC itself
//! (framing, no per-stream encode buffer) is `wire.rs`; how many streams may be open (in total,
//! per identity) is `limits.rs`. First syncs, the large responses, are admitted `FIRST_SYNCS`
//! at a time: a stream holds its place until the proxy has answered every response sent so far
//! (at most `SYNC_HOLD`), so a fleet connecting at once never has more than that many full
//! snapshots in flight. Each task counts what it does in the shared
//! `ControlPlaneMetrics` (relaxed atomic adds only: this is the push path).
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tonic::metadata::MetadataMap;
use tonic::{Status, Streaming};
use trellis_api::discovery::DeltaDiscoveryRequest;
use trellis_api::type_url;

use crate::authn::{grant_from_metadata, Authenticator};
use crate::metrics::ControlPlaneMetrics;
use crate::resources::{SharedSnapshot, Snapshot};
use crate::status::{ControlPlaneStatus, NackRecord};

mod catalog;
mod diff;
mod fanout;
mod limits;
mod wire;
pub use catalog::{Catalog, Name, Table, TypeView};
pub use diff::{Delta, TypeState};
use fanout::{Fanout, Member};
pub use limits::{StreamCaps, StreamLimits, StreamPermit, PUSHBACK_KEY};
pub use wire::DiscoveryServer;
use wire::{encode_response, Reply};

/// Responses buffered per stream before the task waits for the proxy to read.
const STREAM_BUFFER: usize = 16;

/// Streams sending their first full answers at the same time.
const FIRST_SYNCS: usize = 64;
/// Opening requests read ahead, in all, by the streams waiting for a first-sync place: each is
/// one resumed type's `initial_resource_versions` (up to a few hundred KB decoded with a large
/// mesh), so the read-ahead that keeps shared connections moving is bounded, not one per type
/// for every waiting proxy of a reconnect storm (which doubled the storm's peak memory).
const OPENING_READ_AHEAD: usize = 1024;
/// The longest a stream keeps its first-sync place while its proxy does not answer.
const SYNC_HOLD: std::time::Duration = std::time::Duration::from_secs(10);

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
    catalogs: Arc<Catalogs>,
    fanout: Arc<Fanout>,
    /// The hub task, started with the first stream (inside the runtime).
    hub: Arc<OnceLock<()>>,
    first_syncs: Arc<Semaphore>,
    /// Places for opening requests read ahead (`OPENING_READ_AHEAD`).
    read_ahead: Arc<Semaphore>,
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
            catalogs: Arc::default(),
            fanout: Arc::default(),
            hub: Arc::default(),
            first_syncs: Arc::new(Semaphore::new(FIRST_SYNCS)),
            read_ahead: Arc::new(Semaphore::new(OPENING_READ_AHEAD)),
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

    /// Accepts a stream: authenticates it, takes its place under the caps and starts its task.
    /// The receiver yields the encoded responses, then the final status.
    async fn open(
        &self,
        metadata: &MetadataMap,
        requests: Streaming<DeltaDiscoveryRequest>,
    ) -> Result<mpsc::Receiver<Reply>, Status> {
        let grant = grant_from_metadata(self.auth.as_ref(), metadata).await?;
        let identity = {
            let snap = self.snapshots.borrow();
            trellis_api::spiffe_id(&snap.trust_domain, &grant.namespace, &grant.service_account)
        };
        let permit = self.limits.acquire(&identity)?;
        self.hub.get_or_init(|| {
            let hub = fanout::hub(
                self.snapshots.clone(),
                self.shutdown.clone(),
                self.catalogs.clone(),
                self.fanout.clone(),
            );
            tokio::spawn(hub);
        });
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let id = NEXT_STREAM.fetch_add(1, Ordering::Relaxed);
        let stream = StreamTask {
            id,
            member: self.fanout.join(id),
            next_nonce: 0,
            node_id: String::new(),
            types: Default::default(),
            tx,
            status: self.status.clone(),
            metrics: self.metrics.clone(),
            catalogs: self.catalogs.clone(),
            fanout: self.fanout.clone(),
            syncing: None,
        };
        // The node is checked inside the task: waiting for the first message here would delay the
        // response headers until the proxy sends, which some clients only do after the headers.
        let (snapshots, shutdown) = (self.snapshots.clone(), self.shutdown.clone());
        let gates = (self.first_syncs.clone(), self.read_ahead.clone());
        tokio::spawn(async move {
            // Held for the task's life: the place is released however the stream ends.
            let _permit = permit;
            stream
                .run(grant, requests, snapshots, shutdown, gates)
                .await;
        });
        Ok(rx)
    }
}

/// The catalog of the newest config version seen, built by the first stream to need it.
#[derive(Default)]
struct Catalogs {
    current: Mutex<Option<Arc<Catalog>>>,
}

impl Catalogs {
    fn current(&self) -> std::sync::MutexGuard<'_, Option<Arc<Catalog>>> {
        // Building is pure; a panic inside leaves the previous catalog, which is still valid.
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The newest catalog built, if any.
    fn latest(&self) -> Option<Arc<Catalog>> {
        self.current().clone()
    }

    fn of(&self, snap: &Snapshot) -> Arc<Catalog> {
        let mut current = self.current();
        match current.as_ref() {
            Some(c) if c.system_version >= snap.system_version => c.clone(),
            previous => {
                let next = Arc::new(Catalog::next(previous.map(|c| &**c), snap));
                *current = Some(next.clone());
                next
            }
        }
    }
}

struct StreamTask {
    id: u64,
    /// The stream's entry in the subscriber index, and its wake-up.
    member: Member,
    next_nonce: u64,
    node_id: String,
    /// By index in `type_url::ALL`; None until the proxy's first request for the type.
    types: [Option<TypeState>; catalog::TYPES],
    tx: mpsc::Sender<Reply>,
    status: Arc<watch::Sender<ControlPlaneStatus>>,
    metrics: Arc<ControlPlaneMetrics>,
    catalogs: Arc<Catalogs>,
    fanout: Arc<Fanout>,
    /// Held from the first request until the proxy has answered every response sent so far.
    syncing: Option<Syncing>,
}

struct Syncing {
    _place: OwnedSemaphorePermit,
    unanswered: usize,
    until: tokio::time::Instant,
}

/// The proxy went away; the stream task ends.
struct Closed;

impl StreamTask {
    async fn run(
        mut self,
        grant: crate::token::Grant,
        mut requests: Streaming<DeltaDiscoveryRequest>,
        snapshots: watch::Receiver<SharedSnapshot>,
        mut shutdown: watch::Receiver<bool>,
        (first_syncs, read_ahead): (Arc<Semaphore>, Arc<Semaphore>),
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
        let _connected =
            (self.metrics).stream_connected(crate::proxies::ConnectedProxy::new(&node, &granted));
        self.node_id = node.id;
        tracing::info!(node_id = %self.node_id, identity = %granted, "discovery stream connected");
        // While the stream waits for its place, its opening requests are read (at most one per
        // type, within the shared read-ahead bound): left unread they would hold the HTTP/2
        // connection's flow-control window, and on a connection shared by many proxies (a
        // multiplexing load balancer, the fleet bench) stall the ACKs of the streams that hold a
        // place until their hold ran out.
        let mut opening = Vec::new();
        let acquire = first_syncs.acquire_owned();
        tokio::pin!(acquire);
        let mut ahead = read_ahead.clone().try_acquire_owned().ok();
        let place = loop {
            tokio::select! {
                place = &mut acquire => break place,
                _ = shutdown.changed() => return,
                next = requests.message(), if ahead.is_some() && opening.len() < catalog::TYPES => {
                    match next {
                        Ok(Some(request)) => opening.push((request, ahead.take())),
                        Ok(None) | Err(_) => return,
                    }
                    ahead = read_ahead.clone().try_acquire_owned().ok();
                }
            }
        };
        drop(ahead);
        let Ok(place) = place else { return };
        self.syncing = Some(Syncing {
            _place: place,
            unanswered: 0,
            until: tokio::time::Instant::now() + SYNC_HOLD,
        });
        let mut opened = self.handle(first, &snapshots).await;
        for (request, _ahead) in opening {
            if opened.is_err() {
                break;
            }
            opened = self.handle(request, &snapshots).await;
        }
        if opened.is_ok() {
            self.serve(&mut requests, &snapshots, &mut shutdown).await;
        }
        tracing::info!(node_id = %self.node_id, "discovery stream disconnected");
    }

    async fn serve(
        &mut self,
        requests: &mut Streaming<DeltaDiscoveryRequest>,
        snapshots: &watch::Receiver<SharedSnapshot>,
        shutdown: &mut watch::Receiver<bool>,
    ) {
        let wake = self.member.notify.clone();
        loop {
            if *shutdown.borrow() {
                return;
            }
            let sync_until = self.syncing.as_ref().map(|s| s.until);
            let step = tokio::select! {
                request = requests.message() => match request {
                    Ok(Some(request)) => self.handle(request, snapshots).await,
                    Ok(None) => Err(Closed),
                    Err(status) => {
                        tracing::debug!(node_id = %self.node_id, %status, "discovery stream error");
                        Err(Closed)
                    }
                },
                () = wake.notified() => match self.catalogs.latest() {
                    _ if self.fanout.is_closed() => Err(Closed),
                    Some(catalog) => self.push_changes(&catalog).await,
                    None => Ok(()),
                },
                // Either a stop signal or a dropped sender means the server is going away.
                _ = shutdown.changed() => Err(Closed),
                () = tokio::time::sleep_until(sync_until.unwrap_or_else(tokio::time::Instant::now)),
                    if sync_until.is_some() => {
                    self.syncing = None;
                    Ok(())
                }
            };
            if step.is_err() {
                return;
            }
        }
    }

    async fn handle(
        &mut self,
        req: DeltaDiscoveryRequest,
        snapshots: &watch::Receiver<SharedSnapshot>,
    ) -> Result<(), Closed> {
        let Some(t) = catalog::type_index(&req.type_url) else {
            tracing::warn!(node_id = %self.node_id, type_url = %req.type_url, "unknown type URL, ignored");
            return Ok(());
        };
        if !req.response_nonce.is_empty() {
            self.acknowledge(&req);
            if let Some(syncing) = &mut self.syncing {
                syncing.unanswered = syncing.unanswered.saturating_sub(1);
                if syncing.unanswered == 0 {
                    self.syncing = None;
                }
            }
        }
        let (subscribe, unsubscribe) = (
            &req.resource_names_subscribe,
            &req.resource_names_unsubscribe,
        );
        if self.types[t].is_some() && subscribe.is_empty() && unsubscribe.is_empty() {
            // A plain ACK or NACK: nothing to answer.
            return Ok(());
        }
        let snap = snapshots.borrow().clone();
        let catalog = self.catalogs.of(&snap);
        let (view, version) = (catalog.of(t), catalog.system_version);
        let first_for_type = self.types[t].is_none();
        let delta = match &mut self.types[t] {
            // The first response for a type is sent even when empty, so the proxy knows the type
            // is in sync; later subscription changes answer only when there is something to say.
            None => {
                let initial = &req.initial_resource_versions;
                let (state, delta) =
                    TypeState::open(initial, subscribe, unsubscribe, view, version);
                self.types[t] = Some(state);
                delta
            }
            Some(state) => state.resubscribe(subscribe, unsubscribe, view, version),
        };
        if let Some(state) = &self.types[t] {
            self.member
                .subscribe(t, state.wildcard, state.subscribed_names());
        }
        if first_for_type || !delta.is_empty() {
            self.send(t, delta, &catalog).await?;
        }
        // A version built before the index knew this subscription woke nobody here: catch up.
        match self.catalogs.latest() {
            Some(latest) if latest.system_version > catalog.system_version => {
                self.push_changes(&latest).await
            }
            _ => Ok(()),
        }
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
    async fn push_changes(&mut self, catalog: &Catalog) -> Result<(), Closed> {
        for t in 0..catalog::TYPES {
            let Some(state) = &mut self.types[t] else {
                continue;
            };
            let changed = catalog.changed_since(t, state.synced);
            let delta = state.push(catalog.of(t), changed.as_deref(), catalog.system_version);
            if !delta.is_empty() {
                self.send(t, delta, catalog).await?;
                // After the send: a full buffer (a slow proxy) is part of the latency.
                self.metrics
                    .push_done(catalog.system_version, Instant::now());
            }
        }
        Ok(())
    }

    async fn send(&mut self, t: usize, delta: Delta, catalog: &Catalog) -> Result<(), Closed> {
        let type_url = type_url::ALL[t];
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
        let version = catalog.system_version.to_string();
        let reply = encode_response(type_url, &version, &delta, &nonce);
        let failed = reply.is_err();
        self.tx.send(reply).await.map_err(|_| Closed)?;
        if let Some(syncing) = &mut self.syncing {
            syncing.unanswered += 1;
        }
        if failed {
            return Err(Closed);
        }
        self.metrics.response_sent(type_url);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
