//! The upstream apps the tests talk to.
//! - The echo app streams the request body back and reports in response headers what it received
//!   (method, target, host, every request header, HTTP version). Its `Knobs` make it misbehave on
//!   purpose (fixed status, failing the next N requests, answering late), and it counts requests
//!   so tests can assert exactly how many attempts arrived. A failing answer still reads the
//!   whole request body and reports its length (`x-echo-body-len`).
//! - The gRPC app is a real tonic server of `trellis.test.v1.Echo`.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub mod grpc {
    tonic::include_proto!("trellis.test.v1");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    H2c,
    /// h2c with a tonic gRPC server as the app.
    Grpc,
}

impl Protocol {
    pub fn yaml(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2c | Protocol::Grpc => "h2c",
        }
    }
}

/// Ways to make the echo app misbehave; all default to "behave".
#[derive(Debug, Default)]
pub struct Knobs {
    /// Answer every request with this status (0 = echo).
    pub status: AtomicU16,
    /// Answer the next N requests with `fail_status`.
    pub fail_next: AtomicU32,
    pub fail_status: AtomicU16,
    /// Wait this long before answering.
    pub delay_ms: AtomicU64,
    /// Requests being answered now, and the most ever at once (for load-shedding tests).
    pub in_flight: AtomicUsize,
    pub peak_in_flight: AtomicUsize,
}

/// Counts one request in `Knobs::in_flight` while it lives.
struct Answering<'a>(&'a Knobs);

impl<'a> Answering<'a> {
    fn start(knobs: &'a Knobs) -> Self {
        let now = knobs.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        knobs.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        Answering(knobs)
    }
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

type EchoBody = BoxBody<Bytes, hyper::Error>;

/// A running app; aborted on drop.
pub struct EchoApp {
    pub addr: SocketAddr,
    pub name: String,
    pub knobs: Arc<Knobs>,
    requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for EchoApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EchoApp {
    /// Starts the app on `addr` (port 0 for any): the echo server (HTTP/1.1 and h2c detected per
    /// connection) or, for `Protocol::Grpc`, the gRPC server.
    pub async fn start(
        name: &str,
        addr: SocketAddr,
        protocol: Protocol,
    ) -> std::io::Result<EchoApp> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicUsize::new(0));
        let knobs = Arc::new(Knobs::default());
        let task = match protocol {
            Protocol::Grpc => {
                tokio::spawn(serve_grpc(listener, name.to_string(), requests.clone()))
            }
            _ => tokio::spawn(serve_echo(
                listener,
                name.to_string(),
                requests.clone(),
                knobs.clone(),
            )),
        };
        Ok(EchoApp {
            addr,
            name: name.to_string(),
            knobs,
            requests,
            task,
        })
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// The next `n` requests are answered with `status`.
    pub fn fail_next(&self, n: u32, status: u16) {
        self.knobs.fail_status.store(status, Ordering::SeqCst);
        self.knobs.fail_next.store(n, Ordering::SeqCst);
    }

    /// Every request is answered with `status` (0 restores echoing).
    pub fn always(&self, status: u16) {
        self.knobs.status.store(status, Ordering::SeqCst);
    }

    pub fn delay(&self, d: Duration) {
        self.knobs
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }
}

async fn serve_echo(
    listener: TcpListener,
    name: String,
    count: Arc<AtomicUsize>,
    knobs: Arc<Knobs>,
) {
    while let Ok((stream, _)) = listener.accept().await {
        let (count, name, knobs) = (count.clone(), name.clone(), knobs.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                count.fetch_add(1, Ordering::SeqCst);
                let (name, knobs) = (name.clone(), knobs.clone());
                async move { Ok::<_, Infallible>(answer(&name, &knobs, req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn empty() -> EchoBody {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

async fn answer(server: &str, knobs: &Knobs, req: Request<Incoming>) -> Response<EchoBody> {
    let _answering = Answering::start(knobs);
    let delay = knobs.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let failing = knobs
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let status = if failing {
        knobs.fail_status.load(Ordering::SeqCst)
    } else {
        knobs.status.load(Ordering::SeqCst)
    };
    if status != 0 {
        let len = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().len())
            .unwrap_or(0);
        return Response::builder()
            .status(status)
            .header("x-echo-server", server)
            .header("x-echo-body-len", len)
            .body(empty())
            .unwrap_or_else(|_| Response::new(empty()));
    }
    echo(server, req)
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
        empty()
    } else {
        req.into_body().boxed()
    };
    rsp.body(body).unwrap_or_else(|_| Response::new(empty()))
}

struct EchoService {
    name: String,
    count: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl grpc::echo_server::Echo for EchoService {
    async fn say(
        &self,
        request: tonic::Request<grpc::SayRequest>,
    ) -> Result<tonic::Response<grpc::SayReply>, tonic::Status> {
        self.count.fetch_add(1, Ordering::SeqCst);
        let req = request.into_inner();
        if req.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(req.delay_ms)).await;
        }
        Ok(tonic::Response::new(grpc::SayReply {
            message: req.message,
            server: self.name.clone(),
        }))
    }
}

async fn serve_grpc(listener: TcpListener, name: String, count: Arc<AtomicUsize>) {
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let _ = tonic::transport::Server::builder()
        .add_service(grpc::echo_server::EchoServer::new(EchoService {
            name,
            count,
        }))
        .serve_with_incoming(incoming)
        .await;
}
