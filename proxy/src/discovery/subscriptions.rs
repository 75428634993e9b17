//! What the discovery client subscribes to, per type: by name its own inbound config and the
//! trust bundle; the per-service types with `*` (wildcard mode) or by name, the services the app
//! called (on-demand mode, `Demand`); every service's addresses (`*`) in transparent mode on
//! demand, nothing of that type otherwise. On demand this file also sends the subscription changes
//! (new services, backends named by newly received route configs, idle services dropped) and
//! forgets what an unsubscribe leaves unsubscribed, so the cache holds only subscribed names
//! and a reconnect's `initial_resource_versions` names exactly what the proxy still wants.

use super::tracker::{Change, ON_DEMAND_TYPES};
use super::DiscoveryClient;
use crate::config::{build_snapshot, Decoded, ResourceCache};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use trellis_api::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use trellis_api::type_url;

impl DiscoveryClient {
    /// The names a new stream's first request for type `t` subscribes to.
    pub(super) fn subscriptions(&self, t: &'static str, cache: &ResourceCache) -> Vec<String> {
        match t {
            type_url::INBOUND => vec![format!("{}/{}", self.node.namespace, self.node.service)],
            type_url::TRUST_BUNDLE => vec!["default".to_string()],
            // Only a transparent sidecar on demand needs them; the others hold what they route.
            type_url::SERVICE_ADDRESSES => match &self.demand {
                Some(demand) if demand.by_address => vec![trellis_api::WILDCARD.to_string()],
                _ => Vec::new(),
            },
            _ => match &self.demand {
                None => vec![trellis_api::WILDCARD.to_string()],
                Some(demand) => {
                    let wanted = self.wanted(cache).remove(t).unwrap_or_default();
                    match demand.tracker.lock() {
                        Ok(mut tracker) => tracker.open(t, wanted),
                        Err(_) => Vec::new(),
                    }
                }
            },
        }
    }

    /// Per on-demand type, the names wanted now.
    fn wanted(&self, cache: &ResourceCache) -> BTreeMap<&'static str, BTreeSet<String>> {
        let Some(demand) = &self.demand else {
            return BTreeMap::new();
        };
        let Ok(tracker) = demand.tracker.lock() else {
            return BTreeMap::new();
        };
        let backends = |service: &str| backends_of(cache, service);
        (ON_DEMAND_TYPES.iter())
            .map(|t| (*t, tracker.wanted(t, backends)))
            .collect()
    }

    /// The requests that bring the stream to the wanted set; unsubscribed resources leave the
    /// cache (and the snapshot, which is then rebuilt).
    pub(super) fn resubscribe(&self, cache: &mut ResourceCache) -> Vec<DeltaDiscoveryRequest> {
        let Some(demand) = &self.demand else {
            return Vec::new();
        };
        let wanted = self.wanted(cache);
        let changes: Vec<Change> = match demand.tracker.lock() {
            Ok(mut tracker) => tracker.changes(&wanted),
            Err(_) => return Vec::new(),
        };
        let mut dropped = false;
        for change in &changes {
            if let Some(held) = cache.get_mut(change.type_url) {
                for name in &change.unsubscribe {
                    dropped |= held.remove(name).is_some();
                }
            }
            tracing::info!(type_url = change.type_url, subscribe = ?change.subscribe, unsubscribe = ?change.unsubscribe, "on-demand discovery: subscription change");
        }
        if dropped {
            self.publish(cache);
        }
        if !changes.is_empty() {
            demand.notify_applied();
        }
        (changes.into_iter())
            .map(|c| DeltaDiscoveryRequest {
                type_url: c.type_url.to_string(),
                resource_names_subscribe: c.subscribe,
                resource_names_unsubscribe: c.unsubscribe,
                ..Default::default()
            })
            .collect()
    }

    /// Keeps of a staged type only the names subscribed now: a response the control plane sent
    /// before it read an unsubscribe must not bring back what the proxy just forgot (it would
    /// never be updated again).
    pub(super) fn keep_subscribed<V>(&self, t: &str, staged: &mut BTreeMap<String, V>) {
        let Some(demand) = &self.demand else {
            return;
        };
        let Ok(tracker) = demand.tracker.lock() else {
            return;
        };
        if let Some(sent) = tracker.sent().get(t) {
            staged.retain(|name, _| sent.contains(name));
        }
    }

    /// Records an accepted response in the on-demand state (which names exist, which do not).
    pub(super) fn answered(&self, rsp: &DeltaDiscoveryResponse) {
        let Some(demand) = &self.demand else {
            return;
        };
        if let Ok(mut tracker) = demand.tracker.lock() {
            let received = rsp.resources.iter().map(|r| &r.name);
            tracker.answered(&rsp.type_url, received, &rsp.removed_resources);
        }
    }

    /// Wakes the requests waiting for resources (after a response was applied).
    pub(super) fn wake_waiters(&self) {
        if let Some(demand) = &self.demand {
            demand.notify_applied();
        }
    }

    /// Drops the services idle for `--discovery-idle-seconds`: the ones whose route tables'
    /// request counters did not move (read here, so the request path pays nothing for it).
    pub(super) fn sweep(&self) {
        let Some(demand) = &self.demand else {
            return;
        };
        let snapshot = self.store.load();
        let requests = |service: &str| {
            (snapshot.routes.get(service)).map_or(0, |table| {
                (table.rules.iter().chain(std::iter::once(&table.fallback)))
                    .map(|r| r.stats.requests.get())
                    .sum()
            })
        };
        if let Ok(mut tracker) = demand.tracker.lock() {
            if tracker.sweep(Instant::now(), demand.settings.idle, requests) {
                tracing::debug!("on-demand discovery: idle services dropped");
            }
        }
    }

    /// How often idle services are looked for: a quarter of the idle time, within 20 ms..30 s.
    pub(super) fn sweep_every(&self) -> Duration {
        let idle = self
            .demand
            .as_ref()
            .map_or(Duration::ZERO, |d| d.settings.idle);
        (idle / 4).clamp(Duration::from_millis(20), Duration::from_secs(30))
    }

    /// Builds a snapshot from `cache` and puts it in force (trust roots first).
    pub(super) fn publish(&self, cache: &ResourceCache) {
        let snapshot = build_snapshot(cache, &self.store.load(), &self.connector);
        if let Some(trust) = &snapshot.trust {
            self.tls.trust.set_roots(&trust.roots_der);
        }
        self.store.store(Arc::new(snapshot));
    }

    /// Puts the on-demand handle into the snapshot in force, where the router finds it.
    pub(super) fn install_demand(&self) {
        let Some(demand) = &self.demand else {
            return;
        };
        let mut snapshot =
            build_snapshot(&ResourceCache::new(), &self.store.load(), &self.connector);
        snapshot.demand = Some(demand.clone());
        self.store.store(Arc::new(snapshot));
    }
}

/// The clusters a held route config of `service` sends to (its default and every backend).
fn backends_of(cache: &ResourceCache, service: &str) -> Vec<String> {
    let Some((_, Decoded::Routes(rc))) = cache.get(type_url::ROUTES).and_then(|r| r.get(service))
    else {
        return Vec::new();
    };
    let mut names = vec![rc.default_cluster.clone()];
    for route in &rc.routes {
        names.extend(route.backends.iter().map(|b| b.cluster.clone()));
    }
    names
}
