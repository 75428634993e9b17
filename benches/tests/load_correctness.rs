//! The load generator's own correctness: against a server that stalls for 100 ms once per second,
//! at 1,000 rps for 3 s, the coordinated-omission-corrected p99 must show the stall (a closed-loop
//! generator would only see the few requests in flight during each stall), and the achieved rate
//! must be within 2% of the asked rate.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::Duration;
use trellis_bench::load::{self, LoadConfig, Protocol, Target};
use trellis_bench::upstream::{Stall, Upstream};

async fn stalled_run(protocol: Protocol) -> load::LoadResult {
    // Stalls at 0.3 s, 1.3 s, 2.3 s, 3.3 s after the server starts: the first falls in the
    // warm-up, three in the measured window [0.5 s, 3.5 s), none at its very end.
    let stall = Stall {
        period: Duration::from_secs(1),
        offset: Duration::from_millis(300),
        length: Duration::from_millis(100),
    };
    let server = match Upstream::start(SocketAddr::from(([127, 0, 0, 1], 0)), Some(stall)).await {
        Ok(s) => s,
        Err(e) => panic!("starting the stalling server: {e:#}"),
    };
    let mut config = LoadConfig::new(
        Target::plain(server.addr, "stall"),
        protocol,
        1000.0,
        Duration::from_secs(3),
    );
    config.warmup = Duration::from_millis(480);
    config.connections = 10;
    config.payload_bytes = 64;
    let result = tokio::time::timeout(Duration::from_secs(12), load::run(&config)).await;
    match result {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => panic!("load run failed: {e:#}"),
        Err(_) => panic!("load run did not finish within 12 s"),
    }
}

fn check(r: &load::LoadResult) {
    eprintln!(
        "asked {} rps, achieved {:.1} rps, ok {}, errors {}, corrected p50 {} µs p90 {} µs p99 {} µs max {} µs; uncorrected p99 {} µs",
        r.asked_rps, r.achieved_rps, r.ok, r.errors, r.latency.p50_us, r.latency.p90_us,
        r.latency.p99_us, r.latency.max_us, r.uncorrected.p99_us
    );
    assert_eq!(r.errors, 0, "no request may fail");
    assert!(
        (r.achieved_rps - 1000.0).abs() <= 20.0,
        "achieved {:.1} rps, asked 1000 rps",
        r.achieved_rps
    );
    assert!(
        r.latency.p99_us >= 50_000,
        "p99 {} µs hides the 100 ms stalls",
        r.latency.p99_us
    );
    // The longest wait is a stall plus the host's own scheduling delays: on a busy shared host
    // (CI, 2026-12-03) the direct path's p50 alone reached 19 ms and its max 352 ms, so the upper
    // bound only rules out a generator that piles stall upon stall.
    assert!(
        r.latency.max_us >= 90_000 && r.latency.max_us < 600_000,
        "max {} µs",
        r.latency.max_us
    );
    // Most requests are not near a stall: a generator that held every request behind the stalls
    // would put the median near the stall's length.
    assert!(r.latency.p50_us < 50_000, "p50 {} µs", r.latency.p50_us);
    // What a closed-loop generator would see is smaller: the backlog after a stall is sent at once.
    assert!(r.uncorrected.p99_us < r.latency.p99_us);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_p99_shows_the_stall_and_rate_holds() {
    check(&stalled_run(Protocol::Http1).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_p99_shows_the_stall_and_rate_holds() {
    check(&stalled_run(Protocol::H2c).await);
}
