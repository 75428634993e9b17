//! The Kubernetes config source: one kube-rs watcher + reflector store per kind (namespaces
//! labelled for the mesh, Services, EndpointSlices, Pods, TrafficPolicies, and the Gateway API's
//! HTTPRoutes and GRPCRoutes). Every change wakes the source; it waits a short debounce so a burst
//! (a rollout touches slices and pods together) becomes one rebuild, builds the mesh from the
//! stores (`translate.rs`), publishes it through the shared `Publisher` when it differs from the
//! last one, and hands the objects' statuses to the status writer (`status.rs`). Watch errors are
//! retried by the watchers' backoff while the last config keeps serving. The Gateway API is
//! optional: a cluster without its CRDs (or without RBAC for them) is not a sync failure. The
//! labelled namespaces also get the CA's trust bundle ConfigMap (`trust_bundle.rs`).
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod, PodSpec, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Resource;
use prost::Message;
use serde::de::DeserializeOwned;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use trellis_api::config as pb;
use trellis_api::type_url;

use super::crd::TrafficPolicy;
use super::gateway::{GRPCRoute, HTTPRoute};
use super::status::{StatusWriter, Stores};
use super::translate::{
    self, Built, ClusterState, Memory, MeshSettings, INJECT_ENABLED, INJECT_LABEL,
};
use super::trust_bundle::{self, TrustBundleWriter};
use super::KubernetesError;
use crate::publish::Publisher;
use crate::resources::SharedSnapshot;

/// How long the source waits after a change for more before rebuilding.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

pub struct KubernetesSource {
    namespaces: Store<Namespace>,
    services: Store<Service>,
    endpoint_slices: Store<EndpointSlice>,
    pods: Store<Pod>,
    traffic_policies: Store<TrafficPolicy>,
    http_routes: Store<HTTPRoute>,
    grpc_routes: Store<GRPCRoute>,
    /// Set while the API server refuses the kind (404: CRD not installed; 403: no RBAC).
    http_routes_absent: Arc<AtomicBool>,
    grpc_routes_absent: Arc<AtomicBool>,
    changed: Arc<Notify>,
    tasks: Vec<JoinHandle<()>>,
    settings: MeshSettings,
    debounce: Duration,
    trust_bundle_resync: Duration,
    client: kube::Client,
    memory: Mutex<Memory>,
}

impl KubernetesSource {
    /// Starts the watches (they run until the source is dropped).
    pub fn start(client: kube::Client, settings: MeshSettings) -> Self {
        let changed = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        let meshed = watcher::Config::default().labels(&format!("{INJECT_LABEL}={INJECT_ENABLED}"));
        let any = watcher::Config::default;
        let (namespaces, t) = watch_kind(Api::all(client.clone()), meshed, slim_meta, &changed);
        tasks.push(t);
        let (services, t) = watch_kind(Api::all(client.clone()), any(), slim_meta, &changed);
        tasks.push(t);
        let (endpoint_slices, t) = watch_kind(Api::all(client.clone()), any(), slim_meta, &changed);
        tasks.push(t);
        let (pods, t) = watch_kind(Api::all(client.clone()), any(), slim_pod, &changed);
        tasks.push(t);
        let (traffic_policies, t) =
            watch_kind(Api::all(client.clone()), any(), slim_meta, &changed);
        tasks.push(t);
        let (http_routes, http_routes_absent, t) =
            watch_optional_kind(Api::all(client.clone()), &changed);
        tasks.push(t);
        let (grpc_routes, grpc_routes_absent, t) =
            watch_optional_kind(Api::all(client.clone()), &changed);
        tasks.push(t);
        KubernetesSource {
            namespaces,
            services,
            endpoint_slices,
            pods,
            traffic_policies,
            http_routes,
            grpc_routes,
            http_routes_absent,
            grpc_routes_absent,
            changed,
            tasks,
            settings,
            debounce: DEBOUNCE,
            trust_bundle_resync: trust_bundle::RESYNC,
            client,
            memory: Mutex::new(Memory::default()),
        }
    }

    pub fn with_debounce(mut self, debounce: Duration) -> Self {
        self.debounce = debounce;
        self
    }

    /// How often the trust bundle ConfigMaps are compared with the CA again (tests shorten it).
    pub fn with_trust_bundle_resync(mut self, resync: Duration) -> Self {
        self.trust_bundle_resync = resync;
        self
    }

    /// Waits until every watch has listed its objects once; names those that have not in time.
    pub async fn wait_synced(&self, timeout: Duration) -> Result<(), KubernetesError> {
        let synced = async {
            let _ = tokio::join!(
                self.namespaces.wait_until_ready(),
                self.services.wait_until_ready(),
                self.endpoint_slices.wait_until_ready(),
                self.pods.wait_until_ready(),
                self.traffic_policies.wait_until_ready(),
                optional_ready(&self.http_routes, &self.http_routes_absent),
                optional_ready(&self.grpc_routes, &self.grpc_routes_absent),
            );
        };
        if tokio::time::timeout(timeout, synced).await.is_ok() {
            return Ok(());
        }
        let ready = [
            ("namespaces", is_ready(&self.namespaces)),
            ("services", is_ready(&self.services)),
            ("endpointslices", is_ready(&self.endpoint_slices)),
            ("pods", is_ready(&self.pods)),
            ("trafficpolicies", is_ready(&self.traffic_policies)),
            (
                "httproutes",
                is_ready(&self.http_routes) || self.http_routes_absent.load(Ordering::Relaxed),
            ),
            (
                "grpcroutes",
                is_ready(&self.grpc_routes) || self.grpc_routes_absent.load(Ordering::Relaxed),
            ),
        ];
        let missing: Vec<&str> = ready.iter().filter(|(_, r)| !r).map(|(k, _)| *k).collect();
        Err(KubernetesError::NotSynced {
            timeout,
            kinds: missing.join(", "),
        })
    }

    /// The mesh as the stores hold it now.
    pub fn build(&self) -> Built {
        let state = ClusterState {
            namespaces: self.namespaces.state(),
            services: self.services.state(),
            endpoint_slices: self.endpoint_slices.state(),
            pods: self.pods.state(),
            traffic_policies: self.traffic_policies.state(),
            http_routes: self.http_routes.state(),
            grpc_routes: self.grpc_routes.state(),
        };
        // A poisoned lock only means a build panicked; its memory is still the best there is.
        let mut memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        translate::build_with(&state, &self.settings, &mut memory)
    }

    /// Rebuilds after every (debounced) change and publishes what differs from `last`, until
    /// `shutdown` turns true or its sender is dropped. Statuses (`last`'s first) are written
    /// back on the side, whenever they differ from what the objects hold.
    pub async fn run(
        self,
        publisher: Publisher,
        mut last: Built,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let writer = StatusWriter::start(
            self.client.clone(),
            Stores {
                traffic_policies: self.traffic_policies.clone(),
                http_routes: self.http_routes.clone(),
                grpc_routes: self.grpc_routes.clone(),
            },
        );
        writer.set(&last.statuses);
        let bundle = TrustBundleWriter::start(self.client.clone(), self.trust_bundle_resync);
        let snapshots = publisher.subscribe();
        self.set_trust_bundle(&bundle, &snapshots.borrow());
        loop {
            if *shutdown.borrow() {
                return;
            }
            tokio::select! {
                _ = self.changed.notified() => {}
                _ = shutdown.changed() => return,
            }
            // Changes arriving during the pause leave one stored wake-up, so nothing is missed.
            tokio::time::sleep(self.debounce).await;
            let built = self.build();
            for reason in built.skipped.iter().filter(|s| !last.skipped.contains(s)) {
                tracing::warn!("not applied: {reason}");
            }
            if built.mesh != last.mesh {
                publisher.publish(&built.mesh, built.skipped.clone());
            } else if built.skipped != last.skipped {
                publisher.set_skipped(built.skipped.clone());
            }
            // Every round, not only on a change: the writer compares with the objects as the
            // stores hold them now, which is how a status someone else overwrote is restored.
            writer.set(&built.statuses);
            self.set_trust_bundle(&bundle, &snapshots.borrow());
            last = built;
        }
    }
}

impl KubernetesSource {
    /// Hands the labelled namespaces and the served roots to the trust bundle writer.
    fn set_trust_bundle(&self, bundle: &TrustBundleWriter, snapshot: &SharedSnapshot) {
        let roots = (snapshot.of_type(type_url::TRUST_BUNDLE))
            .and_then(|r| r.get("default"))
            .and_then(|r| pb::TrustBundle::decode(r.payload.as_slice()).ok())
            .map(|b| b.roots_der)
            .unwrap_or_default();
        let namespaces =
            (self.namespaces.state().into_iter()).filter_map(|n| n.metadata.name.clone());
        bundle.set(&roots, namespaces);
    }
}

impl Drop for KubernetesSource {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn is_ready<K>(store: &Store<K>) -> bool
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    matches!(store.wait_until_ready().now_or_never(), Some(Ok(())))
}

/// Runs one kind's watcher into a reflector store, waking `changed` on every change.
fn watch_kind<K>(
    api: Api<K>,
    config: watcher::Config,
    slim: fn(&mut K),
    changed: &Arc<Notify>,
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store();
    let kind = K::plural(&K::DynamicType::default()).into_owned();
    let events = reflector::reflector(writer, watcher(api, config).modify(slim).default_backoff());
    let changed = changed.clone();
    let task = tokio::spawn(async move {
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_))
                | Ok(watcher::Event::InitDone) => changed.notify_one(),
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Err(e) => tracing::warn!(%kind, "watch failed, retrying: {e}"),
            }
        }
    });
    (store, task)
}

/// Resolves once the store has listed, or while the API server refuses the kind.
async fn optional_ready<K>(store: &Store<K>, absent: &AtomicBool)
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    loop {
        if absent.load(Ordering::Relaxed) || is_ready(store) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// As `watch_kind`, for a kind the cluster may not serve (the Gateway API is installed
/// separately): a 404 or 403 sets `absent` and is logged once, not at every retry, and the
/// watcher keeps retrying so that installing the CRDs later is picked up.
fn watch_optional_kind<K>(
    api: Api<K>,
    changed: &Arc<Notify>,
) -> (Store<K>, Arc<AtomicBool>, JoinHandle<()>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store();
    let kind = K::plural(&K::DynamicType::default()).into_owned();
    let events = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default())
            .modify(slim_meta)
            .default_backoff(),
    );
    let changed = changed.clone();
    let absent = Arc::new(AtomicBool::new(false));
    let flag = absent.clone();
    let task = tokio::spawn(async move {
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_))
                | Ok(watcher::Event::InitDone) => {
                    if flag.swap(false, Ordering::Relaxed) {
                        tracing::info!(%kind, "now served by the API server; watching it");
                    }
                    changed.notify_one();
                }
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Err(e) => {
                    let code = refused(&e);
                    match code {
                        Some(code) if !flag.swap(true, Ordering::Relaxed) => tracing::warn!(
                            %kind,
                            "the API server refuses the Gateway API kind ({code}): routes of this \
                             kind are not read until its CRD is installed and the ClusterRole \
                             allows list/watch: {e}"
                        ),
                        Some(_) => {}
                        None => tracing::warn!(%kind, "watch failed, retrying: {e}"),
                    }
                }
            }
        }
    });
    (store, absent, task)
}

/// 404 (the kind is not served) or 403 (not allowed) from a watcher's list or watch.
fn refused(e: &watcher::Error) -> Option<u16> {
    let api = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s,
        watcher::Error::WatchError(s) => s,
        _ => return None,
    };
    matches!(api.code, 403 | 404).then_some(api.code)
}

/// Drops what the mesh never reads, to keep the stores small.
fn slim_meta<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// Pods are the biggest and most numerous objects: keep their name, uid and service account.
fn slim_pod(pod: &mut Pod) {
    slim_meta(pod);
    pod.metadata.annotations = None;
    pod.status = None;
    let service_account_name = pod
        .spec
        .as_mut()
        .and_then(|s| s.service_account_name.take());
    pod.spec = Some(PodSpec {
        service_account_name,
        ..Default::default()
    });
}
