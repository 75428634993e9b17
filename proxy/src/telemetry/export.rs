//! Span export over OTLP/gRPC. Requests append finished spans to a bounded buffer (a lock held for
//! a push): when the collector is slow or down the buffer fills and spans are dropped (and
//! counted), so tracing can never slow or block traffic. The exporter runs on its own thread with
//! its own single-threaded runtime: every second, or as soon as 512 spans wait, it takes the
//! buffer whole, converts and encodes the spans and sends one `ExportTraceServiceRequest`. Doing
//! that on the serving workers stalled the requests queued behind it once a second (the p99
//! bursts of docs/benchmarks.md, tracing at 100%); a queue with a wake-up per span would cost a
//! cross-thread wake-up per request instead. The thread runs at the lowest priority short of
//! idle (nice 19), so that on a busy machine its bursts wait for the serving workers rather than
//! the other way round. The thread ends, after a last flush, once every `SpanSink` is gone.

use super::metrics::ProxyMetrics;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

const QUEUE: usize = 2048;
const BATCH: usize = 512;
/// Every 200 ms instead made no difference to the traced p99 and sent five times the requests.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// An attribute value.
#[derive(Debug, Clone)]
pub enum Value {
    Str(String),
    Int(i64),
}

/// A finished span, as the request path records it: what it saw, moved in without copies. Its
/// name and attributes are made on the exporter thread (`to_otlp`), off the serving workers.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub server: bool,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub request: SpanRequest,
    pub error: Option<String>,
    pub trace_state: Option<String>,
}

/// The request and its outcome, for the span's name and attributes (HTTP semantic conventions).
#[derive(Debug, Clone, Default)]
pub struct SpanRequest {
    pub method: String,
    pub host: String,
    pub port: Option<u16>,
    pub path: String,
    /// `network.protocol.version`: "1.0", "1.1" or "2".
    pub version: &'static str,
    /// `trellis.direction`: "inbound" or "outbound".
    pub direction: &'static str,
    pub status: u16,
    pub peer: String,
    pub route: Option<String>,
    pub attempts: u32,
}

impl SpanRequest {
    /// `{method} {route}`, or `{method} {direction}` without a route.
    fn span_name(&self) -> String {
        let what = self.route.as_deref().unwrap_or(self.direction);
        format!("{} {what}", self.method)
    }

    fn into_attributes(self, failed: bool) -> Vec<KeyValue> {
        let mut attributes = Vec::with_capacity(11);
        attributes.extend([
            kv("http.request.method", Value::Str(self.method)),
            kv(
                "http.response.status_code",
                Value::Int(i64::from(self.status)),
            ),
            kv("server.address", Value::Str(self.host)),
            kv("url.path", Value::Str(self.path)),
            kv(
                "network.protocol.version",
                Value::Str(self.version.to_string()),
            ),
            kv("trellis.direction", Value::Str(self.direction.to_string())),
            kv("trellis.peer.identity", Value::Str(self.peer)),
        ]);
        if let Some(port) = self.port {
            attributes.push(kv("server.port", Value::Int(i64::from(port))));
        }
        if let Some(route) = self.route {
            attributes.push(kv("http.route", Value::Str(route)));
        }
        if self.attempts > 1 {
            let resent = i64::from(self.attempts - 1);
            attributes.push(kv("http.request.resend_count", Value::Int(resent)));
        }
        if failed {
            attributes.push(kv("error.type", Value::Str(self.status.to_string())));
        }
        attributes
    }
}

/// Spans waiting for the exporter, and its wake-up for a full batch.
#[derive(Debug, Default)]
struct Pending {
    spans: Mutex<Vec<SpanRecord>>,
    batch_ready: Condvar,
}

/// Where the request path drops spans.
#[derive(Debug, Clone)]
pub struct SpanSink {
    pending: Arc<Pending>,
    metrics: Arc<ProxyMetrics>,
}

impl SpanSink {
    pub fn send(&self, span: SpanRecord) {
        let Ok(mut spans) = self.pending.spans.lock() else {
            return;
        };
        if spans.len() >= QUEUE {
            drop(spans);
            self.metrics.spans_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        spans.push(span);
        if spans.len() == BATCH {
            self.pending.batch_ready.notify_one();
        }
    }
}

/// Who the spans come from (OTLP resource attributes).
#[derive(Debug, Clone)]
pub struct ResourceInfo {
    pub service: String,
    pub namespace: String,
    pub pod: String,
}

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("OTLP endpoint: {0}")]
    Endpoint(#[from] tonic::transport::Error),
    #[error("starting the span exporter thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Starts the exporter to `endpoint` (e.g. `http://127.0.0.1:4317`) and returns the sink.
pub fn start(
    endpoint: &str,
    resource: ResourceInfo,
    metrics: Arc<ProxyMetrics>,
) -> Result<SpanSink, ExportError> {
    let endpoint = tonic::transport::Endpoint::from_shared(endpoint.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let pending = Arc::new(Pending::default());
    let exporter = Exporter {
        pending: pending.clone(),
        resource: resource_of(&resource),
        metrics: metrics.clone(),
    };
    std::thread::Builder::new()
        .name("trellis-span-export".into())
        .spawn(move || {
            // Encoding a batch takes a few milliseconds of CPU that can wait: on a busy machine
            // the serving workers go first, and spans queue (or are dropped, counted) meanwhile.
            if let Err(e) =
                trellis_os::priority::set_current_thread_nice(trellis_os::priority::BACKGROUND_NICE)
            {
                tracing::debug!(error = %e, "span exporter keeps the default priority");
            }
            runtime.block_on(async move {
                let client = TraceServiceClient::new(endpoint.connect_lazy());
                exporter.run(client).await
            })
        })?;
    Ok(SpanSink { pending, metrics })
}

fn kv(key: &str, value: Value) -> KeyValue {
    let value = match value {
        Value::Str(s) => any_value::Value::StringValue(s),
        Value::Int(i) => any_value::Value::IntValue(i),
    };
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn resource_of(r: &ResourceInfo) -> Resource {
    Resource {
        attributes: vec![
            kv("service.name", Value::Str(r.service.clone())),
            kv("service.namespace", Value::Str(r.namespace.clone())),
            kv("k8s.namespace.name", Value::Str(r.namespace.clone())),
            kv("k8s.pod.name", Value::Str(r.pod.clone())),
            kv("service.instance.id", Value::Str(r.pod.clone())),
            kv(
                "trellis.proxy.version",
                Value::Str(env!("CARGO_PKG_VERSION").to_string()),
            ),
            kv("telemetry.sdk.name", Value::Str("trellis-proxy".into())),
        ],
        ..Default::default()
    }
}

pub fn to_otlp(s: SpanRecord) -> Span {
    Span {
        trace_id: s.trace_id.to_vec(),
        span_id: s.span_id.to_vec(),
        parent_span_id: s.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
        trace_state: s.trace_state.unwrap_or_default(),
        name: s.request.span_name(),
        kind: if s.server {
            span::SpanKind::Server
        } else {
            span::SpanKind::Client
        } as i32,
        start_time_unix_nano: s.start_unix_nanos,
        end_time_unix_nano: s.end_unix_nanos,
        attributes: s.request.into_attributes(s.error.is_some()),
        status: Some(match s.error {
            Some(message) => Status {
                code: status::StatusCode::Error as i32,
                message,
            },
            None => Status {
                code: status::StatusCode::Unset as i32,
                message: String::new(),
            },
        }),
        ..Default::default()
    }
}

/// The exporter thread's side.
struct Exporter {
    pending: Arc<Pending>,
    resource: Resource,
    metrics: Arc<ProxyMetrics>,
}

impl Exporter {
    /// Waits (blocking this thread, which serves nothing else) up to `FLUSH_EVERY` for a full batch;
    /// the spans waiting then, and whether every sink is gone.
    fn take(&self) -> (Vec<SpanRecord>, bool) {
        let Ok(spans) = self.pending.spans.lock() else {
            return (Vec::new(), true);
        };
        let mut spans =
            match self
                .pending
                .batch_ready
                .wait_timeout_while(spans, FLUSH_EVERY, |spans| spans.len() < BATCH)
            {
                Ok((spans, _)) => spans,
                Err(_) => return (Vec::new(), true),
            };
        let taken = std::mem::replace(&mut *spans, Vec::with_capacity(BATCH));
        // Only this exporter holds `pending` once every sink has been dropped.
        (taken, Arc::strong_count(&self.pending) == 1)
    }

    async fn run(self, mut client: TraceServiceClient<tonic::transport::Channel>) {
        loop {
            let (mut spans, last) = self.take();
            while !spans.is_empty() {
                let rest = spans.split_off(spans.len().min(BATCH));
                self.export(&mut client, spans).await;
                spans = rest;
            }
            if last {
                return;
            }
        }
    }

    async fn export(
        &self,
        client: &mut TraceServiceClient<tonic::transport::Channel>,
        batch: Vec<SpanRecord>,
    ) {
        let count = batch.len() as u64;
        let spans: Vec<Span> = batch.into_iter().map(to_otlp).collect();
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "trellis-proxy".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        match client.export(request).await {
            Ok(_) => {
                self.metrics
                    .spans_exported
                    .fetch_add(count, Ordering::Relaxed);
            }
            Err(e) => {
                self.metrics
                    .spans_dropped
                    .fetch_add(count, Ordering::Relaxed);
                tracing::debug!(error = %e, dropped = count, "span export failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span() -> SpanRecord {
        SpanRecord {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: None,
            server: false,
            start_unix_nanos: 1,
            end_unix_nanos: 2,
            request: SpanRequest::default(),
            error: None,
            trace_state: None,
        }
    }

    #[test]
    fn the_exporter_names_the_span_and_makes_its_attributes() {
        let mut record = span();
        record.request = SpanRequest {
            method: "POST".into(),
            host: "hello".into(),
            port: Some(8080),
            path: "/orders".into(),
            version: "1.1",
            direction: "outbound",
            status: 503,
            peer: "spiffe://trellis.local/ns/default/sa/hello".into(),
            route: Some("orders".into()),
            attempts: 3,
        };
        record.error = Some("status 503".into());
        let otlp = to_otlp(record);
        assert_eq!(otlp.name, "POST orders");
        let attributes: Vec<(String, String)> = (otlp.attributes.iter())
            .map(|kv| {
                let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(any_value::Value::StringValue(s)) => s.clone(),
                    Some(any_value::Value::IntValue(i)) => i.to_string(),
                    other => format!("{other:?}"),
                };
                (kv.key.clone(), value)
            })
            .collect();
        let expected = [
            ("http.request.method", "POST"),
            ("http.response.status_code", "503"),
            ("server.address", "hello"),
            ("url.path", "/orders"),
            ("network.protocol.version", "1.1"),
            ("trellis.direction", "outbound"),
            (
                "trellis.peer.identity",
                "spiffe://trellis.local/ns/default/sa/hello",
            ),
            ("server.port", "8080"),
            ("http.route", "orders"),
            ("http.request.resend_count", "2"),
            ("error.type", "503"),
        ];
        let expected: Vec<(String, String)> = (expected.iter())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(attributes, expected);
        let status = otlp.status.unwrap_or_default();
        assert_eq!(status.code, status::StatusCode::Error as i32);
        assert_eq!(status.message, "status 503");

        // Without a route, the direction names it.
        let mut record = span();
        record.request.method = "GET".into();
        record.request.direction = "inbound";
        assert_eq!(to_otlp(record).name, "GET inbound");
    }

    #[test]
    fn a_full_buffer_drops_and_counts_instead_of_growing() {
        let metrics = Arc::new(ProxyMetrics::new("default/test".into()));
        let sink = SpanSink {
            pending: Arc::default(),
            metrics: metrics.clone(),
        };
        for _ in 0..QUEUE + 5 {
            sink.send(span());
        }
        assert_eq!(sink.pending.spans.lock().map(|s| s.len()).ok(), Some(QUEUE));
        assert_eq!(metrics.spans_dropped.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn the_exporter_takes_a_full_batch_at_once_and_ends_with_the_last_sink() {
        let metrics = Arc::new(ProxyMetrics::new("default/test".into()));
        let sink = SpanSink {
            pending: Arc::default(),
            metrics: metrics.clone(),
        };
        let exporter = Exporter {
            pending: sink.pending.clone(),
            resource: Resource::default(),
            metrics,
        };
        for _ in 0..BATCH {
            sink.send(span());
        }
        let started = std::time::Instant::now();
        let (taken, last) = exporter.take();
        assert_eq!(taken.len(), BATCH);
        assert!(!last, "a sink is still alive");
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "no wait for a full batch"
        );
        sink.send(span());
        drop(sink);
        let (taken, last) = exporter.take();
        assert_eq!(taken.len(), 1, "flushed after the last sink went");
        assert!(last);
    }
}
