//! What one simulated proxy holds, name → version per type, so that a reconnect sends
//! `initial_resource_versions` as the sidecar does (docs/protocol.md, "Reconnect") and the
//! control plane sends only what changed meanwhile. Ten thousand proxies holding a hundred
//! services each are millions of entries: names and versions are interned once for the whole
//! fleet (`Strings`) and each proxy keeps pairs of `u32` ids, so the bench's own memory stays
//! small next to the control plane it measures. After the first proxies have synced nearly
//! every name and version is known, so lookups take the table's read lock, which the bench's
//! workers share: a mutex there serialised them and slowed the fleet's sync by seconds.

use super::subscribe::TYPES;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use trellis_api::discovery::DeltaDiscoveryResponse;

/// The fleet's interned names and versions.
#[derive(Default)]
pub struct Strings {
    table: RwLock<Table>,
}

#[derive(Default)]
struct Table {
    ids: HashMap<Arc<str>, u32>,
    strings: Vec<Arc<str>>,
}

impl Table {
    fn id(&mut self, s: &str) -> u32 {
        if let Some(id) = self.ids.get(s) {
            return *id;
        }
        // Fewer than 2^32 distinct names and versions in any fleet run; saturating keeps this
        // total anyway (a wrong id only makes a resume resend what it names).
        let id = u32::try_from(self.strings.len()).unwrap_or(u32::MAX);
        let s: Arc<str> = s.into();
        self.strings.push(s.clone());
        self.ids.insert(s, id);
        id
    }
}

impl Strings {
    // A poisoned lock only means another proxy's task panicked mid-insert; the table is still
    // consistent (an id is pushed before it is indexed), so keep using it.
    fn read(&self) -> RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The ids of `(name, version)` pairs, interning those not seen yet.
    fn pairs<'a>(
        &self,
        pairs: impl Iterator<Item = (&'a str, &'a str)> + Clone,
    ) -> Vec<(u32, u32)> {
        let known: Option<Vec<(u32, u32)>> = {
            let table = self.read();
            (pairs.clone())
                .map(|(n, v)| Some((*table.ids.get(n)?, *table.ids.get(v)?)))
                .collect()
        };
        known.unwrap_or_else(|| {
            let mut table = self.write();
            pairs.map(|(n, v)| (table.id(n), table.id(v))).collect()
        })
    }
}

/// One proxy's held resources: per type index, name id → version id.
#[derive(Default)]
pub struct Held {
    by_type: [BTreeMap<u32, u32>; TYPES],
}

impl Held {
    /// Applies a response of type index `t`: its resources are held at their versions, its
    /// removed names are not held any more (a name never held is ignored, as the sidecar does).
    pub fn apply(&mut self, t: usize, rsp: &DeltaDiscoveryResponse, strings: &Strings) {
        let Some(held) = self.by_type.get_mut(t) else {
            return;
        };
        let resources = (rsp.resources.iter()).map(|r| (r.name.as_str(), r.version.as_str()));
        held.extend(strings.pairs(resources));
        if !rsp.removed_resources.is_empty() {
            let table = strings.read();
            for name in &rsp.removed_resources {
                if let Some(id) = table.ids.get(name.as_str()) {
                    held.remove(id);
                }
            }
        }
    }

    /// `initial_resource_versions` for type index `t`.
    pub fn versions(&self, t: usize, strings: &Strings) -> HashMap<String, String> {
        let Some(held) = self.by_type.get(t) else {
            return HashMap::new();
        };
        let table = strings.read();
        let text = |id: &u32| table.strings.get(*id as usize).map(|s| s.to_string());
        (held.iter())
            .filter_map(|(name, version)| Some((text(name)?, text(version)?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_api::discovery::Resource;

    fn response(resources: &[(&str, &str)], removed: &[&str]) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            resources: (resources.iter())
                .map(|(name, version)| Resource {
                    name: (*name).to_owned(),
                    version: (*version).to_owned(),
                    ..Default::default()
                })
                .collect(),
            removed_resources: removed.iter().map(|n| (*n).to_owned()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn resume_versions_follow_updates_and_removals() {
        let strings = Strings::default();
        let (mut a, mut b) = (Held::default(), Held::default());
        a.apply(
            3,
            &response(&[("default/x", "1"), ("default/y", "1")], &[]),
            &strings,
        );
        b.apply(3, &response(&[("default/x", "1")], &[]), &strings);
        a.apply(
            3,
            &response(&[("default/x", "2")], &["default/y", "never-held"]),
            &strings,
        );
        let want: HashMap<String, String> = [("default/x".to_owned(), "2".to_owned())].into();
        assert_eq!(a.versions(3, &strings), want);
        // Shared strings, separate holdings.
        let want: HashMap<String, String> = [("default/x".to_owned(), "1".to_owned())].into();
        assert_eq!(b.versions(3, &strings), want);
        assert!(a.versions(0, &strings).is_empty());
        assert!(a.versions(TYPES, &strings).is_empty());
        // A type index out of range is ignored.
        a.apply(TYPES, &response(&[("ignored", "1")], &[]), &strings);
        assert!((0..TYPES).all(|t| a.versions(t, &strings).len() == usize::from(t == 3)));
    }
}
