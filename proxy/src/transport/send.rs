//! Sending one request on a mesh connection, and telling a request the peer never processed from
//! one it may have. The difference decides whether a non-idempotent request may go elsewhere:
//! RFC 9113 §8.7 guarantees that a stream refused with REFUSED_STREAM, or above the
//! last-stream-id of a GOAWAY, was not processed; so was a request hyper hands back because the
//! connection closed (or said GOAWAY) before the request left. Those become
//! `ProxyError::Unprocessed`; any other failure (a reset or a connection lost mid-request) stays
//! `ProxyError::Upstream`, which only idempotent requests retry.

use crate::errors::ProxyError;
use crate::http::body::Body;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use std::net::SocketAddr;

/// Sends `req` to the peer at `addr` (for errors) and waits for the response head.
pub async fn send(
    sender: &mut SendRequest<Body>,
    req: Request<Body>,
    addr: SocketAddr,
) -> Result<Response<Incoming>, ProxyError> {
    match sender.try_send_request(req).await {
        Ok(rsp) => Ok(rsp),
        Err(mut e) => {
            // The request handed back: it never reached the connection.
            let returned = e.take_message().is_some();
            Err(classify(addr, returned, &e.into_error()))
        }
    }
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
