//! Prometheus metrics, served on the admin port at `/metrics`.
//!
//! Request metrics are kept where the request path already is, so recording costs a few relaxed
//! atomic adds and no label allocation: per route (outbound, inside `RouteStats`) and per caller
//! identity (inbound, one entry per peer identity looked up once per connection). A custom
//! prometheus-client `Collector` walks those structures at scrape time. Labels are bounded by
//! construction: services, route names, identities and status classes, never raw paths.

use super::counters::ClusterStats;
use crate::config::SnapshotStore;
use crate::control_plane::Problem;
use crate::discovery::SharedStatus;
use crate::identity::IdentityInfo;
use crate::limits::{Budget, Limits};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Responses by status class and a latency histogram, for one (route) or (peer) series.
#[derive(Debug)]
pub struct RequestMetrics {
    by_class: [AtomicU64; 5],
    latency: Histogram,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        RequestMetrics {
            by_class: Default::default(),
            // 0.5 ms .. ~33 s in 17 doubling buckets.
            latency: Histogram::new(exponential_buckets(0.0005, 2.0, 17)),
        }
    }
}

impl RequestMetrics {
    pub fn record(&self, status: u16, seconds: f64) {
        let class = (usize::from(status / 100)).clamp(1, 5) - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        self.latency.observe(seconds);
    }

    pub fn total(&self) -> u64 {
        self.by_class
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// TCP connection counts and bytes for one direction.
#[derive(Debug, Default)]
pub struct ConnMetrics {
    pub opened: AtomicU64,
    pub closed: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    /// mTLS connections retired because the peer's certificate expired (`tls::expiry`).
    pub peer_expired_closes: AtomicU64,
}

/// Why TLS handshakes failed, by a small fixed set of reasons.
pub const TLS_FAILURE_REASONS: [&str; 6] = [
    "no_client_certificate",
    "unknown_ca",
    "expired",
    "bad_certificate",
    "timeout",
    "other",
];

#[derive(Debug, Default)]
pub struct TlsFailures([AtomicU64; TLS_FAILURE_REASONS.len()]);

impl TlsFailures {
    pub fn record(&self, reason: &str) {
        let i = TLS_FAILURE_REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(TLS_FAILURE_REASONS.len() - 1);
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// Classifies a TLS error for the failure metric.
pub fn tls_failure_reason(err: &std::io::Error) -> &'static str {
    let text = err.to_string();
    if text.contains("peer sent no certificates") || text.contains("NoCertificatesPresented") {
        "no_client_certificate"
    } else if text.contains("UnknownIssuer") || text.contains("unknown issuer") {
        "unknown_ca"
    } else if text.contains("Expired") || text.contains("expired") {
        "expired"
    } else if text.contains("certificate") {
        "bad_certificate"
    } else {
        "other"
    }
}

/// Everything the proxy measures outside the snapshot.
#[derive(Debug)]
pub struct ProxyMetrics {
    pub service: String,
    pub inbound: ConnMetrics,
    pub outbound: ConnMetrics,
    pub tls_failures: TlsFailures,
    /// Inbound request metrics per caller identity.
    peers: Mutex<HashMap<String, Arc<RequestMetrics>>>,
    pub spans_exported: AtomicU64,
    pub spans_dropped: AtomicU64,
    /// Each listener's budgets (`crate::limits`): requests in flight (`resilience::shed`) and
    /// open connections. Kept here so that every connection shares them and `/metrics` reads
    /// them.
    inbound_in_flight: Arc<Budget>,
    outbound_in_flight: Arc<Budget>,
    inbound_connections: Arc<Budget>,
    outbound_connections: Arc<Budget>,
}

impl ProxyMetrics {
    pub fn new(service: String) -> Self {
        let limits = Limits::default();
        ProxyMetrics {
            service,
            inbound: ConnMetrics::default(),
            outbound: ConnMetrics::default(),
            tls_failures: TlsFailures::default(),
            peers: Mutex::default(),
            spans_exported: AtomicU64::new(0),
            spans_dropped: AtomicU64::new(0),
            inbound_in_flight: Budget::new(limits.max_in_flight_requests),
            outbound_in_flight: Budget::new(limits.max_in_flight_requests),
            inbound_connections: Budget::new(limits.max_connections),
            outbound_connections: Budget::new(limits.max_connections),
        }
    }

    /// Sets each listener's bounds on requests in flight and open connections (before anything
    /// is served).
    pub fn with_limits(mut self, limits: &Limits) -> Self {
        self.inbound_in_flight = Budget::new(limits.max_in_flight_requests);
        self.outbound_in_flight = Budget::new(limits.max_in_flight_requests);
        self.inbound_connections = Budget::new(limits.max_connections);
        self.outbound_connections = Budget::new(limits.max_connections);
        self
    }

    pub fn in_flight(&self, d: Direction) -> &Arc<Budget> {
        match d {
            Direction::Inbound => &self.inbound_in_flight,
            Direction::Outbound => &self.outbound_in_flight,
        }
    }

    pub fn connections(&self, d: Direction) -> &Arc<Budget> {
        match d {
            Direction::Inbound => &self.inbound_connections,
            Direction::Outbound => &self.outbound_connections,
        }
    }

    pub fn conns(&self, d: Direction) -> &ConnMetrics {
        match d {
            Direction::Inbound => &self.inbound,
            Direction::Outbound => &self.outbound,
        }
    }

    /// The series for a caller; called once per inbound connection, not per request.
    pub fn peer(&self, identity: &str) -> Arc<RequestMetrics> {
        let Ok(mut peers) = self.peers.lock() else {
            return Arc::default();
        };
        peers.entry(identity.to_string()).or_default().clone()
    }
}

/// Renders every metric in the Prometheus text format.
pub fn render(collector: MetricsCollector) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector));
    let mut out = String::new();
    if prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).is_err() {
        out.clear();
    }
    out
}

/// Reads the live structures at scrape time.
#[derive(Debug)]
pub struct MetricsCollector {
    pub metrics: Arc<ProxyMetrics>,
    pub store: SnapshotStore,
    pub discovery: SharedStatus,
    pub identity: watch::Receiver<Option<IdentityInfo>>,
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

type Labels<'a> = Vec<(&'static str, &'a str)>;

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

fn gauge(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels<'_>, i64)],
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in series {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for MetricsCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.store.load();
        let own = self.metrics.service.as_str();
        // Requests: outbound per route, inbound per caller.
        let peers: Vec<(String, Arc<RequestMetrics>)> = self
            .metrics
            .peers
            .lock()
            .map(|p| p.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let mut requests = Vec::new();
        let mut histograms: Vec<(Labels<'_>, &Histogram)> = Vec::new();
        for (table, t) in &snapshot.routes {
            let server = t
                .fallback
                .backends
                .first()
                .and_then(|b| snapshot.clusters.get(&b.cluster))
                .and_then(|c| c.endpoints.first())
                .map_or("", |ep| ep.identity.as_str());
            for rule in t.rules.iter().chain(std::iter::once(&t.fallback)) {
                let m = &rule.stats.http;
                for (i, class) in CLASSES.iter().enumerate() {
                    let v = m.by_class[i].load(Ordering::Relaxed);
                    if v > 0 {
                        let labels = vec![
                            ("direction", "outbound"),
                            ("dst_service", table.as_str()),
                            ("route", rule.name.as_str()),
                            ("status_class", *class),
                            ("peer_identity", server),
                        ];
                        requests.push((labels, v));
                    }
                }
                if m.total() > 0 {
                    histograms.push((
                        vec![
                            ("direction", "outbound"),
                            ("dst_service", table.as_str()),
                            ("route", rule.name.as_str()),
                        ],
                        &m.latency,
                    ));
                }
            }
        }
        for (peer, m) in &peers {
            for (i, class) in CLASSES.iter().enumerate() {
                let v = m.by_class[i].load(Ordering::Relaxed);
                if v > 0 {
                    requests.push((
                        vec![
                            ("direction", "inbound"),
                            ("dst_service", own),
                            ("route", "inbound"),
                            ("status_class", *class),
                            ("peer_identity", peer.as_str()),
                        ],
                        v,
                    ));
                }
            }
            if m.total() > 0 {
                histograms.push((
                    vec![
                        ("direction", "inbound"),
                        ("dst_service", own),
                        ("route", "inbound"),
                    ],
                    &m.latency,
                ));
            }
        }
        counter(&mut e, "trellis_requests", "Requests answered, by direction, destination service, route, status class and peer identity.", &requests)?;
        {
            let mut m = e.encode_descriptor(
                "trellis_request_duration_seconds",
                "Time to response headers, by direction, destination service and route.",
                None,
                MetricType::Histogram,
            )?;
            for (labels, h) in &histograms {
                h.encode(m.encode_family(labels)?)?;
            }
        }

        // TCP and TLS.
        let conn_series = |f: fn(&ConnMetrics) -> &AtomicU64| -> Vec<(Labels<'_>, u64)> {
            [Direction::Inbound, Direction::Outbound]
                .iter()
                .map(|d| {
                    (
                        vec![("direction", d.as_str())],
                        f(self.metrics.conns(*d)).load(Ordering::Relaxed),
                    )
                })
                .collect()
        };
        let directions = [Direction::Inbound, Direction::Outbound];
        // One series per listener, read from its budget (`select`) with `f`.
        let budget_series = |select: fn(&ProxyMetrics, Direction) -> &Arc<Budget>,
                             f: fn(&Budget) -> u64|
         -> Vec<(Labels<'_>, u64)> {
            (directions.iter())
                .map(|d| {
                    (
                        vec![("direction", d.as_str())],
                        f(select(&self.metrics, *d)),
                    )
                })
                .collect()
        };
        let in_flight = |f: fn(&Budget) -> u64| budget_series(ProxyMetrics::in_flight, f);
        counter(
            &mut e,
            "trellis_requests_shed",
            "Requests answered 503 at once because the listener had max requests in flight.",
            &in_flight(Budget::refused),
        )?;
        fn as_gauge(series: Vec<(Labels<'_>, u64)>) -> Vec<(Labels<'_>, i64)> {
            (series.into_iter())
                .map(|(l, v)| (l, i64::try_from(v).unwrap_or(i64::MAX)))
                .collect()
        }
        gauge(
            &mut e,
            "trellis_requests_in_flight",
            "Requests being worked on, by listener.",
            &as_gauge(in_flight(|b| b.in_use() as u64)),
        )?;
        gauge(
            &mut e,
            "trellis_requests_in_flight_limit",
            "The bound on requests in flight per listener; more are shed.",
            &as_gauge(in_flight(|b| b.max() as u64)),
        )?;
        counter(
            &mut e,
            "trellis_tcp_connections_opened",
            "TCP connections accepted.",
            &conn_series(|c| &c.opened),
        )?;
        counter(
            &mut e,
            "trellis_tcp_connections_closed",
            "TCP connections closed.",
            &conn_series(|c| &c.closed),
        )?;
        counter(
            &mut e,
            "trellis_tls_peer_expired_closes",
            "mTLS connections retired because the peer's certificate expired (outbound also: pooled HTTP/1.1 connections retired a second before this sidecar's own expires), by direction.",
            &conn_series(|c| &c.peer_expired_closes),
        )?;
        counter(
            &mut e,
            "trellis_tcp_connections_refused",
            "TCP connections closed at once because the listener had max connections open.",
            &budget_series(ProxyMetrics::connections, Budget::refused),
        )?;
        let mut bytes = Vec::new();
        for d in [Direction::Inbound, Direction::Outbound] {
            let c = self.metrics.conns(d);
            bytes.push((
                vec![("direction", d.as_str()), ("flow", "read")],
                c.bytes_read.load(Ordering::Relaxed),
            ));
            bytes.push((
                vec![("direction", d.as_str()), ("flow", "write")],
                c.bytes_written.load(Ordering::Relaxed),
            ));
        }
        counter(
            &mut e,
            "trellis_tcp_bytes",
            "Bytes read from and written to accepted connections.",
            &bytes,
        )?;
        let tls: Vec<(Labels<'_>, u64)> = TLS_FAILURE_REASONS
            .iter()
            .enumerate()
            .map(|(i, r)| {
                (
                    vec![("direction", "inbound"), ("reason", *r)],
                    self.metrics.tls_failures.0[i].load(Ordering::Relaxed),
                )
            })
            .collect();
        counter(
            &mut e,
            "trellis_tls_handshake_failures",
            "Inbound TLS handshakes refused, by reason.",
            &tls,
        )?;

        // Resilience, per destination cluster.
        let per_cluster = |f: fn(&ClusterStats) -> u64| -> Vec<(Labels<'_>, u64)> {
            snapshot
                .clusters
                .iter()
                .map(|(name, c)| (vec![("dst_service", name.as_str())], f(&c.state.stats)))
                .collect()
        };
        counter(
            &mut e,
            "trellis_retries",
            "Retries sent.",
            &per_cluster(|s| s.retries.get()),
        )?;
        counter(
            &mut e,
            "trellis_retry_budget_exhausted",
            "Retries not sent because the retry budget was spent.",
            &per_cluster(|s| s.budget_exhausted.get()),
        )?;
        counter(
            &mut e,
            "trellis_timeouts",
            "Requests ended by their overall timeout.",
            &per_cluster(|s| s.timeouts.get()),
        )?;
        counter(
            &mut e,
            "trellis_outlier_ejections",
            "Endpoints ejected by outlier detection.",
            &per_cluster(|s| s.ejections.get()),
        )?;
        let mut overflows = Vec::new();
        for (name, c) in &snapshot.clusters {
            let s = &c.state.stats;
            for (limit, v) in [
                ("max_connections", s.overflow_connections.get()),
                ("max_pending_requests", s.overflow_pending.get()),
                ("max_requests", s.overflow_requests.get()),
                ("max_retries", s.overflow_retries.get()),
            ] {
                overflows.push((vec![("dst_service", name.as_str()), ("limit", limit)], v));
            }
        }
        counter(
            &mut e,
            "trellis_circuit_breaker_overflows",
            "Requests refused by a circuit-breaker limit.",
            &overflows,
        )?;
        let ejected: Vec<(Labels<'_>, i64)> = snapshot
            .clusters
            .iter()
            .map(|(name, c)| {
                (
                    vec![("dst_service", name.as_str())],
                    c.endpoints
                        .iter()
                        .filter(|ep| ep.state.outlier.is_ejected())
                        .count() as i64,
                )
            })
            .collect();
        gauge(
            &mut e,
            "trellis_endpoints_ejected",
            "Endpoints currently ejected.",
            &ejected,
        )?;

        // Configuration and control plane.
        let resources: Vec<(Labels<'_>, i64)> = snapshot
            .versions
            .iter()
            .map(|(t, r)| (vec![("type_url", t.as_str())], r.len() as i64))
            .collect();
        gauge(
            &mut e,
            "trellis_config_resources",
            "Resources held, by type.",
            &resources,
        )?;
        let (connected, updates, link_errors) = self
            .discovery
            .lock()
            .map(|s| {
                (
                    s.connected,
                    s.responses
                        .iter()
                        .map(|(k, v)| (k.clone(), *v))
                        .collect::<Vec<_>>(),
                    s.link.errors,
                )
            })
            .unwrap_or_default();
        let mut responses = Vec::new();
        for (t, (acks, nacks)) in &updates {
            responses.push((vec![("type_url", t.as_str()), ("result", "ack")], *acks));
            responses.push((vec![("type_url", t.as_str()), ("result", "nack")], *nacks));
        }
        counter(
            &mut e,
            "trellis_discovery_responses",
            "Discovery responses accepted (ack) or rejected (nack), by type.",
            &responses,
        )?;
        gauge(
            &mut e,
            "trellis_control_plane_connected",
            "1 while the discovery stream is up.",
            &[(vec![], i64::from(connected))],
        )?;
        let problems: Vec<(Labels<'_>, u64)> = Problem::ALL
            .iter()
            .zip(link_errors)
            .map(|(p, n)| (vec![("problem", p.as_str())], n))
            .collect();
        counter(
            &mut e,
            "trellis_control_plane_errors",
            "Failed calls to the control plane, by cause (untrusted: its certificate does not verify).",
            &problems,
        )?;
        let (expiry, left) = self
            .identity
            .borrow()
            .as_ref()
            .map_or((0, 0), |i| (i.not_after_unix, i.expires_in_seconds()));
        gauge(
            &mut e,
            "trellis_certificate_expiry_timestamp_seconds",
            "When the workload certificate expires (Unix time); 0 without one.",
            &[(vec![], expiry)],
        )?;
        gauge(
            &mut e,
            "trellis_certificate_expires_in_seconds",
            "Seconds until the workload certificate expires (negative once expired; 0 without one).",
            &[(vec![], left)],
        )?;

        counter(
            &mut e,
            "trellis_spans_exported",
            "Spans sent to the OTLP collector.",
            &[(vec![], self.metrics.spans_exported.load(Ordering::Relaxed))],
        )?;
        counter(
            &mut e,
            "trellis_spans_dropped",
            "Spans dropped because the export queue was full or the collector failed.",
            &[(vec![], self.metrics.spans_dropped.load(Ordering::Relaxed))],
        )?;
        Ok(())
    }
}
