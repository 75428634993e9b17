//! A real gRPC client and server (tonic) through the mesh: calls work, and the proxy's own
//! failures reach the client as gRPC statuses with messages, not bare HTTP errors.

use std::time::Duration;
use trellis_tests::apps::grpc::{echo_client::EchoClient, SayRequest};
use trellis_tests::{Mesh, Service};

async fn client_for(mesh: &Mesh, authority: &str) -> EchoClient<tonic::transport::Channel> {
    let outbound = mesh.workload("client").outbound;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{outbound}"))
        .expect("url")
        .origin(format!("http://{authority}").parse().expect("origin"))
        .connect()
        .await
        .expect("connect to the sidecar");
    EchoClient::new(channel)
}

#[tokio::test]
async fn grpc_calls_succeed_and_failures_become_grpc_statuses() {
    // "gone" lists an endpoint where nothing listens: its upstream is down.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_addr = dead.local_addr().expect("addr");
    drop(dead);
    let mesh = Mesh::builder()
        .service(Service::http1("client"))
        .service(Service::grpc("greeter").yaml("policy:\n  requestTimeout: 300ms\n"))
        .service(Service::http1("echo"))
        .service(Service::external("gone", &[dead_addr]))
        .start()
        .await
        .expect("mesh starts");

    let mut greeter = client_for(&mesh, "greeter").await;
    let reply = greeter
        .say(SayRequest {
            message: "hi".into(),
            delay_ms: 0,
        })
        .await
        .expect("call");
    assert_eq!(reply.get_ref().message, "hi");

    let mut gone = client_for(&mesh, "gone").await;
    let status = gone
        .say(SayRequest {
            message: "hi".into(),
            delay_ms: 0,
        })
        .await
        .expect_err("upstream down");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status.message().contains("connect"),
        "message says why: {}",
        status.message()
    );

    // The route's 300 ms timeout ends the call: the proxy answers DEADLINE_EXCEEDED itself.
    let started = std::time::Instant::now();
    let status = greeter
        .say(SayRequest {
            message: "slow".into(),
            delay_ms: 2000,
        })
        .await
        .expect_err("deadline");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    assert!(status.message().contains("timeout"), "{}", status.message());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn grpc_timeout_is_passed_on_reduced_by_the_time_spent() {
    let mesh = Mesh::client_and(Service::http1("echo")).await;
    let req = http::Request::post("http://echo/trellis.test.v1.Echo/Say")
        .header("content-type", "application/grpc")
        .header("grpc-timeout", "2S")
        .body(trellis_tests::client::full(""))
        .expect("request");
    let rsp = mesh.client("client", false).send(req).await.expect("sent");
    let seen = rsp
        .headers()
        .get("x-echo-h-grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .expect("grpc-timeout reached the app");
    let remaining = trellis_proxy::resilience::timeout::parse_grpc_timeout(
        &http::HeaderValue::from_str(seen).expect("value"),
    )
    .expect("valid grpc-timeout");
    assert!(
        remaining < Duration::from_secs(2) && remaining > Duration::from_millis(1500),
        "passed on {seen} ({remaining:?})"
    );
}
