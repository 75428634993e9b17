//! The inbound side's client to the local app, in the protocol the app speaks: pooled HTTP/1.1
//! connections, or one multiplexed h2c connection per app port. The request keeps its original
//! authority (as the Host header for HTTP/1.1, `:authority` for h2c), so the app sees what the
//! caller sent. An upgrade (WebSocket, see `upgrade`) gets a dedicated HTTP/1.1 connection of its
//! own (`upgrade_connection`), since the connection becomes the WebSocket.

use super::app_conn::AppConnector;
use super::body::Body;
use super::headers::{strip_hop_by_hop, PROXY_ERROR};
use crate::config::{AppPort, AppProtocol};
use crate::errors::ProxyError;
use crate::transport::MeshConnection;
use arc_swap::ArcSwap;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, HeaderValue, Request, Response, Uri, Version};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
pub struct AppClient {
    host: IpAddr,
    http1: Client<AppConnector, Body>,
    h2c: Arc<ArcSwap<HashMap<u16, Arc<MeshConnection>>>>,
    /// `host:port` of each app port asked for so far: formatting the address and parsing the
    /// result for every request cost ~3,000 instructions (callgrind); an app has few ports.
    authorities: Arc<ArcSwap<HashMap<u16, Authority>>>,
}

impl AppClient {
    pub fn new(host: IpAddr) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(AppConnector::new(connector));
        AppClient {
            host,
            http1,
            h2c: Arc::default(),
            authorities: Arc::default(),
        }
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
                if let Some(a) = &authority {
                    if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                        req.headers_mut().insert(header::HOST, v);
                    }
                }
                let path = (req.uri().path_and_query().cloned())
                    .unwrap_or_else(|| PathAndQuery::from_static("/"));
                let uri = Uri::builder()
                    .scheme(Scheme::HTTP)
                    .authority(self.authority(port).map_err(|e| app_err(&e))?)
                    .path_and_query(path)
                    .build()
                    .map_err(|e| app_err(&e))?;
                *req.uri_mut() = uri;
                *req.version_mut() = Version::HTTP_11;
                self.http1.request(req).await.map_err(|e| app_err(&e))?
            }
            AppProtocol::H2c => {
                *req.version_mut() = Version::HTTP_2;
                let conn = self.h2c_connection(port);
                let mut sender = match conn.live() {
                    Some(sender) => sender,
                    // Boxed: connecting is a large future that only the first request needs
                    // (`forward::connection` says why it matters).
                    None => Box::pin(conn.sender(Duration::from_secs(1))).await?,
                };
                sender.send_request(req).await.map_err(|e| app_err(&e))?
            }
        };
        strip_hop_by_hop(rsp.headers_mut());
        // The app cannot speak for the proxy: callers must not take its header for ours.
        rsp.headers_mut().remove(&PROXY_ERROR);
        Ok(rsp.map(Body::from))
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

    /// The app's `host:port` for `port`, made once per port.
    fn authority(&self, port: u16) -> Result<Authority, http::uri::InvalidUri> {
        if let Some(a) = self.authorities.load().get(&port) {
            return Ok(a.clone());
        }
        let made: Authority = SocketAddr::new(self.host, port).to_string().parse()?;
        self.authorities.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.insert(port, made.clone());
            map
        });
        Ok(made)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_app_authority_is_made_once_per_port_for_either_address_family() {
        let v4 = AppClient::new(IpAddr::from([127, 0, 0, 1]));
        assert_eq!(
            v4.authority(8080).map(|a| a.to_string()).ok(),
            Some("127.0.0.1:8080".into())
        );
        assert_eq!(
            v4.authority(8080).map(|a| a.to_string()).ok(),
            Some("127.0.0.1:8080".into())
        );
        assert_eq!(
            v4.authority(9090).map(|a| a.to_string()).ok(),
            Some("127.0.0.1:9090".into())
        );
        assert_eq!(v4.authorities.load().len(), 2);
        let v6 = AppClient::new(IpAddr::from(std::net::Ipv6Addr::LOCALHOST));
        assert_eq!(
            v6.authority(80).map(|a| a.to_string()).ok(),
            Some("[::1]:80".into())
        );
    }
}
