//! The admin listener, plain HTTP/1.1 bound to localhost by default:
//! - `GET /live`: the process answers;
//! - `GET /ready`: a valid certificate is held and every resource type has been received once;
//! - `GET /config`: the snapshot in force, with versions, as JSON;
//! - `GET /stats`: resilience and authorization counters as JSON;
//! - `GET /metrics`: Prometheus text format;
//! - `PUT /log-level` (body: a tracing filter such as `debug`): changes logging at runtime;
//! - `POST /shutdown`: graceful drain, as SIGTERM (how a Job ends its sidecar).

use crate::config::SnapshotStore;
use crate::discovery::SharedStatus;
use crate::drain::DrainWatch;
use crate::http::Body;
use crate::identity::IdentityInfo;
use crate::proxy::LogControl;
use crate::telemetry::metrics::MetricsCollector;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Clone)]
pub struct AdminState {
    pub store: SnapshotStore,
    pub identity: watch::Receiver<Option<IdentityInfo>>,
    pub discovery: SharedStatus,
    /// Authorization outcomes per rule (`/stats` → `authorization`).
    pub authz: std::sync::Arc<crate::authz::AuthzStats>,
    pub metrics: std::sync::Arc<MetricsCollector>,
    pub log_control: Option<LogControl>,
    /// Notified by `POST /shutdown`.
    pub stop: std::sync::Arc<tokio::sync::Notify>,
}

impl AdminState {
    pub fn ready(&self) -> Result<(), String> {
        match &*self.identity.borrow() {
            Some(id) if id.is_valid_now() => {}
            Some(id) => {
                return Err(format!(
                    "certificate expired (serial {}, notAfter {} unix); the control plane has not \
                     renewed it",
                    id.serial, id.not_after_unix
                ))
            }
            None => return Err("no certificate yet".into()),
        }
        let status = self
            .discovery
            .lock()
            .map_err(|_| "status unavailable".to_string())?;
        let missing: Vec<&str> = trellis_api::type_url::ALL
            .iter()
            .copied()
            .filter(|t| !status.received.contains(*t))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("waiting for config: {}", missing.join(", ")))
        }
    }

    /// Resilience counters per cluster and per route (retries, budget, timeouts, overflows,
    /// ejections), as JSON.
    fn stats_json(&self) -> String {
        let snapshot = self.store.load();
        let clusters: serde_json::Map<String, serde_json::Value> = snapshot
            .clusters
            .iter()
            .map(|(name, c)| {
                let mut v = serde_json::to_value(&c.state.stats).unwrap_or_default();
                let ejected = c
                    .endpoints
                    .iter()
                    .filter(|e| e.state.outlier.is_ejected())
                    .count();
                v["ejectedNow"] = ejected.into();
                (name.clone(), v)
            })
            .collect();
        let routes: serde_json::Map<String, serde_json::Value> = snapshot
            .routes
            .iter()
            .map(|(table, t)| {
                let per_rule: serde_json::Map<String, serde_json::Value> = t
                    .rules
                    .iter()
                    .chain(std::iter::once(&t.fallback))
                    .map(|r| {
                        (
                            r.name.clone(),
                            serde_json::to_value(&*r.stats).unwrap_or_default(),
                        )
                    })
                    .collect();
                (table.clone(), per_rule.into())
            })
            .collect();
        let doc = serde_json::json!({
            "clusters": clusters,
            "routes": routes,
            "authorization": self.authz.to_json(),
        });
        serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    fn config_json(&self) -> String {
        let snapshot = self.store.load();
        let (connected, last_nack, failures) = self
            .discovery
            .lock()
            .map(|s| {
                let failures = serde_json::json!({
                    "total": s.failed_streams,
                    "consecutive": s.consecutive_failures,
                });
                (s.connected, s.last_nack.clone(), failures)
            })
            .unwrap_or((false, None, serde_json::Value::Null));
        let doc = serde_json::json!({
            "identity": &*self.identity.borrow(),
            "controlPlaneConnected": connected,
            // Discovery streams lost (each followed by a jittered backoff), to watch reconnects.
            "discoveryFailures": failures,
            "lastNack": last_nack,
            "config": &**snapshot,
        });
        serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

pub async fn serve(listener: TcpListener, state: AdminState, drain: DrainWatch) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = drain.signaled() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Largest body accepted by `/log-level`.
const MAX_ADMIN_BODY: usize = 1024;

async fn handle(state: &AdminState, req: Request<Incoming>) -> Response<Body> {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let (status, content_type, body) = match (&method, path.as_str()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics_text(&state.metrics),
        ),
        (&Method::PUT | &Method::POST, "/log-level") => set_log_level(state, req).await,
        (&Method::POST, "/shutdown") => {
            state.stop.notify_one();
            (StatusCode::ACCEPTED, "text/plain", "draining\n".to_string())
        }
        (&Method::GET, "/live") => (StatusCode::OK, "text/plain", "live\n".to_string()),
        (&Method::GET, "/ready") => match state.ready() {
            Ok(()) => (StatusCode::OK, "text/plain", "ready\n".to_string()),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
        (&Method::GET, "/config") => (StatusCode::OK, "application/json", state.config_json()),
        (&Method::GET, "/stats") => (StatusCode::OK, "application/json", state.stats_json()),
        (_, "/live" | "/ready" | "/config" | "/stats" | "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n".to_string(),
        ),
        (_, "/log-level") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use PUT\n".to_string(),
        ),
        (_, "/shutdown") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use POST\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /live, /ready, /config, /stats, /metrics, /log-level, /shutdown\n"
                .to_string(),
        ),
    };
    let mut rsp = Response::new(Body::full(body));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    rsp
}

fn metrics_text(collector: &std::sync::Arc<MetricsCollector>) -> String {
    crate::telemetry::metrics::render(MetricsCollector {
        metrics: collector.metrics.clone(),
        store: collector.store.clone(),
        discovery: collector.discovery.clone(),
        identity: collector.identity.clone(),
    })
}

async fn set_log_level(
    state: &AdminState,
    req: Request<Incoming>,
) -> (StatusCode, &'static str, String) {
    let Some(control) = &state.log_control else {
        return (
            StatusCode::NOT_IMPLEMENTED,
            "text/plain",
            "log level is fixed in this process\n".into(),
        );
    };
    let limited = http_body_util::Limited::new(req.into_body(), MAX_ADMIN_BODY);
    let filter = match limited.collect().await {
        Ok(body) => String::from_utf8_lossy(&body.to_bytes()).trim().to_string(),
        Err(_) => {
            return (
                StatusCode::BAD_REQUEST,
                "text/plain",
                "body too large or unreadable\n".into(),
            )
        }
    };
    if filter.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            "text/plain",
            "send a filter such as `debug` in the body\n".into(),
        );
    }
    match (control.0)(&filter) {
        Ok(()) => {
            tracing::info!(%filter, "log level changed on the admin port");
            (
                StatusCode::OK,
                "text/plain",
                format!("log level: {filter}\n"),
            )
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            "text/plain",
            format!("invalid filter {filter:?}: {e}\n"),
        ),
    }
}
