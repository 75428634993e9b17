//! The on-demand subscription set as plain data, apart from the stream and the clock so that it
//! can be tested alone: which services the app called and when they were last used, what each
//! resource type is subscribed to on the current stream, which names the control plane answered
//! as removed, and the subscribe / unsubscribe requests that bring the stream to the wanted set.
//!
//! A service `<namespace>/<name>` in the set means its `RouteConfig`, `Cluster` and `Endpoints`,
//! plus the `Cluster` and `Endpoints` of every backend its routes name (a canary split's other
//! service). Names are added by the router on a lookup miss (`Demand::want`) and removed by
//! `sweep` once their requests counter has not moved for the idle time.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use trellis_api::type_url;

/// The types subscribed by name on demand; trust and inbound config are always subscribed.
pub const ON_DEMAND_TYPES: [&str; 3] = [type_url::CLUSTERS, type_url::ENDPOINTS, type_url::ROUTES];

/// At most this many services are tracked at once: an app sending random Host headers cannot
/// grow the subscription set without bound (others get the 404 of an unknown host).
pub const MAX_SERVICES: usize = 4096;

/// What `Tracker::want` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// The service was not in the set: it is now, and the stream must subscribe to it.
    New,
    /// Already in the set (subscribed, or its subscription is on its way): wait for it.
    Known,
    /// The set is full.
    Full,
}

#[derive(Debug, Clone)]
struct Tracked {
    last_used: Instant,
    /// The service's requests counter when it last moved (`sweep`).
    requests: u64,
}

/// One type's change of subscription, as a request sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub type_url: &'static str,
    pub subscribe: Vec<String>,
    pub unsubscribe: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Tracker {
    services: BTreeMap<String, Tracked>,
    /// Per on-demand type, the names subscribed on the current stream.
    sent: BTreeMap<&'static str, BTreeSet<String>>,
    /// Per on-demand type, subscribed names the control plane answered as removed.
    absent: BTreeMap<&'static str, BTreeSet<String>>,
    /// Requests sent that changed the subscription set after a stream's opening.
    pub changes_sent: u64,
}

impl Tracker {
    /// Adds `service` to the set, or marks it used.
    pub fn want(&mut self, service: &str, now: Instant) -> Want {
        if self.touch(service, now) {
            return Want::Known;
        }
        if self.services.len() >= MAX_SERVICES {
            return Want::Full;
        }
        let tracked = Tracked {
            last_used: now,
            requests: 0,
        };
        self.services.insert(service.to_string(), tracked);
        Want::New
    }

    /// Marks `service` used if it is in the set; whether it was.
    pub fn touch(&mut self, service: &str, now: Instant) -> bool {
        let tracked = self.services.get_mut(service);
        tracked.map(|t| t.last_used = now).is_some()
    }

    pub fn services(&self) -> impl Iterator<Item = &String> {
        self.services.keys()
    }

    /// How long ago each service was last used.
    pub fn idle_for(&self, now: Instant) -> BTreeMap<String, Duration> {
        (self.services.iter())
            .map(|(n, t)| (n.clone(), now.saturating_duration_since(t.last_used)))
            .collect()
    }

    /// Drops the services whose `requests` counter has not moved for `idle`; true if any was.
    pub fn sweep(&mut self, now: Instant, idle: Duration, requests: impl Fn(&str) -> u64) -> bool {
        let before = self.services.len();
        self.services.retain(|name, t| {
            let count = requests(name);
            if count != t.requests {
                t.requests = count;
                t.last_used = now;
            }
            now.saturating_duration_since(t.last_used) < idle
        });
        self.services.len() != before
    }

    /// The names type `t` should be subscribed to: the services, and for clusters and endpoints
    /// also the backends their route configs name (`backends`, from what is held).
    pub fn wanted(&self, t: &str, backends: impl Fn(&str) -> Vec<String>) -> BTreeSet<String> {
        let mut names: BTreeSet<String> = self.services.keys().cloned().collect();
        if t != type_url::ROUTES {
            for service in self.services.keys() {
                names.extend(backends(service));
            }
        }
        names
    }

    /// The opening subscription of type `t` on a new stream (recorded as sent).
    pub fn open(&mut self, t: &'static str, wanted: BTreeSet<String>) -> Vec<String> {
        let names = wanted.iter().cloned().collect();
        self.sent.insert(t, wanted);
        names
    }

    /// The requests that bring the stream from what was sent to `wanted` (type → names), in the
    /// order of `ON_DEMAND_TYPES` (clusters and endpoints before the routes that use them).
    pub fn changes(&mut self, wanted: &BTreeMap<&'static str, BTreeSet<String>>) -> Vec<Change> {
        let mut out = Vec::new();
        for t in ON_DEMAND_TYPES {
            let empty = BTreeSet::new();
            let want = wanted.get(t).unwrap_or(&empty);
            let sent = self.sent.entry(t).or_default();
            let subscribe: Vec<String> = want.difference(sent).cloned().collect();
            let unsubscribe: Vec<String> = sent.difference(want).cloned().collect();
            if subscribe.is_empty() && unsubscribe.is_empty() {
                continue;
            }
            sent.clone_from(want);
            let absent = self.absent.entry(t).or_default();
            for name in &unsubscribe {
                absent.remove(name);
            }
            self.changes_sent += 1;
            out.push(Change {
                type_url: t,
                subscribe,
                unsubscribe,
            });
        }
        out
    }

    /// Records an accepted response of type `t`: names received exist; subscribed names listed
    /// as removed do not (yet).
    pub fn answered<'a>(
        &mut self,
        t: &str,
        received: impl IntoIterator<Item = &'a String>,
        removed: &[String],
    ) {
        let Some(t) = ON_DEMAND_TYPES.iter().copied().find(|k| *k == t) else {
            return;
        };
        let sent = self.sent.get(t);
        let absent = self.absent.entry(t).or_default();
        for name in received {
            absent.remove(name);
        }
        for name in removed {
            if sent.is_some_and(|s| s.contains(name)) {
                absent.insert(name.clone());
            }
        }
    }

    /// The control plane said the service does not exist (its route config is removed).
    pub fn service_missing(&self, service: &str) -> bool {
        self.is_absent(type_url::ROUTES, service)
    }

    /// The control plane has neither a cluster nor endpoints of this name.
    pub fn cluster_missing(&self, cluster: &str) -> bool {
        self.is_absent(type_url::CLUSTERS, cluster) && self.is_absent(type_url::ENDPOINTS, cluster)
    }

    fn is_absent(&self, t: &str, name: &str) -> bool {
        self.absent.get(t).is_some_and(|a| a.contains(name))
    }

    /// What each on-demand type is subscribed to on the current stream.
    pub fn sent(&self) -> &BTreeMap<&'static str, BTreeSet<String>> {
        &self.sent
    }
}

#[cfg(test)]
#[path = "tracker_tests.rs"]
mod tests;
