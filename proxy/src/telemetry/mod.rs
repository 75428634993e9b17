//! What the proxy tells operators about the traffic it carries:
//! - `counters`: resilience counters per cluster and route (shown on `/stats`, exported as metrics);
//! - `trace_context`: W3C Trace Context and B3 parsing and formatting, by the letter of the specs;
//! - `observe`: the tower layer that, per request, propagates trace context, makes this sidecar's span,
//!   records request metrics and writes the access log;
//! - `io`: byte and connection counting around accepted sockets;
//! - `export`: OTLP/gRPC span export with a bounded queue that drops rather than blocks;
//! - `metrics`: Prometheus metrics (prometheus-client) served on the admin port;
//! - `access_log`: optional JSON lines, one per request.

pub mod access_log;
mod counters;
pub mod export;
pub mod io;
pub mod metrics;
pub mod observe;
pub mod trace_context;

pub use counters::{ClusterStats, Counter, RouteStats};
