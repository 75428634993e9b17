//! One layer that watches each request go by, on both sides of a sidecar:
//! - trace context: reads W3C (or B3) context, continues the trace or starts a new one (sampling
//!   new traces at the configured ratio), and sends this sidecar's own span id as the parent
//!   upstream, with the valid members of `tracestate` passed on; writes B3 too when configured;
//! - `x-request-id`: generated when missing, passed on;
//! - the span (outbound: CLIENT, inbound: SERVER) with current HTTP semantic-convention
//!   attributes, exported when sampled;
//! - request metrics (status class, latency) and the access log line.
//!
//! It sits after routing on the outbound side, so it knows the route and destination.

use super::access_log::AccessLog;
use super::export::{SpanRecord, SpanRequest, SpanSink};
use super::metrics::{Direction, ProxyMetrics, RequestMetrics};
use super::trace_context::{self, random_id, FLAG_RANDOM, FLAG_SAMPLED, TRACEPARENT, TRACESTATE};
use crate::admin::recent::Outcome;
use crate::errors::ProxyError;
use crate::http::route::Target;
use crate::http::{Body, ResponseFuture};
use crate::resilience::retry::Attempts;
use http::{HeaderName, HeaderValue, Request, Response};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum B3Format {
    Single,
    Multi,
}

/// Per-proxy telemetry settings and sinks.
#[derive(Debug, Clone)]
pub struct Telemetry {
    pub metrics: Arc<ProxyMetrics>,
    pub spans: Option<SpanSink>,
    pub sample_ratio: f64,
    pub b3: Option<B3Format>,
    pub access_log: Option<AccessLog>,
    /// Summaries for the admin `/tap`, built only while it is attached.
    pub tap: Arc<crate::admin::tap::Tap>,
}

#[derive(Clone)]
pub struct ObserveLayer {
    telemetry: Arc<Telemetry>,
    direction: Direction,
    /// Inbound only: the caller's identity and its metric series (per connection).
    peer: Option<(HeaderValue, Arc<RequestMetrics>)>,
}

impl ObserveLayer {
    pub fn outbound(telemetry: Arc<Telemetry>) -> Self {
        ObserveLayer {
            telemetry,
            direction: Direction::Outbound,
            peer: None,
        }
    }

    pub fn inbound(telemetry: Arc<Telemetry>, peer_identity: HeaderValue) -> Self {
        let series = telemetry
            .metrics
            .peer(peer_identity.to_str().unwrap_or("unknown"));
        ObserveLayer {
            telemetry,
            direction: Direction::Inbound,
            peer: Some((peer_identity, series)),
        }
    }
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            layer: self.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    layer: ObserveLayer,
    inner: S,
}

/// The trace position of this sidecar's span for one request.
struct SpanIds {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    sampled: bool,
    tracestate: Option<HeaderValue>,
}

fn propagate(t: &Telemetry, headers: &mut http::HeaderMap) -> SpanIds {
    let incoming = trace_context::extract(headers);
    let (trace_id, parent, flags, tracestate) = match incoming {
        Some(c) => (c.trace_id, Some(c.parent_id), c.flags, c.tracestate),
        None => {
            let sampled = crate::random::unit() < t.sample_ratio;
            (
                random_id(),
                None,
                FLAG_RANDOM | if sampled { FLAG_SAMPLED } else { 0 },
                None,
            )
        }
    };
    let span_id = random_id();
    headers.insert(
        &TRACEPARENT,
        trace_context::format_traceparent(&trace_id, &span_id, flags),
    );
    match &tracestate {
        Some(ts) => {
            headers.insert(&TRACESTATE, ts.clone());
        }
        None => {
            headers.remove(&TRACESTATE);
        }
    }
    let sampled = flags & FLAG_SAMPLED != 0;
    if let Some(format) = t.b3 {
        trace_context::inject_b3(
            headers,
            &trace_id,
            &span_id,
            parent.as_ref(),
            sampled,
            format == B3Format::Single,
        );
    }
    SpanIds {
        trace_id,
        span_id,
        parent,
        sampled,
        tracestate,
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl<S> tower::Service<Request<Body>> for Observe<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = ProxyError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> ResponseFuture {
        let started = Instant::now();
        let layer = self.layer.clone();
        let t = layer.telemetry.clone();
        let ids = propagate(&t, req.headers_mut());
        let tapped = t.tap.attached();
        let wants_detail = (ids.sampled && t.spans.is_some()) || t.access_log.is_some() || tapped;
        // The id is kept only for the span and log line: a copy of a value just made is an
        // allocation (its bytes become shared), and most requests have neither.
        let request_id = match req.headers_mut().get_mut(&REQUEST_ID) {
            Some(v) => {
                trace_context::never_indexed(v);
                wants_detail.then(|| v.clone())
            }
            None => {
                let v = trace_context::new_request_id();
                let kept = wants_detail.then(|| v.clone());
                req.headers_mut().insert(&REQUEST_ID, v);
                kept
            }
        };
        let target = req.extensions().get::<Target>().cloned();
        let detail = wants_detail.then(|| RequestDetail::of(&req));
        // Every request is remembered for `/explain`, tapped or not (`admin/recent.rs`).
        let route = target.as_ref().map(|t| &t.rule);
        let ticket = (t.tap.recent).start(layer.direction.as_str(), &req, route);
        let fut = self.inner.call(req);
        Box::pin(async move {
            let result = fut.await;
            let status = match &result {
                Ok(rsp) => rsp.status().as_u16(),
                Err(e) => e.status().as_u16(),
            };
            let elapsed = started.elapsed();
            let attempts = result
                .as_ref()
                .ok()
                .and_then(|r| r.extensions().get::<Attempts>())
                .map_or(1, |a| a.0);
            let outcome = Outcome {
                status,
                elapsed,
                attempts,
            };
            t.tap.recent.finish(ticket, outcome);
            match (&layer.peer, &target) {
                (Some((_, series)), _) => series.record(status, elapsed.as_secs_f64()),
                (None, Some(target)) => {
                    target.rule.stats.http.record(status, elapsed.as_secs_f64())
                }
                (None, None) => {}
            }
            if let (Some(detail), Some(request_id)) = (detail, request_id) {
                let error = result
                    .as_ref()
                    .err()
                    .map(|e| e.to_string())
                    .or_else(|| (status >= 500).then(|| format!("status {status}")));
                let peer = match (&layer.peer, &target) {
                    (Some((id, _)), _) => id.to_str().unwrap_or_default().to_string(),
                    (None, Some(t)) => t
                        .cluster
                        .endpoints
                        .first()
                        .map(|e| e.identity.clone())
                        .unwrap_or_default(),
                    _ => String::new(),
                };
                let route = target.as_ref().map(|t| t.rule.name.clone());
                let finished = Finished {
                    ids: &ids,
                    status,
                    attempts,
                    error,
                    peer,
                    route,
                    elapsed,
                    request_id: &request_id,
                };
                if let Some(log) = &t.access_log {
                    log.write(&finished.log_line(layer.direction, &detail));
                }
                if tapped {
                    t.tap.publish(finished.log_line(layer.direction, &detail));
                }
                // Last: the span takes what the log lines borrowed.
                if let (Some(sink), true) = (&t.spans, ids.sampled) {
                    sink.send(finished.span(layer.direction, detail));
                }
            }
            result
        })
    }
}

/// What the span and the access log need from the request head.
struct RequestDetail {
    /// Wall-clock start, read only for requests that are traced, logged or tapped.
    started_wall: SystemTime,
    method: String,
    host: String,
    port: Option<u16>,
    path: String,
    version: &'static str,
}

impl RequestDetail {
    fn of(req: &Request<Body>) -> Self {
        let (host, port) = crate::http::authority(req).unwrap_or_default();
        RequestDetail {
            started_wall: SystemTime::now(),
            method: req.method().as_str().to_string(),
            host,
            port,
            path: req.uri().path().to_string(),
            version: match req.version() {
                http::Version::HTTP_2 => "2",
                http::Version::HTTP_10 => "1.0",
                _ => "1.1",
            },
        }
    }
}

struct Finished<'a> {
    ids: &'a SpanIds,
    status: u16,
    attempts: u32,
    error: Option<String>,
    peer: String,
    route: Option<String>,
    elapsed: std::time::Duration,
    request_id: &'a HeaderValue,
}

impl Finished<'_> {
    /// The span, made of what the request path already holds (moved, not copied): its name
    /// and attributes are built by the exporter (`export::to_otlp`).
    fn span(self, direction: Direction, d: RequestDetail) -> SpanRecord {
        let start = unix_nanos(d.started_wall);
        SpanRecord {
            trace_id: self.ids.trace_id,
            span_id: self.ids.span_id,
            parent_span_id: self.ids.parent,
            server: direction == Direction::Inbound,
            start_unix_nanos: start,
            end_unix_nanos: start + self.elapsed.as_nanos() as u64,
            request: SpanRequest {
                method: d.method,
                host: d.host,
                port: d.port,
                path: d.path,
                version: d.version,
                direction: direction.as_str(),
                status: self.status,
                peer: self.peer,
                route: self.route,
                attempts: self.attempts,
            },
            error: self.error,
            trace_state: (self.ids.tracestate.as_ref())
                .and_then(|ts| ts.to_str().ok())
                .map(str::to_string),
        }
    }

    fn log_line(&self, direction: Direction, d: &RequestDetail) -> serde_json::Value {
        let mut trace = String::with_capacity(32);
        trace_context::push_hex(&mut trace, &self.ids.trace_id);
        let mut span = String::with_capacity(16);
        trace_context::push_hex(&mut span, &self.ids.span_id);
        serde_json::json!({
            "timestamp_unix_ms": unix_nanos(d.started_wall) / 1_000_000,
            "direction": direction.as_str(),
            "method": d.method,
            "authority": d.host,
            "path": d.path,
            "protocol": d.version,
            "status": self.status,
            "duration_ms": self.elapsed.as_secs_f64() * 1000.0,
            "attempts": self.attempts,
            "route": self.route,
            "peer_identity": self.peer,
            "trace_id": trace,
            "span_id": span,
            "request_id": self.request_id.to_str().unwrap_or_default(),
            "error": self.error,
        })
    }
}

#[cfg(test)]
mod tests;
