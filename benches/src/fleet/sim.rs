//! One simulated sidecar: the discovery stream exactly as `proxy/src/discovery` opens it (node on
//! the first request, one request per type in `type_url::ALL` order, bearer token, ACK per
//! nonce), without decoding payloads. What each one saw goes into the shared `Recorder` as
//! unix-microsecond stamps in atomics, so ten thousand of them record without a lock. Once the
//! recorder says so (the reconnect storm, `storm.rs`), a lost stream is opened again after the
//! sidecar's own jittered backoff, or the control plane's retry pushback when it is longer, with
//! `initial_resource_versions` for what it holds (`held.rs`) unless the worst case is asked for.

use super::held::{Held, Strings};
use super::subscribe::{type_index, Subscriptions, TYPES};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use trellis_api::discovery::aggregated_discovery_client::AggregatedDiscoveryClient;
use trellis_api::discovery::{DeltaDiscoveryRequest, Node};
use trellis_api::type_url;

pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// What every simulated proxy saw; indexed by proxy.
pub struct Recorder {
    /// When each proxy had received every type once (0: not yet).
    pub synced_at: Vec<AtomicU64>,
    pub synced: AtomicUsize,
    /// The system version the current push round waits for (0: none).
    pub awaiting: AtomicU64,
    /// Per proxy and type index, when it received a response of `awaiting` (0: not yet).
    pub pushed_at: Vec<[AtomicU64; TYPES]>,
    /// Resources carried by the responses of `awaiting`, over all proxies.
    pub pushed_resources: AtomicU64,
    /// Bytes of resource payload received over the whole run.
    pub payload_bytes: AtomicU64,
    /// Streams that failed while `reconnect` was off (they are not retried).
    pub failed: AtomicUsize,
    /// Per proxy, whether its stream failed that way (it expects no more pushes).
    pub dead: Vec<AtomicBool>,
    /// Whether lost streams are opened again (set for the reconnect storm).
    pub reconnect: AtomicBool,
    /// Streams opened again, and of the attempts the ones refused with `RESOURCE_EXHAUSTED`.
    pub reconnects: AtomicUsize,
    pub refused: AtomicUsize,
    pub first_error: Mutex<Option<String>>,
    /// Names and versions the proxies hold, interned for all of them (`held.rs`).
    pub strings: Strings,
}

impl Recorder {
    pub fn new(proxies: usize) -> Arc<Recorder> {
        let stamps = || (0..proxies).map(|_| AtomicU64::new(0)).collect();
        Arc::new(Recorder {
            synced_at: stamps(),
            synced: AtomicUsize::new(0),
            awaiting: AtomicU64::new(0),
            pushed_at: (0..proxies)
                .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                .collect(),
            pushed_resources: AtomicU64::new(0),
            payload_bytes: AtomicU64::new(0),
            failed: AtomicUsize::new(0),
            dead: (0..proxies).map(|_| AtomicBool::new(false)).collect(),
            reconnect: AtomicBool::new(false),
            reconnects: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            first_error: Mutex::new(None),
            strings: Strings::default(),
        })
    }

    /// Starts waiting for `version`: clears the previous round's stamps.
    pub fn await_version(&self, version: u64) {
        for stamp in self.pushed_at.iter().flatten() {
            stamp.store(0, Ordering::Relaxed);
        }
        self.pushed_resources.store(0, Ordering::Relaxed);
        self.awaiting.store(version, Ordering::Release);
    }

    /// From now on lost streams are opened again, and proxies count as synced once more only
    /// after a new stream has brought every type.
    pub fn start_storm(&self) {
        self.reconnect.store(true, Ordering::Release);
        for stamp in &self.synced_at {
            stamp.store(0, Ordering::Relaxed);
        }
        self.synced.store(0, Ordering::Relaxed);
    }

    /// The types of `awaiting` proxy `index` received, as a mask of bits `1 << type index`.
    pub fn received(&self, index: usize) -> u32 {
        let Some(stamps) = self.pushed_at.get(index) else {
            return 0;
        };
        (stamps.iter().enumerate())
            .filter(|(_, s)| s.load(Ordering::Relaxed) != 0)
            .fold(0, |mask, (t, _)| mask | 1 << t)
    }

    /// When proxy `index` received type index `t` of `awaiting` (0: not yet).
    pub fn pushed(&self, index: usize, t: usize) -> u64 {
        (self.pushed_at.get(index))
            .and_then(|stamps| stamps.get(t))
            .map_or(0, |s| s.load(Ordering::Relaxed))
    }

    fn fail(&self, index: usize, error: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if let Some(dead) = self.dead.get(index) {
            dead.store(true, Ordering::Relaxed);
        }
        if let Ok(mut first) = self.first_error.lock() {
            first.get_or_insert(error);
        }
    }
}

/// Who one simulated proxy is and what it subscribes to.
pub struct SimProxy {
    pub index: usize,
    pub node: Node,
    pub token: Arc<str>,
    /// Names per type in `type_url::ALL` order (`subscribe::Plan::subscriptions`), shared with
    /// the run, which derives each push's expected receivers from them.
    pub subscriptions: Arc<Subscriptions>,
    /// Keep what is held and send it as `initial_resource_versions` on a reconnect.
    pub resume: bool,
}

/// Runs one proxy's stream until it fails or the control plane closes it; with `reconnect` set,
/// opens it again after a backoff, as the sidecar does.
pub async fn run(proxy: SimProxy, channel: Channel, rec: Arc<Recorder>) {
    let mut attempt = 0;
    let mut held = Held::default();
    loop {
        let result = stream(&proxy, channel.clone(), &rec, &mut attempt, &mut held).await;
        if !rec.reconnect.load(Ordering::Acquire) {
            if let Err(status) = result {
                rec.fail(
                    proxy.index,
                    format!(
                        "proxy {}: {} {}",
                        proxy.node.id,
                        status.code(),
                        status.message()
                    ),
                );
            }
            return;
        }
        rec.reconnects.fetch_add(1, Ordering::Relaxed);
        let pushback = match &result {
            Err(status) => {
                if status.code() == tonic::Code::ResourceExhausted {
                    rec.refused.fetch_add(1, Ordering::Relaxed);
                }
                trellis_proxy::control_plane::retry_pushback(status)
            }
            Ok(()) => None,
        };
        let delay = trellis_proxy::identity::backoff(attempt).max(pushback.unwrap_or_default());
        attempt = attempt.saturating_add(1);
        tokio::time::sleep(delay).await;
    }
}

/// One stream; `attempt` goes back to 0 once a response arrives on it. `held` outlives the
/// stream: it is what the next one resumes from.
async fn stream(
    proxy: &SimProxy,
    channel: Channel,
    rec: &Recorder,
    attempt: &mut u32,
    held: &mut Held,
) -> Result<(), tonic::Status> {
    let (tx, rx) = mpsc::channel(2 * TYPES);
    for (i, (t, names)) in type_url::ALL
        .iter()
        .zip(proxy.subscriptions.iter())
        .enumerate()
    {
        let first = DeltaDiscoveryRequest {
            node: (i == 0).then(|| proxy.node.clone()),
            type_url: (*t).to_owned(),
            resource_names_subscribe: names.clone(),
            initial_resource_versions: held.versions(i, &rec.strings),
            ..Default::default()
        };
        // Room for twice the types and one request per type is sent: cannot fail while `rx`
        // lives.
        let _ = tx.send(first).await;
    }
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    let bearer = format!("Bearer {}", proxy.token)
        .parse()
        .map_err(|_| tonic::Status::unauthenticated("token is not valid metadata"))?;
    request
        .metadata_mut()
        .insert(trellis_api::AUTHORIZATION, bearer);
    let mut client = AggregatedDiscoveryClient::new(channel);
    let mut responses = client.delta_resources(request).await?.into_inner();
    let mut seen = [false; TYPES];
    while let Some(rsp) = responses.message().await? {
        *attempt = 0;
        let now = unix_micros();
        let payload: usize = rsp.resources.iter().map(|r| r.payload.len()).sum();
        rec.payload_bytes
            .fetch_add(payload as u64, Ordering::Relaxed);
        let t = type_index(&rsp.type_url);
        if let Some(t) = t {
            if proxy.resume {
                held.apply(t, &rsp, &rec.strings);
            }
            if !seen[t] {
                seen[t] = true;
                if seen.iter().all(|s| *s) {
                    rec.synced_at[proxy.index].store(now, Ordering::Relaxed);
                    rec.synced.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let awaiting = rec.awaiting.load(Ordering::Acquire);
        if awaiting != 0 && rsp.system_version_info.parse() == Ok(awaiting) {
            rec.pushed_resources
                .fetch_add(rsp.resources.len() as u64, Ordering::Relaxed);
            let stamp =
                (t.zip(rec.pushed_at.get(proxy.index))).and_then(|(t, stamps)| stamps.get(t));
            if let Some(stamp) = stamp {
                stamp.store(now, Ordering::Relaxed);
            }
        }
        let ack = DeltaDiscoveryRequest {
            type_url: rsp.type_url,
            response_nonce: rsp.nonce,
            ..Default::default()
        };
        if tx.send(ack).await.is_err() {
            break;
        }
    }
    Ok(())
}
