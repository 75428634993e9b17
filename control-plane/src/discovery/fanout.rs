//! Who is woken when a new config version is published: an index from (type, resource name) to
//! the streams subscribed to it (and, per type, the wildcard subscribers), kept by the streams as
//! their subscriptions change. One hub task follows the snapshots, has the version's catalog
//! built and wakes exactly the subscribers of what changed, so a push costs changed resources ×
//! their subscribers, not every stream times every type. Wake-ups are `Notify` permits: a stream
//! woken several times before it runs runs once, on the newest catalog (bursts coalesce).
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{watch, Notify};

use super::catalog::{Catalog, Name, TYPES};
use super::Catalogs;
use crate::resources::SharedSnapshot;

#[derive(Debug, Default)]
struct Index {
    wakers: HashMap<u64, Arc<Notify>>,
    wildcard: [HashSet<u64>; TYPES],
    named: [HashMap<Name, HashSet<u64>>; TYPES],
}

/// The subscriber index of one discovery service.
#[derive(Debug, Default)]
pub struct Fanout {
    index: Mutex<Index>,
    /// Set when the snapshots end: every stream is woken to close.
    closed: AtomicBool,
}

impl Fanout {
    fn index(&self) -> MutexGuard<'_, Index> {
        // Every update leaves the index consistent between statements that can panic.
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Enrols stream `id`; it is removed when the returned member is dropped.
    pub fn join(self: &Arc<Self>, id: u64) -> Member {
        let notify = Arc::new(Notify::new());
        self.index().wakers.insert(id, notify.clone());
        Member {
            fanout: self.clone(),
            id,
            notify,
            registered: Default::default(),
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Wakes the subscribers of what `catalog` changed; returns how many wake-ups were given
    /// (a stream subscribed to several changed names counts once per name).
    pub fn wake(&self, catalog: &Catalog) -> usize {
        let index = self.index();
        let mut woken = 0;
        let mut wake = |id: &u64| {
            if let Some(notify) = index.wakers.get(id) {
                notify.notify_one();
                woken += 1;
            }
        };
        for t in 0..TYPES {
            let changed = &catalog.of(t).changed;
            if changed.is_empty() {
                continue;
            }
            index.wildcard[t].iter().for_each(&mut wake);
            for name in changed.iter() {
                if let Some(ids) = index.named[t].get(name) {
                    ids.iter().for_each(&mut wake);
                }
            }
        }
        woken
    }

    /// Marks the service closed and wakes every stream so that each ends.
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        for notify in self.index().wakers.values() {
            notify.notify_one();
        }
    }
}

/// One stream's place in the index.
#[derive(Debug)]
pub struct Member {
    fanout: Arc<Fanout>,
    id: u64,
    pub notify: Arc<Notify>,
    /// What is in the index for this stream, per type: the wildcard, and names.
    registered: [(bool, Vec<Name>); TYPES],
}

impl Member {
    /// Records the stream's subscription to type `t`.
    pub fn subscribe<'a>(
        &mut self,
        t: usize,
        wildcard: bool,
        names: impl Iterator<Item = &'a Name>,
    ) {
        let names: Vec<Name> = names.cloned().collect();
        let mut index = self.fanout.index();
        let (was_wildcard, old) = &self.registered[t];
        if wildcard != *was_wildcard {
            if wildcard {
                index.wildcard[t].insert(self.id);
            } else {
                index.wildcard[t].remove(&self.id);
            }
        }
        for name in old.iter().filter(|n| !names.contains(n)) {
            if let Some(ids) = index.named[t].get_mut(name) {
                ids.remove(&self.id);
                if ids.is_empty() {
                    index.named[t].remove(name);
                }
            }
        }
        for name in names.iter().filter(|n| !old.contains(n)) {
            index.named[t]
                .entry(name.clone())
                .or_default()
                .insert(self.id);
        }
        drop(index);
        self.registered[t] = (wildcard, names);
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let mut index = self.fanout.index();
        index.wakers.remove(&self.id);
        for (t, (wildcard, names)) in self.registered.iter().enumerate() {
            if *wildcard {
                index.wildcard[t].remove(&self.id);
            }
            for name in names {
                if let Some(ids) = index.named[t].get_mut(name) {
                    ids.remove(&self.id);
                    if ids.is_empty() {
                        index.named[t].remove(name);
                    }
                }
            }
        }
    }
}

/// Follows the snapshots until they end or the server stops: builds each version's catalog and
/// wakes its subscribers.
pub async fn hub(
    mut snapshots: watch::Receiver<SharedSnapshot>,
    mut shutdown: watch::Receiver<bool>,
    catalogs: Arc<Catalogs>,
    fanout: Arc<Fanout>,
) {
    loop {
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { break },
            _ = shutdown.changed() => break,
        }
        let snap = snapshots.borrow_and_update().clone();
        let catalog = catalogs.of(&snap);
        let woken = fanout.wake(&catalog);
        tracing::debug!(version = catalog.system_version, woken, "discovery push");
    }
    fanout.close();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{Resource, Snapshot};
    use trellis_api::type_url;

    fn catalog(previous: Option<&Catalog>, version: u64, endpoints: &[(&str, &str)]) -> Catalog {
        let mut snap = Snapshot {
            system_version: version,
            ..Default::default()
        };
        let res = |v: &str| Resource {
            version: format!("{v:0>16}"),
            payload: vec![],
        };
        snap.resources.insert(
            type_url::ENDPOINTS,
            endpoints
                .iter()
                .map(|(n, v)| (n.to_string(), res(v)))
                .collect(),
        );
        Catalog::next(previous, &snap)
    }

    fn woken(member: &Member) -> bool {
        // A stored permit makes `notified()` ready at once.
        let notified = member.notify.notified();
        futures_util::FutureExt::now_or_never(notified).is_some()
    }

    #[test]
    fn only_subscribers_of_what_changed_are_woken() {
        const EP: usize = 3;
        let fanout = Arc::new(Fanout::default());
        let (mut wild, mut on_a, mut on_b) = (fanout.join(1), fanout.join(2), fanout.join(3));
        wild.subscribe(EP, true, [].iter());
        on_a.subscribe(EP, false, [Name::from("a")].iter());
        on_b.subscribe(EP, false, [Name::from("b")].iter());
        let c1 = catalog(None, 1, &[("a", "1"), ("b", "1")]);
        let c2 = catalog(Some(&c1), 2, &[("a", "2"), ("b", "1")]);
        assert_eq!(fanout.wake(&c2), 2);
        assert_eq!(
            (woken(&wild), woken(&on_a), woken(&on_b)),
            (true, true, false)
        );
        // Moving b's subscriber to a; dropping the wildcard one.
        on_b.subscribe(EP, false, [Name::from("a")].iter());
        drop(wild);
        let c3 = catalog(Some(&c2), 3, &[("a", "3"), ("b", "3")]);
        assert_eq!(fanout.wake(&c3), 2);
        assert_eq!((woken(&on_a), woken(&on_b)), (true, true));
        let c4 = catalog(Some(&c3), 4, &[("a", "3"), ("b", "4")]);
        assert_eq!(fanout.wake(&c4), 0, "nobody subscribes to b any more");
        drop((on_a, on_b));
        let index = fanout.index();
        assert!(index.wakers.is_empty() && index.named[EP].is_empty());
        assert!(index.wildcard[EP].is_empty());
    }
}
