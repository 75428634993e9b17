//! Clients that see what a draining proxy does on the wire, which pooled clients hide: a raw
//! HTTP/1.1 socket (the `Connection` header of the answer, and whether the proxy then closes the
//! connection) and an h2 client (GOAWAY: new streams refused, the connection ending gracefully).

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// One HTTP/1.1 exchange on a socket of its own.
pub struct RawHttp1 {
    stream: TcpStream,
    buffered: BytesMut,
}

/// An HTTP/1.1 response as read off the socket (header names lowercased, body de-chunked).
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        (self.headers.iter().find(|(n, _)| *n == name)).map(|(_, v)| v.as_str())
    }
}

impl RawHttp1 {
    /// Connects and writes `request` (all or part of one).
    pub async fn send(addr: SocketAddr, request: &[u8]) -> anyhow::Result<RawHttp1> {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(request).await?;
        Ok(RawHttp1 {
            stream,
            buffered: BytesMut::new(),
        })
    }

    /// Over a connection already open.
    pub fn over(stream: TcpStream) -> RawHttp1 {
        RawHttp1 {
            stream,
            buffered: BytesMut::new(),
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        Ok(self.stream.write_all(bytes).await?)
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed mid-response");
        }
        self.buffered.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    async fn line(&mut self) -> anyhow::Result<String> {
        loop {
            if let Some(end) = self.buffered.windows(2).position(|w| w == b"\r\n") {
                let line = self.buffered.split_to(end + 2);
                return Ok(String::from_utf8_lossy(&line[..end]).into_owned());
            }
            self.fill().await?;
        }
    }

    async fn exactly(&mut self, n: usize) -> anyhow::Result<Bytes> {
        while self.buffered.len() < n {
            self.fill().await?;
        }
        Ok(self.buffered.split_to(n).freeze())
    }

    /// Reads one response (Content-Length or chunked framing).
    pub async fn response(&mut self) -> anyhow::Result<RawResponse> {
        let status_line = self.line().await?;
        let status = (status_line.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("status line {status_line:?}"))?;
        let mut headers = Vec::new();
        loop {
            let line = self.line().await?;
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').context("header line")?;
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        let mut rsp = RawResponse {
            status,
            headers,
            body: Bytes::new(),
        };
        if rsp.header("transfer-encoding") == Some("chunked") {
            let mut body = BytesMut::new();
            loop {
                let size = self.line().await?;
                let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
                    .with_context(|| format!("chunk size {size:?}"))?;
                let chunk = self.exactly(size + 2).await?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
            rsp.body = body.freeze();
        } else if let Some(len) = rsp.header("content-length") {
            let len = len.parse().context("content-length")?;
            rsp.body = self.exactly(len).await?;
        }
        Ok(rsp)
    }

    /// Whether the connection ends (EOF or reset) within `within`, whatever else arrives first.
    pub async fn ends_within(&mut self, within: Duration) -> bool {
        crate::raw::ends_within(&mut self.stream, within).await
    }

    /// Whether the peer closes the connection (EOF or reset) within `within`, with no more bytes.
    pub async fn closed_by_peer(&mut self, within: Duration) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(within, self.stream.read(&mut byte)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

/// An h2 (prior knowledge, plain text) client connection and the outcome of its connection task.
pub struct H2Probe {
    sender: h2::client::SendRequest<Bytes>,
    ended: oneshot::Receiver<Result<(), h2::Error>>,
}

/// A request whose body is still being sent.
pub struct H2Stream {
    body: h2::SendStream<Bytes>,
    response: h2::client::ResponseFuture,
}

impl H2Probe {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<H2Probe> {
        let tcp = TcpStream::connect(addr).await?;
        let (sender, connection) = h2::client::handshake(tcp).await?;
        let (tx, ended) = oneshot::channel();
        tokio::spawn(async move {
            let _ = tx.send(connection.await);
        });
        Ok(H2Probe { sender, ended })
    }

    /// Opens a POST to `uri` and sends `first` without ending the body.
    pub async fn start_post(&mut self, uri: &str, first: &[u8]) -> anyhow::Result<H2Stream> {
        let ready = self.sender.clone().ready().await?;
        let mut sender = ready;
        let req = http::Request::post(uri).body(())?;
        let (response, mut body) = sender.send_request(req, false)?;
        body.send_data(Bytes::copy_from_slice(first), false)?;
        Ok(H2Stream { body, response })
    }

    /// The error a new stream on this connection meets, if any (GOAWAY refuses them).
    pub async fn new_stream_error(&self) -> Option<h2::Error> {
        let mut sender = match self.sender.clone().ready().await {
            Ok(s) => s,
            Err(e) => return Some(e),
        };
        let req = http::Request::get("http://probe/").body(()).ok()?;
        sender.send_request(req, true).err()
    }

    /// How the connection ended, if it did within `within`: `Ok(())` is a graceful end.
    pub async fn ended(self, within: Duration) -> Option<Result<(), h2::Error>> {
        drop(self.sender);
        tokio::time::timeout(within, self.ended).await.ok()?.ok()
    }
}

impl H2Stream {
    /// Sends the last of the body and reads the whole response.
    pub async fn finish(mut self, last: &[u8]) -> anyhow::Result<(u16, Bytes)> {
        self.body.send_data(Bytes::copy_from_slice(last), true)?;
        let rsp = self.response.await?;
        let status = rsp.status().as_u16();
        let mut body = rsp.into_body();
        let mut bytes = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
            bytes.extend_from_slice(&chunk);
        }
        Ok((status, bytes.freeze()))
    }
}
