//! Overload: every sidecar bounds the requests it works on at once (`--max-in-flight-requests`,
//! here 8) and answers the excess at once with 503 and `trellis-error: overloaded: …`, instead of
//! queueing it. The app behind never sees a shed request, never more than the limit at once, and
//! once the load drops every request succeeds again.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use trellis_tests::mesh::wait_until;
use trellis_tests::{Mesh, Service, TestClient};

const LIMIT: usize = 8;

fn limits() -> trellis_proxy::Limits {
    trellis_proxy::Limits {
        max_in_flight_requests: LIMIT,
        ..trellis_proxy::Limits::default()
    }
}

/// What one request got back.
#[derive(Debug)]
struct Answer {
    status: u16,
    why: String,
    took: Duration,
}

impl Answer {
    fn is_shed(&self) -> bool {
        self.status == 503 && self.why.starts_with("overloaded")
    }
}

async fn send(client: TestClient, authority: &'static str) -> Answer {
    let started = Instant::now();
    let (rsp, _) = client
        .get(authority, "/")
        .await
        .expect("every request is answered, shed or not");
    let why = (rsp.headers().get("trellis-error"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Answer {
        status: rsp.status().as_u16(),
        why,
        took: started.elapsed(),
    }
}

fn burst(client: &TestClient, n: usize) -> Vec<tokio::task::JoinHandle<Answer>> {
    (0..n)
        .map(|_| tokio::spawn(send(client.clone(), "slow")))
        .collect()
}

async fn answers(tasks: Vec<tokio::task::JoinHandle<Answer>>) -> Vec<Answer> {
    let mut all = Vec::new();
    for t in tasks {
        all.push(t.await.expect("request task"));
    }
    all
}

/// Waits until the app is answering exactly `n` requests at once.
async fn app_busy_with(app: &trellis_tests::EchoApp, n: usize) {
    let knobs = app.knobs.clone();
    wait_until(Duration::from_secs(5), move || {
        let knobs = knobs.clone();
        async move { knobs.in_flight.load(Ordering::SeqCst) == n }
    })
    .await
    .unwrap_or_else(|e| panic!("the app never had {n} requests at once: {e}"));
}

/// The value of a `/metrics` series, e.g. `trellis_requests_shed_total{direction="outbound"}`.
fn metric(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twice_the_limit_the_excess_gets_a_fast_503_and_never_reaches_the_app() {
    let mesh = Mesh::builder()
        .limits(limits())
        .service(Service::http1("client"))
        .service(Service::http1("slow"))
        .start()
        .await
        .expect("mesh starts");
    let app = &mesh.workload("slow").app;
    // Long enough that the second half surely arrives while the first half is still held.
    let delay = Duration::from_millis(1500);
    app.delay(delay);
    let client = mesh.client("client", false);

    let admitted = burst(&client, LIMIT);
    app_busy_with(app, LIMIT).await;
    let excess = answers(burst(&client, LIMIT)).await;
    for a in &excess {
        assert!(a.is_shed(), "over the limit: 503 overloaded, got {a:?}");
        assert!(
            a.took < delay / 3,
            "shed at once, not after the upstream's {delay:?}: {a:?}"
        );
    }
    let admitted = answers(admitted).await;
    assert!(admitted.iter().all(|a| a.status == 200), "{admitted:?}");
    assert_eq!(app.requests(), LIMIT, "no shed request reached the app");
    assert_eq!(app.knobs.peak_in_flight.load(Ordering::SeqCst), LIMIT);

    // Load back under the limit: every request succeeds again.
    app.delay(Duration::from_millis(100));
    for round in 0..3 {
        let again = answers(burst(&client, LIMIT)).await;
        assert!(
            again.iter().all(|a| a.status == 200),
            "round {round}: {again:?}"
        );
    }
    assert_eq!(app.requests(), 4 * LIMIT);

    let (status, text) = mesh.admin_get(0, "/metrics").await.expect("client metrics");
    assert_eq!(status, 200);
    let series = |s| metric(&text, s);
    assert_eq!(
        series("trellis_requests_shed_total{direction=\"outbound\"}"),
        Some(LIMIT as u64),
        "{text}"
    );
    assert_eq!(
        series("trellis_requests_in_flight{direction=\"outbound\"}"),
        Some(0),
        "every slot was given back"
    );
    assert_eq!(
        series("trellis_requests_in_flight_limit{direction=\"outbound\"}"),
        Some(LIMIT as u64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_together_over_the_limit_are_shed_by_the_destination_sidecar() {
    // Two callers, each within its own limit; together twice the destination's.
    let mesh = Mesh::builder()
        .limits(limits())
        .service(Service::http1("client").replicas(2))
        .service(Service::http1("slow"))
        .start()
        .await
        .expect("mesh starts");
    let app = &mesh.workload("slow").app;
    let delay = Duration::from_millis(1500);
    app.delay(delay);
    let mut callers = mesh
        .workloads_of("client")
        .map(|w| TestClient::new(w.outbound, true));
    let (first, second) = (
        callers.next().expect("caller 1"),
        callers.next().expect("caller 2"),
    );

    let admitted = burst(&first, LIMIT);
    app_busy_with(app, LIMIT).await;
    let excess = answers(burst(&second, LIMIT)).await;
    for a in &excess {
        assert!(a.is_shed(), "the destination sheds: {a:?}");
        assert!(a.took < delay / 3, "at once: {a:?}");
    }
    let admitted = answers(admitted).await;
    assert!(admitted.iter().all(|a| a.status == 200), "{admitted:?}");
    assert_eq!(app.requests(), LIMIT);
    assert_eq!(app.knobs.peak_in_flight.load(Ordering::SeqCst), LIMIT);

    let slow = (mesh.workloads_of("slow").next()).map(|w| w.admin);
    let slow = TestClient::new(slow.expect("slow workload"), false);
    let (_, text) = slow.get("localhost", "/metrics").await.expect("metrics");
    let text = String::from_utf8_lossy(&text);
    assert_eq!(
        metric(&text, "trellis_requests_shed_total{direction=\"inbound\"}"),
        Some(LIMIT as u64),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_times_the_limit_admitted_latency_stays_near_the_upstream_delay() {
    let mesh = Mesh::builder()
        .limits(limits())
        .service(Service::h2c("client"))
        .service(Service::h2c("slow"))
        .start()
        .await
        .expect("mesh starts");
    let app = &mesh.workload("slow").app;
    let delay = Duration::from_millis(300);
    app.delay(delay);
    let client = mesh.client("client", true);
    let _ = client
        .get("slow", "/")
        .await
        .expect("warm the mesh connection");

    // 80 callers, each sending one request after another for 3 s; a shed caller waits 20 ms
    // before trying again, as a well-behaved client backs off.
    let until = Instant::now() + Duration::from_secs(3);
    let callers: Vec<_> = (0..10 * LIMIT)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                while Instant::now() < until {
                    let a = send(client.clone(), "slow").await;
                    if a.is_shed() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    got.push(a);
                }
                got
            })
        })
        .collect();
    let mut all = Vec::new();
    for c in callers {
        all.extend(c.await.expect("caller"));
    }
    let (mut ok, mut shed): (Vec<_>, Vec<_>) = all.into_iter().partition(|a| a.status == 200);
    assert!(
        shed.iter().all(Answer::is_shed),
        "only sheds fail: {shed:?}"
    );
    assert!(
        !shed.is_empty() && ok.len() >= 3 * LIMIT,
        "ok {} shed {}",
        ok.len(),
        shed.len()
    );
    ok.sort_by_key(|a| a.took);
    shed.sort_by_key(|a| a.took);
    let p99 = |v: &[Answer]| v[(v.len() * 99 / 100).min(v.len() - 1)].took;
    // Queueing 80 callers behind 8 slots would take ~10× the delay; admitted ones take ~1×.
    assert!(
        p99(&ok) < delay + Duration::from_millis(700),
        "admitted p99 {:?} with {} admitted",
        p99(&ok),
        ok.len()
    );
    assert!(p99(&shed) < delay, "shed p99 {:?}", p99(&shed));
    assert!(app.knobs.peak_in_flight.load(Ordering::SeqCst) <= LIMIT);
    assert_eq!(
        app.requests(),
        ok.len() + 1,
        "exactly the admitted ones (and the warm-up)"
    );
}
