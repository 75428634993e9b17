//! Sending one request on a mesh connection, and telling a request the peer never processed from
//! one it may have. The difference decides whether a non-idempotent request may go elsewhere:
//! RFC 9113 §8.7 guarantees that a stream refused with REFUSED_STREAM, or above the
//! last-stream-id of a GOAWAY, was not processed; so was a request hyper hands back because the
//! connection closed (or said GOAWAY) before the request left. Those become
//! `ProxyError::Unprocessed`; any other failure (a reset or a connection lost mid-request) stays
//! `ProxyError::Upstream`, which only idempotent requests retry.
//!
//! A failure is also judged for outlier detection (`send_judged`, `Blame`): one that this side
//! caused says nothing about the endpoint's health, and counting it would let one local client
//! get a healthy endpoint ejected for every other client. That is a stream this side reset (the
//! app abandoned its request, or its request body failed) and a stream or connection the peer
//! ended with ENHANCE_YOUR_CALM (this sidecar's clients made it reset too much).

use crate::errors::ProxyError;
use crate::http::body::Body;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use std::net::SocketAddr;

/// Whose fault a failed send was, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The endpoint's (or the network's): counts towards its ejection.
    Endpoint,
    /// This side's: a stream it reset, or a peer telling it to calm down.
    Local,
    /// Nobody's: the peer never processed the request (draining, refused stream).
    Unprocessed,
}

/// Sends `req` to the peer at `addr` (for errors) and waits for the response head.
pub async fn send(
    sender: &mut SendRequest<Body>,
    req: Request<Body>,
    addr: SocketAddr,
) -> Result<Response<Incoming>, ProxyError> {
    send_judged(sender, req, addr).await.map_err(|(e, _)| e)
}

/// `send`, with the failure judged for outlier detection.
pub async fn send_judged(
    sender: &mut SendRequest<Body>,
    req: Request<Body>,
    addr: SocketAddr,
) -> Result<Response<Incoming>, (ProxyError, Blame)> {
    match sender.try_send_request(req).await {
        Ok(rsp) => Ok(rsp),
        Err(mut e) => {
            // The request handed back: it never reached the connection.
            let returned = e.take_message().is_some();
            Err(judge(addr, returned, &e.into_error()))
        }
    }
}

/// A failed send as an error and its blame; `returned` when hyper handed the request back.
/// Shared by HTTP/2 and the pooled HTTP/1.1 connections (`http1`), whose errors never carry an
/// h2 reason and so are judged by `returned` and hyper's own kinds alone.
pub(super) fn judge(addr: SocketAddr, returned: bool, error: &hyper::Error) -> (ProxyError, Blame) {
    let proxy_error = classify(addr, returned, error);
    let blame = match proxy_error {
        ProxyError::Unprocessed { .. } => Blame::Unprocessed,
        _ if caused_locally(error) => Blame::Local,
        _ => Blame::Endpoint,
    };
    (proxy_error, blame)
}

/// The failure was this side's doing: hyper canceled the request or its body failed, h2 reset the
/// stream from this side, or the peer reset it or the connection with ENHANCE_YOUR_CALM.
fn caused_locally(error: &hyper::Error) -> bool {
    if error.is_canceled() || error.is_user() {
        return true;
    }
    let Some(h2) = std::error::Error::source(error).and_then(|s| s.downcast_ref::<h2::Error>())
    else {
        return false;
    };
    let reset_here = h2.is_reset() && !h2.is_remote();
    reset_here || (h2.is_remote() && h2.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM))
}

fn classify(addr: SocketAddr, returned: bool, error: &hyper::Error) -> ProxyError {
    let reason = error.to_string();
    if returned || refused_by_peer(error) {
        ProxyError::Unprocessed { addr, reason }
    } else {
        ProxyError::Upstream { addr, reason }
    }
}

/// The peer said it did not process the stream: REFUSED_STREAM, or a GOAWAY from the peer. h2
/// reports a remote GOAWAY only on streams above its last-stream-id and on streams it could not
/// open after one; streams at or below it carry on, and fail (if at all) with another error.
fn refused_by_peer(error: &hyper::Error) -> bool {
    let Some(h2) = std::error::Error::source(error).and_then(|s| s.downcast_ref::<h2::Error>())
    else {
        return false;
    };
    h2.is_remote() && (h2.is_go_away() || h2.reason() == Some(h2::Reason::REFUSED_STREAM))
}

#[cfg(test)]
mod tests;
