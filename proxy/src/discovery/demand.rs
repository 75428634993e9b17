//! On-demand discovery (`--discovery-mode on-demand`): the handle the router and the discovery
//! client share. The router, on a lookup miss (a host no route config answers for, a cluster not
//! held yet), names the service it needs (`want`) and waits for the discovery client to have
//! applied its resources, or for the control plane to say it does not exist, bounded by
//! `DiscoverySettings::wait`. The discovery client turns the wanted set into subscribe and
//! unsubscribe requests and wakes the waiters after every applied response.
//!
//! One service is subscribed once however many requests wait for it: the first `want` adds it
//! and wakes the client, the others find it in the set and wait on the same signal. Known hosts
//! never come here: the router's hit path is the one snapshot load it always was.
//!
//! In transparent mode the outbound listener asks too, before it serves a connection whose
//! original destination belongs to a service not held yet (`ServiceLocator`, from every
//! service's `ServiceAddresses`, the one type subscribed with the wildcard there).

use super::tracker::{Tracker, Want};
use crate::errors::ProxyError;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// How a sidecar subscribes to the mesh's per-service resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiscoveryMode {
    /// Every service's routes, clusters and endpoints (`*`), whether the app calls it or not:
    /// for small meshes.
    Wildcard,
    /// Only the services the app calls, added by name on their first request (the default).
    #[default]
    OnDemand,
}

impl std::str::FromStr for DiscoveryMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "wildcard" => Ok(DiscoveryMode::Wildcard),
            "on-demand" => Ok(DiscoveryMode::OnDemand),
            other => Err(format!("{other:?}: expected wildcard or on-demand")),
        }
    }
}

/// The discovery mode and, on demand, its two timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscoverySettings {
    pub mode: DiscoveryMode,
    /// How long a first request to a service not held yet waits for its resources.
    pub wait: Duration,
    /// A service with no request for this long is unsubscribed.
    pub idle: Duration,
}

impl Default for DiscoverySettings {
    fn default() -> Self {
        DiscoverySettings {
            mode: DiscoveryMode::OnDemand,
            wait: Duration::from_secs(3),
            idle: Duration::from_secs(600),
        }
    }
}

impl DiscoverySettings {
    /// The shared on-demand handle for a sidecar in `namespace`; `None` in wildcard mode. A
    /// transparent sidecar also holds every service's addresses, to place original
    /// destinations (docs/protocol.md).
    pub fn demand(&self, namespace: &str, transparent: bool) -> Option<std::sync::Arc<Demand>> {
        if self.mode == DiscoveryMode::Wildcard {
            return None;
        }
        let mut demand = Demand::new(*self, namespace);
        demand.by_address = transparent;
        Some(std::sync::Arc::new(demand))
    }
}

/// What a waiting request waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A service (`<namespace>/<name>`) named by the request's host.
    Service(String),
    /// A cluster a held route names (a split's backend) whose resources are on their way.
    Cluster(String),
}

/// The shared on-demand state; see the module comment.
#[derive(Debug)]
pub struct Demand {
    pub settings: DiscoverySettings,
    /// The sidecar's namespace: where a bare host name (`hello`) is looked up.
    namespace: String,
    /// Transparent mode: subscribe to every service's `ServiceAddresses`, so the outbound
    /// listener can tell which service an original destination belongs to.
    pub by_address: bool,
    pub(super) tracker: Mutex<Tracker>,
    /// Wakes the discovery client: the wanted set grew.
    pub(super) wanted: Notify,
    /// Bumped after every applied response and subscription change: waiters look again.
    applied: watch::Sender<u64>,
}

impl Demand {
    pub fn new(settings: DiscoverySettings, namespace: &str) -> Demand {
        Demand {
            settings,
            namespace: namespace.to_string(),
            by_address: false,
            tracker: Mutex::new(Tracker::default()),
            wanted: Notify::new(),
            applied: watch::Sender::new(0),
        }
    }

    /// The service a host names, by the names the control plane gives every service (`name`,
    /// `name.namespace`, `name.namespace.svc[.<cluster domain>]`); a bare name is looked up in
    /// this sidecar's namespace. `None` for anything else (an IP, an outside name).
    pub fn service_of_host(&self, host: &str) -> Option<String> {
        let (name, namespace) = self.name_and_namespace(host)?;
        Some(format!("{namespace}/{name}"))
    }

    /// Whether a host names a service (`service_of_host`), without making the name.
    pub fn names_service(&self, host: &str) -> bool {
        self.name_and_namespace(host).is_some()
    }

    fn name_and_namespace<'h>(&'h self, host: &'h str) -> Option<(&'h str, &'h str)> {
        let mut labels = host.split('.');
        let name = labels.next()?;
        let (namespace, rest) = (labels.next(), labels.next());
        let namespace = match (namespace, rest) {
            (None, _) => self.namespace.as_str(),
            (Some(namespace), None | Some("svc")) => namespace,
            _ => return None,
        };
        (is_label(name) && is_label(namespace)).then_some((name, namespace))
    }

    /// Adds `service` to the wanted set (waking the discovery client if it is new).
    fn want(&self, service: &str) -> Want {
        let want = match self.tracker.lock() {
            Ok(mut t) => t.want(service, Instant::now()),
            Err(_) => Want::Full,
        };
        if want == Want::New {
            tracing::debug!(service, "on-demand discovery: subscribing");
            self.wanted.notify_one();
        }
        want
    }

    /// Marks a held service used (an opaque connection to it, which moves no route counter),
    /// so that the idle sweep keeps it; a service not in the set is left out.
    pub fn touch(&self, service: &str) {
        if let Ok(mut t) = self.tracker.lock() {
            t.touch(service, Instant::now());
        }
    }

    fn missing(&self, lookup: &Lookup) -> bool {
        let Ok(t) = self.tracker.lock() else {
            return true;
        };
        match lookup {
            Lookup::Service(s) => t.service_missing(s),
            Lookup::Cluster(c) => t.cluster_missing(c),
        }
    }

    /// Tells waiters that the snapshot or the subscription state changed.
    pub(crate) fn notify_applied(&self) {
        self.applied.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Starts waiting for `lookup` (subscribing to the service if it is new); `None` when the
    /// set is full and the miss stands.
    pub fn waiter(&self, lookup: Lookup) -> Option<Waiter<'_>> {
        let mut changed = self.applied.subscribe();
        changed.borrow_and_update();
        if let Lookup::Service(s) = &lookup {
            if self.want(s) == Want::Full {
                return None;
            }
        }
        Some(Waiter {
            demand: self,
            lookup,
            deadline: tokio::time::Instant::now() + self.settings.wait,
            changed,
        })
    }
}

/// One request's wait for a lookup (see `Demand::waiter`).
pub struct Waiter<'a> {
    demand: &'a Demand,
    lookup: Lookup,
    deadline: tokio::time::Instant,
    changed: watch::Receiver<u64>,
}

impl Waiter<'_> {
    /// After a failed lookup (`miss`): `Ok` once something changed and the lookup is worth
    /// another try; the final error when the control plane says the name does not exist (an
    /// unknown service: `UnknownService`, a 404 naming it; a cluster: `miss`) or when the wait
    /// bound passed (`DiscoveryTimeout`, a 503).
    pub async fn retry_after(&mut self, miss: ProxyError) -> Result<(), ProxyError> {
        if self.demand.missing(&self.lookup) {
            return Err(match &self.lookup {
                Lookup::Service(service) => ProxyError::UnknownService {
                    service: service.clone(),
                },
                Lookup::Cluster(_) => miss,
            });
        }
        tokio::select! {
            _ = self.changed.changed() => {
                self.changed.borrow_and_update();
                Ok(())
            }
            _ = tokio::time::sleep_until(self.deadline) => {
                let (Lookup::Service(service) | Lookup::Cluster(service)) = self.lookup.clone();
                Err(ProxyError::DiscoveryTimeout { service, after: self.demand.settings.wait })
            }
        }
    }
}

/// A DNS-1123 label: what a service name or namespace can be.
fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && (s.bytes()).all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// `/config` → `config.discovery`: the mode and, on demand, the subscription set.
impl Serialize for Demand {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Ok(t) = self.tracker.lock() else {
            return s.serialize_none();
        };
        let idle_for: BTreeMap<String, String> = (t.idle_for(Instant::now()).into_iter())
            .map(|(n, d)| (n, crate::config::human_duration(d)))
            .collect();
        let subscriptions: BTreeMap<&str, Vec<&String>> = (t.sent().iter())
            .map(|(ty, names)| (*ty, names.iter().collect()))
            .collect();
        let missing: Vec<&String> = t.services().filter(|n| t.service_missing(n)).collect();
        serde_json::json!({
            "mode": "on-demand",
            "byAddress": self.by_address,
            "waitTimeout": crate::config::human_duration(self.settings.wait),
            "idleTimeout": crate::config::human_duration(self.settings.idle),
            "services": idle_for,
            "unknownServices": missing,
            "subscriptions": subscriptions,
            "subscriptionChanges": t.changes_sent,
        })
        .serialize(s)
    }
}

/// `config.discovery` of a snapshot: the on-demand state, or the wildcard mode.
pub fn serialize_mode<S: serde::Serializer>(
    demand: &Option<std::sync::Arc<Demand>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match demand {
        Some(d) => d.serialize(s),
        None => serde_json::json!({ "mode": "wildcard" }).serialize(s),
    }
}
