//! Graceful shutdown: a sidecar told to stop refuses new connections but lets the request in
//! flight finish, then exits.

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
