use super::*;
use crate::discovery::catalog::Catalog;
use crate::resources::{Resource, Snapshot};
use trellis_api::discovery::DeltaDiscoveryResponse;
use trellis_api::type_url;

const ENDPOINTS: usize = 3;

/// A catalog chain over one type (endpoints); versions are single hex digits for readability.
struct Chain(Option<Catalog>);

impl Chain {
    fn new() -> Chain {
        Chain(None)
    }

    fn publish(&mut self, system_version: u64, items: &[(&str, &str)]) -> Catalog {
        let mut snap = Snapshot {
            system_version,
            ..Default::default()
        };
        let resources = (items.iter())
            .map(|(n, v)| {
                let r = Resource {
                    version: format!("{v:0>16}"),
                    payload: v.as_bytes().to_vec(),
                };
                (n.to_string(), r)
            })
            .collect();
        snap.resources.insert(type_url::ENDPOINTS, resources);
        let next = Catalog::next(self.0.as_ref(), &snap);
        self.0 = Some(next.clone());
        next
    }
}

/// (name, version digit) of every resource in the delta.
fn sent(delta: &Delta) -> Vec<(String, String)> {
    (delta.resources.iter())
        .flat_map(|b| {
            DeltaDiscoveryResponse::decode(b.clone())
                .map(|r| r.resources)
                .unwrap_or_default()
        })
        .map(|r| (r.name, r.version.trim_start_matches('0').to_owned()))
        .collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    (items.iter())
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

fn removed(delta: &Delta) -> Vec<&str> {
    delta.removed.iter().map(|n| &**n).collect()
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|n| n.to_string()).collect()
}

fn held(items: &[(&str, &str)]) -> HashMap<String, String> {
    (items.iter())
        .map(|(n, v)| (n.to_string(), format!("{v:0>16}")))
        .collect()
}

use prost::Message as _;

/// Brings `state` up to `catalog` as the stream task does.
fn push(state: &mut TypeState, catalog: &Catalog) -> Delta {
    let changed = catalog.changed_since(ENDPOINTS, state.synced);
    state.push(
        catalog.of(ENDPOINTS),
        changed.as_deref(),
        catalog.system_version,
    )
}

#[test]
fn sends_only_subscribed_and_changed() {
    let mut chain = Chain::new();
    let c1 = chain.publish(1, &[("a", "1"), ("b", "1"), ("c", "1")]);
    let subs = names(&["a", "b", "missing"]);
    let (mut state, delta) = TypeState::open(&held(&[("b", "1")]), &subs, &[], c1.of(ENDPOINTS), 1);
    assert_eq!(sent(&delta), pairs(&[("a", "1")]));
    assert_eq!(removed(&delta), ["missing"], "asked for and not there");
    let c2 = chain.publish(2, &[("a", "2"), ("b", "1"), ("c", "9")]);
    let delta = push(&mut state, &c2);
    assert_eq!(sent(&delta), pairs(&[("a", "2")]));
    // The same catalog again changes nothing.
    assert!(push(&mut state, &c2).is_empty());
}

#[test]
fn removals_are_sent_once_for_held_names() {
    let mut chain = Chain::new();
    let c1 = chain.publish(1, &[("a", "1"), ("b", "1")]);
    let (mut state, delta) = TypeState::open(
        &held(&[("a", "1"), ("b", "1")]),
        &names(&["a", "b"]),
        &[],
        c1.of(ENDPOINTS),
        1,
    );
    assert!(delta.is_empty());
    let c2 = chain.publish(2, &[("a", "1")]);
    let delta = push(&mut state, &c2);
    assert!(delta.resources.is_empty());
    assert_eq!(removed(&delta), ["b"]);
    let c3 = chain.publish(3, &[("a", "1"), ("c", "1")]);
    assert!(push(&mut state, &c3).is_empty(), "c is not subscribed");
}

#[test]
fn wildcard_resume_sends_everything_new_and_removes_what_vanished() {
    let mut chain = Chain::new();
    let c1 = chain.publish(1, &[("a", "1"), ("b", "1")]);
    let (mut state, delta) = TypeState::open(
        &held(&[("gone", "1"), ("a", "1")]),
        &names(&["*"]),
        &[],
        c1.of(ENDPOINTS),
        1,
    );
    assert_eq!(sent(&delta), pairs(&[("b", "1")]));
    assert_eq!(removed(&delta), ["gone"]);
    // The stream holds the shared table, not a copy of it.
    assert!(Arc::ptr_eq(
        state.held.as_ref().unwrap(),
        &c1.of(ENDPOINTS).table
    ));
    let c2 = chain.publish(2, &[("a", "1"), ("b", "2"), ("c", "1")]);
    let delta = push(&mut state, &c2);
    assert_eq!(sent(&delta), pairs(&[("b", "2"), ("c", "1")]));
}

#[test]
fn unchanged_types_are_skipped_and_skipped_catalogs_caught_up() {
    let mut chain = Chain::new();
    let c1 = chain.publish(1, &[("a", "1"), ("b", "1")]);
    let (mut wild, _) = TypeState::open(&HashMap::new(), &names(&["*"]), &[], c1.of(ENDPOINTS), 1);
    let (mut named, _) = TypeState::open(&HashMap::new(), &names(&["a"]), &[], c1.of(ENDPOINTS), 1);
    let c2 = chain.publish(2, &[("a", "1"), ("b", "1")]);
    assert!(push(&mut wild, &c2).is_empty());
    assert!(push(&mut named, &c2).is_empty());
    assert_eq!((wild.synced, named.synced), (2, 2));
    // Versions 3 and 4 published; the streams only see 4, whose `changed` lists only b.
    chain.publish(3, &[("a", "3"), ("b", "1")]);
    let c4 = chain.publish(4, &[("a", "3"), ("b", "4")]);
    assert_eq!(&*c4.of(ENDPOINTS).changed, [Name::from("b")]);
    assert_eq!(
        sent(&push(&mut wild, &c4)),
        pairs(&[("a", "3"), ("b", "4")])
    );
    assert_eq!(sent(&push(&mut named, &c4)), pairs(&[("a", "3")]));
    // Without the changed names (beyond the history) whole tables are compared, same answer.
    let c5 = chain.publish(5, &[("a", "5"), ("b", "5")]);
    let (mut wild2, mut named2) = (wild.clone(), named.clone());
    assert_eq!(
        sent(&wild.push(c5.of(ENDPOINTS), None, 5)),
        sent(&push(&mut wild2, &c5))
    );
    assert_eq!(
        sent(&named.push(c5.of(ENDPOINTS), None, 5)),
        sent(&push(&mut named2, &c5))
    );
    assert_eq!(sent(&named2.push(c5.of(ENDPOINTS), None, 6)), []);
}

#[test]
fn unsubscribed_names_are_forgotten_and_resubscribing_resends() {
    let mut chain = Chain::new();
    let c1 = chain.publish(1, &[("a", "1"), ("b", "1")]);
    let (mut state, delta) = TypeState::open(
        &HashMap::new(),
        &names(&["a", "b"]),
        &[],
        c1.of(ENDPOINTS),
        1,
    );
    assert_eq!(sent(&delta), pairs(&[("a", "1"), ("b", "1")]));
    let delta = state.resubscribe(&[], &names(&["a"]), c1.of(ENDPOINTS), 1);
    assert!(delta.is_empty());
    assert_eq!(state.known("a"), None);
    let c2 = chain.publish(2, &[("a", "2"), ("b", "1")]);
    assert!(push(&mut state, &c2).is_empty());
    let delta = state.resubscribe(&names(&["a"]), &[], c2.of(ENDPOINTS), 2);
    assert_eq!(sent(&delta), pairs(&[("a", "2")]));
    // Subscribing again to a name already held sends nothing.
    assert!(state
        .resubscribe(&names(&["a"]), &[], c2.of(ENDPOINTS), 2)
        .is_empty());
}

#[test]
fn wildcard_on_and_off_keeps_what_is_held() {
    let mut chain = Chain::new();
    let c1 = chain.publish(1, &[("a", "1"), ("b", "1")]);
    let (mut state, _) = TypeState::open(&HashMap::new(), &names(&["a"]), &[], c1.of(ENDPOINTS), 1);
    let delta = state.resubscribe(&names(&["*"]), &[], c1.of(ENDPOINTS), 1);
    assert_eq!(sent(&delta), pairs(&[("b", "1")]), "a is held already");
    let delta = state.resubscribe(&[], &names(&["*"]), c1.of(ENDPOINTS), 1);
    assert!(delta.is_empty());
    assert_eq!((state.known("a"), state.known("b")), (Some(1), None));
    let c2 = chain.publish(2, &[("b", "2")]);
    let delta = push(&mut state, &c2);
    assert_eq!(removed(&delta), ["a"]);
    assert!(delta.resources.is_empty());
}

#[test]
fn names_that_do_not_exist_are_answered_as_removed() {
    let mut chain = Chain::new();
    let c1 = chain.publish(1, &[("a", "1")]);
    let (mut state, delta) = TypeState::open(
        &HashMap::new(),
        &names(&["a", "nope"]),
        &[],
        c1.of(ENDPOINTS),
        1,
    );
    assert_eq!(sent(&delta), pairs(&[("a", "1")]));
    assert_eq!(removed(&delta), ["nope"]);
    let delta = state.resubscribe(&names(&["later"]), &[], c1.of(ENDPOINTS), 1);
    assert_eq!((delta.resources.len(), removed(&delta)), (0, vec!["later"]));
    // Once it exists it is sent like any other subscribed resource.
    let c2 = chain.publish(2, &[("a", "1"), ("later", "2")]);
    assert_eq!(sent(&push(&mut state, &c2)), pairs(&[("later", "2")]));
}
