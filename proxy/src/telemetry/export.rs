//! Span export over OTLP/gRPC. Requests hand finished spans to a bounded queue with `try_send`:
//! when the collector is slow or down the queue fills and spans are dropped (and counted), so
//! tracing can never slow or block traffic. A background task batches spans (up to 512, or every
//! second) into `ExportTraceServiceRequest`s with the proxy's resource attributes.

use super::metrics::ProxyMetrics;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

const QUEUE: usize = 2048;
const BATCH: usize = 512;

/// An attribute value.
#[derive(Debug, Clone)]
pub enum Value {
    Str(String),
    Int(i64),
}

/// A finished span, as the request path records it.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub name: String,
    pub server: bool,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Vec<(&'static str, Value)>,
    pub error: Option<String>,
    pub trace_state: Option<String>,
}

/// Where the request path drops spans.
#[derive(Debug, Clone)]
pub struct SpanSink {
    tx: mpsc::Sender<SpanRecord>,
    metrics: Arc<ProxyMetrics>,
}

impl SpanSink {
    pub fn send(&self, span: SpanRecord) {
        if self.tx.try_send(span).is_err() {
            self.metrics.spans_dropped.fetch_add(1, Ordering::Relaxed);
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

/// Starts the exporter to `endpoint` (e.g. `http://127.0.0.1:4317`) and returns the sink.
pub fn start(
    endpoint: &str,
    resource: ResourceInfo,
    metrics: Arc<ProxyMetrics>,
) -> Result<SpanSink, tonic::transport::Error> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(run(
        TraceServiceClient::new(channel),
        rx,
        resource_of(&resource),
        metrics.clone(),
    ));
    Ok(SpanSink { tx, metrics })
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
        name: s.name,
        kind: if s.server {
            span::SpanKind::Server
        } else {
            span::SpanKind::Client
        } as i32,
        start_time_unix_nano: s.start_unix_nanos,
        end_time_unix_nano: s.end_unix_nanos,
        attributes: s.attributes.into_iter().map(|(k, v)| kv(k, v)).collect(),
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

async fn run(
    mut client: TraceServiceClient<tonic::transport::Channel>,
    mut rx: mpsc::Receiver<SpanRecord>,
    resource: Resource,
    metrics: Arc<ProxyMetrics>,
) {
    let mut batch: Vec<SpanRecord> = Vec::with_capacity(BATCH);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let flush = tokio::select! {
            span = rx.recv() => match span {
                Some(span) => {
                    batch.push(span);
                    batch.len() >= BATCH
                }
                None => true,
            },
            _ = tick.tick() => !batch.is_empty(),
        };
        if !flush {
            continue;
        }
        let count = batch.len() as u64;
        let spans: Vec<Span> = batch.drain(..).map(to_otlp).collect();
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource.clone()),
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
                metrics.spans_exported.fetch_add(count, Ordering::Relaxed);
            }
            Err(e) => {
                metrics.spans_dropped.fetch_add(count, Ordering::Relaxed);
                tracing::debug!(error = %e, dropped = count, "span export failed");
            }
        }
        if rx.is_closed() && rx.is_empty() {
            return;
        }
    }
}
