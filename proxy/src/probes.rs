//! The app's own health probes, served on the admin port (`GET /app-health/<container>/<kind>`).
//!
//! Why: under strict mTLS the inbound listener refuses the kubelet's plaintext probes of the
//! app's port, so an injected pod would never become ready. The injector rewrites each app
//! probe to `httpGet` on the admin port (which the redirect never captures) and hands the
//! original probes to the sidecar in `TRELLIS_APP_PROBES`; this module parses that table and
//! performs a probe the way the kubelet would (HTTP(S) GET, gRPC health check, TCP connect)
//! against the app from inside the pod. Only the configured paths are probed, so the admin port
//! does not become a proxy to arbitrary ports.

use bytes::{Buf, Bytes};
use http::{header, HeaderName, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// The admin-port path prefix of app probes.
pub const PATH_PREFIX: &str = "/app-health/";
/// The environment variable the injector sets (the flag is `--app-probes`).
pub const ENV: &str = "TRELLIS_APP_PROBES";
/// The kubelet's default `timeoutSeconds`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// The kubelet announces itself as `kube-probe/<version>`; some apps recognise the prefix.
const USER_AGENT: &str = "kube-probe/trellis";

/// The probes the sidecar performs, by admin-port path.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppProbes(BTreeMap<String, AppProbe>);

/// One original probe of the app.
#[derive(Debug, Clone, PartialEq)]
pub struct AppProbe {
    pub action: Action,
    pub timeout: Duration,
}

/// What the kubelet would have done (Kubernetes' probe handlers, minus `exec`).
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Http {
        /// `None`: the app's host (loopback in a pod).
        host: Option<String>,
        port: u16,
        path: String,
        https: bool,
        headers: Vec<(HeaderName, HeaderValue)>,
    },
    Grpc {
        port: u16,
        service: String,
    },
    Tcp {
        host: Option<String>,
        port: u16,
    },
}

/// A `TRELLIS_APP_PROBES` value the proxy cannot use, with the JSON path of the bad field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbesError {
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("{path}: {reason}")]
    Field { path: String, reason: String },
}

fn field(path: &str, reason: impl Into<String>) -> ProbesError {
    ProbesError::Field {
        path: path.to_string(),
        reason: reason.into(),
    }
}

impl AppProbes {
    /// Parses the injector's JSON: `{"/app-health/<container>/<kind>": {"httpGet"|"grpc"|
    /// "tcpSocket": {...}, "timeoutSeconds": N}}`, the Kubernetes probe fields with ports as
    /// numbers. An empty string means no probes.
    pub fn parse(text: &str) -> Result<AppProbes, ProbesError> {
        if text.trim().is_empty() {
            return Ok(AppProbes::default());
        }
        let root: Value =
            serde_json::from_str(text).map_err(|e| ProbesError::Json(e.to_string()))?;
        let Value::Object(entries) = root else {
            return Err(field("$", "expected an object of admin path -> probe"));
        };
        let mut probes = BTreeMap::new();
        for (key, value) in entries {
            let at = format!("$[{key:?}]");
            if !key.starts_with(PATH_PREFIX) || key.len() == PATH_PREFIX.len() {
                return Err(field(
                    &at,
                    format!("the path must start with {PATH_PREFIX}"),
                ));
            }
            if key.contains(['?', '#']) {
                return Err(field(&at, "the path must not hold a query or fragment"));
            }
            probes.insert(key, probe(&at, &value)?);
        }
        Ok(AppProbes(probes))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, path: &str) -> Option<&AppProbe> {
        self.0.get(path)
    }

    /// The admin port's answer to `path`: `None` if no probe is configured there (a 404);
    /// 200 when the app passes, 503 with the reason when it does not.
    pub async fn answer(&self, path: &str, app_host: IpAddr) -> Option<(StatusCode, String)> {
        let probe = self.get(path)?;
        Some(match probe.run(app_host).await {
            Ok(detail) => (StatusCode::OK, format!("ok: {detail}\n")),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("probe failed: {why}\n"),
            ),
        })
    }
}

fn object<'a>(
    at: &str,
    value: &'a Value,
) -> Result<&'a serde_json::Map<String, Value>, ProbesError> {
    value
        .as_object()
        .ok_or_else(|| field(at, "expected an object"))
}

fn probe(at: &str, value: &Value) -> Result<AppProbe, ProbesError> {
    let map = object(at, value)?;
    let timeout = match map.get("timeoutSeconds") {
        None | Some(Value::Null) => DEFAULT_TIMEOUT,
        Some(v) => match v.as_u64() {
            Some(s @ 1..=3600) => Duration::from_secs(s),
            _ => {
                return Err(field(
                    &format!("{at}.timeoutSeconds"),
                    "expected whole seconds, 1 to 3600",
                ))
            }
        },
    };
    let handlers: Vec<&str> = ["httpGet", "grpc", "tcpSocket"]
        .into_iter()
        .filter(|h| map.get(*h).is_some_and(|v| !v.is_null()))
        .collect();
    let action = match handlers.as_slice() {
        ["httpGet"] => http_action(&format!("{at}.httpGet"), &map["httpGet"])?,
        ["grpc"] => {
            let at = format!("{at}.grpc");
            let grpc = object(&at, &map["grpc"])?;
            Action::Grpc {
                port: port(&at, grpc)?,
                service: optional_string(&at, grpc, "service")?.unwrap_or_default(),
            }
        }
        ["tcpSocket"] => {
            let at = format!("{at}.tcpSocket");
            let tcp = object(&at, &map["tcpSocket"])?;
            Action::Tcp {
                host: optional_string(&at, tcp, "host")?.filter(|h| !h.is_empty()),
                port: port(&at, tcp)?,
            }
        }
        [] => return Err(field(at, "expected one of httpGet, grpc, tcpSocket")),
        _ => {
            return Err(field(
                at,
                format!("expected one handler, found {}", handlers.join(", ")),
            ))
        }
    };
    Ok(AppProbe { action, timeout })
}

fn http_action(at: &str, value: &Value) -> Result<Action, ProbesError> {
    let map = object(at, value)?;
    let mut path = optional_string(at, map, "path")?.unwrap_or_default();
    if !path.starts_with('/') {
        // As the kubelet: a relative path is taken from the root.
        path.insert(0, '/');
    }
    if path.parse::<http::uri::PathAndQuery>().is_err() {
        return Err(field(&format!("{at}.path"), "not a valid request path"));
    }
    let https = match optional_string(at, map, "scheme")?.as_deref() {
        None | Some("HTTP") => false,
        Some("HTTPS") => true,
        Some(_) => {
            return Err(field(
                &format!("{at}.scheme"),
                "expected \"HTTP\" or \"HTTPS\"",
            ))
        }
    };
    let mut headers = Vec::new();
    match map.get("httpHeaders") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let at = format!("{at}.httpHeaders[{i}]");
                let header = object(&at, item)?;
                let name = optional_string(&at, header, "name")?.unwrap_or_default();
                let value = optional_string(&at, header, "value")?.unwrap_or_default();
                let name = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| field(&format!("{at}.name"), "not a valid header name"))?;
                let value = HeaderValue::from_str(&value)
                    .map_err(|_| field(&format!("{at}.value"), "not a valid header value"))?;
                headers.push((name, value));
            }
        }
        Some(_) => return Err(field(&format!("{at}.httpHeaders"), "expected an array")),
    }
    Ok(Action::Http {
        host: optional_string(at, map, "host")?.filter(|h| !h.is_empty()),
        port: port(at, map)?,
        path,
        https,
        headers,
    })
}

fn port(at: &str, map: &serde_json::Map<String, Value>) -> Result<u16, ProbesError> {
    match map.get("port").and_then(Value::as_u64) {
        Some(p @ 1..=65535) => Ok(p as u16),
        _ => Err(field(
            &format!("{at}.port"),
            "expected a port number 1-65535 (the injector resolves named ports)",
        )),
    }
}

fn optional_string(
    at: &str,
    map: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<String>, ProbesError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(field(&format!("{at}.{key}"), "expected a string")),
    }
}

impl AppProbe {
    /// Performs the probe within its timeout: `Ok` with what passed, `Err` with why not.
    pub async fn run(&self, app_host: IpAddr) -> Result<String, String> {
        let work = async {
            match &self.action {
                Action::Http {
                    host,
                    port,
                    path,
                    https,
                    headers,
                } => http_probe(&target(host, app_host), *port, path, *https, headers).await,
                Action::Grpc { port, service } => grpc_probe(app_host, *port, service).await,
                Action::Tcp { host, port } => {
                    let host = target(host, app_host);
                    connect(&host, *port).await?;
                    Ok(format!("connected to {}", authority(&host, *port)))
                }
            }
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_| Err(format!("timed out after {:?}", self.timeout)))
    }
}

fn target(host: &Option<String>, app_host: IpAddr) -> String {
    host.clone().unwrap_or_else(|| app_host.to_string())
}

/// `host:port`, with an IPv6 literal in brackets.
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

async fn connect(host: &str, port: u16) -> Result<TcpStream, String> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("connecting to {}: {e}", authority(host, port)))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

async fn http_probe(
    host: &str,
    port: u16,
    path: &str,
    https: bool,
    headers: &[(HeaderName, HeaderValue)],
) -> Result<String, String> {
    let authority = authority(host, port);
    let mut req = Request::get(path)
        .header(header::USER_AGENT, USER_AGENT)
        .header(header::ACCEPT, "*/*")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("building the request: {e}"))?;
    let host_value =
        HeaderValue::from_str(&authority).map_err(|_| format!("bad host {authority:?}"))?;
    req.headers_mut().insert(header::HOST, host_value);
    // The probe's own headers win, Host included, as with the kubelet.
    for (name, value) in headers {
        req.headers_mut().insert(name.clone(), value.clone());
    }
    let stream = connect(host, port).await?;
    let status = if https {
        let tls = tls_connector()
            .map_err(|e| format!("TLS setup: {e}"))?
            .connect(server_name(host), stream)
            .await
            .map_err(|e| format!("TLS handshake with {authority}: {e}"))?;
        http1_status(tls, req).await?
    } else {
        http1_status(stream, req).await?
    };
    let scheme = if https { "https" } else { "http" };
    let what = format!("GET {scheme}://{authority}{path}: {status}");
    // The kubelet's rule: 2xx and 3xx pass (redirects are not followed here, a 3xx passes).
    if (200..400).contains(&status.as_u16()) {
        Ok(what)
    } else {
        Err(what)
    }
}

async fn http1_status<IO>(io: IO, req: Request<Empty<Bytes>>) -> Result<StatusCode, String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let driver = tokio::spawn(conn);
    let result = sender
        .send_request(req)
        .await
        .map(|rsp| rsp.status())
        .map_err(|e| format!("HTTP request: {e}"));
    driver.abort();
    result
}

/// The kubelet does not verify an HTTPS probe's certificate (the app's certificate is for its
/// clients, not for the pod IP or loopback), so neither does the sidecar.
fn tls_connector() -> Result<tokio_rustls::TlsConnector, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

fn server_name(host: &str) -> rustls_pki_types::ServerName<'static> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) => rustls_pki_types::ServerName::IpAddress(ip.into()),
        Err(_) => rustls_pki_types::ServerName::try_from(bare.to_string()).unwrap_or(
            rustls_pki_types::ServerName::IpAddress(IpAddr::from([127, 0, 0, 1]).into()),
        ),
    }
}

/// Accepts any server certificate, checking only the handshake signatures (so the connection
/// is still a real TLS session with whoever holds the key).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `grpc.health.v1.HealthCheckResponse.ServingStatus.SERVING`.
const SERVING: u64 = 1;
/// Largest health response read (it is a few bytes).
const MAX_GRPC_RESPONSE: usize = 4096;

/// A `grpc.health.v1.Health/Check` call over h2c, as the kubelet's gRPC probe: passes when the
/// status is SERVING.
async fn grpc_probe(host: IpAddr, port: u16, service: &str) -> Result<String, String> {
    let authority = authority(&host.to_string(), port);
    let stream = connect(&host.to_string(), port).await?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP/2 handshake with {authority}: {e}"))?;
    let driver = tokio::spawn(conn);
    let req = Request::post(format!("http://{authority}/grpc.health.v1.Health/Check"))
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .header(header::USER_AGENT, USER_AGENT)
        .body(Full::new(grpc_frame(&health_request(service))))
        .map_err(|e| format!("building the request: {e}"))?;
    let result = async {
        let rsp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("gRPC call to {authority}: {e}"))?;
        if rsp.status() != StatusCode::OK {
            return Err(format!("gRPC call to {authority}: HTTP {}", rsp.status()));
        }
        let head = rsp.headers().clone();
        let body = http_body_util::Limited::new(rsp.into_body(), MAX_GRPC_RESPONSE)
            .collect()
            .await
            .map_err(|e| format!("reading the gRPC response: {e}"))?;
        // A trailers-only response carries grpc-status in the headers.
        let trailers = body.trailers().cloned().unwrap_or_default();
        let grpc_status = trailers
            .get("grpc-status")
            .or_else(|| head.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if grpc_status != "0" {
            let message = trailers
                .get("grpc-message")
                .or_else(|| head.get("grpc-message"))
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            return Err(format!(
                "gRPC health check of {service:?}: grpc-status {grpc_status:?} {message}"
            ));
        }
        let status = health_status(body.to_bytes())?;
        let name = match status {
            0 => "UNKNOWN",
            1 => "SERVING",
            2 => "NOT_SERVING",
            3 => "SERVICE_UNKNOWN",
            _ => "an unknown status",
        };
        let what = format!("gRPC health of {service:?} at {authority}: {name} ({status})");
        if status == SERVING {
            Ok(what)
        } else {
            Err(what)
        }
    }
    .await;
    driver.abort();
    result
}

/// `HealthCheckRequest { string service = 1; }`, hand-encoded (an empty service is the
/// server's overall health, and proto3 omits an empty string).
fn health_request(service: &str) -> Vec<u8> {
    let mut out = Vec::new();
    if !service.is_empty() {
        out.push(0x0a); // field 1, length-delimited
        put_varint(&mut out, service.len() as u64);
        out.extend_from_slice(service.as_bytes());
    }
    out
}

/// A gRPC message frame: uncompressed flag, big-endian length, message.
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    Bytes::from(out)
}

/// The `status` (field 1, an enum) of a framed `HealthCheckResponse`; absent means 0 (UNKNOWN).
fn health_status(mut body: Bytes) -> Result<u64, String> {
    if body.len() < 5 {
        return Err("the gRPC response holds no message".into());
    }
    if body[0] != 0 {
        return Err("the gRPC response is compressed".into());
    }
    body.advance(1);
    let len = body.get_u32() as usize;
    if body.len() < len {
        return Err("the gRPC response message is truncated".into());
    }
    let mut msg = body.slice(..len);
    let mut status = 0;
    while msg.has_remaining() {
        let key = varint(&mut msg)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = varint(&mut msg)?,
            (_, 0) => {
                varint(&mut msg)?;
            }
            (_, 1) => skip(&mut msg, 8)?,
            (_, 2) => {
                let n = varint(&mut msg)? as usize;
                skip(&mut msg, n)?;
            }
            (_, 5) => skip(&mut msg, 4)?,
            (_, wire) => return Err(format!("the health response has wire type {wire}")),
        }
    }
    Ok(status)
}

fn skip(buf: &mut Bytes, n: usize) -> Result<(), String> {
    if buf.remaining() < n {
        return Err("the health response is truncated".into());
    }
    buf.advance(n);
    Ok(())
}

fn varint(buf: &mut Bytes) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        if !buf.has_remaining() {
            return Err("the health response is truncated".into());
        }
        let byte = buf.get_u8();
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("the health response has an overlong varint".into())
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Response;
    use hyper::body::Incoming;
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::net::TcpListener;

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn probes(json: &str) -> AppProbes {
        AppProbes::parse(json).expect("valid probes")
    }

    /// An HTTP/1.1 app: 200 on /healthz, 302 on /moved, 500 elsewhere; /slow answers after
    /// 3 s. It echoes what it saw in `x-seen` (user agent and a custom header).
    async fn http_app() -> u16 {
        let listener = TcpListener::bind((LOCAL, 0)).await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let status = match req.uri().path() {
                        "/healthz" => StatusCode::OK,
                        "/moved" => StatusCode::FOUND,
                        "/slow" => {
                            tokio::time::sleep(Duration::from_secs(3)).await;
                            StatusCode::OK
                        }
                        "/needs-header" => {
                            let ok = req.headers().get("x-probe").is_some_and(|v| v == "yes")
                                && req
                                    .headers()
                                    .get(header::HOST)
                                    .is_some_and(|v| v == "app.local")
                                && req
                                    .headers()
                                    .get(header::USER_AGENT)
                                    .is_some_and(|v| v.as_bytes().starts_with(b"kube-probe/"));
                            if ok {
                                StatusCode::OK
                            } else {
                                StatusCode::BAD_REQUEST
                            }
                        }
                        _ => StatusCode::INTERNAL_SERVER_ERROR,
                    };
                    let mut rsp = Response::new(Full::new(Bytes::from_static(b"app")));
                    *rsp.status_mut() = status;
                    Ok::<_, Infallible>(rsp)
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        port
    }

    /// A port nothing listens on (bound, then released).
    async fn closed_port() -> u16 {
        let listener = TcpListener::bind((LOCAL, 0)).await.expect("bind");
        listener.local_addr().expect("addr").port()
    }

    /// An h2c gRPC health server: service "" and "up" are SERVING, "down" NOT_SERVING, any
    /// other unknown (grpc-status 5, NOT_FOUND, as grpc-go's health server). Counts calls.
    async fn grpc_health_server(calls: Arc<AtomicU64>) -> u16 {
        let listener = TcpListener::bind((LOCAL, 0)).await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let calls = calls.clone();
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let calls = calls.clone();
                    async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        assert_eq!(req.uri().path(), "/grpc.health.v1.Health/Check");
                        let body = req.into_body().collect().await.expect("body").to_bytes();
                        // Decode the request by hand: frame, then field 1.
                        let service = if body.len() > 7 {
                            String::from_utf8_lossy(&body[7..]).into_owned()
                        } else {
                            String::new()
                        };
                        let status: Option<u8> = match service.as_str() {
                            "" | "up" => Some(1),
                            "down" => Some(2),
                            _ => None,
                        };
                        let rsp = match status {
                            Some(s) => {
                                let frame = Bytes::from(vec![0, 0, 0, 0, 2, 0x08, s]);
                                let trailers = {
                                    let mut t = http::HeaderMap::new();
                                    t.insert("grpc-status", HeaderValue::from_static("0"));
                                    t
                                };
                                let body = http_body_util::StreamBody::new(
                                    futures_util::stream::iter(vec![
                                        Ok::<_, Infallible>(hyper::body::Frame::data(frame)),
                                        Ok(hyper::body::Frame::trailers(trailers)),
                                    ]),
                                );
                                Response::builder()
                                    .header(header::CONTENT_TYPE, "application/grpc")
                                    .body(http_body_util::Either::Left(body))
                            }
                            None => Response::builder()
                                .header(header::CONTENT_TYPE, "application/grpc")
                                .header("grpc-status", "5")
                                .header("grpc-message", "unknown service")
                                .body(http_body_util::Either::Right(Empty::<Bytes>::new())),
                        };
                        Ok::<_, Infallible>(rsp.expect("response"))
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn http_probes_pass_on_2xx_3xx_and_fail_otherwise() {
        let port = http_app().await;
        let table = probes(&format!(
            r#"{{
              "/app-health/app/readyz": {{"httpGet": {{"path": "/healthz", "port": {port}, "scheme": "HTTP"}}, "timeoutSeconds": 1}},
              "/app-health/app/livez": {{"httpGet": {{"path": "/broken", "port": {port}}}}},
              "/app-health/app/startupz": {{"httpGet": {{"path": "/moved", "port": {port}}}}},
              "/app-health/side/readyz": {{"httpGet": {{"path": "/needs-header", "port": {port},
                 "httpHeaders": [{{"name": "X-Probe", "value": "yes"}}, {{"name": "Host", "value": "app.local"}}]}}}}
            }}"#
        ));
        let (status, text) = table
            .answer("/app-health/app/readyz", LOCAL)
            .await
            .expect("known");
        assert_eq!(status, StatusCode::OK, "{text}");
        assert!(text.contains("200 OK"), "{text}");
        let (status, text) = table
            .answer("/app-health/app/livez", LOCAL)
            .await
            .expect("known");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
        assert!(
            text.contains("500"),
            "the reason names the app's status: {text}"
        );
        let (status, text) = table
            .answer("/app-health/app/startupz", LOCAL)
            .await
            .expect("known");
        assert_eq!(status, StatusCode::OK, "3xx passes: {text}");
        let (status, text) = table
            .answer("/app-health/side/readyz", LOCAL)
            .await
            .expect("known");
        assert_eq!(
            status,
            StatusCode::OK,
            "the probe's headers reach the app: {text}"
        );
    }

    /// An HTTPS app with a self-signed certificate for another name: 200 on every path. The
    /// probe must not verify it (the kubelet does not).
    async fn https_app() -> u16 {
        let cert =
            rcgen::generate_simple_self_signed(vec!["app.example".to_string()]).expect("rcgen");
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind((LOCAL, 0)).await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                        Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn https_probes_do_not_verify_the_certificate() {
        let port = https_app().await;
        let table = probes(&format!(
            r#"{{"/app-health/app/readyz": {{"httpGet": {{"path": "/", "port": {port}, "scheme": "HTTPS"}}}},
                "/app-health/app/livez": {{"httpGet": {{"path": "/", "port": {port}, "scheme": "HTTP"}}}}}}"#
        ));
        let (status, text) = table
            .answer("/app-health/app/readyz", LOCAL)
            .await
            .expect("known");
        assert_eq!(status, StatusCode::OK, "{text}");
        assert!(text.contains("https://127.0.0.1"), "{text}");
        // Plain HTTP to the TLS port fails: the scheme is honoured.
        let (status, text) = table
            .answer("/app-health/app/livez", LOCAL)
            .await
            .expect("known");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    }

    #[tokio::test]
    async fn unconfigured_paths_are_not_probed() {
        let table = probes(r#"{"/app-health/app/readyz": {"tcpSocket": {"port": 9}}}"#);
        assert!(table.answer("/app-health/app/livez", LOCAL).await.is_none());
        assert!(table
            .answer("/app-health/other/readyz", LOCAL)
            .await
            .is_none());
        assert!(AppProbes::default()
            .answer("/app-health/app/readyz", LOCAL)
            .await
            .is_none());
    }

    #[tokio::test]
    async fn tcp_probes_pass_while_something_listens() {
        let listener = TcpListener::bind((LOCAL, 0)).await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let table = probes(&format!(
            r#"{{"/app-health/app/livez": {{"tcpSocket": {{"port": {port}}}}}}}"#
        ));
        let (status, text) = table
            .answer("/app-health/app/livez", LOCAL)
            .await
            .expect("known");
        assert_eq!(status, StatusCode::OK, "{text}");
        drop(listener);
        let (status, text) = table
            .answer("/app-health/app/livez", LOCAL)
            .await
            .expect("known");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
        assert!(text.contains("connecting to 127.0.0.1"), "{text}");
    }

    #[tokio::test]
    async fn a_closed_port_fails_every_kind() {
        let port = closed_port().await;
        let table = probes(&format!(
            r#"{{
              "/app-health/a/readyz": {{"httpGet": {{"path": "/", "port": {port}}}}},
              "/app-health/a/livez": {{"grpc": {{"port": {port}}}}},
              "/app-health/a/startupz": {{"tcpSocket": {{"port": {port}}}}}
            }}"#
        ));
        for kind in ["readyz", "livez", "startupz"] {
            let path = format!("/app-health/a/{kind}");
            let (status, text) = table.answer(&path, LOCAL).await.expect("known");
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{kind}: {text}");
            assert!(text.contains("connecting to"), "{kind}: {text}");
        }
    }

    #[tokio::test]
    async fn probes_are_bounded_by_their_timeout() {
        let port = http_app().await;
        let table = probes(&format!(
            r#"{{"/app-health/app/readyz": {{"httpGet": {{"path": "/slow", "port": {port}}}, "timeoutSeconds": 1}}}}"#
        ));
        let started = std::time::Instant::now();
        let (status, text) = table
            .answer("/app-health/app/readyz", LOCAL)
            .await
            .expect("known");
        let took = started.elapsed();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
        assert!(text.contains("timed out after 1s"), "{text}");
        assert!(took < Duration::from_millis(2500), "took {took:?}");
    }

    #[tokio::test]
    async fn grpc_probes_check_the_health_service() {
        let calls = Arc::new(AtomicU64::new(0));
        let port = grpc_health_server(calls.clone()).await;
        let table = probes(&format!(
            r#"{{
              "/app-health/g/readyz": {{"grpc": {{"port": {port}}}}},
              "/app-health/g/livez": {{"grpc": {{"port": {port}, "service": "up"}}}},
              "/app-health/g/startupz": {{"grpc": {{"port": {port}, "service": "down"}}}},
              "/app-health/h/readyz": {{"grpc": {{"port": {port}, "service": "nope"}}}}
            }}"#
        ));
        let (status, text) = table
            .answer("/app-health/g/readyz", LOCAL)
            .await
            .expect("known");
        assert_eq!(status, StatusCode::OK, "{text}");
        assert!(text.contains("SERVING"), "{text}");
        let (status, text) = table
            .answer("/app-health/g/livez", LOCAL)
            .await
            .expect("known");
        assert_eq!(status, StatusCode::OK, "{text}");
        let (status, text) = table
            .answer("/app-health/g/startupz", LOCAL)
            .await
            .expect("known");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
        assert!(text.contains("NOT_SERVING"), "{text}");
        let (status, text) = table
            .answer("/app-health/h/readyz", LOCAL)
            .await
            .expect("known");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
        assert!(text.contains("grpc-status \"5\""), "{text}");
        assert_eq!(calls.load(Ordering::SeqCst), 4, "one call per probe");
    }

    #[test]
    fn health_messages_encode_and_decode() {
        assert_eq!(health_request(""), Vec::<u8>::new());
        assert_eq!(health_request("up"), vec![0x0a, 2, b'u', b'p']);
        let frame = grpc_frame(&[0x08, 0x01]);
        assert_eq!(&frame[..], &[0, 0, 0, 0, 2, 0x08, 0x01]);
        assert_eq!(health_status(frame), Ok(1));
        // An unknown field before the status is skipped; an empty message is UNKNOWN.
        let with_extra = grpc_frame(&[0x12, 0x01, b'x', 0x08, 0x02]);
        assert_eq!(health_status(with_extra), Ok(2));
        assert_eq!(health_status(grpc_frame(&[])), Ok(0));
        assert!(health_status(Bytes::from_static(&[0, 0, 0, 0, 9, 0x08])).is_err());
        assert!(health_status(grpc_frame(&[0x08])).is_err());
        let mut long = Vec::new();
        put_varint(&mut long, 300);
        assert_eq!(long, vec![0xac, 0x02]);
    }

    #[test]
    fn parse_errors_name_the_json_path() {
        let cases = [
            ("[]", "$: expected an object"),
            (
                r#"{"/ready": {"tcpSocket": {"port": 1}}}"#,
                r#"$["/ready"]: the path must start"#,
            ),
            (
                r#"{"/app-health/a/readyz": {"httpGet": {"port": "http"}}}"#,
                r#"$["/app-health/a/readyz"].httpGet.port: expected a port number"#,
            ),
            (
                r#"{"/app-health/a/readyz": {"tcpSocket": {"port": 70000}}}"#,
                r#"$["/app-health/a/readyz"].tcpSocket.port"#,
            ),
            (
                r#"{"/app-health/a/readyz": {"exec": {"command": ["true"]}}}"#,
                r#"$["/app-health/a/readyz"]: expected one of httpGet, grpc, tcpSocket"#,
            ),
            (
                r#"{"/app-health/a/readyz": {"grpc": {"port": 1}, "tcpSocket": {"port": 1}}}"#,
                "expected one handler, found grpc, tcpSocket",
            ),
            (
                r#"{"/app-health/a/readyz": {"httpGet": {"port": 1, "scheme": "ftp"}}}"#,
                r#"$["/app-health/a/readyz"].httpGet.scheme"#,
            ),
            (
                r#"{"/app-health/a/readyz": {"httpGet": {"port": 1, "httpHeaders": [{"name": "bad name", "value": "v"}]}}}"#,
                r#"$["/app-health/a/readyz"].httpGet.httpHeaders[0].name: not a valid header name"#,
            ),
            (
                r#"{"/app-health/a/readyz": {"tcpSocket": {"port": 1}, "timeoutSeconds": 0}}"#,
                r#"$["/app-health/a/readyz"].timeoutSeconds"#,
            ),
        ];
        for (json, want) in cases {
            let err = AppProbes::parse(json).expect_err(json).to_string();
            assert!(err.contains(want), "{json}: got {err:?}, want {want:?}");
        }
        assert!(matches!(AppProbes::parse("{"), Err(ProbesError::Json(_))));
        assert!(AppProbes::parse("").expect("empty").is_empty());
    }

    #[test]
    fn parse_keeps_the_kubernetes_fields() {
        let table = probes(
            r#"{"/app-health/web/readyz": {"httpGet": {"path": "healthz", "port": 8080,
                 "host": "", "scheme": "HTTPS", "httpHeaders": [{"name": "X-A", "value": "b"}]},
                 "timeoutSeconds": 3, "periodSeconds": 10}}"#,
        );
        let probe = table.get("/app-health/web/readyz").expect("probe");
        assert_eq!(probe.timeout, Duration::from_secs(3));
        assert_eq!(
            probe.action,
            Action::Http {
                host: None,
                port: 8080,
                path: "/healthz".into(),
                https: true,
                headers: vec![(
                    HeaderName::from_static("x-a"),
                    HeaderValue::from_static("b")
                )],
            }
        );
    }
}
