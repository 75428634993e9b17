//! The control plane's own Prometheus metrics, served at `/metrics` on the admin port
//! (`admin.rs`). One `ControlPlaneMetrics` of atomics is shared through an `Arc` by the modules
//! where things happen (discovery streams, the stream caps, the accept loop, the identity service,
//! the publisher), so counting costs one relaxed atomic add and never a lock: the discovery push
//! path runs once per proxy per config change. What already lives elsewhere is read at scrape time
//! instead of being copied: the served config version comes from the status watch. Labels are
//! bounded by construction (the resource types of `type_url::ALL`, fixed reason sets); nothing is labelled by
//! proxy or identity, which would grow with the fleet.
use std::sync::atomic::{fence, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use trellis_api::type_url;

use crate::proxies::{ConnectedProxies, ConnectedProxy, Listed};
use crate::status::ControlPlaneStatus;

const TYPES: usize = type_url::ALL.len();

/// Upper bounds (seconds) of the push latency buckets: a push normally takes well under a
/// millisecond per stream, and seconds mean streams backed up behind slow proxies.
pub const PUSH_LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Why a certificate request failed, the `reason` label of
/// `trellis_control_plane_certificate_requests_failed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateFailure {
    /// No token, a malformed one, or one the authenticator refused.
    Unauthenticated,
    /// The authenticator could not decide (the Kubernetes API did not answer a TokenReview).
    AuthUnavailable,
    /// The token is valid but for another identity than the one asked for.
    IdentityMismatch,
    /// The CSR did not parse, asked for other names, or used a refused key algorithm.
    InvalidCsr,
}

impl CertificateFailure {
    const ALL: [CertificateFailure; 4] = [
        CertificateFailure::Unauthenticated,
        CertificateFailure::AuthUnavailable,
        CertificateFailure::IdentityMismatch,
        CertificateFailure::InvalidCsr,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CertificateFailure::Unauthenticated => "unauthenticated",
            CertificateFailure::AuthUnavailable => "auth_unavailable",
            CertificateFailure::IdentityMismatch => "identity_mismatch",
            CertificateFailure::InvalidCsr => "invalid_csr",
        }
    }
}

/// Which discovery stream cap refused a stream (`discovery/limits.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamCap {
    PerIdentity,
    Total,
}

/// Every count the control plane keeps about itself.
#[derive(Debug)]
pub struct ControlPlaneMetrics {
    reloads_applied: AtomicU64,
    reloads_rejected: AtomicU64,
    pushes: [AtomicU64; TYPES],
    nacks: [AtomicU64; TYPES],
    push_latency: Histogram,
    published: PublishTimes,
    streams_refused_per_identity: AtomicU64,
    streams_refused_total: AtomicU64,
    connections_refused: AtomicU64,
    certificates_issued: AtomicU64,
    certificate_failures: [AtomicU64; CertificateFailure::ALL.len()],
    /// The issuing certificate's notAfter (unix seconds); `i64::MIN` until known.
    ca_not_after: AtomicI64,
    /// Who is connected: the admin port's `/proxies` (never a metric label).
    proxies: Arc<ConnectedProxies>,
}

impl Default for ControlPlaneMetrics {
    fn default() -> Self {
        ControlPlaneMetrics {
            reloads_applied: AtomicU64::new(0),
            reloads_rejected: AtomicU64::new(0),
            pushes: Default::default(),
            nacks: Default::default(),
            push_latency: Histogram::default(),
            published: PublishTimes::default(),
            streams_refused_per_identity: AtomicU64::new(0),
            streams_refused_total: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            certificates_issued: AtomicU64::new(0),
            certificate_failures: Default::default(),
            ca_not_after: AtomicI64::new(i64::MIN),
            proxies: Arc::default(),
        }
    }
}

fn type_index(type_url: &str) -> Option<usize> {
    type_url::ALL.iter().position(|t| *t == type_url)
}

impl ControlPlaneMetrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Lists an open discovery stream's proxy (`/proxies`, and the connected count) until the
    /// guard is dropped, however the stream ends.
    pub fn stream_connected(&self, proxy: ConnectedProxy) -> ConnectedStream {
        self.proxies.add(proxy)
    }

    /// The proxies connected now.
    pub fn proxies(&self) -> Vec<ConnectedProxy> {
        self.proxies.list()
    }

    /// Read from the list at scrape time: a stream opens and closes once, a scrape is rare.
    pub fn connected_proxies(&self) -> i64 {
        i64::try_from(self.proxies.len()).unwrap_or(i64::MAX)
    }

    /// A new config version was published at `at`; pushes for it measure their latency from
    /// then.
    pub fn config_applied(&self, version: u64, at: Instant) {
        self.reloads_applied.fetch_add(1, Ordering::Relaxed);
        self.published.record(version, at);
    }

    pub fn config_rejected(&self) {
        self.reloads_rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// A discovery response of `type_url` was handed to a stream.
    pub fn response_sent(&self, type_url: &str) {
        if let Some(i) = type_index(type_url) {
            self.pushes[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A response carrying config `version`, sent because that version was published, has just
    /// been handed to its stream. Versions published too long ago to be remembered (more than
    /// `PUBLISHED_SLOTS` publications back) are not measured.
    pub fn push_done(&self, version: u64, now: Instant) {
        if let Some(published) = self.published.get(version) {
            let seconds = now.saturating_duration_since(published).as_secs_f64();
            self.push_latency.observe(seconds);
        }
    }

    pub fn nack(&self, type_url: &str) {
        if let Some(i) = type_index(type_url) {
            self.nacks[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn stream_refused(&self, cap: StreamCap) {
        match cap {
            StreamCap::PerIdentity => &self.streams_refused_per_identity,
            StreamCap::Total => &self.streams_refused_total,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn certificate_issued(&self) {
        self.certificates_issued.fetch_add(1, Ordering::Relaxed);
    }

    pub fn certificate_failed(&self, reason: CertificateFailure) {
        if let Some(i) = CertificateFailure::ALL.iter().position(|r| *r == reason) {
            self.certificate_failures[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn connections_refused(&self) -> u64 {
        self.connections_refused.load(Ordering::Relaxed)
    }

    pub fn streams_refused(&self, cap: StreamCap) -> u64 {
        match cap {
            StreamCap::PerIdentity => &self.streams_refused_per_identity,
            StreamCap::Total => &self.streams_refused_total,
        }
        .load(Ordering::Relaxed)
    }

    pub fn set_ca_not_after(&self, unix_seconds: i64) {
        self.ca_not_after.store(unix_seconds, Ordering::Relaxed);
    }
}

/// One open discovery stream: in `/proxies` and `trellis_control_plane_connected_proxies` until
/// dropped.
pub type ConnectedStream = Listed;

/// A histogram of atomics: prometheus-client's `Histogram` takes a lock per observation, which
/// the push path must not. The count is derived from the buckets at scrape time so that it
/// always equals the `+Inf` bucket; the sum is kept in nanoseconds.
#[derive(Debug, Default)]
struct Histogram {
    /// One per bound in `PUSH_LATENCY_BUCKETS`, then `+Inf`; not cumulative.
    buckets: [AtomicU64; PUSH_LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn observe(&self, seconds: f64) {
        let i = PUSH_LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(PUSH_LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let nanos = Duration::from_secs_f64(seconds.max(0.0)).as_nanos();
        self.sum_nanos
            .fetch_add(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// (sum in seconds, count, per-bucket counts with their upper bounds).
    fn read(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets: Vec<(f64, u64)> = PUSH_LATENCY_BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed)).as_secs_f64();
        (sum, count, buckets)
    }
}

/// How many recent publications remember their time. A stream pushes the newest snapshot, so
/// only a stream more than this many versions behind (a proxy stalled through a burst of
/// reloads) goes unmeasured.
const PUBLISHED_SLOTS: usize = 16;

/// When recent config versions were published, for the push latency. `Snapshot` has no
/// timestamp, and a map behind a lock would put a lock on the push path, so this is a ring of
/// (version, time) slots indexed by version, each written as a seqlock: one publisher writes,
/// any number of streams read, and a reader that races a rewrite of its slot sees a version
/// other than its own and does not measure.
#[derive(Debug)]
struct PublishTimes {
    base: Instant,
    slots: [PublishSlot; PUBLISHED_SLOTS],
}

#[derive(Debug, Default)]
struct PublishSlot {
    /// 0 while being written (config versions start at 1).
    version: AtomicU64,
    nanos_since_base: AtomicU64,
}

impl Default for PublishTimes {
    fn default() -> Self {
        PublishTimes {
            base: Instant::now(),
            slots: Default::default(),
        }
    }
}

impl PublishTimes {
    fn slot(&self, version: u64) -> &PublishSlot {
        &self.slots[(version % PUBLISHED_SLOTS as u64) as usize]
    }

    fn record(&self, version: u64, at: Instant) {
        let nanos = at.saturating_duration_since(self.base).as_nanos();
        let slot = self.slot(version);
        slot.version.store(0, Ordering::Relaxed);
        fence(Ordering::Release);
        slot.nanos_since_base
            .store(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::Relaxed);
        slot.version.store(version, Ordering::Release);
    }

    fn get(&self, version: u64) -> Option<Instant> {
        let slot = self.slot(version);
        if version == 0 || slot.version.load(Ordering::Acquire) != version {
            return None;
        }
        let nanos = slot.nanos_since_base.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        if slot.version.load(Ordering::Relaxed) != version {
            return None;
        }
        Some(self.base + Duration::from_nanos(nanos))
    }
}

/// Reads the metrics and the status at scrape time.
#[derive(Debug, Clone)]
pub struct MetricsCollector {
    pub metrics: Arc<ControlPlaneMetrics>,
    pub status: watch::Receiver<ControlPlaneStatus>,
}

/// The Prometheus text exposition (format 0.0.4) of `collector`.
pub fn render(collector: MetricsCollector) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?;
    Ok(out)
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// A counter family; prometheus-client adds the `_total` suffix to `name`.
fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels<'_>, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in series {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> Result<(), std::fmt::Error> {
    let m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(v).encode(m)
}

fn by_type(counts: &[AtomicU64; TYPES]) -> Vec<(Labels<'static>, u64)> {
    type_url::ALL
        .iter()
        .zip(counts)
        .map(|(t, n)| (vec![("type_url", *t)], n.load(Ordering::Relaxed)))
        .collect()
}

impl Collector for MetricsCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.metrics;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let version = self.status.borrow().config_version;
        gauge(
            &mut e,
            "trellis_control_plane_connected_proxies",
            "Discovery streams open (one per connected proxy).",
            m.connected_proxies(),
        )?;
        gauge(
            &mut e,
            "trellis_control_plane_config_version",
            "The system version of the config being served (0 before the first config).",
            i64::try_from(version).unwrap_or(i64::MAX),
        )?;
        counter(
            &mut e,
            "trellis_control_plane_config_reloads",
            "Config changes applied, or rejected (the previous config kept serving).",
            &[
                (vec![("result", "applied")], load(&m.reloads_applied)),
                (vec![("result", "rejected")], load(&m.reloads_rejected)),
            ],
        )?;
        counter(
            &mut e,
            "trellis_control_plane_pushes",
            "Discovery responses sent to proxies, by resource type.",
            &by_type(&m.pushes),
        )?;
        counter(
            &mut e,
            "trellis_control_plane_nacks",
            "Discovery responses proxies rejected (NACKs), by resource type.",
            &by_type(&m.nacks),
        )?;
        {
            let (sum, count, buckets) = m.push_latency.read();
            let enc = e.encode_descriptor(
                "trellis_control_plane_push_latency_seconds",
                "Time from a config version being published to a stream sending a response for \
                 it, once per response.",
                None,
                MetricType::Histogram,
            )?;
            let mut enc = enc;
            enc.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                sum, count, &buckets, None,
            )?;
        }
        counter(
            &mut e,
            "trellis_control_plane_streams_refused",
            "Discovery streams refused with RESOURCE_EXHAUSTED, by the cap that refused them.",
            &[
                (
                    vec![("cap", "per_identity")],
                    load(&m.streams_refused_per_identity),
                ),
                (vec![("cap", "total")], load(&m.streams_refused_total)),
            ],
        )?;
        counter(
            &mut e,
            "trellis_control_plane_connections_refused",
            "Connections closed at once because max-connections were open.",
            &[(vec![], load(&m.connections_refused))],
        )?;
        counter(
            &mut e,
            "trellis_control_plane_certificates_issued",
            "Workload certificates signed.",
            &[(vec![], load(&m.certificates_issued))],
        )?;
        let failures: Vec<(Labels<'static>, u64)> = CertificateFailure::ALL
            .iter()
            .zip(&m.certificate_failures)
            .map(|(r, n)| (vec![("reason", r.as_str())], load(n)))
            .collect();
        counter(
            &mut e,
            "trellis_control_plane_certificate_requests_failed",
            "Certificate requests refused, by reason.",
            &failures,
        )?;
        let not_after = m.ca_not_after.load(Ordering::Relaxed);
        if not_after != i64::MIN {
            gauge(
                &mut e,
                "trellis_control_plane_ca_expiry_timestamp_seconds",
                "When the issuing CA certificate expires (unix seconds): no certificate is \
                 valid past it.",
                not_after,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collector(metrics: &Arc<ControlPlaneMetrics>, version: u64) -> MetricsCollector {
        let (_, status) = watch::channel(ControlPlaneStatus {
            config_version: version,
            ..Default::default()
        });
        MetricsCollector {
            metrics: metrics.clone(),
            status,
        }
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn renders_every_family_with_its_counts() {
        let m = ControlPlaneMetrics::new();
        let proxy = || ConnectedProxy::new(&Default::default(), "spiffe://t/ns/default/sa/a");
        let a = m.stream_connected(proxy());
        let b = m.stream_connected(proxy());
        drop(a);
        m.response_sent(type_url::CLUSTERS);
        m.response_sent(type_url::CLUSTERS);
        m.response_sent(type_url::ENDPOINTS);
        m.response_sent("not.a.Type");
        m.nack(type_url::ROUTES);
        m.config_applied(2, Instant::now());
        m.config_rejected();
        m.config_rejected();
        m.stream_refused(StreamCap::PerIdentity);
        m.stream_refused(StreamCap::Total);
        m.stream_refused(StreamCap::Total);
        m.connection_refused();
        m.certificate_issued();
        m.certificate_failed(CertificateFailure::IdentityMismatch);
        m.set_ca_not_after(1_900_000_000);
        let text = render(collector(&m, 7)).unwrap();
        let got = lines(&text);
        for want in [
            "trellis_control_plane_connected_proxies 1",
            "trellis_control_plane_config_version 7",
            "trellis_control_plane_config_reloads_total{result=\"applied\"} 1",
            "trellis_control_plane_config_reloads_total{result=\"rejected\"} 2",
            "trellis_control_plane_pushes_total{type_url=\"trellis.config.v1.Cluster\"} 2",
            "trellis_control_plane_pushes_total{type_url=\"trellis.config.v1.Endpoints\"} 1",
            "trellis_control_plane_pushes_total{type_url=\"trellis.config.v1.RouteConfig\"} 0",
            "trellis_control_plane_nacks_total{type_url=\"trellis.config.v1.RouteConfig\"} 1",
            "trellis_control_plane_nacks_total{type_url=\"trellis.config.v1.Cluster\"} 0",
            "trellis_control_plane_streams_refused_total{cap=\"per_identity\"} 1",
            "trellis_control_plane_streams_refused_total{cap=\"total\"} 2",
            "trellis_control_plane_connections_refused_total 1",
            "trellis_control_plane_certificates_issued_total 1",
            "trellis_control_plane_certificate_requests_failed_total{reason=\"identity_mismatch\"} 1",
            "trellis_control_plane_certificate_requests_failed_total{reason=\"invalid_csr\"} 0",
            "trellis_control_plane_ca_expiry_timestamp_seconds 1900000000",
            "trellis_control_plane_push_latency_seconds_count 0",
        ] {
            assert!(got.contains(&want), "missing {want:?} in\n{text}");
        }
        // One series per type for pushes and NACKs: an unknown type URL makes no series.
        let pushes = got
            .iter()
            .filter(|l| l.starts_with("trellis_control_plane_pushes_total"))
            .count();
        assert_eq!(pushes, trellis_api::type_url::ALL.len(), "{text}");
        assert!(text.contains("# TYPE trellis_control_plane_push_latency_seconds histogram"));
        drop(b);
        let text = render(collector(&m, 7)).unwrap();
        assert!(lines(&text).contains(&"trellis_control_plane_connected_proxies 0"));
    }

    #[test]
    fn ca_expiry_is_left_out_until_known() {
        let m = ControlPlaneMetrics::new();
        let text = render(collector(&m, 1)).unwrap();
        assert!(!text.contains("ca_expiry"), "{text}");
    }

    #[test]
    fn push_latency_is_measured_from_the_publication_of_the_version_pushed() {
        let m = ControlPlaneMetrics::new();
        let t0 = Instant::now();
        m.config_applied(3, t0);
        m.push_done(3, t0 + Duration::from_millis(30));
        m.push_done(3, t0 + Duration::from_millis(3));
        // Never published here (the initial version, or one forgotten): not measured.
        m.push_done(1, t0 + Duration::from_secs(100));
        let text = render(collector(&m, 3)).unwrap();
        let got = lines(&text);
        for want in [
            "trellis_control_plane_push_latency_seconds_count 2",
            "trellis_control_plane_push_latency_seconds_bucket{le=\"0.0025\"} 0",
            "trellis_control_plane_push_latency_seconds_bucket{le=\"0.005\"} 1",
            "trellis_control_plane_push_latency_seconds_bucket{le=\"0.025\"} 1",
            "trellis_control_plane_push_latency_seconds_bucket{le=\"0.05\"} 2",
            "trellis_control_plane_push_latency_seconds_bucket{le=\"+Inf\"} 2",
        ] {
            assert!(got.contains(&want), "missing {want:?} in\n{text}");
        }
        let sum: f64 = got
            .iter()
            .find_map(|l| l.strip_prefix("trellis_control_plane_push_latency_seconds_sum "))
            .and_then(|v| v.parse().ok())
            .expect("sum");
        assert!((sum - 0.033).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn publish_times_forget_versions_whose_slot_was_reused() {
        let times = PublishTimes::default();
        let t0 = Instant::now();
        times.record(5, t0);
        assert_eq!(times.get(5), Some(t0));
        assert_eq!(times.get(4), None);
        assert_eq!(times.get(0), None);
        let later = t0 + Duration::from_secs(1);
        times.record(5 + PUBLISHED_SLOTS as u64, later);
        assert_eq!(times.get(5), None, "slot reused by a newer version");
        assert_eq!(times.get(5 + PUBLISHED_SLOTS as u64), Some(later));
    }
}
