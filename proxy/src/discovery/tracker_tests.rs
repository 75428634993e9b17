//! The on-demand subscription set: one subscription per service however often it is wanted,
//! the requests that move the stream to the wanted set, names answered as removed, idle drops,
//! and the waiter's three outcomes (found, unknown, timed out).

use super::*;
use crate::discovery::{Demand, DiscoveryMode, DiscoverySettings, Lookup};
use crate::errors::ProxyError;

const ROUTES: &str = type_url::ROUTES;
const CLUSTERS: &str = type_url::CLUSTERS;
const ENDPOINTS: &str = type_url::ENDPOINTS;

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The wanted set per type, with `web` routing to `web-canary` as well.
fn wanted(t: &Tracker) -> BTreeMap<&'static str, BTreeSet<String>> {
    let backends = |s: &str| match s {
        "default/web" => names(&["default/web", "default/web-canary"]),
        _ => Vec::new(),
    };
    (ON_DEMAND_TYPES.iter())
        .map(|ty| (*ty, t.wanted(ty, backends)))
        .collect()
}

#[test]
fn a_service_is_subscribed_once_however_often_it_is_wanted() {
    let mut t = Tracker::default();
    let now = Instant::now();
    assert_eq!(t.want("default/hello", now), Want::New);
    for _ in 0..100 {
        assert_eq!(t.want("default/hello", now), Want::Known);
    }
    let changes = t.changes(&wanted(&t));
    assert_eq!(changes.len(), 3, "{changes:?}");
    let types: Vec<&str> = changes.iter().map(|c| c.type_url).collect();
    assert_eq!(
        types,
        [CLUSTERS, ENDPOINTS, ROUTES],
        "clusters and endpoints first"
    );
    for c in &changes {
        assert_eq!(c.subscribe, names(&["default/hello"]));
        assert!(c.unsubscribe.is_empty());
    }
    assert!(t.changes(&wanted(&t)).is_empty(), "nothing more to send");
    assert_eq!(t.changes_sent, 3);
}

#[test]
fn backends_of_a_route_config_are_subscribed_as_clusters_and_endpoints_only() {
    let mut t = Tracker::default();
    t.want("default/web", Instant::now());
    let changes = t.changes(&wanted(&t));
    let of = |ty: &str| {
        changes
            .iter()
            .find(|c| c.type_url == ty)
            .map(|c| c.subscribe.clone())
    };
    assert_eq!(of(ROUTES), Some(names(&["default/web"])));
    assert_eq!(
        of(CLUSTERS),
        Some(names(&["default/web", "default/web-canary"]))
    );
    assert_eq!(
        of(ENDPOINTS),
        Some(names(&["default/web", "default/web-canary"]))
    );
}

#[test]
fn idle_services_are_dropped_and_unsubscribed_while_used_ones_stay() {
    let mut t = Tracker::default();
    let start = Instant::now();
    t.want("default/busy", start);
    t.want("default/idle", start);
    t.changes(&wanted(&t));
    let idle = Duration::from_secs(60);
    // The busy service's counter moves at every sweep; the idle one's never does.
    let mut busy = 0;
    for step in 1..=3u64 {
        busy += 5;
        let now = start + Duration::from_secs(25 * step);
        let requests = |s: &str| if s == "default/busy" { busy } else { 0 };
        t.sweep(now, idle, requests);
    }
    let left: Vec<&String> = t.services().collect();
    assert_eq!(left, ["default/busy"]);
    let changes = t.changes(&wanted(&t));
    assert_eq!(changes.len(), 3);
    for c in &changes {
        assert!(c.subscribe.is_empty());
        assert_eq!(c.unsubscribe, names(&["default/idle"]));
    }
    // Wanting it again subscribes it again.
    assert_eq!(t.want("default/idle", start + idle * 2), Want::New);
    assert_eq!(t.changes(&wanted(&t)).len(), 3);
}

#[test]
fn a_reopened_stream_subscribes_the_whole_set_at_once() {
    let mut t = Tracker::default();
    t.want("default/a", Instant::now());
    t.want("default/b", Instant::now());
    t.changes(&wanted(&t));
    let w = wanted(&t);
    let opening = t.open(ROUTES, w[ROUTES].clone());
    assert_eq!(opening, names(&["default/a", "default/b"]));
    t.open(CLUSTERS, w[CLUSTERS].clone());
    t.open(ENDPOINTS, w[ENDPOINTS].clone());
    assert!(t.changes(&w).is_empty(), "the opening carried everything");
}

#[test]
fn names_answered_as_removed_are_unknown_until_they_arrive() {
    let mut t = Tracker::default();
    t.want("default/nope", Instant::now());
    t.changes(&wanted(&t));
    assert!(!t.service_missing("default/nope"));
    t.answered(ROUTES, [], &names(&["default/nope"]));
    assert!(t.service_missing("default/nope"));
    assert!(
        !t.cluster_missing("default/nope"),
        "needs both cluster and endpoints"
    );
    t.answered(CLUSTERS, [], &names(&["default/nope"]));
    t.answered(ENDPOINTS, [], &names(&["default/nope"]));
    assert!(t.cluster_missing("default/nope"));
    // A removal of a name never subscribed means nothing.
    t.answered(ROUTES, [], &names(&["default/other"]));
    assert!(!t.service_missing("default/other"));
    // The service appears later: it is known again.
    let appeared = names(&["default/nope"]);
    t.answered(ROUTES, &appeared, &[]);
    assert!(!t.service_missing("default/nope"));
}

#[test]
fn the_set_is_bounded() {
    let mut t = Tracker::default();
    let now = Instant::now();
    for i in 0..MAX_SERVICES {
        assert_eq!(t.want(&format!("default/s{i}"), now), Want::New);
    }
    assert_eq!(t.want("default/one-more", now), Want::Full);
    assert_eq!(t.want("default/s0", now), Want::Known);
}

fn demand(wait_ms: u64) -> Demand {
    let settings = DiscoverySettings {
        mode: DiscoveryMode::OnDemand,
        wait: Duration::from_millis(wait_ms),
        idle: Duration::from_secs(600),
    };
    Demand::new(settings, "shop")
}

#[test]
fn hosts_name_services_as_the_control_plane_names_them() {
    let d = demand(100);
    let of = |h: &str| d.service_of_host(h);
    assert_eq!(of("hello").as_deref(), Some("shop/hello"), "own namespace");
    assert_eq!(of("hello.default").as_deref(), Some("default/hello"));
    assert_eq!(of("hello.default.svc").as_deref(), Some("default/hello"));
    let fqdn = of("hello.default.svc.cluster.local");
    assert_eq!(fqdn.as_deref(), Some("default/hello"));
    assert_eq!(of("10.0.0.1"), None);
    assert_eq!(of("www.example.com"), None);
    assert_eq!(of("Bad_Name"), None);
    assert_eq!(of(""), None);
    for host in ["hello", "hello.default", "hello.default.svc.cluster.local"] {
        assert!(d.names_service(host), "{host}");
    }
    for host in ["10.0.0.1", "www.example.com", "Bad_Name", "", "a.b.c"] {
        assert!(!d.names_service(host), "{host}");
    }
}

#[tokio::test]
async fn concurrent_waiters_share_one_subscription_and_see_the_verdict() {
    let d = demand(5000);
    let lookup = Lookup::Service("shop/nope".into());
    let mut first = d.waiter(lookup.clone()).expect("room");
    let mut second = d.waiter(lookup.clone()).expect("room");
    let changes = {
        let mut t = d.tracker.lock().unwrap();
        let w = wanted(&t);
        t.changes(&w)
    };
    assert_eq!(changes.len(), 3, "one subscription for both waiters");
    let miss = || ProxyError::NoRoute {
        authority: "nope".into(),
    };
    // The control plane answers: no such service. Both waiters learn it without waiting.
    d.tracker
        .lock()
        .unwrap()
        .answered(ROUTES, [], &names(&["shop/nope"]));
    d.notify_applied();
    let started = std::time::Instant::now();
    for w in [&mut first, &mut second] {
        match w.retry_after(miss()).await {
            Err(ProxyError::UnknownService { service }) => assert_eq!(service, "shop/nope"),
            other => panic!("{other:?}"),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn a_waiter_retries_on_change_and_gives_up_at_the_bound() {
    let d = demand(300);
    let mut w = d.waiter(Lookup::Service("shop/slow".into())).expect("room");
    let miss = || ProxyError::NoRoute {
        authority: "slow".into(),
    };
    d.notify_applied();
    assert!(w.retry_after(miss()).await.is_ok(), "a change: try again");
    let started = std::time::Instant::now();
    match w.retry_after(miss()).await {
        Err(ProxyError::DiscoveryTimeout { service, after }) => {
            assert_eq!(service, "shop/slow");
            assert_eq!(after, Duration::from_millis(300));
        }
        other => panic!("{other:?}"),
    }
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(2), "{waited:?}");
}
