//! `DyingApp`: an upstream app (HTTP/1.1 and h2c, detected per connection) that can be killed
//! with every connection it holds, mid-response, as a crashing process is: the kernel closes its
//! sockets and nothing else is said. Paths:
//! - `/stream`: 200, then a body of 1 KiB chunks every 20 ms, without end (no Content-Length);
//! - `/hold`: never answers (the request is in the app when it dies);
//! - anything else: 200 `ok`.
//!
//! Every response names the app in `x-app`; `requests()` counts what arrived.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

type AppBody = BoxBody<Bytes, Infallible>;

/// Spawns onto tokio and remembers every task, so that `kill` can end them all: connections and
/// the per-stream tasks hyper spawns for HTTP/2.
#[derive(Clone, Default)]
struct Tracked(Arc<Mutex<Vec<AbortHandle>>>);

impl<F> hyper::rt::Executor<F> for Tracked
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        let handle = tokio::spawn(future).abort_handle();
        if let Ok(mut tasks) = self.0.lock() {
            tasks.push(handle);
        }
    }
}

impl Tracked {
    fn abort_all(&self) {
        if let Ok(mut tasks) = self.0.lock() {
            for task in tasks.drain(..) {
                task.abort();
            }
        }
    }
}

pub struct DyingApp {
    pub addr: SocketAddr,
    pub name: String,
    requests: Arc<AtomicUsize>,
    tasks: Tracked,
}

impl Drop for DyingApp {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

impl DyingApp {
    /// Listens on `addr`, retrying for up to 5 s while a previous owner (a killed app, an
    /// aborted echo app) still holds it.
    pub async fn start(name: &str, addr: SocketAddr) -> std::io::Result<DyingApp> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let addr = listener.local_addr()?;
        let app = DyingApp {
            addr,
            name: name.to_string(),
            requests: Arc::new(AtomicUsize::new(0)),
            tasks: Tracked::default(),
        };
        let accept = accept_loop(
            listener,
            name.to_string(),
            app.requests.clone(),
            app.tasks.clone(),
        );
        hyper::rt::Executor::execute(&app.tasks, accept);
        Ok(app)
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Dies: the listener and every connection close at once, responses half sent.
    pub fn kill(&self) {
        self.tasks.abort_all();
    }
}

async fn accept_loop(
    listener: TcpListener,
    name: String,
    requests: Arc<AtomicUsize>,
    tasks: Tracked,
) {
    while let Ok((stream, _)) = listener.accept().await {
        let (name, requests, executor) = (name.clone(), requests.clone(), tasks.clone());
        let connection = async move {
            let svc = hyper::service::service_fn(move |req| {
                requests.fetch_add(1, Ordering::SeqCst);
                let name = name.clone();
                async move { Ok::<_, Infallible>(answer(&name, req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(executor)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        };
        hyper::rt::Executor::execute(&tasks, connection);
    }
}

async fn answer(name: &str, req: Request<Incoming>) -> Response<AppBody> {
    let body = match req.uri().path() {
        "/hold" => std::future::pending().await,
        "/stream" => endless().boxed(),
        _ => Full::new(Bytes::from_static(b"ok")).boxed(),
    };
    let mut rsp = Response::new(body);
    if let Ok(value) = name.parse() {
        rsp.headers_mut().insert("x-app", value);
    }
    rsp
}

/// 1 KiB every 20 ms, forever.
fn endless() -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>>> {
    let chunk = Bytes::from(vec![b'x'; 1024]);
    StreamBody::new(futures_util::stream::unfold(chunk, |chunk| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Some((Ok(Frame::data(chunk.clone())), chunk))
    }))
}
