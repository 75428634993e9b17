//! The per-type state of one discovery stream and the pure rules that decide what to send. Kept
//! free of I/O so the delta rules can be tested directly.
//!
//! The state is compact because a fleet multiplies it: what a proxy holds is never stored name
//! by name. After every response the proxy holds exactly the subscribed part of the table it was
//! answered from, so a wildcard subscriber keeps a reference to that shared table, and named
//! subscriptions keep one compact version each. A push looks only at the names the catalogs list
//! as changed since the state was in sync (whole tables only when that is beyond the history).
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use trellis_api::WILDCARD;

use super::catalog::{version_key, Name, Table, TypeView};

/// What one stream subscribed to for one type, and what it holds.
#[derive(Debug, Default, Clone)]
pub struct TypeState {
    pub wildcard: bool,
    /// Named subscriptions, each with the version the proxy holds (None: it holds none). While
    /// `wildcard` is set, `held` is authoritative instead.
    pub names: BTreeMap<Name, Option<u64>>,
    /// With the wildcard: the table the proxy holds all of, as last answered.
    pub held: Option<Arc<Table>>,
    /// The catalog version this state is in sync with.
    pub synced: u64,
}

/// What one response for a type carries: encoded `resources` entries and removed names.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Delta {
    pub resources: Vec<Bytes>,
    pub removed: Vec<Name>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty() && self.removed.is_empty()
    }
}

/// What the proxy held before a change, read from the state as it was.
enum Before<'a> {
    Table(Option<&'a Table>),
    Names(&'a BTreeMap<Name, Option<u64>>),
    Given(&'a HashMap<&'a str, u64>),
}

impl Before<'_> {
    fn version(&self, name: &str) -> Option<u64> {
        match self {
            Before::Table(t) => t.and_then(|t| t.version(name)),
            Before::Names(n) => n.get(name).copied().flatten(),
            Before::Given(g) => g.get(name).copied(),
        }
    }

    fn names(&self) -> Vec<&str> {
        match self {
            Before::Table(t) => {
                t.map_or_else(Vec::new, |t| t.entries.keys().map(|n| &**n).collect())
            }
            Before::Names(n) => (n.iter())
                .filter(|(_, v)| v.is_some())
                .map(|(n, _)| &**n)
                .collect(),
            Before::Given(g) => g.keys().copied().collect(),
        }
    }
}

impl TypeState {
    pub fn subscribes(&self, name: &str) -> bool {
        self.wildcard || self.names.contains_key(name)
    }

    /// The version the proxy holds of `name`, as far as we know.
    pub fn known(&self, name: &str) -> Option<u64> {
        if self.wildcard {
            self.held.as_ref().and_then(|t| t.version(name))
        } else {
            self.names.get(name).copied().flatten()
        }
    }

    /// The first request for the type on a stream: `initial` is what the proxy says it holds.
    /// Always answered, even when the delta is empty.
    pub fn open(
        initial: &HashMap<String, String>,
        subscribe: &[String],
        unsubscribe: &[String],
        view: &TypeView,
        version: u64,
    ) -> (TypeState, Delta) {
        let mut state = TypeState::default();
        state.apply(subscribe, unsubscribe);
        let given: HashMap<&str, u64> = (initial.iter())
            .map(|(n, v)| (n.as_str(), version_key(v)))
            .collect();
        let mut delta = state.full(&Before::Given(&given), &view.table);
        report_missing(&mut delta, subscribe, &view.table);
        state.sync_to(&view.table, version);
        (state, delta)
    }

    /// A later request changing the subscription: answers the newly subscribed resources the
    /// proxy does not hold (against the latest table, which may carry pending changes too), and
    /// names asked for that do not exist, as removed.
    pub fn resubscribe(
        &mut self,
        subscribe: &[String],
        unsubscribe: &[String],
        view: &TypeView,
        version: u64,
    ) -> Delta {
        let (was_wildcard, held, names) = (self.wildcard, self.held.clone(), self.names.clone());
        self.apply(subscribe, unsubscribe);
        let before = if was_wildcard {
            Before::Table(held.as_deref())
        } else {
            Before::Names(&names)
        };
        let mut delta = self.full(&before, &view.table);
        report_missing(&mut delta, subscribe, &view.table);
        self.sync_to(&view.table, version);
        delta
    }

    /// A new catalog: the subscribed resources that changed, and those removed, since the state
    /// was last in sync. `changed` lists the type's names changed since then (`Catalog::
    /// changed_since`), or is None when that is not known and whole tables are compared.
    pub fn push(&mut self, view: &TypeView, changed: Option<&[Name]>, version: u64) -> Delta {
        if self.synced == version {
            return Delta::default();
        }
        let same_table = self.wildcard
            && (self.held.as_ref()).is_some_and(|held| Arc::ptr_eq(held, &view.table));
        let delta = match changed {
            _ if same_table => Delta::default(),
            Some(changed) => self.changed_only(view, changed),
            None => {
                let (held, names) = (self.held.clone(), self.names.clone());
                let before = if self.wildcard {
                    Before::Table(held.as_deref())
                } else {
                    Before::Names(&names)
                };
                self.full(&before, &view.table)
            }
        };
        self.sync_to(&view.table, version);
        delta
    }

    fn changed_only(&self, view: &TypeView, changed: &[Name]) -> Delta {
        let mut delta = Delta::default();
        let mut visit = |name: &Name| {
            let current = view.table.entries.get(name);
            let held = self.known(name);
            match current {
                Some(entry) if held != Some(entry.version) => {
                    delta.resources.push(entry.encoded.clone())
                }
                None if held.is_some() => delta.removed.push(name.clone()),
                _ => {}
            }
        };
        if !self.wildcard && self.names.len() < changed.len() {
            (self.names.keys())
                .filter(|n| changed.binary_search(n).is_ok())
                .for_each(&mut visit);
        } else {
            (changed.iter())
                .filter(|n| self.subscribes(n))
                .for_each(&mut visit);
        }
        delta
    }

    /// The names this state subscribes to, for the subscriber index.
    pub fn subscribed_names(&self) -> impl Iterator<Item = &Name> {
        self.names.keys()
    }

    /// Applies a request's subscription changes; unsubscribed names are forgotten.
    fn apply(&mut self, subscribe: &[String], unsubscribe: &[String]) {
        for name in subscribe {
            if name == WILDCARD {
                self.wildcard = true;
            } else if !self.names.contains_key(name.as_str()) {
                self.names.insert(name.as_str().into(), None);
            }
        }
        for name in unsubscribe {
            if name == WILDCARD {
                self.wildcard = false;
            } else {
                self.names.remove(name.as_str());
            }
        }
    }

    /// Everything subscribed in `table` that `before` does not hold at that version, and what
    /// `before` holds, is subscribed and is gone.
    fn full(&self, before: &Before<'_>, table: &Table) -> Delta {
        let differs = |name: &str, version: u64| before.version(name) != Some(version);
        let resources = if self.wildcard {
            (table.entries.iter())
                .filter(|(n, e)| differs(n, e.version))
                .map(|(_, e)| e.encoded.clone())
                .collect()
        } else {
            (self.names.keys())
                .filter_map(|n| table.entries.get(n).map(|e| (n, e)))
                .filter(|(n, e)| differs(n, e.version))
                .map(|(_, e)| e.encoded.clone())
                .collect()
        };
        let removed: BTreeSet<Name> = (before.names().into_iter())
            .filter(|n| self.subscribes(n) && !table.entries.contains_key(*n))
            .map(Name::from)
            .collect();
        Delta {
            resources,
            removed: removed.into_iter().collect(),
        }
    }

    /// Records that the proxy now holds the subscribed part of `table`.
    fn sync_to(&mut self, table: &Arc<Table>, version: u64) {
        if self.wildcard {
            self.held = Some(table.clone());
        } else {
            self.held = None;
            for (name, held) in self.names.iter_mut() {
                *held = table.version(name);
            }
        }
        self.synced = version;
    }
}

/// Lists the names just subscribed to that do not exist among the removed ones, so that a proxy
/// asking for a service that is not there learns it at once instead of waiting.
fn report_missing(delta: &mut Delta, subscribe: &[String], table: &Table) {
    let missing = (subscribe.iter())
        .filter(|n| n.as_str() != WILDCARD && !table.entries.contains_key(n.as_str()))
        .map(|n| Name::from(n.as_str()));
    delta.removed.extend(missing);
    delta.removed.sort();
    delta.removed.dedup();
}

#[cfg(test)]
mod tests;
