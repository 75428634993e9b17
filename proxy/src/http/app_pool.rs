//! Idle HTTP/1.1 connections to one app port, reused request after request.
//!
//! hyper-util's legacy client did this before, at ~6,000 instructions per request (callgrind): a
//! SipHash of the pool key, a checkout future and a waiter list, and a task spawned per request
//! to put the connection back once it was ready again. An app port is one address, so the pool
//! here is a plain stack of hyper `http1::SendRequest` handles: a request pops one (the most
//! recently used, whose socket is warmest), and the response body puts it back when it has been
//! read to its end (`Body::pooled`); a body dropped before its end takes its connection with it,
//! since hyper cannot reuse a connection with a response half read. The stack is behind a
//! `Mutex` held only for one push or pop (the legacy pool locked too; worker threads share the
//! pool). Connections idle for `IDLE_TIMEOUT` or longer are closed by a sweep every
//! `IDLE_TIMEOUT / 2`, without a clock read per request: each connection carries the sweep epoch
//! it was put back in.
//!
//! Sockets are `app_conn::ResetOnAbort`: a connection dropped mid-request resets.

use super::app_conn::ResetOnAbort;
use super::body::Body;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Idle connections are closed after this long unused (30 to 45 s: see the sweep).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

pub struct Http1Pool {
    addr: SocketAddr,
    idle: Mutex<Vec<Idle>>,
    /// Sweeps so far; a connection put back in epoch `e` is closed by the sweep that makes it
    /// `e + SWEEPS_TO_CLOSE`.
    epoch: AtomicU64,
}

struct Idle {
    sender: SendRequest<Body>,
    epoch: u64,
}

/// Sweeps every `IDLE_TIMEOUT / 2`; two full periods idle (30 to 45 s) close a connection.
const SWEEPS_TO_CLOSE: u64 = 2;

impl Http1Pool {
    /// A pool for the app at `addr`, with its idle sweep (ends when the pool is dropped).
    pub fn new(addr: SocketAddr) -> Arc<Http1Pool> {
        let pool = Arc::new(Http1Pool {
            addr,
            idle: Mutex::default(),
            epoch: AtomicU64::new(0),
        });
        tokio::spawn(sweep(Arc::downgrade(&pool)));
        pool
    }

    /// Sends `req` on an idle connection, or on a new one. The response comes with the
    /// connection, to be put back when its body has been read (`Pooled::release`).
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<Body>,
    ) -> Result<(Response<Incoming>, Pooled), String> {
        while let Some(mut sender) = self.take() {
            // Put back only after its response was read, so it is ready at once unless the app
            // closed it meanwhile.
            if !sender.is_ready() && sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(rsp) => return Ok((rsp, self.pooled(sender))),
                // Never written (the connection closed first): try the next one.
                Err(mut e) => match e.take_message() {
                    Some(back) => req = back,
                    None => return Err(e.into_error().to_string()),
                },
            }
        }
        let mut sender = self.connect().await?;
        let rsp = (sender.send_request(req).await).map_err(|e| e.to_string())?;
        Ok((rsp, self.pooled(sender)))
    }

    fn pooled(self: &Arc<Self>, sender: SendRequest<Body>) -> Pooled {
        Pooled {
            sender: Some(sender),
            pool: self.clone(),
        }
    }

    fn take(&self) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(conn) = idle.pop() {
            if !conn.sender.is_closed() {
                return Some(conn.sender);
            }
        }
        None
    }

    fn put(&self, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let epoch = self.epoch.load(Ordering::Relaxed);
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(Idle { sender, epoch });
        }
    }

    async fn connect(&self) -> Result<SendRequest<Body>, String> {
        let addr = self.addr;
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connect to {addr}: timed out"))?
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(ResetOnAbort::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "app connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Closes the connections idle since `SWEEPS_TO_CLOSE` sweeps ago, and those already closed.
    fn sweep(&self) {
        let epoch = self.epoch.fetch_add(1, Ordering::Relaxed) + 1;
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        idle.retain(|c| !c.sender.is_closed() && c.epoch + SWEEPS_TO_CLOSE > epoch);
    }

    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle.lock().map_or(0, |i| i.len())
    }
}

async fn sweep(pool: Weak<Http1Pool>) {
    let mut tick = tokio::time::interval(IDLE_TIMEOUT / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        pool.sweep();
    }
}

/// A connection lent to one response; back to its pool on `release`, closed if dropped before.
pub struct Pooled {
    sender: Option<SendRequest<Body>>,
    pool: Arc<Http1Pool>,
}

impl Pooled {
    /// The response was read to its end: the connection can carry the next request.
    pub fn release(&mut self) {
        if let Some(sender) = self.sender.take() {
            self.pool.put(sender);
        }
    }
}

impl std::fmt::Debug for Pooled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pooled")
            .field("addr", &self.pool.addr)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::atomic::AtomicUsize;

    /// An app answering `hello` that counts the connections it accepted.
    async fn app() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, std::convert::Infallible>(Response::new(Body::full("hello")))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc),
                );
            }
        });
        (addr, accepted)
    }

    fn get() -> Request<Body> {
        Request::get("/")
            .header("host", "app")
            .body(Body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn a_connection_read_to_its_end_carries_the_next_request() {
        let (addr, accepted) = app().await;
        let pool = Http1Pool::new(addr);
        for _ in 0..3 {
            let (rsp, pooled) = pool.send(get()).await.unwrap();
            let body = Body::from(rsp.into_body()).pooled(pooled);
            let bytes = body.collect().await.unwrap().to_bytes();
            assert_eq!(&bytes[..], b"hello");
            assert_eq!(pool.idle_count(), 1);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_response_dropped_unread_does_not_return_its_connection() {
        let (addr, accepted) = app().await;
        let pool = Http1Pool::new(addr);
        let (rsp, pooled) = pool.send(get()).await.unwrap();
        drop(Body::from(rsp.into_body()).pooled(pooled));
        assert_eq!(pool.idle_count(), 0);
        let (rsp, pooled) = pool.send(get()).await.unwrap();
        let body = Body::from(rsp.into_body()).pooled(pooled);
        assert!(body.collect().await.is_ok());
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn the_sweep_closes_connections_idle_for_two_periods() {
        let (addr, _) = app().await;
        let pool = Http1Pool::new(addr);
        let (rsp, pooled) = pool.send(get()).await.unwrap();
        assert!(Body::from(rsp.into_body())
            .pooled(pooled)
            .collect()
            .await
            .is_ok());
        pool.sweep();
        assert_eq!(pool.idle_count(), 1);
        pool.sweep();
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn a_connection_the_app_closed_is_replaced() {
        let (addr, accepted) = app().await;
        let pool = Http1Pool::new(addr);
        let mut req = get();
        req.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
        let (rsp, pooled) = pool.send(req).await.unwrap();
        assert!(Body::from(rsp.into_body())
            .pooled(pooled)
            .collect()
            .await
            .is_ok());
        let (rsp, pooled) = pool.send(get()).await.unwrap();
        assert!(Body::from(rsp.into_body())
            .pooled(pooled)
            .collect()
            .await
            .is_ok());
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
