//! The client side of a load run: what is targeted (`Target`, `Protocol`), one connection per
//! "lane", and how a lane turns slots into requests. HTTP/1.1 lanes send one request at a time (a
//! slot arriving while the connection is busy waits, and its wait counts); HTTP/2 lanes start a
//! stream per slot, up to `max_streams_per_connection` at once. A broken connection is reopened on
//! the next slot.

use super::pacer::Slot;
use super::record::Recorder;
use super::LoadConfig;
use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use http::{header, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::Semaphore;

/// What goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 GET.
    Http1,
    /// HTTP/2 GET, prior knowledge (or ALPN h2 over TLS).
    H2c,
    /// gRPC unary: HTTP/2 POST, `application/grpc`, a length-prefixed message; the answer's
    /// `grpc-status` trailer must be 0.
    Grpc,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::H2c => "h2c",
            Protocol::Grpc => "gRPC",
        }
    }
}

/// Where requests go.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// `Host` / `:authority`: names the destination service when the target is a sidecar.
    pub authority: String,
    /// Set for mTLS targets (a sidecar's inbound listener); ALPN follows the protocol.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Target {
    pub fn plain(addr: SocketAddr, authority: impl Into<String>) -> Target {
        Target {
            addr,
            authority: authority.into(),
            tls: None,
        }
    }
}

type ReqBody = Full<Bytes>;

enum Sender {
    H1(http1::SendRequest<ReqBody>),
    H2(http2::SendRequest<ReqBody>),
}

/// One connection and the slots it serves.
pub struct Lane {
    sender: Sender,
    config: LoadConfig,
}

async fn handshake<IO>(io: IO, protocol: Protocol) -> anyhow::Result<Sender>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let io = TokioIo::new(io);
    Ok(match protocol {
        Protocol::Http1 => {
            let (sender, conn) = http1::handshake(io).await?;
            tokio::spawn(conn);
            Sender::H1(sender)
        }
        Protocol::H2c | Protocol::Grpc => {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            Sender::H2(sender)
        }
    })
}

async fn open(config: &LoadConfig) -> anyhow::Result<Sender> {
    let target = &config.target;
    let tcp = TcpStream::connect(target.addr)
        .await
        .with_context(|| format!("connecting to {}", target.addr))?;
    tcp.set_nodelay(true)?;
    match &target.tls {
        None => handshake(tcp, config.protocol).await,
        Some(tls) => {
            let mut tls = (**tls).clone();
            tls.alpn_protocols = match config.protocol {
                Protocol::Http1 => vec![b"http/1.1".to_vec()],
                _ => vec![b"h2".to_vec()],
            };
            let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
            let stream = connector
                .connect(trellis_proxy::tls::placeholder_server_name(), tcp)
                .await
                .with_context(|| format!("TLS handshake with {}", target.addr))?;
            handshake(stream, config.protocol).await
        }
    }
}

/// The request for one slot.
pub fn request(config: &LoadConfig) -> anyhow::Result<Request<ReqBody>> {
    let size = config.payload_bytes.to_string();
    let authority = &config.target.authority;
    let builder = Request::builder().header("bench-size", &size);
    let req = match config.protocol {
        Protocol::Http1 => builder
            .uri(format!("/bytes/{size}"))
            .header(header::HOST, authority)
            .body(Full::new(Bytes::new()))?,
        Protocol::H2c => builder
            .uri(format!("http://{authority}/bytes/{size}"))
            .body(Full::new(Bytes::new()))?,
        Protocol::Grpc => builder
            .method(Method::POST)
            .uri(format!("http://{authority}/bench.Bench/Unary"))
            .header(header::CONTENT_TYPE, "application/grpc")
            .header(header::TE, "trailers")
            .body(Full::new(grpc_frame(16)))?,
    };
    Ok(req)
}

/// A gRPC length-prefixed message of `len` zero bytes (uncompressed).
pub fn grpc_frame(len: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + len);
    b.put_u8(0);
    b.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    b.put_bytes(0, len);
    b.freeze()
}

/// How a request ended, as the recorder counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Refused at once by a proxy's load shedding: 503 with `trellis-error: overloaded…`.
    Shed,
    Failed,
}

/// Whether an answer is a Trellis sidecar's load-shedding refusal.
pub fn is_shed<B>(rsp: &http::Response<B>) -> bool {
    rsp.status() == http::StatusCode::SERVICE_UNAVAILABLE
        && (rsp.headers().get("trellis-error"))
            .is_some_and(|v| v.as_bytes().starts_with(b"overloaded"))
}

/// Sends one request and reads the whole answer.
async fn exchange<F>(send: F, protocol: Protocol) -> Outcome
where
    F: std::future::Future<Output = hyper::Result<http::Response<hyper::body::Incoming>>>,
{
    match checked_exchange(send, protocol).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Failed,
    }
}

async fn checked_exchange<F>(send: F, protocol: Protocol) -> anyhow::Result<Outcome>
where
    F: std::future::Future<Output = hyper::Result<http::Response<hyper::body::Incoming>>>,
{
    let rsp = send.await?;
    let status = rsp.status();
    let shed = is_shed(&rsp);
    let collected = rsp.into_body().collect().await?;
    if shed {
        return Ok(Outcome::Shed);
    }
    anyhow::ensure!(status.is_success(), "status {status}");
    if protocol == Protocol::Grpc {
        let grpc_status = collected
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .map(|v| v.as_bytes().to_vec());
        anyhow::ensure!(
            grpc_status.as_deref() == Some(b"0"),
            "grpc-status {grpc_status:?}"
        );
    }
    Ok(Outcome::Ok)
}

impl Lane {
    pub async fn connect(config: &LoadConfig) -> anyhow::Result<Lane> {
        Ok(Lane {
            sender: open(config).await?,
            config: config.clone(),
        })
    }

    /// Sends one request and waits for the whole answer, which must succeed: the sequential
    /// client of `trellis-bench instructions`. A closed connection is reopened first.
    pub async fn send_one(&mut self) -> anyhow::Result<()> {
        if self.is_closed() {
            self.sender = open(&self.config).await?;
        }
        let req = request(&self.config)?;
        let protocol = self.config.protocol;
        let timeout = self.config.request_timeout;
        let outcome = match &mut self.sender {
            Sender::H1(sender) => {
                sender.ready().await?;
                tokio::time::timeout(
                    timeout,
                    checked_exchange(sender.send_request(req), protocol),
                )
                .await
            }
            Sender::H2(sender) => {
                sender.ready().await?;
                tokio::time::timeout(
                    timeout,
                    checked_exchange(sender.send_request(req), protocol),
                )
                .await
            }
        }
        .context("timed out")??;
        anyhow::ensure!(outcome == Outcome::Ok, "the request was shed");
        Ok(())
    }

    fn is_closed(&self) -> bool {
        match &self.sender {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    /// Serves slots until the pacer hangs up and every request is answered or timed out.
    pub async fn serve(mut self, mut slots: UnboundedReceiver<Slot>, recorder: Arc<Recorder>) {
        let streams = self.config.max_streams_per_connection.max(1);
        let in_flight = Arc::new(Semaphore::new(streams));
        let timeout = self.config.request_timeout;
        let protocol = self.config.protocol;
        while let Some(slot) = slots.recv().await {
            if self.is_closed() {
                match open(&self.config).await {
                    Ok(sender) => self.sender = sender,
                    Err(_) => {
                        if slot.measured {
                            recorder.error(Instant::now());
                        }
                        continue;
                    }
                }
            }
            let req = match request(&self.config) {
                Ok(r) => r,
                Err(_) => {
                    if slot.measured {
                        recorder.error(Instant::now());
                    }
                    continue;
                }
            };
            match &mut self.sender {
                Sender::H1(sender) => {
                    let ready = tokio::time::timeout(timeout, sender.ready()).await;
                    let sent = Instant::now();
                    let outcome = match ready {
                        Ok(Ok(())) => tokio::time::timeout(
                            timeout,
                            exchange(sender.send_request(req), protocol),
                        )
                        .await
                        .unwrap_or(Outcome::Failed),
                        Ok(Err(_)) | Err(_) => Outcome::Failed,
                    };
                    record(&recorder, slot, sent, outcome);
                }
                Sender::H2(sender) => {
                    let Ok(permit) = in_flight.clone().acquire_owned().await else {
                        break;
                    };
                    let mut sender = sender.clone();
                    let recorder = recorder.clone();
                    tokio::spawn(async move {
                        let sent = Instant::now();
                        let outcome = tokio::time::timeout(
                            timeout,
                            exchange(sender.send_request(req), protocol),
                        )
                        .await
                        .unwrap_or(Outcome::Failed);
                        record(&recorder, slot, sent, outcome);
                        drop(permit);
                    });
                }
            }
        }
        // Wait for the streams still in flight.
        let all = u32::try_from(streams).unwrap_or(u32::MAX);
        let _ = in_flight.acquire_many(all).await;
    }
}

fn record(recorder: &Recorder, slot: Slot, sent: Instant, outcome: Outcome) {
    if !slot.measured {
        return;
    }
    let done = Instant::now();
    match outcome {
        Outcome::Ok => recorder.ok(slot.intended, sent.max(slot.intended), done),
        Outcome::Shed => recorder.shed(slot.intended, sent.max(slot.intended), done),
        Outcome::Failed => recorder.error(done),
    }
}
