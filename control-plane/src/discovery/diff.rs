//! The per-type state of one discovery stream and the pure diff that decides what to send: which
//! names the proxy subscribed to, and which versions it holds as far as we know. Kept free of I/O
//! so the delta rules can be tested directly.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use trellis_api::discovery::Resource as WireResource;
use trellis_api::WILDCARD;

use crate::resources::Resource;

/// What one stream subscribed to for one type, and what it holds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TypeState {
    pub wildcard: bool,
    pub names: BTreeSet<String>,
    /// Name -> version the proxy holds, as far as we know.
    pub known: HashMap<String, String>,
}

/// What one response for a type carries.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Delta {
    pub resources: Vec<WireResource>,
    pub removed: Vec<String>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty() && self.removed.is_empty()
    }
}

impl TypeState {
    pub fn subscribes(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// Applies a request's subscription changes; unsubscribed names are forgotten.
    pub fn update_subscription(&mut self, subscribe: &[String], unsubscribe: &[String]) {
        for name in subscribe {
            if name == WILDCARD {
                self.wildcard = true;
            } else {
                self.names.insert(name.clone());
            }
        }
        for name in unsubscribe {
            if name == WILDCARD {
                self.wildcard = false;
            } else {
                self.names.remove(name);
            }
        }
        let (wildcard, names) = (self.wildcard, &self.names);
        self.known
            .retain(|name, _| wildcard || names.contains(name));
    }

    /// Records that `delta` was sent, so the same versions are not sent again.
    pub fn record_sent(&mut self, delta: &Delta) {
        for r in &delta.resources {
            self.known.insert(r.name.clone(), r.version.clone());
        }
        for name in &delta.removed {
            self.known.remove(name);
        }
    }
}

/// The subscribed resources of `current` whose version differs from what `state` knows, and the
/// known names that no longer exist.
pub fn diff(state: &TypeState, current: &BTreeMap<String, Resource>) -> Delta {
    let differs = |name: &str, r: &Resource| state.known.get(name) != Some(&r.version);
    let wire = |name: &str, r: &Resource| WireResource {
        name: name.to_owned(),
        version: r.version.clone(),
        payload: r.payload.clone(),
    };
    let resources = if state.wildcard {
        (current.iter())
            .filter(|(name, r)| differs(name, r))
            .map(|(name, r)| wire(name, r))
            .collect()
    } else {
        (state.names.iter())
            .filter_map(|name| current.get(name).map(|r| (name, r)))
            .filter(|(name, r)| differs(name, r))
            .map(|(name, r)| wire(name, r))
            .collect()
    };
    let mut removed: Vec<String> = (state.known.keys())
        .filter(|name| state.subscribes(name) && !current.contains_key(*name))
        .cloned()
        .collect();
    removed.sort();
    Delta { resources, removed }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(version: &str) -> Resource {
        Resource {
            version: version.into(),
            payload: version.as_bytes().to_vec(),
        }
    }

    fn snapshot(items: &[(&str, &str)]) -> BTreeMap<String, Resource> {
        items.iter().map(|(n, v)| (n.to_string(), res(v))).collect()
    }

    fn names(delta: &Delta) -> Vec<(&str, &str)> {
        (delta.resources.iter())
            .map(|r| (r.name.as_str(), r.version.as_str()))
            .collect()
    }

    fn subscribed(names: &[&str]) -> TypeState {
        let mut s = TypeState::default();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        s.update_subscription(&names, &[]);
        s
    }

    #[test]
    fn sends_only_subscribed_and_changed() {
        let current = snapshot(&[("a", "1"), ("b", "1"), ("c", "1")]);
        let mut state = subscribed(&["a", "b", "missing"]);
        state.known.insert("b".into(), "1".into());
        let delta = diff(&state, &current);
        assert_eq!(names(&delta), [("a", "1")]);
        assert!(delta.removed.is_empty());
        state.record_sent(&delta);
        assert!(diff(&state, &current).is_empty());
        let changed = snapshot(&[("a", "2"), ("b", "1"), ("c", "9")]);
        assert_eq!(names(&diff(&state, &changed)), [("a", "2")]);
    }

    #[test]
    fn removals_are_sent_once_for_known_names() {
        let mut state = subscribed(&["a", "b"]);
        state.known.insert("a".into(), "1".into());
        state.known.insert("b".into(), "1".into());
        let current = snapshot(&[("a", "1")]);
        let delta = diff(&state, &current);
        assert!(delta.resources.is_empty());
        assert_eq!(delta.removed, ["b"]);
        state.record_sent(&delta);
        assert!(diff(&state, &current).is_empty());
    }

    #[test]
    fn wildcard_sends_everything_new() {
        let mut state = subscribed(&["*"]);
        state.known.insert("gone".into(), "1".into());
        state.known.insert("a".into(), "1".into());
        let delta = diff(&state, &snapshot(&[("a", "1"), ("b", "1")]));
        assert_eq!(names(&delta), [("b", "1")]);
        assert_eq!(delta.removed, ["gone"]);
    }

    #[test]
    fn unsubscribed_names_are_forgotten() {
        let mut state = subscribed(&["a", "b"]);
        state.known.insert("a".into(), "1".into());
        state.update_subscription(&[], &["a".into()]);
        assert!(state.known.is_empty());
        let delta = diff(&state, &snapshot(&[("a", "2"), ("b", "1")]));
        assert_eq!(names(&delta), [("b", "1")]);
        // Resubscribing sends it again, since we no longer know what the proxy holds.
        state.update_subscription(&["a".into()], &[]);
        assert_eq!(names(&diff(&state, &snapshot(&[("a", "2")]))), [("a", "2")]);
    }
}
