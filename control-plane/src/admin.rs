//! The control plane's admin listener: plain HTTP/1.1, on `127.0.0.1:9990` from the command line
//! (in a pod, every address, for the kubelet's probes and Prometheus), off in `ControlPlaneConfig`
//! unless set. It is separate from the gRPC port because probes and scrapers speak neither TLS
//! with our CA nor gRPC.
//! - `GET /live`: the process answers; anyone.
//! - `GET /ready`: 200 once the first config is loaded and the gRPC server is accepting, 503 with
//!   the reason before that and while shutting down; anyone.
//! - `GET /metrics`: Prometheus text format (`metrics.rs`); anyone.
//! - `GET /status`: the config version, last reload error, what was skipped and the recent NACKs,
//!   as JSON; loopback callers only (`kubectl port-forward` arrives as loopback), because NACK
//!   messages and config errors name pods, addresses and policy.
//! - `GET /proxies`: the connected proxies (node, service, identity, version, admin address), as
//!   JSON, which `trellis stat --control-plane-admin` scrapes; loopback callers only, as `/status`.
//!
//! It starts in `ControlPlane::bind`, before the config source is synced (a Kubernetes sync can
//! take a while), so liveness holds during start-up while readiness waits.
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::metrics::{ControlPlaneMetrics, MetricsCollector};
use crate::status::ControlPlaneStatus;

/// A client that has not sent its request headers by then is disconnected, so idle or slow
/// connections cannot pile up on a port every pod's kubelet and Prometheus reach.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (out of descriptors): retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What `/ready` depends on besides the config: set by `ControlPlane::run`.
#[derive(Debug, Default)]
pub struct Readiness {
    serving: AtomicBool,
    stopping: AtomicBool,
}

impl Readiness {
    /// The gRPC server has started accepting connections.
    pub fn set_serving(&self) {
        self.serving.store(true, Ordering::Relaxed);
    }

    /// Shutdown began: load balancers should stop sending new proxies here.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// `Ok` when ready, or why not.
    pub fn check(&self, status: &ControlPlaneStatus) -> Result<(), &'static str> {
        if self.stopping.load(Ordering::Relaxed) {
            Err("shutting down")
        } else if status.config_version == 0 {
            Err("the first config is not loaded yet")
        } else if !self.serving.load(Ordering::Relaxed) {
            Err("the discovery server is not serving yet")
        } else {
            Ok(())
        }
    }
}

#[derive(Debug, Clone)]
pub struct AdminState {
    pub status: watch::Receiver<ControlPlaneStatus>,
    pub metrics: Arc<ControlPlaneMetrics>,
    pub readiness: Arc<Readiness>,
}

/// The running listener; dropping it stops it and closes its connections.
#[derive(Debug)]
pub struct AdminServer {
    local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl AdminServer {
    /// Binds `addr` and serves on a task of the current runtime.
    pub async fn start(addr: SocketAddr, state: AdminState) -> io::Result<AdminServer> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let task = tokio::spawn(serve(listener, state));
        Ok(AdminServer { local_addr, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, state: AdminState) {
    // Owned here so that stopping the server also ends its connections.
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::debug!(error = %e, "admin accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let state = state.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let answer = respond(&state, req.method(), req.uri().path(), peer.ip());
                async move { Ok::<_, Infallible>(answer.into_response()) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "admin connection ended");
            }
        });
    }
}

/// A response before it becomes HTTP: status, content type, body.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: StatusCode,
    content_type: &'static str,
    body: String,
}

impl Answer {
    fn text(status: StatusCode, body: impl Into<String>) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let method_not_allowed = self.status == StatusCode::METHOD_NOT_ALLOWED;
        let mut response = Response::new(Full::new(Bytes::from(self.body)));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        if method_not_allowed {
            headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        response
    }
}

fn respond(state: &AdminState, method: &Method, path: &str, peer: IpAddr) -> Answer {
    let known = matches!(
        path,
        "/live" | "/ready" | "/metrics" | "/status" | "/proxies"
    );
    if !known {
        return Answer::text(
            StatusCode::NOT_FOUND,
            "not found; try /live, /ready, /metrics, /status or /proxies\n",
        );
    }
    if method != Method::GET && method != Method::HEAD {
        return Answer::text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
    }
    match path {
        "/live" => Answer::text(StatusCode::OK, "live\n"),
        "/ready" => match state.readiness.check(&state.status.borrow()) {
            Ok(()) => Answer::text(StatusCode::OK, "ready\n"),
            Err(why) => Answer::text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        "/metrics" => {
            let collector = MetricsCollector {
                metrics: state.metrics.clone(),
                status: state.status.clone(),
            };
            match crate::metrics::render(collector) {
                Ok(text) => Answer {
                    status: StatusCode::OK,
                    content_type: "text/plain; version=0.0.4; charset=utf-8",
                    body: text,
                },
                Err(_) => Answer::text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the metrics could not be encoded\n",
                ),
            }
        }
        _ if !peer.to_canonical().is_loopback() => Answer::text(
            StatusCode::FORBIDDEN,
            format!("{path} answers loopback callers only (use kubectl port-forward)\n"),
        ),
        "/proxies" => Answer {
            status: StatusCode::OK,
            content_type: "application/json",
            body: serde_json::to_string_pretty(&serde_json::json!({
                "proxies": state.metrics.proxies()
            }))
            .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")),
        },
        _ => Answer {
            status: StatusCode::OK,
            content_type: "application/json",
            body: status_json(state),
        },
    }
}

fn status_json(state: &AdminState) -> String {
    let status = state.status.borrow().clone();
    let ready = state.readiness.check(&status);
    let doc = serde_json::json!({
        "ready": ready.is_ok(),
        "notReadyReason": ready.err(),
        "connectedProxies": state.metrics.connected_proxies(),
        "status": status,
    });
    serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::NackRecord;

    fn state(version: u64) -> (AdminState, watch::Sender<ControlPlaneStatus>) {
        let (tx, status) = watch::channel(ControlPlaneStatus {
            config_version: version,
            ..Default::default()
        });
        let state = AdminState {
            status,
            metrics: ControlPlaneMetrics::new(),
            readiness: Arc::new(Readiness::default()),
        };
        (state, tx)
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const REMOTE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 2, 3));

    fn get(state: &AdminState, path: &str, peer: IpAddr) -> Answer {
        respond(state, &Method::GET, path, peer)
    }

    #[test]
    fn ready_needs_a_config_and_a_serving_server_and_ends_at_shutdown() {
        let (state, status) = state(0);
        assert_eq!(get(&state, "/live", REMOTE).status, StatusCode::OK);
        let not_ready = get(&state, "/ready", REMOTE);
        assert_eq!(not_ready.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            not_ready.body.contains("first config"),
            "{}",
            not_ready.body
        );

        status.send_modify(|s| s.config_version = 1);
        let not_ready = get(&state, "/ready", REMOTE);
        assert_eq!(not_ready.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(not_ready.body.contains("not serving"), "{}", not_ready.body);

        state.readiness.set_serving();
        assert_eq!(get(&state, "/ready", REMOTE).status, StatusCode::OK);

        state.readiness.set_stopping();
        let stopping = get(&state, "/ready", REMOTE);
        assert_eq!(stopping.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(stopping.body.contains("shutting down"), "{}", stopping.body);
        assert_eq!(get(&state, "/live", REMOTE).status, StatusCode::OK);
    }

    #[test]
    fn status_is_json_for_loopback_callers_only() {
        let (state, status) = state(4);
        status.send_modify(|s| {
            s.last_error = Some("mesh.yaml:3:5: bad".into());
            s.record_nack(NackRecord {
                node_id: "hello-1".into(),
                type_url: trellis_api::type_url::ROUTES.into(),
                nonce: "1-2".into(),
                message: "no".into(),
                received_unix_ms: 42,
            });
        });
        let node = trellis_api::discovery::Node {
            id: "hello-1".into(),
            service: "hello".into(),
            admin_address: "10.0.0.9:4191".into(),
            ..Default::default()
        };
        let _stream = (state.metrics)
            .stream_connected(crate::proxies::ConnectedProxy::new(&node, "spiffe://t/a"));
        let answer = get(&state, "/status", LOCAL);
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.content_type, "application/json");
        let doc: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(doc["status"]["configVersion"], 4);
        assert_eq!(doc["status"]["lastError"], "mesh.yaml:3:5: bad");
        assert_eq!(doc["status"]["nacks"][0]["nodeId"], "hello-1");
        assert_eq!(doc["status"]["nacks"][0]["receivedUnixMs"], 42);
        assert_eq!(doc["connectedProxies"], 1);
        assert_eq!(doc["ready"], false);

        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(get(&state, "/status", mapped).status, StatusCode::OK);
        let refused = get(&state, "/status", REMOTE);
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert!(!refused.body.contains("hello-1"));
        let proxies = get(&state, "/proxies", LOCAL);
        assert_eq!(proxies.status, StatusCode::OK);
        let doc: serde_json::Value = serde_json::from_str(&proxies.body).unwrap();
        assert_eq!(doc["proxies"][0]["adminAddress"], "10.0.0.9:4191");
        assert_eq!(doc["proxies"][0]["identity"], "spiffe://t/a");
        let refused = get(&state, "/proxies", REMOTE);
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert!(refused
            .body
            .starts_with("/proxies answers loopback callers only"));
        // Probes and scrapes answer anyone.
        assert_eq!(get(&state, "/metrics", REMOTE).status, StatusCode::OK);
    }

    #[test]
    fn unknown_paths_and_methods_are_refused() {
        let (state, _status) = state(1);
        assert_eq!(get(&state, "/config", LOCAL).status, StatusCode::NOT_FOUND);
        let post = respond(&state, &Method::POST, "/ready", LOCAL);
        assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
        let response = post.into_response();
        assert_eq!(response.headers()[header::ALLOW], "GET, HEAD");
    }
}
