//! Idle HTTP/1.1 connections to one address, reused request after request: an app port (the
//! inbound side) or a peer sidecar over mutual TLS (`transport::http1`, the outbound side). How a
//! connection is opened is the pool's `Dial`.
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
//! App sockets are `app_conn::ResetOnAbort`: a connection dropped mid-request resets. A
//! connection may carry a time after which it takes no new request (a peer certificate's
//! expiry, `Dialed::retire_at`); only such connections cost a clock read when taken.

use super::app_conn::ResetOnAbort;
use super::body::Body;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// App connections are closed after this long unused (30 to 45 s: see the sweep).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How a pool opens a connection. The future is boxed by the pool: only requests that open a
/// connection pay for it.
pub trait Dial: Send + Sync + 'static {
    type Error: std::fmt::Display + Send;
    /// A connection, or an error once `timeout` has passed.
    fn dial(&self, timeout: Duration) -> impl Future<Output = Result<Dialed, Self::Error>> + Send;
}

/// A new connection's handle, its task already spawned.
pub struct Dialed {
    pub sender: SendRequest<Body>,
    /// No request is sent on the connection from then on (a peer certificate's expiry).
    pub retire_at: Option<Instant>,
}

/// A request that did not get a response head.
#[derive(Debug)]
pub enum PoolError<E> {
    /// No connection could be opened.
    Dial(E),
    /// The connection failed the request; `unsent` when hyper handed it back unwritten (the
    /// connection closed first), so the peer cannot have processed it.
    Request { error: hyper::Error, unsent: bool },
}

impl<E: std::fmt::Display> std::fmt::Display for PoolError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolError::Dial(e) => e.fmt(f),
            PoolError::Request { error, .. } => error.fmt(f),
        }
    }
}

/// What trying a pool's idle connections came to (`Http1Pool::send_on_idle`).
pub enum FromIdle<E> {
    Answered(Response<Incoming>, Pooled),
    Failed(PoolError<E>),
    /// No idle connection took the request: here it is back, for a new connection.
    NoneIdle(Request<Body>),
}

pub struct Http1Pool<D> {
    addr: SocketAddr,
    dial: D,
    idle: Mutex<Vec<Idle>>,
    /// Sweeps so far; a connection put back in epoch `e` is closed by the sweep that makes it
    /// `e + SWEEPS_TO_CLOSE`.
    epoch: AtomicU64,
}

struct Idle {
    conn: Conn,
    epoch: u64,
}

/// A connection just opened for a request (`Http1Pool::open`), not yet pooled.
pub struct NewConn(Conn);

/// A connection's handle and when it retires.
struct Conn {
    sender: SendRequest<Body>,
    retire_at: Option<Instant>,
}

impl Conn {
    fn usable(&self) -> bool {
        !self.sender.is_closed() && self.retire_at.is_none_or(|at| Instant::now() < at)
    }
}

/// Sweeps every `idle / 2`; two full periods idle (`idle` to 1.5 × `idle`) close a connection.
const SWEEPS_TO_CLOSE: u64 = 2;

/// Opens plain TCP connections to an app port.
pub struct AppDial(SocketAddr);

impl Dial for AppDial {
    type Error = String;

    async fn dial(&self, timeout: Duration) -> Result<Dialed, String> {
        let addr = self.0;
        let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
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
        Ok(Dialed {
            sender,
            retire_at: None,
        })
    }
}

impl Http1Pool<AppDial> {
    /// A pool for the app at `addr`, with its idle sweep (ends when the pool is dropped).
    pub fn new(addr: SocketAddr) -> Arc<Self> {
        Http1Pool::with_dial(addr, AppDial(addr), IDLE_TIMEOUT)
    }
}

impl<D: Dial> Http1Pool<D> {
    /// A pool for `addr` whose connections `dial` opens, closed after `idle` unused (to 1.5 ×
    /// `idle`), with its sweep (ends when the pool is dropped).
    pub fn with_dial(addr: SocketAddr, dial: D, idle: Duration) -> Arc<Self> {
        let pool = Arc::new(Http1Pool {
            addr,
            dial,
            idle: Mutex::default(),
            epoch: AtomicU64::new(0),
        });
        tokio::spawn(sweep(Arc::downgrade(&pool), idle));
        pool
    }

    /// Sends `req` on an idle connection, or on a new one. The response comes with the
    /// connection, to be put back when its body has been read (`Pooled::release`).
    pub async fn send(
        self: &Arc<Self>,
        req: Request<Body>,
    ) -> Result<(Response<Incoming>, Pooled), PoolError<D::Error>> {
        match self.send_on_idle(req).await {
            FromIdle::Answered(rsp, pooled) => Ok((rsp, pooled)),
            FromIdle::Failed(e) => Err(e),
            FromIdle::NoneIdle(req) => {
                let conn = self.open(CONNECT_TIMEOUT).await.map_err(PoolError::Dial)?;
                self.send_on_new(conn, req).await
            }
        }
    }

    /// Sends `req` on an idle connection if one takes it.
    pub async fn send_on_idle(self: &Arc<Self>, mut req: Request<Body>) -> FromIdle<D::Error> {
        while let Some(mut conn) = self.take() {
            // Put back only after its response was read, so it is ready at once unless the peer
            // closed it meanwhile.
            if !conn.sender.is_ready() && conn.sender.ready().await.is_err() {
                continue;
            }
            match conn.sender.try_send_request(req).await {
                Ok(rsp) => return FromIdle::Answered(rsp, self.pooled(conn)),
                // Never written (the connection closed first): try the next one.
                Err(mut e) => match e.take_message() {
                    Some(back) => req = back,
                    None => {
                        let error = e.into_error();
                        return FromIdle::Failed(PoolError::Request {
                            error,
                            unsent: false,
                        });
                    }
                },
            }
        }
        FromIdle::NoneIdle(req)
    }

    /// Opens a connection for a request that found none idle (boxed: only requests that open
    /// one pay for the size of the future). Apart from sending on it, so that the caller can
    /// tell the time to open it from the time the request took (`balance::LoadGuard::sent`).
    pub async fn open(&self, timeout: Duration) -> Result<NewConn, D::Error> {
        let dialed = Box::pin(self.dial.dial(timeout)).await?;
        Ok(NewConn(Conn {
            sender: dialed.sender,
            retire_at: dialed.retire_at,
        }))
    }

    /// Sends `req` on a connection `open` made for it.
    pub async fn send_on_new(
        self: &Arc<Self>,
        conn: NewConn,
        req: Request<Body>,
    ) -> Result<(Response<Incoming>, Pooled), PoolError<D::Error>> {
        let NewConn(mut conn) = conn;
        match conn.sender.try_send_request(req).await {
            Ok(rsp) => Ok((rsp, self.pooled(conn))),
            Err(mut e) => {
                let unsent = e.take_message().is_some();
                Err(PoolError::Request {
                    error: e.into_error(),
                    unsent,
                })
            }
        }
    }

    fn pooled(self: &Arc<Self>, conn: Conn) -> Pooled {
        Pooled {
            conn: Some(conn),
            pool: self.clone(),
        }
    }

    fn take(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(idle) = idle.pop() {
            if idle.conn.usable() {
                return Some(idle.conn);
            }
        }
        None
    }

    /// Closes the connections idle since `SWEEPS_TO_CLOSE` sweeps ago, and those already closed.
    fn sweep(&self) {
        let epoch = self.epoch.fetch_add(1, Ordering::Relaxed) + 1;
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        idle.retain(|c| c.conn.usable() && c.epoch + SWEEPS_TO_CLOSE > epoch);
    }

    pub fn dial(&self) -> &D {
        &self.dial
    }

    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle.lock().map_or(0, |i| i.len())
    }
}

/// Where a released connection goes back: its pool, whatever the pool's `Dial`.
trait PutBack: Send + Sync {
    fn put(&self, conn: Conn);
    fn addr(&self) -> SocketAddr;
}

impl<D: Dial> PutBack for Http1Pool<D> {
    fn put(&self, conn: Conn) {
        if conn.sender.is_closed() {
            return;
        }
        let epoch = self.epoch.load(Ordering::Relaxed);
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(Idle { conn, epoch });
        }
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }
}

async fn sweep<D: Dial>(pool: Weak<Http1Pool<D>>, idle: Duration) {
    let mut tick = tokio::time::interval(idle / 2);
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
    conn: Option<Conn>,
    pool: Arc<dyn PutBack>,
}

impl Pooled {
    /// The response was read to its end: the connection can carry the next request.
    pub fn release(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.put(conn);
        }
    }
}

impl std::fmt::Debug for Pooled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pooled")
            .field("addr", &self.pool.addr())
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
