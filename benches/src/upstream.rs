//! The benchmark's upstream: a minimal hyper server (HTTP/1.1 and h2c on the same port, detected
//! from the preface) that answers at once with a body of the asked size (`bench-size` header, or
//! `/bytes/N`), and gRPC calls with one message of that size and `grpc-status: 0`. It does no other
//! work, so it is never the bottleneck. `Stall` makes it pause periodically, for the load
//! generator's own tests.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response};
use http_body_util::{combinators::WithTrailers, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::future::{ready, Ready};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The largest body served (larger asks are capped).
pub const MAX_BODY: usize = 1 << 20;

/// A periodic pause: every `period`, requests arriving between `offset` and `offset + length`
/// (measured from the server's start) wait until the pause ends, like a GC pause.
#[derive(Debug, Clone, Copy)]
pub struct Stall {
    pub period: Duration,
    pub offset: Duration,
    pub length: Duration,
}

impl Stall {
    /// How long a request arriving `since_start` after the start must wait.
    pub fn wait(&self, since_start: Duration) -> Duration {
        let period = self.period.as_nanos().max(1);
        let phase = Duration::from_nanos((since_start.as_nanos() % period) as u64);
        let end = self.offset + self.length;
        if phase >= self.offset && phase < end {
            end - phase
        } else {
            Duration::ZERO
        }
    }
}

type Trailers = Ready<Option<Result<HeaderMap, Infallible>>>;
pub type UpstreamBody = WithTrailers<Full<Bytes>, Trailers>;

struct Shared {
    zeros: Bytes,
    started: Instant,
    stall: Option<Stall>,
}

/// A running upstream; stops when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start(addr: SocketAddr, stall: Option<Stall>) -> anyhow::Result<Upstream> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            zeros: Bytes::from(vec![b'x'; MAX_BODY]),
            started: Instant::now(),
            stall,
        });
        let task = tokio::spawn(accept_loop(listener, shared));
        Ok(Upstream { addr, task })
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors or similar: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, shared.clone()));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The body size a request asks for: the `bench-size` header, else `/bytes/N`, else 0.
pub fn asked_size(headers: &HeaderMap, path: &str) -> usize {
    let from_header = headers
        .get("bench-size")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let from_path = || path.strip_prefix("/bytes/").and_then(|n| n.parse().ok());
    from_header.or_else(from_path).unwrap_or(0).min(MAX_BODY)
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<UpstreamBody>, Infallible> {
    if let Some(stall) = shared.stall {
        let wait = stall.wait(shared.started.elapsed());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
    let size = asked_size(req.headers(), req.uri().path());
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    // Read the request body to the end, as a real service would.
    let _ = req.into_body().collect().await;
    let body = shared.zeros.slice(..size);
    let rsp = if grpc {
        let mut frame = Vec::with_capacity(5 + size);
        frame.push(0);
        frame.extend_from_slice(&u32::try_from(size).unwrap_or(u32::MAX).to_be_bytes());
        frame.extend_from_slice(&body);
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let mut rsp =
            Response::new(Full::new(Bytes::from(frame)).with_trailers(ready(Some(Ok(trailers)))));
        rsp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        rsp
    } else {
        Response::new(Full::new(body).with_trailers(ready(None)))
    };
    Ok(rsp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stall_window_waits_until_its_end() {
        let s = Stall {
            period: Duration::from_secs(1),
            offset: Duration::from_millis(300),
            length: Duration::from_millis(100),
        };
        assert_eq!(s.wait(Duration::from_millis(299)), Duration::ZERO);
        assert_eq!(
            s.wait(Duration::from_millis(300)),
            Duration::from_millis(100)
        );
        assert_eq!(
            s.wait(Duration::from_millis(2350)),
            Duration::from_millis(50)
        );
        assert_eq!(s.wait(Duration::from_millis(2400)), Duration::ZERO);
    }

    #[test]
    fn size_from_header_then_path() {
        let mut h = HeaderMap::new();
        assert_eq!(asked_size(&h, "/bytes/12"), 12);
        h.insert("bench-size", HeaderValue::from_static("7"));
        assert_eq!(asked_size(&h, "/bytes/12"), 7);
        assert_eq!(asked_size(&HeaderMap::new(), "/x"), 0);
        assert_eq!(asked_size(&HeaderMap::new(), "/bytes/99999999"), MAX_BODY);
    }
}
