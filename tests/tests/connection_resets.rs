//! Connection resets at random between two sidecars: a seeded chaos relay (`ChaosRelay`) sits
//! where the caller's sidecar expects the destination's, and resets connections (RST) at random
//! points: in TLS handshakes, between requests, mid-body. Under a few hundred concurrent requests
//! every one ends within a bound with 200, a clean 502/503/504 or a body that fails (never a
//! hang, never another status), no sidecar panics, retries absorb the failures that happen before
//! a response, and once the chaos stops every request succeeds again.
//!
//! `TRELLIS_CHAOS_SEED=<n>` replays a run's decisions (the seed is printed).

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use std::time::Duration;
use trellis_tests::client::full;
use trellis_tests::mesh::wait_until;
use trellis_tests::{Mesh, Service, TestClient};

/// A whole request must end within this; a hang fails the test instead of stalling it.
const BOUND: Duration = Duration::from_secs(10);

/// GET `path` on `service`: its status, within `BOUND`.
async fn get_status(client: &TestClient, service: &str, path: &str) -> u16 {
    match tokio::time::timeout(BOUND, client.get(service, path)).await {
        Ok(Ok((rsp, _))) => rsp.status().as_u16(),
        Ok(Err(e)) => panic!("GET {service}{path}: {e:#}"),
        Err(_) => panic!("GET {service}{path} hung for {BOUND:?}"),
    }
}

/// How the requests of one chaos run ended.
#[derive(Debug, Default)]
struct Outcomes {
    ok: u32,
    /// 502, 503 or 504 from the client's sidecar.
    clean_5xx: u32,
    /// 200 whose body then failed (the reset came mid-response): an error the client sees.
    truncated: u32,
    /// The connection to the client's own sidecar closed before a whole response head arrived.
    /// Seen only for responses with a body: the upstream's 200 head was handed to the HTTP/1
    /// server, which keeps it buffered until the first body bytes; the reset failed the body
    /// first, so the head was never written. To the client it is the same truncated response.
    head_lost: u32,
    /// Anything else: another status, another client error, a hang. Must stay empty.
    bad: Vec<String>,
}

impl Outcomes {
    fn total(&self) -> u32 {
        self.ok + self.clean_5xx + self.truncated + self.head_lost + self.bad.len() as u32
    }

    fn add(&mut self, other: Outcomes) {
        self.ok += other.ok;
        self.clean_5xx += other.clean_5xx;
        self.truncated += other.truncated;
        self.head_lost += other.head_lost;
        self.bad.extend(other.bad);
    }
}

/// `n` requests from 8 concurrent workers, each bounded by `BOUND`: every `put_every`-th is a PUT
/// with a 16 KiB body (idempotent, so retried too), the others GETs.
async fn under_chaos(client: &TestClient, service: &str, n: u32, put_every: u32) -> Outcomes {
    use std::sync::atomic::{AtomicU32, Ordering};
    let next = std::sync::Arc::new(AtomicU32::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (client, next, service) = (client.clone(), next.clone(), service.to_string());
        workers.spawn(async move {
            let mut out = Outcomes::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return out;
                }
                let put = i % put_every == 0;
                let req = if put {
                    Request::put(format!("http://{service}/put/{i}"))
                        .body(full(vec![b'p'; 16 * 1024]))
                } else {
                    Request::get(format!("http://{service}/get/{i}")).body(full(Bytes::new()))
                };
                let req = req.expect("request");
                let ended = tokio::time::timeout(BOUND, async {
                    let rsp = client.send(req).await.map_err(|e| error_chain(&e))?;
                    let status = rsp.status().as_u16();
                    let body = rsp.into_body().collect().await;
                    Ok::<_, String>((status, body.is_ok()))
                })
                .await;
                match ended {
                    Ok(Ok((200, true))) => out.ok += 1,
                    Ok(Ok((200, false))) => out.truncated += 1,
                    Ok(Ok((502..=504, _))) => out.clean_5xx += 1,
                    Ok(Ok((status, _))) => out.bad.push(format!("{i}: status {status}")),
                    Ok(Err(e)) if put && e.contains("connection closed before message") => {
                        out.head_lost += 1
                    }
                    Ok(Err(e)) => out.bad.push(format!("{i}: client error: {e}")),
                    Err(_) => out.bad.push(format!("{i}: hung for {BOUND:?}")),
                }
            }
        });
    }
    let mut all = Outcomes::default();
    while let Some(done) = workers.join_next().await {
        all.add(done.expect("worker"));
    }
    all
}

/// An error and its sources, for messages.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

static PANICS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Counts panics in any thread of this test binary (the sidecars run in-process), then reports
/// them as usual.
fn count_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            report(info);
        }));
    });
}

/// Reset chance per relayed chunk: a pooled connection between sidecars lives for about a
/// hundred chunks (some tens of requests), and a reset fails every request in flight on it.
const RESET_CHANCE: f64 = 0.015;

/// `TRELLIS_CHAOS_SEED` replays a run (the seed is printed).
fn chaos_seed() -> u64 {
    let seed = std::env::var("TRELLIS_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x007e_1115);
    println!("chaos seed {seed} (TRELLIS_CHAOS_SEED), reset chance {RESET_CHANCE} per chunk");
    seed
}

struct ChaosMesh {
    mesh: Mesh,
    client: TestClient,
    relays: Vec<trellis_tests::chaos::ChaosRelay>,
}

/// client, `plain` (no retries) and `retried` (3 attempts on resets and gateway errors), each
/// destination's endpoint replaced by a chaos relay in front of its sidecar.
async fn chaos_mesh() -> ChaosMesh {
    count_panics();
    let seed = chaos_seed();
    let retried = "\
policy:
  retry:
    attempts: 3
    retryOn: [reset, gateway-error, connect-failure]
    backoff: {base: 5ms, max: 50ms}
    budget: {ratio: 1.0, minPerSecond: 1000}
  circuitBreaker: {maxRetries: 1000}
";
    let mesh = Mesh::builder()
        .service(Service::http1("client"))
        .service(Service::http1("plain").yaml("policy:\n  retry: {attempts: 1}\n"))
        .service(Service::http1("retried").yaml(retried))
        .start()
        .await
        .expect("mesh starts");
    // The client calls both before the relays go in (on demand, its sidecar holds only what it
    // has called, so the relays' addresses would not reach it otherwise).
    for service in ["plain", "retried"] {
        let (rsp, _) = (mesh.client("client", false).get(service, "/").await).expect("request");
        assert_eq!(rsp.status(), 200, "{service}");
    }
    // The least intrusive place: the config lists the relay where the sidecar's inbound was.
    let mut config = mesh.render_config();
    let mut relays = Vec::new();
    for (i, service) in ["plain", "retried"].into_iter().enumerate() {
        let inbound = mesh.workload(service).inbound;
        let relay = trellis_tests::chaos::ChaosRelay::start(inbound, seed + i as u64, RESET_CHANCE)
            .await
            .expect("relay");
        config = config.replace(&inbound.to_string(), &relay.addr.to_string());
        relays.push(relay);
    }
    mesh.write_raw_config(&config).expect("write config");
    let client_index = mesh
        .workloads
        .iter()
        .position(|w| w.service == "client")
        .expect("client workload");
    wait_until(Duration::from_secs(10), || async {
        let (_, body) = mesh
            .admin_get(client_index, "/config")
            .await
            .unwrap_or_default();
        relays.iter().all(|r| body.contains(&r.addr.to_string()))
    })
    .await
    .expect("the client's sidecar sends through the relays");
    let client = mesh.client("client", false);
    ChaosMesh {
        mesh,
        client,
        relays,
    }
}

#[tokio::test]
async fn random_connection_resets_between_sidecars() {
    let ChaosMesh {
        mesh,
        client,
        relays,
    } = chaos_mesh().await;
    let plain = under_chaos(&client, "plain", 400, 3).await;
    let retried = under_chaos(&client, "retried", 400, 3).await;
    println!("plain:   {plain:?}\nretried: {retried:?}");
    let resets: Vec<u64> = relays.iter().map(|r| r.resets()).collect();
    let connections: Vec<u64> = relays.iter().map(|r| r.connections()).collect();
    println!("relays: {connections:?} connections, {resets:?} resets");
    for (name, out) in [("plain", &plain), ("retried", &retried)] {
        assert_eq!(out.total(), 400, "{name}: every request ended");
        assert!(
            out.bad.is_empty(),
            "{name}: only 200 or a clean 5xx: {:?}",
            out.bad
        );
    }
    assert!(
        resets.iter().all(|r| *r >= 2),
        "chaos happened: {resets:?} resets"
    );
    assert!(plain.ok < 400, "without retries resets show: {plain:?}");
    // Three attempts turn nearly every 5xx into a success (seeds 1-5: 0 to 6 left, against 29
    // to 59 without retries); what remains is mostly responses cut mid-body, which no proxy may
    // retry once the head is on its way to the client.
    assert!(retried.ok >= 340, "retries absorb most resets: {retried:?}");
    assert!(
        retried.clean_5xx * 2 < plain.clean_5xx,
        "retries absorb the failures that happen before a response: {retried:?} vs {plain:?}"
    );

    // The chaos stops: every request succeeds again (after a first one, which may still meet
    // a connection reset just before).
    for relay in &relays {
        relay.set_reset_chance(0.0);
    }
    for service in ["plain", "retried"] {
        wait_until(Duration::from_secs(10), || async {
            get_status(&client, service, "/").await == 200
        })
        .await
        .expect("a request succeeds once the chaos stops");
        let after = under_chaos(&client, service, 100, 3).await;
        assert_eq!(after.ok, 100, "{service} after the chaos: {after:?}");
    }
    assert_eq!(
        PANICS.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no panic in any sidecar"
    );
    drop(mesh);
}
