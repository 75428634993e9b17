//! An endpoint killed mid-stream, for HTTP/1.1 and h2c apps: the app dies while a response body is
//! streaming (the client sees the body fail, promptly, never a clean end and never a hang) or
//! while it holds a request it has not answered (the client gets a 5xx); the following requests
//! succeed (the dead replica's 502s are retried on the live one and it gets ejected), and a
//! restarted app on the same address is used again.

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use trellis_tests::chaos::app::DyingApp;
use trellis_tests::client::full;
use trellis_tests::mesh::wait_until;
use trellis_tests::{EchoApp, Mesh, Protocol, Service, TestClient};

/// A retry on gateway errors and resets sends a request the dead replica's sidecar answered
/// with 502 to the live one; ejection is short so that a restarted app returns quickly.
const POLICY: &str = "\
policy:
  retry:
    attempts: 3
    retryOn: [gateway-error, reset, connect-failure]
  outlierDetection:
    consecutiveGatewayErrors: 2
    baseEjectionTime: 1s
    maxEjectionTime: 2s
";

/// A whole request must end within this; a hang fails the test instead of stalling it.
const BOUND: Duration = Duration::from_secs(10);

struct Setup {
    mesh: Mesh,
    client: TestClient,
    /// The apps of `hello` (two replicas), then of `solo` (one).
    apps: Vec<DyingApp>,
    /// The workload index of each app.
    workloads: Vec<usize>,
}

/// A mesh with `hello` (2 replicas) and `solo` (1) whose apps are `DyingApp`s on the addresses
/// the sidecars were given.
async fn setup(protocol: Protocol, h2c_client: bool) -> Setup {
    let service = |name: &str| {
        let s = match protocol {
            Protocol::Http1 => Service::http1(name),
            _ => Service::h2c(name),
        };
        s.yaml(POLICY)
    };
    let mut mesh = Mesh::builder()
        .service(Service::http1("client"))
        .service(service("hello").replicas(2))
        .service(service("solo"))
        .start()
        .await
        .expect("mesh starts");
    let (mut apps, mut workloads) = (Vec::new(), Vec::new());
    for index in 0..mesh.workloads.len() {
        let w = &mut mesh.workloads[index];
        if w.service == "client" {
            continue;
        }
        // No request reached the echo app yet, so no sidecar holds a connection to it.
        let addr = w.app.addr;
        w.app = EchoApp::start("placeholder", SocketAddr::new(addr.ip(), 0), protocol)
            .await
            .expect("placeholder app");
        let name = format!("{}-{index}", w.service);
        apps.push(DyingApp::start(&name, addr).await.expect("dying app"));
        workloads.push(index);
    }
    let client = mesh.client("client", h2c_client);
    Setup {
        mesh,
        client,
        apps,
        workloads,
    }
}

/// GET `path` on `service`; the status and the app that answered, within `BOUND`.
async fn get(client: &TestClient, service: &str, path: &str) -> (u16, String) {
    let sent = tokio::time::timeout(BOUND, client.get(service, path)).await;
    match sent {
        Ok(Ok((rsp, _))) => {
            let app = rsp.headers().get("x-app").and_then(|v| v.to_str().ok());
            (rsp.status().as_u16(), app.unwrap_or_default().to_string())
        }
        Ok(Err(e)) => panic!("GET {service}{path}: {e:#}"),
        Err(_) => panic!("GET {service}{path} hung for {BOUND:?}"),
    }
}

async fn all_succeed(client: &TestClient, service: &str, n: usize) -> Vec<String> {
    let mut answered = Vec::new();
    for i in 0..n {
        let (status, app) = get(client, service, "/").await;
        assert_eq!(
            status, 200,
            "request {i} to {service} after the kill ({app})"
        );
        answered.push(app);
    }
    answered
}

/// Starts `GET hello/stream` and reads its first 4 KiB: which of `apps` streams it, and the rest
/// of the body.
async fn start_stream(client: &TestClient, apps: &[DyingApp]) -> (usize, Incoming) {
    let req = Request::get("http://hello/stream")
        .body(full(Bytes::new()))
        .expect("request");
    let rsp = tokio::time::timeout(BOUND, client.send(req))
        .await
        .expect("headers within the bound")
        .expect("response");
    assert_eq!(rsp.status(), 200);
    let streaming = rsp
        .headers()
        .get("x-app")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let index = apps
        .iter()
        .position(|a| a.name == streaming)
        .expect("a hello app answered");
    let mut body = rsp.into_body();
    let mut received = 0;
    while received < 4096 {
        let frame = tokio::time::timeout(BOUND, body.frame())
            .await
            .expect("the body streams")
            .expect("a frame")
            .expect("no error before the kill");
        received += frame.data_ref().map_or(0, |d| d.len());
    }
    (index, body)
}

/// Reads what is left of a body whose source just died: it must fail (never end cleanly) within
/// `BOUND`. How long that took, the bytes still received, the error.
async fn body_fails(mut body: Incoming) -> (Duration, usize, hyper::Error) {
    let start = Instant::now();
    let mut received = 0;
    let ended = tokio::time::timeout(BOUND, async {
        loop {
            match body.frame().await {
                Some(Ok(frame)) => received += frame.data_ref().map_or(0, |d| d.len()),
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
        }
    })
    .await
    .expect("the truncated body ends within the bound, it does not hang");
    let error = ended.expect_err("a truncated body is an error, never a clean end");
    (start.elapsed(), received, error)
}

async fn killed_mid_stream(protocol: Protocol, h2c_client: bool) {
    let Setup {
        mesh,
        client,
        mut apps,
        ..
    } = setup(protocol, h2c_client).await;
    let warm = all_succeed(&client, "hello", 10).await;
    assert!(
        warm.contains(&apps[0].name) && warm.contains(&apps[1].name),
        "both replicas answer: {warm:?}"
    );

    // A response streams; its app dies after the first bytes.
    let (dead, body) = start_stream(&client, &apps).await;
    apps[dead].kill();
    let (took, received, error) = body_fails(body).await;
    println!(
        "{protocol:?} app, h2c client {h2c_client}: body failed {took:?} after the kill, \
         {received} bytes: {error}"
    );

    // The pool recovers: every request succeeds (the live replica answers).
    let after = all_succeed(&client, "hello", 20).await;
    let live = &apps[1 - dead].name;
    assert!(after.iter().all(|a| a == live), "{after:?}");

    // The app restarts on the same address: it is used again once its ejection ends.
    let addr = apps[dead].addr;
    let name = apps[dead].name.clone();
    apps[dead] = DyingApp::start(&name, addr).await.expect("restart app");
    wait_until(Duration::from_secs(15), || async {
        let (status, _) = get(&client, "hello", "/").await;
        assert_eq!(status, 200, "every request succeeds while the app returns");
        apps[dead].requests() > 0
    })
    .await
    .expect("the restarted app gets traffic again");

    // The app dies while it holds a request it has not answered: a 5xx, promptly.
    let solo = apps.len() - 1;
    let pending = tokio::spawn({
        let client = client.clone();
        async move { get(&client, "solo", "/hold").await }
    });
    wait_until(Duration::from_secs(5), || async {
        apps[solo].requests() > 0
    })
    .await
    .expect("the request reaches the app");
    apps[solo].kill();
    let killed_at = Instant::now();
    let (status, _) = pending.await.expect("request task");
    assert!(
        [502, 503].contains(&status),
        "an unanswered request whose app died: 502 or 503, got {status}"
    );
    println!(
        "unanswered request: {status} {:?} after the kill",
        killed_at.elapsed()
    );
    let name = apps[solo].name.clone();
    apps[solo] = DyingApp::start(&name, apps[solo].addr)
        .await
        .expect("restart solo");
    wait_until(Duration::from_secs(15), || async {
        get(&client, "solo", "/").await.0 == 200
    })
    .await
    .expect("solo answers again after its app restarts");
    drop(mesh);
}

#[tokio::test]
async fn http1_app_killed_mid_stream() {
    killed_mid_stream(Protocol::Http1, false).await;
}

#[tokio::test]
async fn h2c_app_killed_mid_stream() {
    killed_mid_stream(Protocol::H2c, true).await;
}

#[tokio::test]
async fn http1_app_killed_mid_stream_seen_by_an_h2c_client() {
    killed_mid_stream(Protocol::Http1, true).await;
}

/// The destination's sidecar goes away mid-stream (asked to stop: after its drain grace of 1 s
/// it closes what is left). The client's body fails within the bound, and the next requests
/// succeed on the other replica (its sidecar's port now refuses connections: retried).
/// The connections still open when the grace runs out are closed by `DrainWatch::aborted`.
#[tokio::test]
async fn destination_sidecar_stops_mid_stream() {
    let Setup {
        mut mesh,
        client,
        apps,
        workloads,
    } = setup(Protocol::H2c, false).await;
    all_succeed(&client, "hello", 4).await;
    let (dying, body) = start_stream(&client, &apps).await;
    let sidecar = mesh.stop_sidecar(workloads[dying]).expect("sidecar task");
    let (took, received, error) = body_fails(body).await;
    println!("sidecar stopped: body failed {took:?} later, {received} bytes: {error}");
    tokio::time::timeout(BOUND, sidecar)
        .await
        .expect("the sidecar stops within the bound")
        .expect("sidecar task");
    let after = all_succeed(&client, "hello", 20).await;
    let live = &apps[1 - dying].name;
    assert!(after.iter().all(|a| a == live), "{after:?}");
}
