//! The one body type that flows through the proxy's services.
//!
//! A body either streams from a peer (`Incoming`), is being kept for a possible retry (`Replay`),
//! or is made by the proxy itself (error answers, admin pages). A concrete enum instead of a boxed
//! trait object keeps the request path free of per-request allocations. A body can also hold
//! guards (a circuit-breaker slot, an endpoint's outstanding-request count) that must last until
//! the body is finished, which for a streamed response is long after the service returned, and
//! the pooled app connection a response came on, which goes back to its pool only once the body
//! was read to its end (`app_pool`).

use super::app_pool::Pooled;
use crate::balance::LoadGuard;
use crate::limits::Slot;
use crate::resilience::breaker::Permit;
use crate::resilience::replay::ReplayBody;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Default)]
pub struct Body {
    kind: Kind,
    permit: Option<Permit>,
    load: Option<LoadGuard>,
    in_flight: Option<Slot>,
    pooled: Option<Pooled>,
}

#[derive(Debug, Default)]
enum Kind {
    #[default]
    Empty,
    Full(Option<Bytes>),
    Incoming(Incoming),
    Replay(ReplayBody<Incoming>),
}

impl Body {
    pub fn empty() -> Self {
        Body::default()
    }

    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        let kind = if bytes.is_empty() {
            Kind::Empty
        } else {
            Kind::Full(Some(bytes))
        };
        Body {
            kind,
            ..Body::default()
        }
    }

    pub fn replay(body: ReplayBody<Incoming>) -> Self {
        Body {
            kind: Kind::Replay(body),
            ..Body::default()
        }
    }

    /// Keeps a circuit-breaker slot until the body ends.
    pub fn hold(mut self, permit: Permit) -> Self {
        self.permit = Some(permit);
        self
    }

    /// Keeps the listener's load-shedding slot until the body ends.
    pub fn hold_in_flight(mut self, admitted: Slot) -> Self {
        self.in_flight = Some(admitted);
        self
    }

    /// Keeps an endpoint's outstanding-request count until the body ends.
    pub fn hold_load(mut self, load: LoadGuard) -> Self {
        self.load = Some(load);
        self
    }

    /// The mesh endpoint that answered, for a response from one (its load is held, see
    /// `hold_load`): a retry avoids it. Read from the guard rather than kept in the response's
    /// extensions, which would cost two allocations per response for a rarely read address.
    pub fn answered_by(&self) -> Option<std::net::SocketAddr> {
        self.load.as_ref().map(LoadGuard::endpoint_addr)
    }

    /// Puts the app connection the body comes on back in its pool once the body has ended
    /// (at once if it already has); dropped before, the connection closes.
    pub fn pooled(mut self, mut conn: Pooled) -> Self {
        if http_body::Body::is_end_stream(&self) {
            conn.release();
        } else {
            self.pooled = Some(conn);
        }
        self
    }

    /// Takes the streamed body out, for wrapping in a replay buffer; None if it is not one.
    pub fn take_incoming(&mut self) -> Option<Incoming> {
        match std::mem::take(&mut self.kind) {
            Kind::Incoming(i) => Some(i),
            other => {
                self.kind = other;
                None
            }
        }
    }

    fn release(&mut self) {
        self.permit = None;
        self.load = None;
        self.in_flight = None;
    }
}

impl From<Incoming> for Body {
    fn from(body: Incoming) -> Self {
        Body {
            kind: Kind::Incoming(body),
            ..Body::default()
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = loop {
            let polled = match &mut this.kind {
                Kind::Empty => Poll::Ready(None),
                Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
                Kind::Incoming(inner) => Pin::new(inner)
                    .poll_frame(cx)
                    .map(|f| f.map(|r| r.map_err(Into::into))),
                Kind::Replay(inner) => Pin::new(inner).poll_frame(cx),
            };
            // An empty chunk (hyper yields one for a client's empty END_STREAM DATA frame) would
            // be sent on as an empty DATA frame without END_STREAM, and h2 peers end the whole
            // connection with ENHANCE_YOUR_CALM after 100 of those: never pass one on.
            match &polled {
                Poll::Ready(Some(Ok(frame))) if frame.data_ref().is_some_and(|d| d.is_empty()) => {}
                _ => break polled,
            }
        };
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.release();
        }
        // hyper's server stops polling a body once it says it has ended (a Content-Length body
        // after its last byte), so the connection goes back here, not at `Ready(None)` only.
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => {
                this.pooled.is_some() && http_body::Body::is_end_stream(this)
            }
            _ => false,
        };
        if let (true, Some(conn)) = (ended, &mut this.pooled) {
            conn.release();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Incoming(inner) => inner.is_end_stream(),
            Kind::Replay(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty | Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Kind::Incoming(inner) => inner.size_hint(),
            Kind::Replay(inner) => inner.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn full_body_yields_its_bytes_once() {
        let body = Body::full("hello");
        assert_eq!(http_body::Body::size_hint(&body).exact(), Some(5));
        let collected = body.collect().await.map(|c| c.to_bytes());
        assert_eq!(collected.ok(), Some(Bytes::from_static(b"hello")));
    }

    #[test]
    fn empty_bytes_make_an_empty_body() {
        assert!(http_body::Body::is_end_stream(&Body::full("")));
    }

    /// A gRPC client ends its request with an empty END_STREAM DATA frame; forwarded as an empty
    /// chunk it became an empty DATA frame without END_STREAM, and after 100 of those the next
    /// hop's h2 ended the connection (ENHANCE_YOUR_CALM) with every request on it.
    #[tokio::test]
    async fn empty_data_chunks_are_never_passed_on() {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let (tx, rx) = tokio::sync::oneshot::channel::<Vec<Bytes>>();
        let tx = std::sync::Mutex::new(Some(tx));
        let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
            let tx = tx.lock().ok().and_then(|mut t| t.take());
            async move {
                let mut body = Body::from(req.into_body());
                let mut chunks = Vec::new();
                while let Some(Ok(frame)) = body.frame().await {
                    chunks.extend(frame.into_data().ok());
                }
                if let Some(tx) = tx {
                    let _ = tx.send(chunks);
                }
                Ok::<_, std::convert::Infallible>(http::Response::new(Body::empty()))
            }
        });
        let server = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection(hyper_util::rt::TokioIo::new(server_io), service);
        tokio::spawn(server);
        let (mut sender, conn) = h2::client::handshake(client_io)
            .await
            .expect("h2 handshake");
        tokio::spawn(conn);
        let req = http::Request::post("http://app/")
            .body(())
            .expect("request");
        let (_rsp, mut stream) = sender.send_request(req, false).expect("stream");
        for (chunk, end) in [(&b"msg"[..], false), (b"", false), (b"", true)] {
            stream
                .send_data(Bytes::from_static(chunk), end)
                .expect("send data");
        }
        let chunks = rx.await.expect("the server read the body");
        assert_eq!(chunks, [Bytes::from_static(b"msg")]);
    }
}
