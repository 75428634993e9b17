//! Responses the proxy makes itself. Every error is answered from one decision (`Synthetic`): the
//! HTTP status, the gRPC status, a short reason anyone may read, the detail, and whether the
//! connection should be closed. Two rules follow from where the answer goes:
//!
//! - **Who sees the detail.** The detail names internal addresses, app ports and authorization
//!   rules. The local app (outbound) and authenticated mesh peers (inbound over mTLS) get it in
//!   `trellis-error`; a plaintext caller of a permissive workload gets only the short reason.
//! - **Which answers are ours.** A locally made response carries the `ProxyMade` extension. Code
//!   that must tell our answers from upstream ones reads the extension, never the
//!   `trellis-error` header, which an upstream (a peer sidecar, or an app that sets it) may send.

use super::body::Body;
use super::headers::PROXY_ERROR;
use crate::errors::ProxyError;
use http::{header, HeaderValue, Response, StatusCode, Version};

/// Marks a response made by this proxy (a response extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyMade;

/// Who an error answer goes to (a request extension set by the listener; absent: the local app).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Audience {
    /// The local app, or a mesh peer that proved its identity: gets the detail.
    #[default]
    Trusted,
    /// A caller without an identity (plaintext, permissive mode): the short reason only.
    Anonymous,
}

/// How one error is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synthetic {
    pub status: StatusCode,
    pub grpc_status: u16,
    /// Safe for anyone: the kind of failure, with nothing internal in it.
    pub reason: &'static str,
    /// The specifics: addresses, ports, rule names.
    pub detail: String,
    /// The client's connection should not be reused (its framing or state is broken).
    pub close: bool,
}

impl Synthetic {
    pub fn of(err: &ProxyError) -> Synthetic {
        Synthetic {
            status: err.status(),
            grpc_status: err.grpc_code(),
            reason: err.reason(),
            detail: err.to_string(),
            close: err.closes_connection(),
        }
    }

    /// The response, as HTTP (a one-line text body) or as a gRPC trailers-only response (HTTP
    /// 200 with `grpc-status`), for `audience`. `version` is the request's: `Connection: close`
    /// exists in HTTP/1 only.
    pub fn into_response(self, grpc: bool, audience: Audience, version: Version) -> Response<Body> {
        tracing::debug!(error = %self.detail, "answering with a proxy error");
        let text = match audience {
            Audience::Trusted => self.detail.as_str(),
            Audience::Anonymous => self.reason,
        };
        let said =
            HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(self.reason));
        let mut rsp = if grpc {
            let mut rsp = Response::new(Body::empty());
            let headers = rsp.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            headers.insert("grpc-status", HeaderValue::from(self.grpc_status));
            headers.insert("grpc-message", said.clone());
            rsp
        } else {
            let mut rsp = Response::new(Body::full(format!("{text}\n")));
            *rsp.status_mut() = self.status;
            rsp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            rsp
        };
        let headers = rsp.headers_mut();
        headers.insert(PROXY_ERROR.clone(), said);
        if self.close && version < Version::HTTP_2 {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        rsp.extensions_mut().insert(ProxyMade);
        rsp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn header(rsp: &Response<Body>, name: &str) -> Option<String> {
        rsp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    #[test]
    fn the_detail_goes_to_trusted_callers_only() {
        let addr: SocketAddr = "10.1.2.3:4143".parse().unwrap();
        let err = ProxyError::Connect {
            addr,
            reason: "connection refused".into(),
        };
        let trusted = Synthetic::of(&err).into_response(false, Audience::Trusted, Version::HTTP_11);
        let said = header(&trusted, "trellis-error").unwrap();
        assert!(said.contains("10.1.2.3:4143"), "{said}");
        assert_eq!(trusted.status(), StatusCode::BAD_GATEWAY);
        let anonymous =
            Synthetic::of(&err).into_response(false, Audience::Anonymous, Version::HTTP_11);
        let said = header(&anonymous, "trellis-error").unwrap();
        assert_eq!(said, "upstream unavailable");
        assert_eq!(anonymous.status(), StatusCode::BAD_GATEWAY);
        assert!(anonymous.extensions().get::<ProxyMade>().is_some());
    }

    #[test]
    fn rule_names_and_app_ports_are_not_told_to_anonymous_callers() {
        let cases = [
            ProxyError::Forbidden {
                rule: "deny-batch-writes".into(),
            },
            ProxyError::App {
                port: 8081,
                reason: "connection refused".into(),
            },
            ProxyError::NoAppPort { port: 9999 },
        ];
        for err in cases {
            let rsp = Synthetic::of(&err).into_response(true, Audience::Anonymous, Version::HTTP_2);
            let message = header(&rsp, "grpc-message").unwrap();
            assert!(
                !message.contains("deny-batch")
                    && !message.contains("8081")
                    && !message.contains("9999"),
                "{err}: {message}"
            );
            assert_eq!(header(&rsp, "trellis-error"), Some(message));
        }
    }

    #[test]
    fn broken_requests_close_http1_connections_only() {
        let err = ProxyError::BadRequest("malformed header");
        let h1 = Synthetic::of(&err).into_response(false, Audience::Trusted, Version::HTTP_11);
        assert_eq!(header(&h1, "connection").as_deref(), Some("close"));
        let h2 = Synthetic::of(&err).into_response(false, Audience::Trusted, Version::HTTP_2);
        assert_eq!(header(&h2, "connection"), None);
        let fine = ProxyError::NoRoute {
            authority: "x".into(),
        };
        let rsp = Synthetic::of(&fine).into_response(false, Audience::Trusted, Version::HTTP_11);
        assert_eq!(header(&rsp, "connection"), None);
    }
}
