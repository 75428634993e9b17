//! Status written back onto the policy objects, so that `kubectl get` says whether the control
//! plane applies an object and why not, instead of only the control plane's log. `translate.rs`
//! decides (a pure `DesiredStatus` per object); the `StatusWriter` task compares that with what the
//! object holds in the watch store and PATCHes `/status` only when a condition differs (ignoring
//! `lastTransitionTime`), so a resync or an unrelated rebuild writes nothing. Writes run on their
//! own task: a slow or failing API server delays statuses, never the mesh, and failures are logged
//! and retried with backoff.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::crd::TrafficPolicy;
use super::gateway::{GRPCRoute, HTTPRoute, ParentReference, RouteParentStatus, CONTROLLER_NAME};

/// The first retry of a failed write waits this long, doubling up to `MAX_RETRY`.
const FIRST_RETRY: Duration = Duration::from_secs(2);
const MAX_RETRY: Duration = Duration::from_secs(300);

/// Which kind of object a status is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StatusKind {
    TrafficPolicy,
    HttpRoute,
    GrpcRoute,
}

impl StatusKind {
    pub fn plural(self) -> &'static str {
        match self {
            StatusKind::TrafficPolicy => "trafficpolicies",
            StatusKind::HttpRoute => "httproutes",
            StatusKind::GrpcRoute => "grpcroutes",
        }
    }
}

/// One condition as decided, before the bookkeeping fields (`lastTransitionTime`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Verdict {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: &str,
        message: impl Into<String>,
    ) -> Self {
        Verdict {
            type_,
            status,
            reason: reason.to_owned(),
            message: message.into(),
        }
    }
}

/// Trellis's entry for one Service parent of a Gateway API route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentVerdict {
    /// As written in the route's `spec.parentRefs` (the API matches status entries by it).
    pub parent_ref: ParentReference,
    /// `Accepted`, then `ResolvedRefs`.
    pub conditions: Vec<Verdict>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Desired {
    /// A TrafficPolicy's `status.conditions`.
    Conditions(Vec<Verdict>),
    /// A route's `status.parents` entries with `controllerName: trellis.io/control-plane`; the
    /// entries of other controllers are kept as they are.
    Parents(Vec<ParentVerdict>),
}

/// What one object's status should say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredStatus {
    pub kind: StatusKind,
    pub namespace: String,
    pub name: String,
    /// Guards against writing an old decision onto a new object of the same name.
    pub uid: Option<String>,
    pub generation: Option<i64>,
    pub desired: Desired,
}

/// `wanted` as metav1 Conditions, keeping `lastTransitionTime` from `current` when the status
/// did not change (the Kubernetes convention: it records transitions, not writes).
fn conditions(
    wanted: &[Verdict],
    current: &[Condition],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    (wanted.iter())
        .map(|v| {
            let status = if v.status { "True" } else { "False" }.to_owned();
            let since = (current.iter())
                .find(|c| c.type_ == v.type_ && c.status == status)
                .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
            Condition {
                type_: v.type_.to_owned(),
                status,
                reason: v.reason.clone(),
                message: v.message.clone(),
                observed_generation: generation,
                last_transition_time: since,
            }
        })
        .collect()
}

/// True when `current` says what `wanted` says, in any order, ignoring transition times.
fn same_conditions(wanted: &[Verdict], current: &[Condition], generation: Option<i64>) -> bool {
    wanted.len() == current.len()
        && wanted.iter().all(|v| {
            current.iter().any(|c| {
                c.type_ == v.type_
                    && c.status == if v.status { "True" } else { "False" }
                    && c.reason == v.reason
                    && c.message == v.message
                    && c.observed_generation == generation
            })
        })
}

/// A TrafficPolicy's current conditions; anything unreadable counts as none (and is rewritten).
fn policy_conditions(tp: &TrafficPolicy) -> Vec<Condition> {
    (tp.status.as_ref())
        .and_then(|s| s.get("conditions"))
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default()
}

fn ours(p: &RouteParentStatus) -> bool {
    p.controller_name == CONTROLLER_NAME
}

/// The route's new `status.parents`: other controllers' entries unchanged, ours replaced.
fn parents(
    wanted: &[ParentVerdict],
    current: &[RouteParentStatus],
    generation: Option<i64>,
    now: &Time,
) -> Vec<RouteParentStatus> {
    let mut parents: Vec<RouteParentStatus> =
        current.iter().filter(|p| !ours(p)).cloned().collect();
    for w in wanted {
        let before = (current.iter())
            .find(|p| ours(p) && p.parent_ref == w.parent_ref)
            .map_or(&[][..], |p| p.conditions.as_slice());
        parents.push(RouteParentStatus {
            parent_ref: w.parent_ref.clone(),
            controller_name: CONTROLLER_NAME.to_owned(),
            conditions: conditions(&w.conditions, before, generation, now),
        });
    }
    parents
}

fn same_parents(
    wanted: &[ParentVerdict],
    current: &[RouteParentStatus],
    generation: Option<i64>,
) -> bool {
    let mine: Vec<&RouteParentStatus> = current.iter().filter(|p| ours(p)).collect();
    mine.len() == wanted.len()
        && wanted.iter().all(|w| {
            mine.iter().any(|p| {
                p.parent_ref == w.parent_ref
                    && same_conditions(&w.conditions, &p.conditions, generation)
            })
        })
}

/// The object as the watch store holds it now: its resourceVersion and, when its status is not
/// what `d` wants, the merge patch that makes it so.
pub(super) fn patch_for(
    d: &DesiredStatus,
    stores: &Stores,
    now: &Time,
) -> Option<(Option<String>, Option<serde_json::Value>)> {
    let fresh = |uid: &Option<String>| d.uid.is_none() || *uid == d.uid;
    match (&d.desired, d.kind) {
        (Desired::Conditions(wanted), StatusKind::TrafficPolicy) => {
            let tp =
                (stores.traffic_policies).get(&ObjectRef::new(&d.name).within(&d.namespace))?;
            if !fresh(&tp.metadata.uid) {
                return None;
            }
            let current = policy_conditions(&tp);
            let rv = tp.metadata.resource_version.clone();
            if same_conditions(wanted, &current, d.generation) {
                return Some((rv, None));
            }
            let conditions = conditions(wanted, &current, d.generation, now);
            Some((rv, Some(json!({ "status": { "conditions": conditions } }))))
        }
        (Desired::Parents(wanted), kind @ (StatusKind::HttpRoute | StatusKind::GrpcRoute)) => {
            let (meta, status) = match kind {
                StatusKind::HttpRoute => {
                    let r =
                        (stores.http_routes).get(&ObjectRef::new(&d.name).within(&d.namespace))?;
                    (r.metadata.clone(), r.status.clone())
                }
                _ => {
                    let r =
                        (stores.grpc_routes).get(&ObjectRef::new(&d.name).within(&d.namespace))?;
                    (r.metadata.clone(), r.status.clone())
                }
            };
            if !fresh(&meta.uid) {
                return None;
            }
            let current = status.map(|s| s.parents).unwrap_or_default();
            let rv = meta.resource_version.clone();
            if same_parents(wanted, &current, d.generation) {
                return Some((rv, None));
            }
            let parents = parents(wanted, &current, d.generation, now);
            // status.parents is one atomic list shared with other controllers: the
            // resourceVersion makes the write fail (409) rather than drop an entry someone else
            // wrote after our read; the next round reads again.
            Some((
                rv.clone(),
                Some(json!({
                    "metadata": { "resourceVersion": rv },
                    "status": { "parents": parents },
                })),
            ))
        }
        _ => None,
    }
}

/// The watch stores the writer reads current statuses from.
#[derive(Clone)]
pub(super) struct Stores {
    pub traffic_policies: Store<TrafficPolicy>,
    pub http_routes: Store<HTTPRoute>,
    pub grpc_routes: Store<GRPCRoute>,
}

/// Writes statuses as the source decides them; dropped, it stops.
pub(super) struct StatusWriter {
    desired: watch::Sender<Arc<Vec<DesiredStatus>>>,
    task: JoinHandle<()>,
}

impl StatusWriter {
    pub fn start(client: kube::Client, stores: Stores) -> Self {
        let (desired, rx) = watch::channel(Arc::new(Vec::new()));
        let task = tokio::spawn(write_loop(client, stores, rx));
        StatusWriter { desired, task }
    }

    pub fn set(&self, statuses: &[DesiredStatus]) {
        self.desired.send_replace(Arc::new(statuses.to_vec()));
    }
}

impl Drop for StatusWriter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn write_loop(
    client: kube::Client,
    stores: Stores,
    mut rx: watch::Receiver<Arc<Vec<DesiredStatus>>>,
) {
    // What we wrote, by object, with the resourceVersion the store held before the write: until
    // the store moves past that version the write is not visible there yet, and the same
    // decision must not be written again.
    let mut written: HashMap<(StatusKind, String, String), (Option<String>, Desired)> =
        HashMap::new();
    let mut retry = FIRST_RETRY;
    let mut failed = false;
    loop {
        let wait = async {
            if failed {
                tokio::time::timeout(retry, rx.changed()).await.ok()
            } else {
                Some(rx.changed().await)
            }
        };
        match wait.await {
            Some(Err(_)) => return, // the source is gone
            Some(Ok(())) => {}
            None => retry = (retry * 2).min(MAX_RETRY),
        }
        let statuses = rx.borrow_and_update().clone();
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        failed = false;
        for d in statuses.iter() {
            let key = (d.kind, d.namespace.clone(), d.name.clone());
            let Some((rv, patch)) = patch_for(d, &stores, &now) else {
                continue;
            };
            let Some(patch) = patch else {
                written.remove(&key);
                continue;
            };
            if written.get(&key) == Some(&(rv.clone(), d.desired.clone())) {
                continue;
            }
            match write(&client, d, &patch).await {
                Ok(()) => {
                    written.insert(key, (rv, d.desired.clone()));
                }
                Err(e) => {
                    failed = true;
                    tracing::warn!(
                        "status of {}/{}/{} not written, retrying: {e}",
                        d.kind.plural(),
                        d.namespace,
                        d.name
                    );
                }
            }
        }
        if !failed {
            retry = FIRST_RETRY;
        }
    }
}

async fn write(
    client: &kube::Client,
    d: &DesiredStatus,
    patch: &serde_json::Value,
) -> Result<(), kube::Error> {
    let params = PatchParams::default();
    let patch = Patch::Merge(patch);
    let ns = &d.namespace;
    match d.kind {
        StatusKind::TrafficPolicy => {
            let api: Api<TrafficPolicy> = Api::namespaced(client.clone(), ns);
            api.patch_status(&d.name, &params, &patch).await.map(drop)
        }
        StatusKind::HttpRoute => {
            let api: Api<HTTPRoute> = Api::namespaced(client.clone(), ns);
            api.patch_status(&d.name, &params, &patch).await.map(drop)
        }
        StatusKind::GrpcRoute => {
            let api: Api<GRPCRoute> = Api::namespaced(client.clone(), ns);
            api.patch_status(&d.name, &params, &patch).await.map(drop)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    #[test]
    fn unchanged_status_keeps_its_transition_time_and_counts_as_the_same() {
        let accepted = [Verdict::new("Accepted", true, "Accepted", "")];
        let first = conditions(&accepted, &[], Some(1), &time("2026-01-01T00:00:00Z"));
        assert!(same_conditions(&accepted, &first, Some(1)));
        // A new generation is a new observation even with the same verdict.
        assert!(!same_conditions(&accepted, &first, Some(2)));
        let again = conditions(&accepted, &first, Some(2), &time("2026-02-01T00:00:00Z"));
        assert_eq!(again[0].last_transition_time, time("2026-01-01T00:00:00Z"));
        let invalid = [Verdict::new("Accepted", false, "Invalid", "spec.mtls: bad")];
        assert!(!same_conditions(&invalid, &first, Some(1)));
        let flipped = conditions(&invalid, &first, Some(2), &time("2026-02-01T00:00:00Z"));
        assert_eq!(
            flipped[0].last_transition_time,
            time("2026-02-01T00:00:00Z")
        );
        assert_eq!(flipped[0].status, "False");
    }

    #[test]
    fn route_parents_of_other_controllers_are_kept() {
        let gateway = RouteParentStatus {
            parent_ref: ParentReference {
                name: "edge".into(),
                ..Default::default()
            },
            controller_name: "example.net/gateway".into(),
            conditions: vec![],
        };
        let web = ParentReference {
            group: Some(String::new()),
            kind: Some("Service".into()),
            name: "web".into(),
            ..Default::default()
        };
        let wanted = [ParentVerdict {
            parent_ref: web.clone(),
            conditions: vec![Verdict::new("Accepted", true, "Accepted", "")],
        }];
        let current = vec![gateway.clone()];
        assert!(!same_parents(&wanted, &current, Some(1)));
        let new = parents(&wanted, &current, Some(1), &time("2026-01-01T00:00:00Z"));
        assert_eq!(new.len(), 2);
        assert_eq!(new[0], gateway);
        assert_eq!(new[1].parent_ref, web);
        assert_eq!(new[1].controller_name, CONTROLLER_NAME);
        assert!(same_parents(&wanted, &new, Some(1)));
        // Nothing wanted any more: our entry goes, the gateway's stays.
        assert!(!same_parents(&[], &new, Some(1)));
        assert_eq!(
            parents(&[], &new, Some(1), &time("2026-01-01T00:00:00Z")),
            current
        );
    }
}
