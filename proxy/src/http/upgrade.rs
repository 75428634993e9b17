//! HTTP upgrades (RFC 9110 §7.8): WebSocket (RFC 6455) through the mesh. This module owns every
//! decision about a request that asks to switch protocols, so that the ordinary request path pays
//! one method comparison and one header lookup (`classify`) and nothing else.
//!
//! How a WebSocket travels, app A → outbound A → (HTTP/2 over mTLS) → inbound B → app B:
//!
//! 1. The app sends an HTTP/1.1 `GET` with `Connection: upgrade`, `Upgrade: websocket` and a
//!    `Sec-WebSocket-Key` (or, speaking h2c, an extended CONNECT with `:protocol websocket`,
//!    RFC 8441). `classify` recognises it before hop-by-hop headers are stripped. It is routed,
//!    authorized and observed like any request; the timeout covers only the handshake (the
//!    response future ends with the 101), and it is never retried nor replay-buffered
//!    (`resilience::retry`).
//! 2. Forwarding (`to_extended_connect`) turns it into an RFC 8441 extended CONNECT on the mesh
//!    connection: `:method CONNECT`, `:protocol websocket`, `:scheme`, `:authority`, `:path`,
//!    the end-to-end headers (`Sec-WebSocket-Version`, `-Protocol`, `-Extensions`, `Origin`…),
//!    without `Sec-WebSocket-Key`, which has no meaning over HTTP/2 (RFC 8441 §5). Every Trellis
//!    inbound sends SETTINGS_ENABLE_CONNECT_PROTOCOL; a peer that did not resets the stream
//!    (PROTOCOL_ERROR), which the client gets as a 502 with `trellis-error`.
//! 3. The inbound (`listeners::inbound`, `inbound_form`) shows the CONNECT to authorization and
//!    telemetry as the `GET` the app will receive, then `to_app` opens a dedicated HTTP/1.1
//!    connection to the app (never a pooled one: it becomes the WebSocket) and sends the `GET`
//!    with `Connection: Upgrade`, `Upgrade: websocket`, a fresh `Sec-WebSocket-Key`, the
//!    caller's other headers and `trellis-client-id`. It requires a 101 whose
//!    `Sec-WebSocket-Accept` matches its key, answers the CONNECT with 200 (carrying the app's
//!    `Sec-WebSocket-Protocol`/`-Extensions`), and splices the HTTP/2 stream with the app's
//!    connection. A plaintext HTTP/1.1 client of a permissive inbound gets the same, with its
//!    own key passed to the app and the app's 101 passed back.
//! 4. On the 200, the outbound answers the app 101 Switching Protocols with the
//!    `Sec-WebSocket-Accept` computed from the app's own key (RFC 6455 §4.2.2), and splices the
//!    app's connection with the HTTP/2 stream. Bytes then flow both ways unchanged (frames,
//!    masks, pings and closes are the endpoints' business), with HTTP/2 flow control, until
//!    either side ends or no byte has passed either way for `Limits::tunnel_idle_timeout`
//!    (`limits::idle`). The client's socket keeps its place in the connection budget and its
//!    claim on drain (`listeners::held`), so a draining proxy waits for open WebSockets up to
//!    its grace period.
//!
//! Failures are never a silent 200: an app that answers 1xx/2xx other than 101 becomes a 502
//! with `trellis-error` (`refused the upgrade`), a peer without extended CONNECT a 502, an app's
//! own refusal (401, 403, 404, 426…) reaches the client as the app sent it, and an `Upgrade` to a
//! protocol other than WebSocket is refused with 501 and `trellis-error`.
//! `Upgrade: h2c` alone is ignored, as RFC 9110 §7.8 allows (the h2c upgrade is deprecated by
//! RFC 9113 §3.1): the request is served over HTTP/1.1, so `curl --http2` keeps working.

use super::body::Body;
use super::headers::strip_hop_by_hop;
use crate::balance::LoadGuard;
use crate::errors::ProxyError;
use crate::limits::idle::{copy_until_idle, Ended};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::ext::Protocol;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

pub static SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
pub static SEC_WEBSOCKET_ACCEPT: HeaderName = HeaderName::from_static("sec-websocket-accept");
pub static SEC_WEBSOCKET_VERSION: HeaderName = HeaderName::from_static("sec-websocket-version");

/// The `:protocol` of RFC 8441, and the `Upgrade` token of RFC 6455.
const WEBSOCKET: &str = "websocket";

/// What a request asks for, by `classify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    /// HTTP/1.1 `Upgrade: websocket`, with the client's `Sec-WebSocket-Key`.
    WebSocket { key: HeaderValue },
    /// An HTTP/2 extended CONNECT (RFC 8441) from the app: carried as it is.
    ExtendedConnect,
}

/// Whether `req` asks to switch protocols: `Ok(None)` for an ordinary request (one method
/// comparison and one header lookup), an error for an upgrade that cannot be carried. Called
/// before hop-by-hop headers are stripped.
/// An upgrade the proxy does not carry is 501 (`UpgradeUnsupported`); a malformed WebSocket
/// handshake is the client's fault, 400.
pub fn classify<B>(req: &Request<B>) -> Result<Option<Asked>, ProxyError> {
    if req.method() == Method::CONNECT {
        return match req.extensions().get::<Protocol>() {
            Some(p) if req.version() == Version::HTTP_2 && p.as_str() == WEBSOCKET => {
                Ok(Some(Asked::ExtendedConnect))
            }
            Some(_) => Err(ProxyError::UpgradeUnsupported(
                "extended CONNECT is only carried for the websocket protocol",
            )),
            None => Err(ProxyError::UpgradeUnsupported(
                "CONNECT tunnels are not supported",
            )),
        };
    }
    let Some(upgrade) = req.headers().get(header::UPGRADE) else {
        return Ok(None);
    };
    // RFC 9110 §7.8: only HTTP/1.1 upgrades, and only with the `upgrade` connection option;
    // otherwise the header is a stray hop-by-hop header, stripped like any other.
    if req.version() != Version::HTTP_11 || !connection_has_upgrade(req.headers()) {
        return Ok(None);
    }
    let tokens = || {
        (upgrade.to_str().unwrap_or_default().split(','))
            .map(|t| t.trim())
            .filter(|t| !t.is_empty())
            .map(|t| t.split('/').next().unwrap_or_default())
    };
    if tokens().any(|t| t.eq_ignore_ascii_case(WEBSOCKET)) {
        if req.method() != Method::GET {
            return Err(ProxyError::BadRequest("a WebSocket upgrade must be a GET"));
        }
        return match req.headers().get(&SEC_WEBSOCKET_KEY) {
            Some(key) if valid_key(key.as_bytes()) => {
                Ok(Some(Asked::WebSocket { key: key.clone() }))
            }
            _ => Err(ProxyError::BadRequest(
                "WebSocket upgrade without a valid Sec-WebSocket-Key",
            )),
        };
    }
    if tokens().all(|t| t.eq_ignore_ascii_case("h2c")) {
        // Ignored (RFC 9110 §7.8): the request is served over HTTP/1.1.
        return Ok(None);
    }
    Err(ProxyError::UpgradeUnsupported(
        "upgrade to a protocol other than websocket is not supported",
    ))
}

fn connection_has_upgrade(headers: &HeaderMap) -> bool {
    (headers.get_all(header::CONNECTION).iter())
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|o| o.trim().eq_ignore_ascii_case("upgrade"))
}

/// RFC 6455 §4.1: the key is 16 bytes, base64-encoded (24 characters).
fn valid_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

/// The client's side of an upgrade on its way to the mesh: how it is answered once the peer
/// accepted, and the client connection to splice.
pub struct ClientSide {
    on_upgrade: OnUpgrade,
    /// HTTP/1.1 clients get a 101 with this `Sec-WebSocket-Accept`; `None`: an HTTP/2 client.
    accept: Option<HeaderValue>,
}

/// Rewrites a request in mesh form (`forward::to_mesh_form` done) into the extended CONNECT that
/// carries it, and takes the client connection's pending upgrade.
pub fn to_extended_connect(
    req: &mut Request<Body>,
    asked: &Asked,
) -> Result<ClientSide, ProxyError> {
    let on_upgrade = (req.extensions_mut().remove::<OnUpgrade>())
        .ok_or(ProxyError::BadRequest("this connection cannot be upgraded"))?;
    let accept = match asked {
        Asked::WebSocket { key } => {
            *req.method_mut() = Method::CONNECT;
            req.extensions_mut()
                .insert(Protocol::from_static(WEBSOCKET));
            Some(websocket_accept(key.as_bytes()))
        }
        Asked::ExtendedConnect => None,
    };
    let headers = req.headers_mut();
    headers.remove(&SEC_WEBSOCKET_KEY);
    headers.remove(&SEC_WEBSOCKET_ACCEPT);
    headers.remove(header::CONTENT_LENGTH);
    *req.body_mut() = Body::empty();
    Ok(ClientSide { on_upgrade, accept })
}

/// The client's answer to the peer's response to the extended CONNECT: on 200, a 101 (HTTP/1.1)
/// or 200 (HTTP/2) and a task splicing the two; the peer's own refusal as it is; any other
/// success status is an error, never passed on as if it were the answer to a plain request.
pub fn answer_client(
    mut rsp: Response<Incoming>,
    client: ClientSide,
    addr: SocketAddr,
    load: LoadGuard,
    idle_timeout: Duration,
) -> Result<Response<Body>, ProxyError> {
    let status = rsp.status();
    if status == StatusCode::OK {
        let peer = hyper::upgrade::on(&mut rsp);
        let (mut parts, _) = rsp.into_parts();
        end_to_end(&mut parts.headers);
        parts.extensions = http::Extensions::new();
        // An HTTP/1.1 client gets its 101; an HTTP/2 client (extended CONNECT) the 200 as it is.
        if let Some(accept) = client.accept {
            parts.status = StatusCode::SWITCHING_PROTOCOLS;
            let h = &mut parts.headers;
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            h.insert(header::UPGRADE, HeaderValue::from_static(WEBSOCKET));
            h.insert(SEC_WEBSOCKET_ACCEPT.clone(), accept);
        }
        let (sides, side) = ((client.on_upgrade, peer), "outbound");
        tokio::spawn(splice(sides, load, side, idle_timeout));
        return Ok(Response::from_parts(parts, Body::empty()));
    }
    if status.is_success() || status.is_informational() {
        return Err(ProxyError::Upstream {
            addr,
            reason: format!("refused the upgrade: answered {status} to the extended CONNECT"),
        });
    }
    strip_hop_by_hop(rsp.headers_mut());
    Ok(rsp.map(|b| Body::from(b).hold_load(load)))
}

/// Names the failure of an extended CONNECT for what it most likely is: a peer that did not
/// enable it (it resets the stream, which hyper reports only as "http2 error").
pub fn connect_failed(e: ProxyError) -> ProxyError {
    match e {
        ProxyError::Upstream { addr, reason } => ProxyError::Upstream {
            addr,
            reason: format!(
                "the peer did not take the upgrade (RFC 8441 extended CONNECT): {reason}"
            ),
        },
        other => other,
    }
}

/// The end-to-end headers of an upgrade's answer: no hop-by-hop headers, no length, no accept
/// (each hop computes its own).
fn end_to_end(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(&SEC_WEBSOCKET_ACCEPT);
    headers.remove(&SEC_WEBSOCKET_KEY);
}

/// The inbound side: presents an extended CONNECT from a peer as the request the app will get
/// (`GET`, the `:protocol` kept in the `Protocol` extension), so that authorization rules and
/// telemetry see what the app sees. One method comparison per request.
pub fn inbound_form(req: &mut Request<Body>) {
    if req.method() == Method::CONNECT && req.extensions().get::<Protocol>().is_some() {
        *req.method_mut() = Method::GET;
    }
}

/// What an inbound request asks for: a carried extended CONNECT (see `inbound_form`), or an
/// HTTP/1.1 upgrade from a plaintext client (permissive mTLS), as `classify` says.
pub fn inbound_asked<B>(req: &Request<B>) -> Result<Option<Asked>, ProxyError> {
    if req.extensions().get::<Protocol>().is_some() {
        return Ok(Some(Asked::ExtendedConnect));
    }
    classify(req)
}

/// Hands an upgrade (`inbound_asked`) to the app at `app` over `conn`, a dedicated HTTP/1.1
/// connection (`AppClient::upgrade_connection`): the app must answer 101 to the `Upgrade`
/// request, which is then answered (200 to a peer's extended CONNECT, 101 to a plaintext
/// HTTP/1.1 client) and spliced with the caller's stream.
pub async fn to_app<C>(
    mut req: Request<Body>,
    asked: Asked,
    (app, conn): (SocketAddr, C),
    idle_timeout: Duration,
) -> Result<Response<Body>, ProxyError>
where
    C: Future<Output = Result<hyper::client::conn::http1::SendRequest<Body>, ProxyError>>,
{
    let peer = (req.extensions_mut().remove::<OnUpgrade>())
        .ok_or(ProxyError::BadRequest("this connection cannot be upgraded"))?;
    // Over HTTP/2 the key has no meaning (RFC 8441 §5): the app gets a fresh one. An HTTP/1.1
    // client's own key goes to the app, whose answer it checks.
    let (key, client_key) = match asked {
        Asked::ExtendedConnect => {
            let protocol = req.extensions_mut().remove::<Protocol>();
            if protocol.is_none_or(|p| p.as_str() != WEBSOCKET) {
                return Err(ProxyError::BadRequest(
                    "extended CONNECT is only carried for the websocket protocol",
                ));
            }
            (random_key(), false)
        }
        Asked::WebSocket { key } => (key, true),
    };
    let refused = |reason: String| ProxyError::Upstream { addr: app, reason };
    let authority = req.uri().authority().cloned();
    let path = (req.uri().path_and_query()).map_or("/", |p| p.as_str());
    let mut out = Request::new(Body::empty());
    *out.uri_mut() = path
        .parse()
        .map_err(|_| ProxyError::BadRequest("invalid request target"))?;
    *out.method_mut() = Method::GET;
    *out.version_mut() = Version::HTTP_11;
    let mut headers = std::mem::take(req.headers_mut());
    end_to_end(&mut headers);
    if let Some(host) = authority.and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
        headers.insert(header::HOST, host);
    }
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static(WEBSOCKET));
    headers.insert(SEC_WEBSOCKET_KEY.clone(), key.clone());
    headers
        .entry(SEC_WEBSOCKET_VERSION.clone())
        .or_insert(HeaderValue::from_static("13"));
    *out.headers_mut() = headers;

    let mut sender = conn.await?;
    let mut rsp = (sender.send_request(out).await).map_err(|e| ProxyError::App {
        port: app.port(),
        reason: e.to_string(),
    })?;
    let status = rsp.status();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        if status.is_success() || status.is_informational() {
            return Err(refused(format!(
                "refused the upgrade: answered {status}, not 101"
            )));
        }
        // The app's own refusal (401, 404, 426…): the caller sees it as the app sent it.
        strip_hop_by_hop(rsp.headers_mut());
        return Ok(rsp.map(Body::from));
    }
    let upgraded_to = rsp.headers().get(header::UPGRADE).map(|v| v.as_bytes());
    if !upgraded_to.is_some_and(|v| v.eq_ignore_ascii_case(WEBSOCKET.as_bytes())) {
        return Err(refused("answered 101 without Upgrade: websocket".into()));
    }
    let expected = websocket_accept(key.as_bytes());
    if rsp.headers().get(&SEC_WEBSOCKET_ACCEPT) != Some(&expected) {
        return Err(refused(
            "answered 101 with a wrong Sec-WebSocket-Accept".into(),
        ));
    }
    let app_side = hyper::upgrade::on(&mut rsp);
    let (mut parts, _) = rsp.into_parts();
    end_to_end(&mut parts.headers);
    parts.extensions = http::Extensions::new();
    if client_key {
        let h = &mut parts.headers;
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static(WEBSOCKET));
        h.insert(SEC_WEBSOCKET_ACCEPT.clone(), expected);
    } else {
        parts.status = StatusCode::OK;
        parts.version = Version::HTTP_2;
    }
    tokio::spawn(splice((peer, app_side), (), "inbound", idle_timeout));
    Ok(Response::from_parts(parts, Body::empty()))
}

/// Once both sides have switched, copies bytes both ways until both have ended or neither has
/// sent a byte for `idle_timeout`; `hold` (the endpoint's load) is released with the connection.
async fn splice<H: Send + 'static>(
    (a, b): (OnUpgrade, OnUpgrade),
    hold: H,
    side: &'static str,
    idle_timeout: Duration,
) {
    let (a, b) = match tokio::try_join!(a, b) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(side, error = %e, "upgrade abandoned before both sides switched");
            return;
        }
    };
    match copy_until_idle(TokioIo::new(a), TokioIo::new(b), idle_timeout).await {
        Ended::Closed(ab, ba) => tracing::debug!(side, ab, ba, "upgraded connection ended"),
        Ended::Failed(e) => tracing::debug!(side, error = %e, "upgraded connection failed"),
        Ended::Idle { bytes } => {
            tracing::info!(
                side,
                ?idle_timeout,
                bytes,
                "upgraded connection idle; closed"
            )
        }
    }
    drop(hold);
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64 (RFC 6455 §4.1). The key is a nonce
/// against caches, not a secret, so the proxy's fast random source is enough.
fn random_key() -> HeaderValue {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&crate::random::next_u64().to_le_bytes());
    bytes[8..].copy_from_slice(&crate::random::next_u64().to_le_bytes());
    HeaderValue::from_str(&base64(&bytes)).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `Sec-WebSocket-Accept` for `key` (RFC 6455 §4.2.2): base64(SHA-1(key ++ GUID)).
pub fn websocket_accept(key: &[u8]) -> HeaderValue {
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut input = Vec::with_capacity(key.len() + GUID.len());
    input.extend_from_slice(key);
    input.extend_from_slice(GUID);
    HeaderValue::from_str(&base64(&sha1(&input))).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Standard base64 with padding (RFC 4648 §4).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// SHA-1 (RFC 3174), only for the WebSocket handshake, where RFC 6455 prescribes it (no
/// security rests on it there).
fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [
        0x6745_2301,
        0xEFCD_AB89,
        0x98BA_DCFE,
        0x1032_5476,
        0xC3D2_E1F0,
    ];
    let mut msg = data.to_vec();
    let bit_len = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
                20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                _ => (b ^ c ^ d, 0xCA62_C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (hi, v) in h.iter_mut().zip([a, b, c, d, e]) {
            *hi = hi.wrapping_add(v);
        }
    }
    let mut out = [0u8; 20];
    for (i, v) in h.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&v.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn sha1_matches_rfc_3174_vectors() {
        assert_eq!(
            hex(&sha1(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            hex(&sha1(
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1"
        );
        assert_eq!(hex(&sha1(b"")), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        let million = vec![b'a'; 1_000_000];
        assert_eq!(
            hex(&sha1(&million)),
            "34aa973cd4c4daa4f61eeb2bdbad27316534016f"
        );
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, output) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), output);
        }
    }

    #[test]
    fn accept_matches_rfc_6455_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            websocket_accept(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let key = random_key();
        assert!(valid_key(key.as_bytes()), "{key:?}");
        assert_ne!(key, random_key());
    }

    fn h1(method: Method, headers: &[(&str, &str)]) -> Request<()> {
        let mut req = Request::new(());
        *req.method_mut() = method;
        *req.version_mut() = Version::HTTP_11;
        for (n, v) in headers {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(n.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                req.headers_mut().append(n, v);
            }
        }
        req
    }

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    #[test]
    fn classifies_upgrades() {
        let ws = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
            ("sec-websocket-key", KEY),
        ];
        assert_eq!(
            classify(&h1(Method::GET, &ws)).ok(),
            Some(Some(Asked::WebSocket {
                key: HeaderValue::from_static(KEY)
            }))
        );
        // Ordinary requests, a stray Upgrade without the connection option, and h2c: no upgrade.
        assert_eq!(classify(&h1(Method::GET, &[])).ok(), Some(None));
        let stray = [("upgrade", "websocket"), ("sec-websocket-key", KEY)];
        assert_eq!(classify(&h1(Method::GET, &stray)).ok(), Some(None));
        let h2c = [
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
        ];
        assert_eq!(classify(&h1(Method::GET, &h2c)).ok(), Some(None));
        // Refused, with a reason.
        let foo = [("connection", "upgrade"), ("upgrade", "foo/2")];
        assert!(classify(&h1(Method::GET, &foo)).is_err());
        assert!(classify(&h1(Method::POST, &ws)).is_err());
        let no_key = [("connection", "upgrade"), ("upgrade", "websocket")];
        assert!(classify(&h1(Method::GET, &no_key)).is_err());
        let bad_key = [
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "short"),
        ];
        assert!(classify(&h1(Method::GET, &bad_key)).is_err());
        assert!(classify(&h1(Method::CONNECT, &[])).is_err());
        // HTTP/2 extended CONNECT.
        let mut connect = h1(Method::CONNECT, &[]);
        *connect.version_mut() = Version::HTTP_2;
        connect
            .extensions_mut()
            .insert(Protocol::from_static("websocket"));
        assert_eq!(classify(&connect).ok(), Some(Some(Asked::ExtendedConnect)));
    }

    #[test]
    fn extended_connect_drops_the_key_and_keeps_end_to_end_headers() {
        let mut req = Request::get("http://hello:80/chat")
            .header("sec-websocket-key", KEY)
            .header("sec-websocket-version", "13")
            .header("sec-websocket-protocol", "chat")
            .header("content-length", "0")
            .body(Body::empty())
            .unwrap_or_default();
        // Without a pending upgrade (a connection hyper will not upgrade), refused.
        let asked = Asked::WebSocket {
            key: HeaderValue::from_static(KEY),
        };
        assert!(to_extended_connect(&mut req, &asked).is_err());
        let (_, on_upgrade) = pending_upgrade();
        req.extensions_mut().insert(on_upgrade);
        let client = to_extended_connect(&mut req, &asked);
        assert!(client.is_ok_and(|c| c.accept == Some(websocket_accept(KEY.as_bytes()))));
        assert_eq!(req.method(), Method::CONNECT);
        assert_eq!(
            req.extensions().get::<Protocol>().map(|p| p.as_str()),
            Some("websocket")
        );
        assert!(req.headers().get("sec-websocket-key").is_none());
        assert!(req.headers().get("content-length").is_none());
        assert_eq!(req.headers()["sec-websocket-protocol"], "chat");
    }

    /// An `OnUpgrade` that never resolves (hyper makes them only for real connections).
    fn pending_upgrade() -> ((), OnUpgrade) {
        let mut req = Request::new(());
        ((), hyper::upgrade::on(&mut req))
    }

    #[test]
    fn inbound_form_shows_the_get() {
        let mut req = Request::new(Body::empty());
        *req.method_mut() = Method::CONNECT;
        inbound_form(&mut req);
        assert_eq!(req.method(), Method::CONNECT, "plain CONNECT untouched");
        req.extensions_mut()
            .insert(Protocol::from_static("websocket"));
        inbound_form(&mut req);
        assert_eq!(req.method(), Method::GET);
        assert_eq!(inbound_asked(&req).ok(), Some(Some(Asked::ExtendedConnect)));
    }
}
