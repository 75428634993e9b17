//! The admin listener, plain HTTP/1.1 bound to localhost by default (in a pod, to every address,
//! for the kubelet's probes and Prometheus):
//! - `GET /live`: the process answers; anyone;
//! - `GET /ready`: a valid certificate is held and every resource type has been received once;
//!   anyone;
//! - `GET /metrics`: Prometheus text format; anyone;
//! - `GET /config`: the snapshot in force, with versions, as JSON; loopback callers, or anyone
//!   with `--admin-open-diagnostics`;
//! - `GET /stats`: resilience and authorization counters as JSON; as `/config`;
//! - `GET /explain?authority=…&path=…`: the route, policy, endpoints and authorization a request
//!   would meet (`explain.rs`); as `/config`;
//! - `GET /tap?max=N&seconds=S`: a live stream of request summaries, newline-delimited JSON
//!   (`tap.rs`); as `/config`;
//! - `PUT /log-level` (body: a tracing filter such as `debug`): changes logging at runtime;
//!   loopback callers only;
//! - `POST /shutdown`: graceful drain, as SIGTERM (how a Job ends its sidecar); loopback callers
//!   only;
//! - `GET /app-health/<container>/<livez|readyz|startupz>`: the app's original probe, performed
//!   by the sidecar (`crate::probes`); anyone (the kubelet is not loopback), but only the probes
//!   the injector configured.

use crate::config::SnapshotStore;
use crate::discovery::SharedStatus;
use crate::drain::DrainWatch;
use crate::http::Body;
use crate::identity::IdentityInfo;
use crate::listeners::Listener;
use crate::proxy::LogControl;
use crate::telemetry::metrics::MetricsCollector;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use tokio::sync::watch;

mod explain;
pub mod recent;
pub mod tap;

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
    /// `/config` and `/stats` answer callers from outside the pod too.
    pub open_diagnostics: bool,
    /// The app probes served under `/app-health/`.
    pub app_probes: std::sync::Arc<crate::probes::AppProbes>,
    /// Where the app listens; the probes' default host.
    pub app_host: std::net::IpAddr,
    /// Request summaries for `/tap` and `/explain`, fed by the telemetry layer.
    pub tap: std::sync::Arc<tap::Tap>,
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

    fn explain(&self, query: &str) -> (StatusCode, &'static str, String) {
        match explain::Query::parse(query) {
            Ok(query) => {
                let identity = self.identity.borrow().as_ref().map(|i| i.spiffe_id.clone());
                let mut doc = explain::explain(&self.store.load(), identity.as_deref(), &query);
                explain::add_recent(&mut doc, &self.tap.recent, query.recent);
                let text = serde_json::to_string_pretty(&doc)
                    .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
                (StatusCode::OK, "application/json", text)
            }
            Err(e) => (StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
        }
    }

    fn config_json(&self) -> String {
        let snapshot = self.store.load();
        let (connected, last_nack, failures, link) = self
            .discovery
            .lock()
            .map(|s| {
                let failures = serde_json::json!({
                    "total": s.failed_streams,
                    "consecutive": s.consecutive_failures,
                });
                (s.connected, s.last_nack.clone(), failures, s.link.to_json())
            })
            .unwrap_or((
                false,
                None,
                serde_json::Value::Null,
                serde_json::Value::Null,
            ));
        let identity = self.identity.borrow().clone();
        let doc = serde_json::json!({
            "identity": identity,
            "certificateExpiresInSeconds": identity.as_ref().map(|i| i.expires_in_seconds()),
            "controlPlaneConnected": connected,
            // The cause of the last failed call (an untrusted certificate, a refusal, silence).
            "controlPlane": link,
            // Discovery streams lost (each followed by a jittered backoff), to watch reconnects.
            "discoveryFailures": failures,
            "lastNack": last_nack,
            "config": &**snapshot,
        });
        serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

pub async fn serve(listener: Listener, state: AdminState, drain: DrainWatch) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = drain.signaled() => return,
        };
        let Ok((stream, peer)) = accepted else {
            continue;
        };
        let caller = Caller::of(peer.ip(), state.open_diagnostics);
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req, caller).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Largest body accepted by `/log-level`.
const MAX_ADMIN_BODY: usize = 1024;

/// The admin port's endpoints. The port is reachable from outside the pod (kubelet probes,
/// Prometheus), so each endpoint says who may call it: anyone for probes and scrapes, loopback
/// callers for what changes the sidecar, and loopback callers for diagnostics (they reveal
/// internal addresses, policy and rule names) unless `--admin-open-diagnostics` opens them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Live,
    Ready,
    Metrics,
    Config,
    Stats,
    Explain,
    Tap,
    LogLevel,
    Shutdown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Anyone,
    Diagnostics,
    LoopbackOnly,
}

impl Endpoint {
    fn of(path: &str) -> Option<Endpoint> {
        Some(match path {
            "/live" => Endpoint::Live,
            "/ready" => Endpoint::Ready,
            "/metrics" => Endpoint::Metrics,
            "/config" => Endpoint::Config,
            "/stats" => Endpoint::Stats,
            "/explain" => Endpoint::Explain,
            "/tap" => Endpoint::Tap,
            "/log-level" => Endpoint::LogLevel,
            "/shutdown" => Endpoint::Shutdown,
            _ => return None,
        })
    }

    fn method(self) -> Method {
        match self {
            Endpoint::LogLevel => Method::PUT,
            Endpoint::Shutdown => Method::POST,
            _ => Method::GET,
        }
    }

    fn access(self) -> Access {
        match self {
            Endpoint::Live | Endpoint::Ready | Endpoint::Metrics => Access::Anyone,
            Endpoint::Config | Endpoint::Stats | Endpoint::Explain | Endpoint::Tap => {
                Access::Diagnostics
            }
            Endpoint::LogLevel | Endpoint::Shutdown => Access::LoopbackOnly,
        }
    }
}

/// Where an admin request comes from, as far as access is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Caller {
    loopback: bool,
    open_diagnostics: bool,
}

impl Caller {
    fn of(ip: std::net::IpAddr, open_diagnostics: bool) -> Caller {
        Caller {
            // `::ffff:127.0.0.1` on a dual-stack socket is loopback too.
            loopback: ip.to_canonical().is_loopback(),
            open_diagnostics,
        }
    }

    fn may_call(self, endpoint: Endpoint) -> bool {
        match endpoint.access() {
            Access::Anyone => true,
            Access::Diagnostics => self.loopback || self.open_diagnostics,
            Access::LoopbackOnly => self.loopback,
        }
    }
}

/// The endpoint a request may use, or the refusal: 404, 405 with the method to use, or 403.
fn admit(method: &Method, path: &str, caller: Caller) -> Result<Endpoint, (StatusCode, String)> {
    let Some(endpoint) = Endpoint::of(path) else {
        return Err((
            StatusCode::NOT_FOUND,
            "not found: try /live, /ready, /config, /stats, /explain, /tap, /metrics, /log-level, \
             /shutdown\n"
                .into(),
        ));
    };
    if *method != endpoint.method() {
        return Err((
            StatusCode::METHOD_NOT_ALLOWED,
            format!("use {}\n", endpoint.method()),
        ));
    }
    if !caller.may_call(endpoint) {
        let why = match endpoint.access() {
            Access::Diagnostics => {
                "answers loopback callers only (--admin-open-diagnostics opens it)"
            }
            _ => "answers loopback callers only",
        };
        return Err((StatusCode::FORBIDDEN, format!("{path} {why}\n")));
    }
    Ok(endpoint)
}

/// `/app-health/…`: the app's probes, outside the fixed table because the paths come from the
/// injector. `None` for any other path.
async fn app_health(
    state: &AdminState,
    method: &Method,
    path: &str,
) -> Option<(StatusCode, String)> {
    if !path.starts_with(crate::probes::PATH_PREFIX) {
        return None;
    }
    if *method != Method::GET && *method != Method::HEAD {
        return Some((StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into()));
    }
    Some(
        state
            .app_probes
            .answer(path, state.app_host)
            .await
            .unwrap_or_else(|| (StatusCode::NOT_FOUND, format!("no app probe at {path}\n"))),
    )
}

/// Admin answers are whole, except `/tap`'s stream.
type AdminBody = http_body_util::Either<Body, tap::TapBody>;

async fn handle(state: &AdminState, req: Request<Incoming>, caller: Caller) -> Response<AdminBody> {
    let probed = app_health(state, req.method(), req.uri().path()).await;
    let endpoint = match probed {
        // An app probe's answer is, like a refusal, a status and a text.
        Some(answer) => Err(answer),
        None => admit(req.method(), req.uri().path(), caller),
    };
    let (status, content_type, body) = match endpoint {
        Err((status, text)) => (status, "text/plain", text),
        Ok(Endpoint::Tap) => match tap::TapQuery::parse(req.uri().query().unwrap_or_default()) {
            Ok(query) => {
                let own = state
                    .identity
                    .borrow()
                    .as_ref()
                    .map(|i| i.spiffe_id.clone());
                let body = tap::watch(&state.tap, query, own.unwrap_or_default());
                let mut rsp = Response::new(http_body_util::Either::Right(body));
                rsp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/x-ndjson"),
                );
                return rsp;
            }
            Err(why) => (StatusCode::BAD_REQUEST, "text/plain", format!("{why}\n")),
        },
        Ok(Endpoint::Metrics) => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics_text(&state.metrics),
        ),
        Ok(Endpoint::LogLevel) => set_log_level(state, req).await,
        Ok(Endpoint::Shutdown) => {
            state.stop.notify_one();
            (StatusCode::ACCEPTED, "text/plain", "draining\n".to_string())
        }
        Ok(Endpoint::Live) => (StatusCode::OK, "text/plain", "live\n".to_string()),
        Ok(Endpoint::Ready) => match state.ready() {
            Ok(()) => (StatusCode::OK, "text/plain", "ready\n".to_string()),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
        Ok(Endpoint::Config) => (StatusCode::OK, "application/json", state.config_json()),
        Ok(Endpoint::Stats) => (StatusCode::OK, "application/json", state.stats_json()),
        Ok(Endpoint::Explain) => state.explain(req.uri().query().unwrap_or_default()),
    };
    let mut rsp = Response::new(http_body_util::Either::Left(Body::full(body)));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    rsp
}

/// The admin address the control plane lists for `trellis stat`: the first bound address, with
/// an unspecified IP (`0.0.0.0`, `[::]`, as in a pod) replaced by the pod's IP when the injector
/// passed it (`TRELLIS_POD_IP`), else by loopback of the same family (a local mesh). Empty when
/// nothing is bound.
pub fn advertised_address(bound: &[std::net::SocketAddr], pod_ip: Option<&str>) -> String {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    let Some(first) = bound.first() else {
        return String::new();
    };
    if !first.ip().is_unspecified() {
        return first.to_string();
    }
    let pod_ip = pod_ip.and_then(|ip| ip.trim().parse::<IpAddr>().ok());
    let ip = match (pod_ip, first.ip()) {
        (Some(ip), _) => ip,
        (None, IpAddr::V4(_)) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        (None, IpAddr::V6(_)) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    };
    SocketAddr::new(ip, first.port()).to_string()
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

#[cfg(test)]
mod tests {
    #[test]
    fn advertised_address_names_a_reachable_ip() {
        use super::advertised_address;
        let bound = |text: &str| vec![text.parse().unwrap()];
        assert_eq!(
            advertised_address(&bound("127.0.0.3:4191"), None),
            "127.0.0.3:4191"
        );
        assert_eq!(
            advertised_address(&bound("0.0.0.0:4191"), Some("10.0.3.7")),
            "10.0.3.7:4191"
        );
        assert_eq!(
            advertised_address(&bound("[::]:4191"), Some("fd00::7")),
            "[fd00::7]:4191"
        );
        assert_eq!(
            advertised_address(&bound("0.0.0.0:4191"), None),
            "127.0.0.1:4191"
        );
        assert_eq!(
            advertised_address(&bound("0.0.0.0:4191"), Some("not an ip")),
            "127.0.0.1:4191"
        );
        assert_eq!(advertised_address(&[], Some("10.0.3.7")), "");
    }

    use super::*;
    use std::net::IpAddr;

    fn caller(ip: &str, open: bool) -> Caller {
        Caller::of(ip.parse::<IpAddr>().unwrap(), open)
    }

    #[test]
    fn probes_and_scrapes_answer_anyone() {
        for path in ["/live", "/ready", "/metrics"] {
            assert!(
                admit(&Method::GET, path, caller("10.1.2.3", false)).is_ok(),
                "{path}"
            );
        }
    }

    #[test]
    fn shutdown_and_log_level_answer_loopback_callers_only() {
        for ip in ["127.0.0.1", "127.0.0.9", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(
                admit(&Method::POST, "/shutdown", caller(ip, false)),
                Ok(Endpoint::Shutdown),
                "{ip}"
            );
            assert_eq!(
                admit(&Method::PUT, "/log-level", caller(ip, false)),
                Ok(Endpoint::LogLevel)
            );
        }
        for ip in ["10.1.2.3", "fd00::1", "::ffff:10.1.2.3", "0.0.0.0"] {
            for open in [false, true] {
                let refused = admit(&Method::POST, "/shutdown", caller(ip, open));
                assert_eq!(refused.map_err(|e| e.0), Err(StatusCode::FORBIDDEN), "{ip}");
                let refused = admit(&Method::PUT, "/log-level", caller(ip, open));
                assert_eq!(refused.map_err(|e| e.0), Err(StatusCode::FORBIDDEN), "{ip}");
            }
        }
    }

    #[test]
    fn diagnostics_need_loopback_or_the_flag() {
        for path in ["/config", "/stats", "/explain"] {
            let refused = admit(&Method::GET, path, caller("10.1.2.3", false));
            let (status, text) = refused.unwrap_err();
            assert_eq!(status, StatusCode::FORBIDDEN);
            assert!(text.contains("--admin-open-diagnostics"), "{text}");
            assert!(admit(&Method::GET, path, caller("10.1.2.3", true)).is_ok());
            assert!(admit(&Method::GET, path, caller("127.0.0.1", false)).is_ok());
        }
    }

    #[test]
    fn wrong_methods_are_405_with_the_right_one_and_post_no_longer_sets_the_log_level() {
        let local = caller("127.0.0.1", false);
        let cases = [
            (Method::POST, "/log-level", "use PUT\n"),
            (Method::GET, "/shutdown", "use POST\n"),
            (Method::POST, "/config", "use GET\n"),
            (Method::DELETE, "/ready", "use GET\n"),
        ];
        for (method, path, want) in cases {
            let (status, text) = admit(&method, path, local).unwrap_err();
            assert_eq!(
                (status, text.as_str()),
                (StatusCode::METHOD_NOT_ALLOWED, want)
            );
        }
        // The method is checked before the caller: a remote caller learns nothing more.
        let (status, _) = admit(&Method::GET, "/nope", local).unwrap_err();
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
