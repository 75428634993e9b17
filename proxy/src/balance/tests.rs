use super::tests_support::cluster;
use super::*;

fn port(e: Option<&Arc<Endpoint>>) -> u16 {
    e.map(|e| e.addr.port()).unwrap_or(0)
}

#[test]
fn round_robin_weights_hold_over_a_full_turn() {
    let c = cluster(LbPolicy::RoundRobin, &[3, 1]);
    let h = HeaderMap::new();
    let hits = (0..400)
        .filter(|_| port(pick(&c, &h, None)) == 1001)
        .count();
    assert_eq!(hits, 100);
}

#[test]
fn p2c_avoids_the_slow_endpoint() {
    let c = cluster(LbPolicy::P2cEwma, &[1, 1, 1]);
    c.endpoints[0].state.load.observe(10e6);
    c.endpoints[1].state.load.observe(1e6);
    c.endpoints[2].state.load.observe(1e6);
    let h = HeaderMap::new();
    let slow = (0..3000)
        .filter(|_| port(pick(&c, &h, None)) == 1000)
        .count();
    // Two distinct candidates are compared, so the slow one never wins while idle.
    assert_eq!(slow, 0, "slow endpoint picked {slow} times of 3000");
}

#[test]
fn least_request_prefers_the_idle_endpoint() {
    let c = cluster(LbPolicy::LeastRequest, &[1, 1]);
    let _busy: Vec<LoadGuard> = (0..5)
        .map(|_| LoadGuard::start(&c.endpoints[0].state))
        .collect();
    let h = HeaderMap::new();
    assert!((0..100).all(|_| port(pick(&c, &h, None)) == 1001));
}

#[test]
fn consistent_hash_is_sticky_per_key_and_spreads_keys() {
    let c = cluster(LbPolicy::ConsistentHash, &[1, 1, 1]);
    let mut seen = std::collections::HashSet::new();
    for user in 0..60 {
        let mut h = HeaderMap::new();
        h.insert("x-user", http::HeaderValue::from(user));
        let first = port(pick(&c, &h, None));
        assert!(
            (0..5).all(|_| port(pick(&c, &h, None)) == first),
            "user {user} moved"
        );
        seen.insert(first);
    }
    assert_eq!(seen.len(), 3, "60 keys land on all three endpoints");
}

#[test]
fn cookie_keys_are_read_from_the_cookie_header() {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::COOKIE,
        http::HeaderValue::from_static("a=1; session=abc; b=2"),
    );
    assert_eq!(
        hash_key(&HashKey::Cookie("session".into()), &h),
        Some(&b"abc"[..])
    );
    assert_eq!(hash_key(&HashKey::Cookie("missing".into()), &h), None);
}

#[test]
fn avoided_and_ejected_endpoints_are_skipped_unless_nothing_else_is_left() {
    let c = cluster(LbPolicy::RoundRobin, &[1, 1]);
    let h = HeaderMap::new();
    let avoid = Some(c.endpoints[0].addr);
    assert!((0..10).all(|_| port(pick(&c, &h, avoid)) == 1001));
    let single = cluster(LbPolicy::P2cEwma, &[1]);
    assert_eq!(
        port(pick(&single, &h, Some(single.endpoints[0].addr))),
        1000,
        "the only endpoint still serves"
    );
}
