//! A connection between sidecars that goes silent without closing (a partition, a conntrack
//! entry dropped by a node, a peer whose host froze): one of hello's two replicas is reached
//! through a relay whose open connections are frozen mid-traffic (both sockets stay open, nothing
//! passes; new connections still get through, as after a node's NAT table was flushed). What a
//! platform engineer needs: a bounded number of failed requests, the other replica taking the
//! traffic at once, and the silent connection found and closed without anyone closing it.

use std::time::{Duration, Instant};
use trellis_tests::chaos::ChaosRelay;
use trellis_tests::mesh::wait_until;
use trellis_tests::traffic::SteadyTraffic;
use trellis_tests::{Mesh, Service};

#[tokio::test]
async fn a_silent_peer_connection_costs_a_bounded_number_of_requests_and_is_closed() {
    let mesh = Mesh::builder()
        .service(Service::http1("client"))
        .service(Service::http1("hello").replicas(2))
        .start()
        .await
        .expect("mesh starts");
    // The client calls hello first (on demand, its sidecar holds only what it has called).
    let (rsp, _) = (mesh.client("client", false).get("hello", "/").await).expect("request");
    assert_eq!(rsp.status(), 200);
    // The second replica's endpoint becomes a relay in front of its sidecar.
    let inbound = mesh.workloads_of("hello").nth(1).expect("replica").inbound;
    let relay = ChaosRelay::start(inbound, 7, 0.0).await.expect("relay");
    let config = mesh
        .render_config()
        .replace(&inbound.to_string(), &relay.addr.to_string());
    mesh.write_raw_config(&config).expect("config");
    let client_index = (mesh.workloads.iter())
        .position(|w| w.service == "client")
        .expect("client");
    wait_until(Duration::from_secs(10), || async {
        let (_, body) = mesh
            .admin_get(client_index, "/config")
            .await
            .unwrap_or_default();
        body.contains(&relay.addr.to_string())
    })
    .await
    .expect("the client's sidecar uses the relay");

    let traffic = SteadyTraffic::start(
        mesh.client("client", false),
        "hello",
        Duration::from_millis(10),
    );
    wait_until(Duration::from_secs(5), || async {
        relay.connections() >= 1
    })
    .await
    .expect("traffic reaches the relayed replica");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = traffic.counts();
    relay.freeze_open_connections();
    let frozen_at = Instant::now();

    // The sidecar gives up on the silent connection and closes it: over HTTP/1.1 (the default)
    // when the request stuck on it ends (here the caller's 5 s timeout), or the pool's idle sweep
    // when none is; over HTTP/2 by keepalive, also while no request uses it.
    let dropped = wait_until(Duration::from_secs(30), || async {
        relay.frozen() >= 1 && relay.frozen_closed() >= relay.frozen()
    })
    .await;
    let during = traffic.counts();
    eprintln!(
        "frozen {}: closed by the sidecar after {:?}; {} sent, {} failed meanwhile",
        relay.frozen(),
        frozen_at.elapsed(),
        during.sent - before.sent,
        during.failed - before.failed
    );
    assert!(
        dropped.is_ok(),
        "the silent connection was not closed within 30 s"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counts = traffic.finish().await;
    eprintln!("silent peer connection: {counts:?}");
    // One request at a time every 10 ms: about 100 a second unless requests hang.
    assert!(
        counts.sent - during.sent >= 100,
        "the traffic flows once the silent connection is gone: {during:?} then {counts:?}"
    );
    assert!(
        counts.failed <= 3,
        "a bounded number of requests fail: {counts:?}"
    );
}
