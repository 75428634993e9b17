//! The admin listener: `/live` (the process answers), `/ready` (a valid certificate is held and
//! every resource type has been received once), `/config` (the snapshot in force, with versions,
//! as JSON), `/stats` (resilience counters per cluster and route, as JSON). Plain HTTP/1.1, bound to localhost by default.

use crate::config::SnapshotStore;
use crate::discovery::SharedStatus;
use crate::drain::DrainWatch;
use crate::http::Body;
use crate::identity::IdentityInfo;
use http::{header, Method, Request, Response, StatusCode};
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
}

impl AdminState {
    pub fn ready(&self) -> Result<(), String> {
        match &*self.identity.borrow() {
            Some(id) if id.is_valid_now() => {}
            Some(_) => return Err("certificate expired".into()),
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
        let doc = serde_json::json!({ "clusters": clusters, "routes": routes });
        serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    fn config_json(&self) -> String {
        let snapshot = self.store.load();
        let (connected, last_nack) = self
            .discovery
            .lock()
            .map(|s| (s.connected, s.last_nack.clone()))
            .unwrap_or((false, None));
        let doc = serde_json::json!({
            "identity": &*self.identity.borrow(),
            "controlPlaneConnected": connected,
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
                async move { Ok::<_, Infallible>(handle(&state, req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn handle(state: &AdminState, req: Request<Incoming>) -> Response<Body> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
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
        (_, "/live" | "/ready" | "/config" | "/stats") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /live, /ready, /config, /stats\n".to_string(),
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
