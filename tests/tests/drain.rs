//! Graceful shutdown: a sidecar told to stop (as SIGTERM does, or `POST /shutdown`) refuses new
//! connections but lets the requests in flight finish, tells HTTP/2 clients with GOAWAY and HTTP/1
//! clients with `Connection: close`, then exits. The real binary under SIGTERM:
//! cli/tests/drain_signal.rs; a rolling restart under load: rollout.rs.

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use std::time::Duration;
use trellis_tests::client::collect;
use trellis_tests::{Mesh, Service};

#[tokio::test]
async fn in_flight_request_finishes_and_new_connections_are_refused() {
    let mut mesh = Mesh::client_and(Service::http1("hello")).await;
    let client = mesh.client("client", false);
    let (mut tx, body) =
        http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(1);
    let req = Request::post("http://hello/slow")
        .body(body.map_err(|never| match never {}).boxed())
        .expect("request");
    let in_flight = tokio::spawn(async move { collect(client.send(req).await?).await });
    tx.send_data(Bytes::from_static(b"part-1 "))
        .await
        .expect("chunk");
    tokio::time::sleep(Duration::from_millis(100)).await;

    let index = mesh
        .workloads
        .iter()
        .position(|w| w.service == "client")
        .expect("client workload");
    let outbound = mesh.workloads[index].outbound;
    let task = mesh.stop_sidecar(index).expect("running sidecar");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        tokio::net::TcpStream::connect(outbound).await.is_err(),
        "stopped sidecar accepts no new connection"
    );
    assert!(
        !task.is_finished(),
        "the sidecar waits for the request in flight"
    );

    tx.send_data(Bytes::from_static(b"part-2"))
        .await
        .expect("chunk after shutdown began");
    drop(tx);
    let (rsp, echoed) = in_flight.await.expect("join").expect("request completes");
    assert_eq!(rsp.status(), 200);
    assert_eq!(echoed, Bytes::from_static(b"part-1 part-2"));
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("sidecar exits after the drain")
        .expect("join");
}

/// `POST /shutdown` on the admin port: the listener closes at once; an HTTP/1.1 request and an
/// HTTP/2 stream in flight both complete with their whole bodies; the HTTP/2 client gets GOAWAY
/// (no new stream, then a graceful end of the connection); the HTTP/1.1 answer, written after
/// drain began, says `Connection: close` and the connection is closed after it; the sidecar
/// exits once nothing is left.
#[tokio::test]
async fn admin_shutdown_finishes_http1_and_h2_in_flight_then_closes() {
    use trellis_tests::drain_probe::{H2Probe, RawHttp1};
    let mut mesh = Mesh::client_and(Service::http1("hello")).await;
    // Answers come after drain began, so their heads are written while draining.
    mesh.workload("hello").app.delay(Duration::from_millis(400));
    let index = mesh
        .workloads
        .iter()
        .position(|w| w.service == "client")
        .expect("client workload");
    let (outbound, admin) = (mesh.workloads[index].outbound, mesh.workloads[index].admin);

    let mut h1 = RawHttp1::send(
        outbound,
        b"POST /h1 HTTP/1.1\r\nhost: hello\r\ncontent-length: 11\r\n\r\nhello-h1-ok",
    )
    .await
    .expect("HTTP/1.1 request");
    let mut h2 = H2Probe::connect(outbound).await.expect("h2c connection");
    let stream = h2
        .start_post("http://hello/h2", b"part-1 ")
        .await
        .expect("h2 stream");
    tokio::time::sleep(Duration::from_millis(100)).await;

    let shutdown = RawHttp1::send(
        admin,
        b"POST /shutdown HTTP/1.1\r\nhost: admin\r\ncontent-length: 0\r\n\r\n",
    )
    .await
    .expect("admin")
    .response()
    .await
    .expect("admin answers");
    assert_eq!(shutdown.status, 202);
    let task = mesh.take_sidecar_task(index).expect("running sidecar");
    tokio::time::sleep(Duration::from_millis(100)).await;

    assert!(
        tokio::net::TcpStream::connect(outbound).await.is_err(),
        "no new connection once draining"
    );
    let refused = h2.new_stream_error().await.expect("new stream refused");
    assert!(
        refused.is_go_away() && refused.is_remote(),
        "refused by the proxy's GOAWAY: {refused:?}"
    );
    assert_eq!(refused.reason(), Some(h2::Reason::NO_ERROR));
    assert!(!task.is_finished(), "the sidecar waits for both requests");

    let (status, body) = stream.finish(b"part-2").await.expect("h2 stream completes");
    assert_eq!(status, 200);
    assert_eq!(body, Bytes::from_static(b"part-1 part-2"));
    let rsp = h1.response().await.expect("HTTP/1.1 answer");
    assert_eq!(rsp.status, 200);
    assert_eq!(rsp.body, Bytes::from_static(b"hello-h1-ok"));
    assert_eq!(rsp.header("connection"), Some("close"), "{rsp:?}");
    assert!(
        h1.closed_by_peer(Duration::from_secs(2)).await,
        "the proxy closes the HTTP/1.1 connection after the answer"
    );
    let ended = h2.ended(Duration::from_secs(2)).await;
    assert!(
        matches!(ended, Some(Ok(()))),
        "the h2 connection ends gracefully: {ended:?}"
    );
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("sidecar exits once idle")
        .expect("join");
}
