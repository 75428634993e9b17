//! Drain of the real binary: `trellis proxy` as a separate process, stopped with SIGTERM while
//! requests are in flight. The control plane, the destination sidecar and its app come from the
//! test harness (in this process); the sidecar under test is the `trellis` binary, as the
//! `client` workload's second instance.
//!
//! What holds: the listener closes at once; an HTTP/1.1 request and an HTTP/2 stream in flight
//! complete with their whole bodies; the HTTP/2 client gets GOAWAY; the HTTP/1.1 answer says
//! `Connection: close` and the connection is closed; the process exits 0 as soon as it is idle.
//! When a request outlives the grace period the process exits 0 anyway once the grace is over:
//! the shutdown asked for happened, the operator's grace period is the contract, and a failing
//! exit status would mark a completed Job's pod as failed for a client that would not finish.

mod sidecar;

use bytes::Bytes;
use sidecar::SidecarProcess;
use std::time::{Duration, Instant};
use trellis_tests::drain_probe::{H2Probe, RawHttp1};
use trellis_tests::{Mesh, Service};

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_and_exits_zero_once_idle() {
    let mesh = Mesh::client_and(Service::http1("hello")).await;
    mesh.workload("hello").app.delay(Duration::from_millis(500));
    let mut proxy = SidecarProcess::start(&mesh, &["--drain-grace-seconds", "5"]).await;

    let mut h1 = RawHttp1::send(
        proxy.outbound,
        b"POST /h1 HTTP/1.1\r\nhost: hello\r\ncontent-length: 11\r\n\r\nhello-h1-ok",
    )
    .await
    .expect("HTTP/1.1 request");
    let mut h2 = H2Probe::connect(proxy.outbound).await.expect("h2c");
    let stream = (h2.start_post("http://hello/h2", b"part-1 ").await).expect("h2 stream");
    tokio::time::sleep(Duration::from_millis(100)).await;

    proxy.terminate();
    let terminated = Instant::now();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(
        tokio::net::TcpStream::connect(proxy.outbound)
            .await
            .is_err(),
        "no new connection once draining"
    );
    let refused = h2.new_stream_error().await.expect("new stream refused");
    assert!(refused.is_go_away() && refused.is_remote(), "{refused:?}");
    assert_eq!(refused.reason(), Some(h2::Reason::NO_ERROR));

    let (status, body) = stream.finish(b"part-2").await.expect("h2 stream completes");
    assert_eq!((status, body), (200, Bytes::from_static(b"part-1 part-2")));
    let rsp = h1.response().await.expect("HTTP/1.1 answer");
    assert_eq!(rsp.status, 200);
    assert_eq!(rsp.body, Bytes::from_static(b"hello-h1-ok"));
    assert_eq!(rsp.header("connection"), Some("close"), "{rsp:?}");
    assert!(h1.closed_by_peer(Duration::from_secs(2)).await);
    let ended = h2.ended(Duration::from_secs(2)).await;
    assert!(matches!(ended, Some(Ok(()))), "graceful h2 end: {ended:?}");

    let status = proxy.exit_status(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", proxy.log());
    // Well before the 5 s grace: it left because it was idle.
    assert!(
        terminated.elapsed() < Duration::from_secs(4),
        "exited after {:?}",
        terminated.elapsed()
    );
    let log = proxy.log();
    assert!(log.contains("draining"), "{log}");
    assert!(!log.contains("grace period over"), "{log}");
}

#[tokio::test]
async fn sigterm_exits_zero_after_the_grace_period_when_a_request_outlives_it() {
    let mesh = Mesh::client_and(Service::http1("hello")).await;
    let mut proxy = SidecarProcess::start(&mesh, &["--drain-grace-seconds", "1"]).await;
    // A body that never arrives in full keeps the request in flight for good.
    let mut stuck = RawHttp1::send(
        proxy.outbound,
        b"POST /stuck HTTP/1.1\r\nhost: hello\r\ncontent-length: 100\r\n\r\nonly-some",
    )
    .await
    .expect("request");
    tokio::time::sleep(Duration::from_millis(200)).await;

    proxy.terminate();
    let terminated = Instant::now();
    let status = proxy.exit_status(Duration::from_secs(10)).await;
    let after = terminated.elapsed();
    assert_eq!(status.code(), Some(0), "{}", proxy.log());
    assert!(
        after >= Duration::from_millis(900),
        "waited for the grace period: {after:?}"
    );
    assert!(
        after < Duration::from_secs(5),
        "but not much longer: {after:?}"
    );
    assert!(proxy.log().contains("grace period over"), "{}", proxy.log());
    assert!(
        stuck.ends_within(Duration::from_secs(2)).await,
        "the request that outlived the grace is cut"
    );
}
