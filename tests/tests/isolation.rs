//! Isolation between the clients of one sidecar (issue 16): apps' requests share one HTTP/2
//! connection per endpoint between sidecars, so whatever one client does to its own streams must
//! not reach the others through that connection. Beside 8 well-behaved clients at a constant
//! rate, one client opens 1,000 streams at a time and abandons them (RST_STREAM CANCEL, or by
//! dropping its connection) and another resets streams as fast as it can (rapid reset). The
//! well-behaved clients see no error and a bounded p99, the destination is not ejected, the
//! sidecar-to-sidecar connection stays open, and the abusers are themselves limited.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use trellis_tests::raw::{count_frames, frame, h2, request_block, FrameCounts, H2};
use trellis_tests::{Mesh, Service, TestClient};

/// Well-behaved clients, each on a connection of its own (half HTTP/1.1, half h2c).
const CLIENTS: usize = 8;
/// Each sends one request every 40 ms (25 rps) ...
const PERIOD: Duration = Duration::from_millis(40);
/// ... for this long, while the abusers run.
const RUN: Duration = Duration::from_secs(10);
/// Streams the abandoning client opens at once; the outbound takes
/// `Limits::max_client_concurrent_streams` (100) of them and refuses the rest.
const ABANDONED: u32 = 1_000;
/// Between two rounds of the abandoning client.
const ROUND_PAUSE: Duration = Duration::from_millis(1000);
/// The listeners' in-flight budget: below the 100 streams one abandoning connection may have
/// open, so that it alone could take all of it, and fair sharing between client connections is
/// part of what is tested.
const IN_FLIGHT: usize = 90;
/// The well-behaved clients' p99 bound. On the 2-core machine this was measured on (load average
/// 3.5-4 from other builds) their p99 was 36-48 ms with no abuse and 105-133 ms beside the
/// abusers; with the app-facing stream limit at 1,000 (all of each burst started at once) it was
/// 490-880 ms, and before the fixes requests failed. The bound leaves about twice the measured
/// p99 for a busier machine.
const P99_BOUND: Duration = Duration::from_millis(250);

fn limits() -> trellis_proxy::Limits {
    trellis_proxy::Limits {
        max_in_flight_requests: IN_FLIGHT,
        ..trellis_proxy::Limits::default()
    }
}

/// The value of a `/metrics` series, e.g. `trellis_requests_shed_total{direction="outbound"}`;
/// a series with more labels than given matches by prefix and is summed.
fn metric(text: &str, series: &str) -> u64 {
    let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
    let labels = labels.trim_end_matches('}');
    (text.lines())
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let (n, rest) = key.split_once('{').unwrap_or((key, "}"));
            (n == name
                && labels
                    .split(',')
                    .all(|lbl| lbl.is_empty() || rest.contains(lbl)))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .map(|v| v as u64)
        .sum()
}

async fn metrics(mesh: &Mesh, service: &str) -> String {
    let index = (mesh.workloads.iter())
        .position(|w| w.service == service)
        .expect("a workload");
    let (status, text) = mesh.admin_get(index, "/metrics").await.expect("metrics");
    assert_eq!(status, 200);
    text
}

/// What the well-behaved clients saw.
#[derive(Default)]
struct Calls {
    latencies: Vec<Duration>,
    errors: Vec<String>,
}

/// One well-behaved client: a request every `PERIOD` until `RUN` is over, each answered in full.
async fn steady(client: TestClient, id: usize) -> Calls {
    let mut calls = Calls::default();
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = Instant::now() + RUN;
    while Instant::now() < end {
        tick.tick().await;
        let started = Instant::now();
        let path = format!("/steady/{id}");
        match client.get("hello", &path).await {
            Ok((rsp, _)) if rsp.status() == 200 => calls.latencies.push(started.elapsed()),
            Ok((rsp, _)) => {
                let why = (rsp.headers().get("trellis-error"))
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                calls.errors.push(format!("{} {why}", rsp.status()));
            }
            Err(e) => calls.errors.push(format!("{e:#}")),
        }
    }
    calls
}

/// Opens `ABANDONED` streams on a connection (requests whose bodies never end, so each stays in
/// flight), then abandons them all at once: with RST_STREAM CANCEL on even rounds, by dropping
/// the connection on odd ones. Repeats until `stop`.
async fn abandon(listener: std::net::SocketAddr, stop: Arc<AtomicBool>) -> (u64, FrameCounts) {
    let block = request_block("POST", "/abandoned", "hello", &[]);
    let cancel = h2::CANCEL.to_be_bytes();
    let (mut rounds, mut counts) = (0u64, FrameCounts::default());
    while !stop.load(Ordering::Relaxed) {
        let (tcp, buf) = H2::connect(listener).await.into_parts();
        let (read, mut write) = tcp.into_split();
        let reader = tokio::spawn(count_frames(read, buf));
        let opens: Vec<u8> = (0..ABANDONED)
            .flat_map(|i| frame(h2::HEADERS, h2::END_HEADERS, 1 + 2 * i, &block))
            .collect();
        let _ = write.write_all(&opens).await;
        // Long enough for the requests to reach the destination's sidecar and app.
        tokio::time::sleep(Duration::from_millis(300)).await;
        if rounds % 2 == 0 {
            let resets: Vec<u8> = (0..ABANDONED)
                .flat_map(|i| frame(h2::RST_STREAM, 0, 1 + 2 * i, &cancel))
                .collect();
            let _ = write.write_all(&resets).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Ends the connection (the server closes its side once it sees the EOF).
        drop(write);
        if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_secs(2), reader).await {
            counts.add(&c);
        }
        rounds += 1;
        // A pause between rounds: the work each round forces on the sidecars (hundreds of
        // requests forwarded and cancelled, as many app connections opened and reset, in a debug
        // build sharing two cores with everything else here) is CPU the other clients wait for;
        // back to back, that alone would set their latency.
        tokio::time::sleep(ROUND_PAUSE).await;
    }
    (rounds, counts)
}

/// Rapid reset (CVE-2023-44487): HEADERS + RST_STREAM pairs as fast as the connection takes
/// them, on a new connection whenever the last one is closed, until `stop`.
async fn rapid_reset(listener: std::net::SocketAddr, stop: Arc<AtomicBool>) -> (u64, FrameCounts) {
    let block = request_block("GET", "/reset", "hello", &[]);
    let cancel = h2::CANCEL.to_be_bytes();
    let (mut pairs, mut counts) = (0u64, FrameCounts::default());
    while !stop.load(Ordering::Relaxed) {
        let (tcp, buf) = H2::connect(listener).await.into_parts();
        let (read, mut write) = tcp.into_split();
        let reader = tokio::spawn(count_frames(read, buf));
        let mut stream = 1u32;
        while !stop.load(Ordering::Relaxed) && !reader.is_finished() {
            let mut batch = Vec::new();
            for _ in 0..100 {
                let flags = h2::END_HEADERS | h2::END_STREAM;
                batch.extend(frame(h2::HEADERS, flags, stream, &block));
                batch.extend(frame(h2::RST_STREAM, 0, stream, &cancel));
                stream += 2;
            }
            if write.write_all(&batch).await.is_err() {
                break;
            }
            pairs += 100;
            tokio::task::yield_now().await;
        }
        drop(write);
        let c = match tokio::time::timeout(Duration::from_secs(2), reader).await {
            Ok(Ok(c)) => c,
            _ => FrameCounts::default(),
        };
        counts.add(&c);
    }
    (pairs, counts)
}

fn p99(latencies: &mut [Duration]) -> Duration {
    latencies.sort();
    let at = (latencies.len() * 99 / 100).min(latencies.len().saturating_sub(1));
    latencies.get(at).copied().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_abusive_client_does_not_fail_or_delay_the_others() {
    let mesh = Mesh::builder()
        .limits(limits())
        .service(Service::http1("client"))
        // An HTTP/1.1 app (the harness's default). Behind an h2c app whose server keeps hyper's
        // default reset limits, the burst of cancellations reaches the app's own connection,
        // which the app then closes: not covered here (see the report in the issue).
        .service(Service::http1("hello"))
        // Every client's requests on the one HTTP/2 connection, the sharing this test is about:
        // with HTTP/1.1 to peers (the default) the HTTP/1.1 clients would have pooled
        // connections of their own, and new ones opened in the run would read as the shared
        // connection closing.
        .http1_to_peers(trellis_proxy::transport::Http1ToPeers::H2)
        .start()
        .await
        .expect("mesh starts");
    let listener = mesh.workload("client").outbound;
    let clients: Vec<TestClient> = (0..CLIENTS)
        .map(|i| mesh.client("client", i % 2 == 1))
        .collect();
    // The shared connection between the sidecars is open before the abuse starts.
    for c in &clients {
        let (rsp, _) = c.get("hello", "/warm").await.expect("warm-up request");
        assert_eq!(rsp.status(), 200);
    }
    let inbound = "trellis_tcp_connections_opened_total{direction=\"inbound\"}";
    let opened_before = metric(&metrics(&mesh, "hello").await, inbound);

    let stop = Arc::new(AtomicBool::new(false));
    let abandoner = tokio::spawn(abandon(listener, stop.clone()));
    // The rapid resetter runs for 4 s in the middle of the run.
    let resetter = {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let quit = Arc::new(AtomicBool::new(false));
            let task = tokio::spawn(rapid_reset(listener, quit.clone()));
            tokio::time::sleep(Duration::from_secs(4)).await;
            quit.store(true, Ordering::Relaxed);
            task.await.unwrap_or_default()
        })
    };
    let steady: Vec<_> = (clients.into_iter().enumerate())
        .map(|(i, c)| tokio::spawn(steady(c, i)))
        .collect();
    let mut all = Calls::default();
    for task in steady {
        let calls = task.await.expect("client task");
        all.latencies.extend(calls.latencies);
        all.errors.extend(calls.errors);
    }
    stop.store(true, Ordering::Relaxed);
    let (rounds, abandoned) = abandoner.await.expect("abandoning client");
    let (pairs, reset) = resetter.await.expect("rapid resetter");

    let client_metrics = metrics(&mesh, "client").await;
    let hello_metrics = metrics(&mesh, "hello").await;
    let opened_after = metric(&hello_metrics, inbound);
    let (_, stats) = mesh.admin_get(0, "/stats").await.expect("stats");
    let ejections = metric(&client_metrics, "trellis_outlier_ejections_total");
    let shed = metric(
        &client_metrics,
        "trellis_requests_shed_total{direction=\"outbound\"}",
    );
    let total = all.latencies.len() + all.errors.len();
    let p99 = p99(&mut all.latencies);
    let p50 = all
        .latencies
        .get(all.latencies.len() / 2)
        .copied()
        .unwrap_or_default();
    let max = all.latencies.last().copied().unwrap_or_default();
    let report = format!(
        "well-behaved: {total} requests, {} errors (first: {:?}), p50 {p50:?} p99 {p99:?} max {max:?}; \
         abandoner: {rounds} rounds, {abandoned:?}; rapid resetter: {pairs} pairs, {reset:?}; \
         outbound shed {shed}; ejections {ejections}; inbound connections opened {opened_before} -> {opened_after}",
        all.errors.len(),
        all.errors.iter().take(5).collect::<Vec<_>>(),
    );
    eprintln!("{report}");

    let expected = (CLIENTS as u128 * RUN.as_millis() / PERIOD.as_millis()) as usize;
    assert!(
        total >= expected * 8 / 10,
        "the clients kept their rate: {report}"
    );
    assert!(all.errors.is_empty(), "no errors: {report}");
    assert!(p99 <= P99_BOUND, "p99 within {P99_BOUND:?}: {report}");
    assert_eq!(ejections, 0, "the endpoint was not ejected: {report}");
    let ejected_now: Vec<&str> = (stats.lines())
        .filter(|l| l.contains("\"ejectedNow\""))
        .collect();
    assert!(
        !ejected_now.is_empty()
            && (ejected_now.iter()).all(|l| l.trim().trim_end_matches(',').ends_with(": 0")),
        "no endpoint ejected now: {ejected_now:?}"
    );
    assert_eq!(
        opened_after, opened_before,
        "the sidecar-to-sidecar connection was never closed: {report}"
    );
    // The abusers did what they meant to, and were limited for it.
    assert!(rounds >= 5, "{report}");
    assert!(
        abandoned.other > 0 && shed >= abandoned.other,
        "the abandoning client was shed over its fair share: {report}"
    );
    assert!(
        reset.calm_down > 0,
        "the rapid resetter's connections were closed: {report}"
    );
}
