//! The demo's traffic: a burst sent the way the frontend app would (through its sidecar's outbound
//! listener, addressed by service name, HTTP/1.1 or h2c as each service speaks), the tally of what
//! came back, and the summary that shows balancing, latency and the identities mTLS verified.
//! Also a tiny HTTP/1.1 GET for the sidecars' admin endpoints.

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

const REQUEST_LIMIT: Duration = Duration::from_secs(10);
/// Latencies are recorded in µs up to a minute; above that the request timed out anyway.
const MAX_LATENCY_US: u64 = 60_000_000;

type Connector = tower::util::BoxCloneSyncService<http::Uri, TokioIo<TcpStream>, std::io::Error>;
type MeshClient = Client<Connector, Empty<Bytes>>;

/// A client that, whatever the URI's authority, connects to the sidecar at `outbound`: the
/// authority names the service, and routing it is the sidecar's job.
fn client(outbound: SocketAddr, h2c: bool) -> MeshClient {
    let connector: Connector = tower::util::BoxCloneSyncService::new(tower::service_fn(
        move |_uri: http::Uri| async move {
            let tcp = TcpStream::connect(outbound).await?;
            tcp.set_nodelay(true)?;
            Ok(TokioIo::new(tcp))
        },
    ));
    Client::builder(TokioExecutor::new())
        .http2_only(h2c)
        .build(connector)
}

/// What the burst saw.
#[derive(Debug)]
pub struct Traffic {
    pub requests: usize,
    pub concurrency: usize,
    pub elapsed: Duration,
    pub latency_us: Histogram<u64>,
    /// "200", "503", or "error" for requests with no response.
    pub statuses: BTreeMap<String, usize>,
    /// Target service → the `service` field of the replica that answered → count.
    pub answered_by: BTreeMap<String, BTreeMap<String, usize>>,
    /// The `caller` the apps reported (the identity their inbound sidecar verified).
    pub callers: BTreeMap<String, usize>,
    /// The first failure, to show why rather than only that.
    pub first_error: Option<String>,
}

impl Traffic {
    fn new(requests: usize, concurrency: usize) -> anyhow::Result<Traffic> {
        Ok(Traffic {
            requests,
            concurrency,
            elapsed: Duration::ZERO,
            latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .context("creating the latency histogram")?,
            statuses: BTreeMap::new(),
            answered_by: BTreeMap::new(),
            callers: BTreeMap::new(),
            first_error: None,
        })
    }

    fn merge(&mut self, other: Traffic) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        for (service, pods) in other.answered_by {
            let mine = self.answered_by.entry(service).or_default();
            for (pod, v) in pods {
                *mine.entry(pod).or_default() += v;
            }
        }
        for (k, v) in other.callers {
            *self.callers.entry(k).or_default() += v;
        }
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn record_error(&mut self, message: String) {
        *self.statuses.entry("error".into()).or_default() += 1;
        self.first_error.get_or_insert(message);
    }
}

/// Sends `requests` GETs through the sidecar at `outbound`, alternating between `targets`
/// (service name, speaks h2c), `concurrency` at a time.
pub async fn burst(
    outbound: SocketAddr,
    targets: &[(String, bool)],
    requests: usize,
    concurrency: usize,
) -> anyhow::Result<Traffic> {
    anyhow::ensure!(!targets.is_empty(), "no services to send to");
    let http1 = client(outbound, false);
    let h2c = client(outbound, true);
    let next = Arc::new(AtomicUsize::new(0));
    let targets: Arc<[(String, bool)]> = targets.into();
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (http1, h2c, next, targets) =
            (http1.clone(), h2c.clone(), next.clone(), targets.clone());
        let mut tally = Traffic::new(requests, concurrency)?;
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    return tally;
                }
                let (service, is_h2c) = &targets[i % targets.len()];
                let client = if *is_h2c { &h2c } else { &http1 };
                let sent = Instant::now();
                let outcome = tokio::time::timeout(REQUEST_LIMIT, get_json(client, service)).await;
                let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(MAX_LATENCY_US);
                tally
                    .latency_us
                    .saturating_record(micros.clamp(1, MAX_LATENCY_US));
                match outcome {
                    Err(_) => {
                        tally.record_error(format!("{service}: no answer within {REQUEST_LIMIT:?}"))
                    }
                    Ok(Err(e)) => tally.record_error(format!("{service}: {e:#}")),
                    Ok(Ok(answer)) => {
                        *tally.statuses.entry(answer.status.to_string()).or_default() += 1;
                        if answer.status == 200 {
                            let pod = answer.json["service"].as_str().unwrap_or("?").to_owned();
                            *tally
                                .answered_by
                                .entry(service.clone())
                                .or_default()
                                .entry(pod)
                                .or_default() += 1;
                            let caller = answer.json["caller"]
                                .as_str()
                                .unwrap_or("(none)")
                                .to_owned();
                            *tally.callers.entry(caller).or_default() += 1;
                        } else if tally.first_error.is_none() {
                            tally.first_error = Some(format!(
                                "{service}: {} {}{}",
                                answer.status,
                                answer
                                    .proxy_error
                                    .map(|e| format!("(trellis-error: {e}) "))
                                    .unwrap_or_default(),
                                answer.body.trim()
                            ));
                        }
                    }
                }
            }
        }));
    }
    let mut total = Traffic::new(requests, concurrency)?;
    for worker in workers {
        total.merge(worker.await.context("a traffic worker panicked")?);
    }
    total.elapsed = start.elapsed();
    Ok(total)
}

struct Answer {
    status: u16,
    proxy_error: Option<String>,
    body: String,
    json: serde_json::Value,
}

async fn get_json(client: &MeshClient, service: &str) -> anyhow::Result<Answer> {
    let req = Request::get(format!("http://{service}/")).body(Empty::new())?;
    let rsp = client.request(req).await?;
    let status = rsp.status().as_u16();
    let proxy_error = rsp
        .headers()
        .get("trellis-error")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = rsp.into_body().collect().await?.to_bytes();
    let body = String::from_utf8_lossy(&bytes).into_owned();
    let json = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    Ok(Answer {
        status,
        proxy_error,
        body,
        json,
    })
}

/// A plain HTTP/1.1 GET (for admin endpoints): status and body.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let tcp = TcpStream::connect(addr).await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        // The connection task ends with the exchange; its error, if any, shows in the request's.
        tokio::spawn(conn);
        let req = Request::get(path)
            .header(http::header::HOST, host)
            .body(Empty::<Bytes>::new())?;
        let rsp = send.send_request(req).await?;
        let status = rsp.status().as_u16();
        let bytes = rsp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .with_context(|| format!("http://{addr}{path} did not answer within 2 s"))?
}

/// Every (endpoint address, required identity) in a sidecar's `/config` JSON. Read leniently: the
/// admin JSON is for people, so an unknown shape yields nothing rather than an error.
pub fn endpoint_identities(config_json: &str) -> Vec<(SocketAddr, String)> {
    let Ok(doc) = serde_json::from_str::<serde_json::Value>(config_json) else {
        return Vec::new();
    };
    let Some(clusters) = doc["config"]["clusters"].as_object() else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for cluster in clusters.values() {
        for endpoint in cluster["endpoints"].as_array().into_iter().flatten() {
            let addr = endpoint["addr"].as_str().and_then(|a| a.parse().ok());
            if let (Some(addr), Some(identity)) = (addr, endpoint["identity"].as_str()) {
                found.push((addr, identity.to_owned()));
            }
        }
    }
    found.sort();
    found
}

/// The identity the source sidecar demands of one endpoint before sending it a request.
#[derive(Debug, Clone)]
pub struct RequiredIdentity {
    pub pod: String,
    pub addr: SocketAddr,
    pub required: String,
    /// Whether it is the identity the mesh YAML gives the endpoint's service.
    pub matches_config: bool,
}

#[derive(Debug, Clone)]
pub enum Identities {
    Found(Vec<RequiredIdentity>),
    /// Why the sidecar's view could not be read.
    Unavailable(String),
}

/// The summary printed after the burst.
pub fn render_summary(traffic: &Traffic, identities: &Identities) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Sent {} requests as the frontend app ({} in flight) in {:.2} s",
        traffic.requests,
        traffic.concurrency,
        traffic.elapsed.as_secs_f64()
    );
    let statuses: Vec<String> = traffic
        .statuses
        .iter()
        .map(|(s, n)| format!("{s} × {n}"))
        .collect();
    let _ = writeln!(out, "  status:   {}", statuses.join(", "));
    if let Some(error) = &traffic.first_error {
        let _ = writeln!(out, "  first failure: {error}");
    }
    let h = &traffic.latency_us;
    if h.is_empty() {
        let _ = writeln!(out, "  latency:  no requests");
    } else {
        let _ = writeln!(
            out,
            "  latency:  p50 {}  p90 {}  p99 {}  max {}  (the first requests open the mTLS connections)",
            micros(h.value_at_quantile(0.5)),
            micros(h.value_at_quantile(0.9)),
            micros(h.value_at_quantile(0.99)),
            micros(h.max()),
        );
    }
    for (service, pods) in &traffic.answered_by {
        let pods: Vec<String> = pods.iter().map(|(p, n)| format!("{p} × {n}")).collect();
        let _ = writeln!(out, "  {service} answered by: {}", pods.join(", "));
    }
    if !traffic.callers.is_empty() {
        let callers: Vec<String> = traffic
            .callers
            .iter()
            .map(|(c, n)| format!("{c} × {n}"))
            .collect();
        let _ = writeln!(
            out,
            "  caller identity the apps received (verified by their sidecars): {}",
            callers.join(", ")
        );
    }
    match identities {
        Identities::Found(found) => {
            let _ = writeln!(out, "  server identities the frontend sidecar requires:");
            for id in found {
                let check = if id.matches_config {
                    "as mesh.yaml says"
                } else {
                    "DIFFERS from mesh.yaml"
                };
                let _ = writeln!(
                    out,
                    "    {:<8} {:<16} {}  ({check})",
                    id.pod, id.addr, id.required
                );
            }
        }
        Identities::Unavailable(why) => {
            let _ = writeln!(
                out,
                "  server identities: could not read the frontend sidecar's /config ({why})"
            );
        }
    }
    out
}

/// A latency in the unit that keeps it readable.
fn micros(us: u64) -> String {
    match us {
        0..=999 => format!("{us} µs"),
        1_000..=999_999 => format!("{:.2} ms", us as f64 / 1e3),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_keep_readable_units() {
        assert_eq!(micros(850), "850 µs");
        assert_eq!(micros(1_234), "1.23 ms");
        assert_eq!(micros(2_500_000), "2.50 s");
    }

    #[test]
    fn summary_shows_statuses_latency_balancing_and_identities() {
        let mut t = Traffic::new(4, 2).unwrap();
        t.elapsed = Duration::from_millis(120);
        for us in [500, 900, 1_500, 3_000] {
            t.latency_us.record(us).unwrap();
        }
        t.statuses.insert("200".into(), 4);
        t.answered_by
            .entry("hello".into())
            .or_default()
            .insert("hello-0".into(), 1);
        t.answered_by
            .entry("hello".into())
            .or_default()
            .insert("hello-1".into(), 1);
        t.answered_by
            .entry("echo".into())
            .or_default()
            .insert("echo-0".into(), 2);
        t.callers
            .insert("spiffe://trellis.local/ns/default/sa/frontend".into(), 4);
        let ids = Identities::Found(vec![RequiredIdentity {
            pod: "hello-0".into(),
            addr: "127.0.0.2:4143".parse().unwrap(),
            required: "spiffe://trellis.local/ns/default/sa/hello".into(),
            matches_config: true,
        }]);
        let text = render_summary(&t, &ids);
        assert!(
            text.starts_with("Sent 4 requests as the frontend app (2 in flight) in 0.12 s\n"),
            "{text}"
        );
        assert!(text.contains("  status:   200 × 4\n"), "{text}");
        assert!(text.contains("p50 900 µs"), "{text}");
        assert!(text.contains("max 3.00 ms"), "{text}");
        assert!(
            text.contains("  hello answered by: hello-0 × 1, hello-1 × 1\n"),
            "{text}"
        );
        assert!(text.contains("  echo answered by: echo-0 × 2\n"), "{text}");
        assert!(text.contains("sa/frontend × 4"), "{text}");
        assert!(text.contains("hello-0  127.0.0.2:4143   spiffe://trellis.local/ns/default/sa/hello  (as mesh.yaml says)"), "{text}");
    }

    #[test]
    fn failures_are_explained() {
        let mut t = Traffic::new(1, 1).unwrap();
        t.record_error("hello: connection refused".into());
        let text = render_summary(&t, &Identities::Unavailable("timed out".into()));
        assert!(text.contains("status:   error × 1"), "{text}");
        assert!(
            text.contains("first failure: hello: connection refused"),
            "{text}"
        );
        assert!(text.contains("latency:  no requests"), "{text}");
        assert!(
            text.contains("could not read the frontend sidecar's /config (timed out)"),
            "{text}"
        );
    }

    #[test]
    fn endpoint_identities_are_read_from_the_admin_json() {
        let json = r#"{"config":{"clusters":{"hello":{"endpoints":[
            {"addr":"127.0.0.3:4143","identity":"spiffe://t/ns/default/sa/hello","weight":1},
            {"addr":"127.0.0.2:4143","identity":"spiffe://t/ns/default/sa/hello","weight":1}]}}}}"#;
        let found = endpoint_identities(json);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].0, "127.0.0.2:4143".parse::<SocketAddr>().unwrap());
        assert!(endpoint_identities("not json").is_empty());
    }
}
