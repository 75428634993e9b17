//! The Kubernetes config source: one kube-rs watcher + reflector store per kind (namespaces
//! labelled for the mesh, Services, EndpointSlices, Pods, TrafficPolicies). Every change wakes the
//! source; it waits a short debounce so a burst (a rollout touches slices and pods together)
//! becomes one rebuild, builds the mesh from the stores (`translate.rs`) and publishes it through
//! the shared `Publisher` when it differs from the last one. Watch errors are retried by the
//! watchers' backoff while the last config keeps serving.
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod, PodSpec, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Resource;
use serde::de::DeserializeOwned;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::crd::TrafficPolicy;
use super::translate::{self, Built, ClusterState, MeshSettings, INJECT_ENABLED, INJECT_LABEL};
use super::KubernetesError;
use crate::publish::Publisher;

/// How long the source waits after a change for more before rebuilding.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

pub struct KubernetesSource {
    namespaces: Store<Namespace>,
    services: Store<Service>,
    endpoint_slices: Store<EndpointSlice>,
    pods: Store<Pod>,
    traffic_policies: Store<TrafficPolicy>,
    changed: Arc<Notify>,
    tasks: Vec<JoinHandle<()>>,
    settings: MeshSettings,
    debounce: Duration,
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
        let (traffic_policies, t) = watch_kind(Api::all(client), any(), slim_meta, &changed);
        tasks.push(t);
        KubernetesSource {
            namespaces,
            services,
            endpoint_slices,
            pods,
            traffic_policies,
            changed,
            tasks,
            settings,
            debounce: DEBOUNCE,
        }
    }

    pub fn with_debounce(mut self, debounce: Duration) -> Self {
        self.debounce = debounce;
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
        };
        translate::build(&state, &self.settings)
    }

    /// Rebuilds after every (debounced) change and publishes what differs from `last`, until
    /// `shutdown` turns true or its sender is dropped.
    pub async fn run(
        self,
        publisher: Publisher,
        mut last: Built,
        mut shutdown: watch::Receiver<bool>,
    ) {
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
            last = built;
        }
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
