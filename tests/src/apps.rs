//! The upstream apps the tests talk to: an echo server that streams the request body back and
//! reports in response headers what it received (method, target, host, every request header,
//! HTTP version), and counts requests so tests can assert how many arrived.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    H2c,
}

impl Protocol {
    pub fn yaml(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2c => "h2c",
        }
    }
}

type EchoBody = BoxBody<Bytes, hyper::Error>;

/// A running echo server; aborted on drop.
pub struct EchoApp {
    pub addr: SocketAddr,
    pub name: String,
    requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for EchoApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EchoApp {
    /// Starts an echo server on `addr` (port 0 for any) speaking HTTP/1.1 and h2c (detected per
    /// connection).
    pub async fn start(name: &str, addr: SocketAddr) -> std::io::Result<EchoApp> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicUsize::new(0));
        let (count, server_name) = (requests.clone(), name.to_string());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (count, server_name) = (count.clone(), server_name.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        count.fetch_add(1, Ordering::SeqCst);
                        let server_name = server_name.clone();
                        async move { Ok::<_, Infallible>(echo(&server_name, req)) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(EchoApp {
            addr,
            name: name.to_string(),
            requests,
            task,
        })
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn echo(server: &str, req: Request<Incoming>) -> Response<EchoBody> {
    let mut rsp = Response::builder()
        .header("x-echo-server", server)
        .header("x-echo-method", req.method().as_str())
        .header("x-echo-version", format!("{:?}", req.version()));
    if let Ok(v) = HeaderValue::from_str(&req.uri().to_string()) {
        rsp = rsp.header("x-echo-uri", v);
    }
    let host = req.uri().authority().map(|a| a.to_string()).or_else(|| {
        req.headers()
            .get("host")
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
    });
    if let Some(host) = host.and_then(|h| HeaderValue::from_str(&h).ok()) {
        rsp = rsp.header("x-echo-host", host);
    }
    for (name, value) in req.headers() {
        if let Ok(echoed) = HeaderName::from_bytes(format!("x-echo-h-{name}").as_bytes()) {
            rsp = rsp.header(echoed, value.clone());
        }
    }
    let body = if req.uri().path() == "/empty" {
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed()
    } else {
        req.into_body().boxed()
    };
    rsp.body(body)
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).map_err(|n| match n {}).boxed()))
}
