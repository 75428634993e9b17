//! A rolling restart under constant load: every destination sidecar in turn is drained (as
//! SIGTERM does) and started again on its same address, while a client keeps sending HTTP/1.1,
//! h2c and gRPC requests through its own sidecar. Not one request may fail, and every request
//! must reach an app exactly once: the draining sidecar finishes what it accepted and refuses the
//! rest with GOAWAY, a restarted one accepts peers only once it can serve them, and the client's
//! sidecar sends what was refused (or could not connect) to another replica, because it provably
//! was never processed; the route's own retry policy is off, so nothing else can save a request.

use bytes::Bytes;
use http::Request;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use trellis_tests::apps::grpc::{echo_client::EchoClient, SayRequest};
use trellis_tests::client::{collect, full};
use trellis_tests::{Mesh, Service, TestClient};

/// Each worker sends at most one request per tick; the apps take `APP_DELAY` to answer, so some
/// requests are always in flight when a sidecar starts draining.
const TICK: Duration = Duration::from_millis(25);
const APP_DELAY: Duration = Duration::from_millis(20);
const RESTART_GAP: Duration = Duration::from_millis(300);
/// The route policy retries nothing, so only the proxy's own rule (a request never processed may
/// go elsewhere) can save the requests that meet a draining or restarting replica. Connection
/// failures get the replica ejected (outlier detection); a short ejection lets the test see each
/// replica serve again soon after its restart.
const POLICY: &str =
    "policy:\n  retry:\n    attempts: 1\n  outlierDetection:\n    baseEjectionTime: 300ms\n";

#[derive(Default)]
struct Tally {
    web_ok: AtomicUsize,
    grpc_ok: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        if let Ok(mut f) = self.failures.lock() {
            f.push(what);
        }
    }
}

async fn http_worker(
    client: TestClient,
    name: &'static str,
    stop: watch::Receiver<bool>,
    tally: Arc<Tally>,
) {
    let mut tick = tokio::time::interval(TICK);
    let mut n = 0u64;
    while !*stop.borrow() {
        tick.tick().await;
        n += 1;
        // Alternate an idempotent GET with a POST, which may only be retried when unprocessed.
        let payload = format!("{name}-{n}");
        let post = n.is_multiple_of(2);
        let req = if post {
            Request::post("http://web/echo").body(full(payload.clone()))
        } else {
            Request::get("http://web/echo").body(full(Bytes::new()))
        };
        let Ok(req) = req else {
            tally.fail(format!("{name} #{n}: bad request"));
            continue;
        };
        let expected = if post { payload } else { String::new() };
        match client.send(req).await {
            Ok(rsp) => match collect(rsp).await {
                Ok((head, body)) if head.status() == 200 && body == expected.as_bytes() => {
                    tally.web_ok.fetch_add(1, Ordering::SeqCst);
                }
                Ok((head, body)) => tally.fail(format!(
                    "{name} #{n}: {} {:?} {:?}",
                    head.status(),
                    head.headers().get("trellis-error"),
                    String::from_utf8_lossy(&body)
                )),
                Err(e) => tally.fail(format!("{name} #{n}: body: {e:#}")),
            },
            Err(e) => tally.fail(format!("{name} #{n}: {e:?}")),
        }
    }
}

async fn grpc_worker(
    mut client: EchoClient<tonic::transport::Channel>,
    name: &'static str,
    stop: watch::Receiver<bool>,
    tally: Arc<Tally>,
) {
    let mut tick = tokio::time::interval(TICK);
    let mut n = 0u64;
    while !*stop.borrow() {
        tick.tick().await;
        n += 1;
        let message = format!("{name}-{n}");
        let call = client.say(SayRequest {
            message: message.clone(),
            delay_ms: APP_DELAY.as_millis() as u64,
        });
        match call.await {
            Ok(reply) if reply.get_ref().message == message => {
                tally.grpc_ok.fetch_add(1, Ordering::SeqCst);
            }
            Ok(reply) => tally.fail(format!("{name} #{n}: wrong reply {reply:?}")),
            Err(status) => tally.fail(format!("{name} #{n}: {status:?}")),
        }
    }
}

fn requests_of(mesh: &Mesh, service: &str) -> Vec<usize> {
    mesh.workloads_of(service)
        .map(|w| w.app.requests())
        .collect()
}

#[tokio::test]
async fn rolling_restart_under_load_loses_no_request() {
    let mut mesh = Mesh::builder()
        .service(Service::http1("client"))
        .service(Service::http1("web").replicas(3).yaml(POLICY))
        .service(Service::grpc("greeter").replicas(2).yaml(POLICY))
        .start()
        .await
        .expect("mesh starts");
    for w in mesh.workloads_of("web") {
        w.app.delay(APP_DELAY);
    }
    let outbound = mesh.workload("client").outbound;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{outbound}"))
        .expect("url")
        .origin("http://greeter".parse().expect("origin"))
        .connect()
        .await
        .expect("connect to the sidecar");

    let tally = Arc::new(Tally::default());
    let (stop_tx, stop) = watch::channel(false);
    let mut workers = Vec::new();
    for (name, h2c) in [
        ("h1-a", false),
        ("h1-b", false),
        ("h1-c", false),
        ("h1-d", false),
        ("h2c-a", true),
        ("h2c-b", true),
    ] {
        let client = TestClient::new(outbound, h2c);
        workers.push(tokio::spawn(http_worker(
            client,
            name,
            stop.clone(),
            tally.clone(),
        )));
    }
    for name in ["grpc-a", "grpc-b"] {
        let client = EchoClient::new(channel.clone());
        workers.push(tokio::spawn(grpc_worker(
            client,
            name,
            stop.clone(),
            tally.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let replicas: Vec<usize> = (0..mesh.workloads.len())
        .filter(|&i| mesh.workloads[i].service != "client")
        .collect();
    let mut served_after_restart = Vec::new();
    for &i in &replicas {
        let task = mesh.stop_sidecar(i).expect("a running sidecar");
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the sidecar drains within its grace period")
            .expect("join");
        // The new pod comes up a little later; meanwhile its address refuses connections.
        tokio::time::sleep(RESTART_GAP).await;
        mesh.restart_sidecar(i)
            .await
            .expect("the sidecar restarts on its address");
        let before = mesh.workloads[i].app.requests();
        tokio::time::sleep(Duration::from_millis(800)).await;
        served_after_restart.push((i, before, mesh.workloads[i].app.requests()));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop_tx.send(true);
    for w in workers {
        tokio::time::timeout(Duration::from_secs(10), w)
            .await
            .expect("workers stop")
            .expect("join");
    }

    let failures = tally.failures.lock().map(|f| f.clone()).unwrap_or_default();
    let (web_ok, grpc_ok) = (
        tally.web_ok.load(Ordering::SeqCst),
        tally.grpc_ok.load(Ordering::SeqCst),
    );
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during the rollout, first: {:#?}",
        failures.len(),
        failures.len() + web_ok + grpc_ok,
        &failures[..failures.len().min(10)]
    );
    // Enough traffic that every drain happened under load.
    assert!(web_ok > 150, "only {web_ok} web requests");
    assert!(grpc_ok > 50, "only {grpc_ok} gRPC calls");
    // Exactly once: no request was lost after reaching an app, none was processed twice.
    let web: usize = requests_of(&mesh, "web").iter().sum();
    let greeter: usize = requests_of(&mesh, "greeter").iter().sum();
    assert_eq!(web, web_ok, "web apps saw each request once");
    assert_eq!(greeter, grpc_ok, "greeter apps saw each call once");
    // The rollout did put requests in the way of draining sidecars: the client's sidecar had to
    // send some elsewhere (they show as retries; none reached an app twice, as counted above).
    let client = mesh
        .workloads
        .iter()
        .position(|w| w.service == "client")
        .expect("client workload");
    let (_, stats) = mesh.admin_get(client, "/stats").await.expect("stats");
    let stats: serde_json::Value = serde_json::from_str(&stats).expect("json");
    let retries: u64 = (stats["clusters"].as_object().into_iter().flatten())
        .filter_map(|(_, c)| c["retries"].as_u64())
        .sum();
    assert!(retries > 0, "no request met a draining sidecar: {stats}");
    eprintln!("rollout: {web_ok} web requests, {grpc_ok} gRPC calls, {retries} sent elsewhere");
    for (i, before, after) in served_after_restart {
        assert!(
            after > before,
            "replica {i} serves again after its restart ({before} -> {after})"
        );
    }
}
