use super::*;
use crate::balance::tests_support::cluster;
use crate::config::LbPolicy;

fn config(gateway: u32, percent: u32) -> OutlierConfig {
    OutlierConfig {
        consecutive_5xx: 0,
        consecutive_gateway_errors: gateway,
        base_ejection: Duration::from_millis(100),
        max_ejection: Duration::from_millis(250),
        max_ejection_percent: percent,
    }
}

#[test]
fn consecutive_gateway_errors_eject_and_a_success_resets_the_count() {
    let c = cluster(LbPolicy::RoundRobin, &[1, 1]);
    let cfg = config(3, 50);
    let o = &c.endpoints[0].state.outlier;
    let stats = &c.state.stats;
    assert!(!o.record(Outcome::GatewayError, &cfg, &c.endpoints, stats));
    assert!(!o.record(Outcome::GatewayError, &cfg, &c.endpoints, stats));
    assert!(!o.record(Outcome::Success, &cfg, &c.endpoints, stats));
    assert!(!o.record(Outcome::GatewayError, &cfg, &c.endpoints, stats));
    assert!(!o.record(Outcome::GatewayError, &cfg, &c.endpoints, stats));
    assert!(
        o.record(Outcome::GatewayError, &cfg, &c.endpoints, stats),
        "third in a row ejects"
    );
    assert!(o.is_ejected());
    assert_eq!(stats.ejections.get(), 1);
    // A plain 500 is not a gateway error.
    let other = &c.endpoints[1].state.outlier;
    for _ in 0..5 {
        assert!(!other.record(Outcome::ServerError, &cfg, &c.endpoints, stats));
    }
}

#[test]
fn max_ejection_percent_is_respected() {
    let c = cluster(LbPolicy::RoundRobin, &[1, 1, 1, 1]);
    let cfg = config(1, 50);
    let ejected = c
        .endpoints
        .iter()
        .filter(|e| {
            e.state
                .outlier
                .record(Outcome::GatewayError, &cfg, &c.endpoints, &c.state.stats)
        })
        .count();
    assert_eq!(ejected, 2, "50% of 4");
    let none = cluster(LbPolicy::RoundRobin, &[1, 1]);
    assert!(!none.endpoints[0].state.outlier.record(
        Outcome::GatewayError,
        &config(1, 0),
        &none.endpoints,
        &none.state.stats
    ));
}

#[test]
fn ejection_ends_after_its_time_and_probation_re_ejects_longer() {
    let c = cluster(LbPolicy::RoundRobin, &[1, 1]);
    let cfg = config(2, 50);
    let o = &c.endpoints[0].state.outlier;
    let stats = &c.state.stats;
    o.record(Outcome::GatewayError, &cfg, &c.endpoints, stats);
    assert!(o.record(Outcome::GatewayError, &cfg, &c.endpoints, stats));
    let first = o.ejected_for().unwrap_or_default();
    assert!(
        first <= Duration::from_millis(100) && first > Duration::from_millis(50),
        "{first:?}"
    );
    std::thread::sleep(Duration::from_millis(120));
    assert!(!o.is_ejected(), "back after base ejection time");
    assert!(
        o.record(Outcome::GatewayError, &cfg, &c.endpoints, stats),
        "one failure on probation re-ejects"
    );
    let second = o.ejected_for().unwrap_or_default();
    assert!(
        second > Duration::from_millis(150),
        "second ejection is 2 x base: {second:?}"
    );
}
