//! The sidecar when file descriptors run out: the real `trellis proxy` binary under a
//! 256-descriptor limit (`prlimit`), its outbound listener flooded with more idle connections
//! than it has descriptors. The connection cap derived from the limit (a quarter of what the
//! reserve leaves, per listener: 48) holds the flood back, so the proxy keeps the descriptors its
//! held connections need: requests on them still reach the destination (each needs an onward
//! connection), the admin port answers, and once the flood goes new clients are served at once.
//! Without the cap the flood takes every descriptor and the requests fail.

mod sidecar;

use sidecar::SidecarProcess;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use trellis_tests::drain_probe::RawHttp1;
use trellis_tests::{Mesh, Service};

const FD_LIMIT: u64 = 256;
const FLOOD: usize = 400;

/// How many of `streams` the proxy has closed (EOF or reset); the rest it holds.
fn closed_by_proxy(streams: &[TcpStream]) -> usize {
    let mut buf = [0u8; 1];
    (streams.iter())
        .filter(|s| match s.try_read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        })
        .count()
}

async fn get_hello(conn: &mut RawHttp1) -> u16 {
    let sent = conn
        .write(b"GET /flood HTTP/1.1\r\nhost: hello\r\n\r\n")
        .await;
    match (
        sent,
        tokio::time::timeout(Duration::from_secs(5), conn.response()).await,
    ) {
        (Ok(()), Ok(Ok(rsp))) => rsp.status,
        _ => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_under_a_low_descriptor_limit_leaves_the_sidecar_serving() {
    let mesh = Mesh::client_and(Service::http1("hello")).await;
    let proxy = SidecarProcess::start_limited(&mesh, Some(FD_LIMIT), &[]).await;
    assert!(
        (proxy.log().lines()).any(|l| l.ends_with("connections_per_listener=48")),
        "{}",
        proxy.log()
    );

    let mut flood = Vec::new();
    let mut failed = 0;
    for _ in 0..FLOOD {
        match tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(proxy.outbound)).await
        {
            Ok(Ok(stream)) => flood.push(stream),
            _ => failed += 1,
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let closed = closed_by_proxy(&flood);
    eprintln!(
        "flood: {FLOOD} attempted, {failed} connects failed, {closed} closed by the proxy, {} held",
        flood.len() - closed
    );

    // Requests on held connections: each needs a connection onward, which the cap left room for.
    let mut buf = [0u8; 1];
    let held: Vec<TcpStream> = (flood.drain(..))
        .filter(|s| matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock))
        .collect();
    let mut held: Vec<RawHttp1> = held.into_iter().map(RawHttp1::over).collect();
    let mut statuses = Vec::new();
    for conn in held.iter_mut().take(10) {
        statuses.push(get_hello(conn).await);
    }
    assert_eq!(
        statuses, [200; 10],
        "requests on held connections while flooded"
    );
    let mut admin = RawHttp1::send(proxy.admin, b"GET /ready HTTP/1.1\r\nhost: admin\r\n\r\n")
        .await
        .expect("admin connects");
    let ready = admin.response().await.expect("admin answers");
    assert_eq!(ready.status, 200, "ready while flooded");

    // The flood goes: a new client is served at once.
    drop(held);
    let gone = Instant::now();
    loop {
        if let Ok(stream) = TcpStream::connect(proxy.outbound).await {
            if get_hello(&mut RawHttp1::over(stream)).await == 200 {
                break;
            }
        }
        assert!(
            gone.elapsed() < Duration::from_secs(5),
            "no new client served within 5 s of the flood going:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "a new client was served {:?} after the flood went",
        gone.elapsed()
    );
}
