//! The inbound side's client to the local app, in the protocol the app speaks: pooled HTTP/1.1
//! connections (`app_pool`, one pool per app port), or one multiplexed h2c connection per app
//! port. The request keeps its original authority (as the Host header for HTTP/1.1, `:authority`
//! for h2c), so the app sees what the caller sent. An upgrade (WebSocket, see `upgrade`) gets a
//! dedicated HTTP/1.1 connection of its own (`upgrade_connection`), since the connection becomes
//! the WebSocket.

use super::app_pool::{AppDial, Http1Pool};
use super::body::Body;
use super::headers::{strip_hop_by_hop, PROXY_ERROR};
use crate::config::{AppPort, AppProtocol};
use crate::errors::ProxyError;
use crate::transport::MeshConnection;
use arc_swap::ArcSwap;
use http::uri::PathAndQuery;
use http::{header, HeaderValue, Request, Response, Uri, Version};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
pub struct AppClient {
    host: IpAddr,
    /// One pool of HTTP/1.1 connections per app port asked for so far (an app has few ports).
    http1: Arc<ArcSwap<HashMap<u16, Arc<Http1Pool<AppDial>>>>>,
    h2c: Arc<ArcSwap<HashMap<u16, Arc<MeshConnection>>>>,
    /// How long a WebSocket to the app may stay silent both ways (`Limits::tunnel_idle_timeout`).
    tunnel_idle_timeout: std::time::Duration,
}

impl AppClient {
    pub fn new(host: IpAddr) -> Self {
        AppClient {
            host,
            http1: Arc::default(),
            h2c: Arc::default(),
            tunnel_idle_timeout: crate::Limits::default().tunnel_idle_timeout,
        }
    }

    /// WebSockets to the app close after `after` without a byte either way.
    pub fn with_tunnel_idle_timeout(mut self, after: std::time::Duration) -> Self {
        self.tunnel_idle_timeout = after;
        self
    }

    pub fn tunnel_idle_timeout(&self) -> std::time::Duration {
        self.tunnel_idle_timeout
    }

    pub async fn send(
        &self,
        app: AppPort,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, ProxyError> {
        let port = app.target_port;
        let app_err = |e: &dyn std::fmt::Display| ProxyError::App {
            port,
            reason: e.to_string(),
        };
        let authority = req.uri().authority().cloned();
        strip_hop_by_hop(req.headers_mut());
        let mut rsp = match app.protocol {
            AppProtocol::Http1 => {
                let host = match &authority {
                    Some(a) => HeaderValue::from_str(a.as_str()).ok(),
                    None => None,
                };
                match host {
                    Some(v) => {
                        req.headers_mut().insert(header::HOST, v);
                    }
                    // As hyper-util's client did: a request without one names the app.
                    None if !req.headers().contains_key(header::HOST) => {
                        let addr = self.addr(port).to_string();
                        if let Ok(v) = HeaderValue::from_str(&addr) {
                            req.headers_mut().insert(header::HOST, v);
                        }
                    }
                    None => {}
                }
                // Origin form (`/path?query`): the connection already names the app.
                let path = (req.uri().path_and_query().cloned())
                    .unwrap_or_else(|| PathAndQuery::from_static("/"));
                *req.uri_mut() = Uri::from(path);
                *req.version_mut() = Version::HTTP_11;
                let (rsp, pooled) =
                    (self.http1_pool(port).send(req).await).map_err(|e| app_err(&e))?;
                rsp.map(|b| Body::from(b).pooled(pooled))
            }
            AppProtocol::H2c => {
                // An HTTP/1.1 request (from a peer sending HTTP/1.1, or a plain-text caller)
                // names its authority in Host; HTTP/2 wants `:scheme` and `:authority`.
                if authority.is_none() {
                    to_absolute_form(&mut req, || self.addr(port).to_string())?;
                }
                *req.version_mut() = Version::HTTP_2;
                let conn = self.h2c_connection(port);
                let mut sender = match conn.live() {
                    Some(sender) => sender,
                    // Boxed: connecting is a large future that only the first request needs
                    // (`forward::connection` says why it matters).
                    None => Box::pin(conn.sender(Duration::from_secs(1))).await?,
                };
                let rsp = sender.send_request(req).await.map_err(|e| app_err(&e))?;
                rsp.map(Body::from)
            }
        };
        strip_hop_by_hop(rsp.headers_mut());
        // The app cannot speak for the proxy: callers must not take its header for ours.
        rsp.headers_mut().remove(&PROXY_ERROR);
        Ok(rsp)
    }

    /// A new HTTP/1.1 connection to the app on `port`, for one upgrade request only: never
    /// pooled, since after a 101 it carries the upgraded protocol.
    pub async fn upgrade_connection(
        &self,
        port: u16,
    ) -> Result<hyper::client::conn::http1::SendRequest<Body>, ProxyError> {
        let addr = self.addr(port);
        let app_err = |reason: String| ProxyError::App { port, reason };
        let tcp =
            tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| app_err("connect timeout".into()))?
                .map_err(|e| app_err(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(|e| app_err(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %e, "app upgrade connection failed");
            }
        });
        Ok(sender)
    }

    /// The connection pool of app port `port`, made on first use.
    fn http1_pool(&self, port: u16) -> Arc<Http1Pool<AppDial>> {
        if let Some(p) = self.http1.load().get(&port) {
            return p.clone();
        }
        let addr = self.addr(port);
        let mut created = None;
        self.http1.rcu(|map| {
            let mut map = HashMap::clone(map);
            let pool = map
                .entry(port)
                .or_insert_with(|| Http1Pool::new(addr))
                .clone();
            created = Some(pool);
            map
        });
        created.unwrap_or_else(|| Http1Pool::new(addr))
    }

    /// The app's address for `port`.
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.host, port)
    }

    fn h2c_connection(&self, port: u16) -> Arc<MeshConnection> {
        if let Some(c) = self.h2c.load().get(&port) {
            return c.clone();
        }
        let addr = SocketAddr::new(self.host, port);
        let mut created = None;
        self.h2c.rcu(|map| {
            let mut map = HashMap::clone(map);
            let conn = map
                .entry(port)
                .or_insert_with(|| Arc::new(MeshConnection::plain(addr)))
                .clone();
            created = Some(conn);
            map
        });
        created.unwrap_or_else(|| Arc::new(MeshConnection::plain(addr)))
    }
}

/// Absolute-form target (`http://host:port/path`) from the Host header (or `default`, the app's
/// address, when there is none), and no Host header: the form an h2c app's HTTP/2 wants.
fn to_absolute_form(
    req: &mut Request<Body>,
    default: impl FnOnce() -> String,
) -> Result<(), ProxyError> {
    let host = match req.headers_mut().remove(header::HOST) {
        Some(host) => host.to_str().map(str::to_string).ok(),
        None => Some(default()),
    };
    let authority = host
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
        .ok_or(ProxyError::BadRequest("missing or invalid authority"))?;
    super::set_absolute_target(req, authority)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_form_takes_the_host_header_or_the_default() {
        let mut req = Request::get("/p?q")
            .header("host", "hello:80")
            .body(Body::empty())
            .unwrap();
        assert!(to_absolute_form(&mut req, || "127.0.0.1:9".into()).is_ok());
        assert_eq!(req.uri().to_string(), "http://hello:80/p?q");
        assert!(req.headers().get(header::HOST).is_none());
        let mut bare = Request::get("/").body(Body::empty()).unwrap();
        assert!(to_absolute_form(&mut bare, || "127.0.0.1:9".into()).is_ok());
        assert_eq!(bare.uri().to_string(), "http://127.0.0.1:9/");
        let mut bad = Request::get("/")
            .header("host", "a b")
            .body(Body::empty())
            .unwrap();
        assert!(to_absolute_form(&mut bad, || "x".into()).is_err());
    }

    #[tokio::test]
    async fn one_pool_per_app_port() {
        let app = AppClient::new(IpAddr::from([127, 0, 0, 1]));
        let first = app.http1_pool(8080);
        assert!(Arc::ptr_eq(&first, &app.http1_pool(8080)));
        assert!(!Arc::ptr_eq(&first, &app.http1_pool(9090)));
        assert_eq!(app.http1.load().len(), 2);
    }
}
