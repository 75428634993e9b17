//! A client standing in for an app inside the mesh: it connects to its sidecar's outbound
//! listener but addresses requests to a service name, the way an app configured with
//! `HTTP_PROXY`-less explicit routing (or captured by iptables) would.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use tokio::net::TcpStream;

pub type ClientBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

type Connector = tower::util::BoxCloneSyncService<http::Uri, TokioIo<TcpStream>, std::io::Error>;

#[derive(Clone)]
pub struct TestClient {
    inner: Client<Connector, ClientBody>,
}

impl TestClient {
    /// HTTP/1.1 (or h2c when `h2c`) to the sidecar listening on `outbound`.
    pub fn new(outbound: SocketAddr, h2c: bool) -> TestClient {
        let connector: Connector = tower::util::BoxCloneSyncService::new(tower::service_fn(
            move |_uri: http::Uri| async move {
                let tcp = TcpStream::connect(outbound).await?;
                tcp.set_nodelay(true)?;
                Ok(TokioIo::new(tcp))
            },
        ));
        let inner = Client::builder(TokioExecutor::new())
            .http2_only(h2c)
            .build(connector);
        TestClient { inner }
    }

    pub async fn send(
        &self,
        req: Request<ClientBody>,
    ) -> Result<Response<hyper::body::Incoming>, hyper_util::client::legacy::Error> {
        self.inner.request(req).await
    }

    /// GET `http://{authority}{path}`, returning status, headers and the whole body.
    pub async fn get(&self, authority: &str, path: &str) -> anyhow::Result<(Response<()>, Bytes)> {
        let req = Request::get(format!("http://{authority}{path}")).body(full(Bytes::new()))?;
        collect(self.send(req).await?).await
    }
}

pub fn full(bytes: impl Into<Bytes>) -> ClientBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Reads a response to the end.
pub async fn collect(
    rsp: Response<hyper::body::Incoming>,
) -> anyhow::Result<(Response<()>, Bytes)> {
    let (parts, body) = rsp.into_parts();
    let bytes = body.collect().await?.to_bytes();
    Ok((Response::from_parts(parts, ()), bytes))
}
