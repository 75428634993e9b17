//! The link to the control plane: the one gRPC channel (HTTP/2 over TLS) that the identity and
//! discovery clients share, and what the proxy knows about that link's health.
//!
//! A control-plane connection rarely fails cleanly. A lost node, a partition or a load balancer
//! that black-holes the old backend leave a socket that neither errors nor answers, and TCP alone
//! notices only after many minutes. So the channel sends HTTP/2 PINGs every `keepalive` and drops
//! a connection whose PING is not answered within the same time: a dead link is found within two
//! keepalive periods, and tonic's channel dials a new connection on the next call. Every unary
//! call has a deadline (`rpc_timeout`), and the discovery stream is reopened when nothing has
//! arrived on it for `max_silence` (`discovery`), so a hung server cannot hold a sidecar either.
//!
//! Failures are classified (`Problem`) so that the operator is told the cause and the fix (a
//! control plane whose certificate does not verify is not "unavailable"), and so that a control
//! plane's `RESOURCE_EXHAUSTED` retry hint (`grpc-retry-pushback-ms`) is honoured.

use serde::Serialize;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// How the proxy keeps its control-plane link honest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkSettings {
    /// HTTP/2 PING interval, and how long a PING may go unanswered before the connection is
    /// dropped: a silent connection is replaced within about twice this.
    pub keepalive: Duration,
    /// Deadline of every unary call (certificate requests) and of opening the discovery stream.
    pub rpc_timeout: Duration,
    /// The discovery stream is reopened (resuming from the versions held) after this long
    /// without a message.
    pub max_silence: Duration,
}

impl Default for LinkSettings {
    fn default() -> Self {
        LinkSettings {
            keepalive: Duration::from_secs(10),
            rpc_timeout: Duration::from_secs(10),
            max_silence: Duration::from_secs(600),
        }
    }
}

/// The gRPC metadata key a server sets to ask clients to wait before retrying (gRPC's
/// retry-pushback convention); the control plane sets it when it refuses a stream over its caps.
pub const RETRY_PUSHBACK: &str = "grpc-retry-pushback-ms";

/// The longest pushback honoured, so a wrong value cannot park a sidecar for hours.
const MAX_PUSHBACK: Duration = Duration::from_secs(300);

/// A lazily connected channel to `url` that verifies the server against `ca_pem` and `name`.
pub fn channel(
    url: &str,
    ca_pem: &str,
    name: &str,
    link: LinkSettings,
) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url.to_owned())?
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca_pem))
                .domain_name(name.to_owned()),
        )?
        .connect_timeout(Duration::from_secs(2).min(link.rpc_timeout))
        .timeout(link.rpc_timeout)
        .tcp_nodelay(true)
        .tcp_keepalive(Some(link.keepalive))
        .http2_keep_alive_interval(link.keepalive)
        .keep_alive_timeout(link.keepalive)
        .keep_alive_while_idle(true)
        .connect_lazy())
}

/// Why a call to the control plane failed, as far as the proxy can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Problem {
    /// The control plane's certificate did not verify (wrong CA, wrong name, expired).
    Untrusted,
    /// The control plane refused the stream over one of its caps and asked for a pause.
    Exhausted,
    /// The control plane refused this proxy's credential.
    Refused,
    /// No answer in time: a silent connection, a hung server, a deadline.
    Timeout,
    /// Could not connect, or the connection was lost.
    Unavailable,
    Other,
}

impl Problem {
    pub const ALL: [Problem; 6] = [
        Problem::Untrusted,
        Problem::Exhausted,
        Problem::Refused,
        Problem::Timeout,
        Problem::Unavailable,
        Problem::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Problem::Untrusted => "untrusted",
            Problem::Exhausted => "exhausted",
            Problem::Refused => "refused",
            Problem::Timeout => "timeout",
            Problem::Unavailable => "unavailable",
            Problem::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What went wrong, the cause in words, and the pause the control plane asked for.
#[derive(Debug, Clone)]
pub struct Diagnosis {
    pub problem: Problem,
    pub cause: String,
    pub pushback: Option<Duration>,
}

/// Classifies a failed call from its status and the error chain under it.
pub fn diagnose(status: &tonic::Status) -> Diagnosis {
    if let Some(cause) = certificate_error(status) {
        return Diagnosis {
            problem: Problem::Untrusted,
            cause,
            pushback: None,
        };
    }
    let problem = match status.code() {
        tonic::Code::ResourceExhausted => Problem::Exhausted,
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => Problem::Refused,
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => Problem::Timeout,
        tonic::Code::Unavailable | tonic::Code::Unknown if is_timeout(status) => Problem::Timeout,
        tonic::Code::Unavailable => Problem::Unavailable,
        _ => Problem::Other,
    };
    Diagnosis {
        problem,
        cause: describe(status),
        pushback: retry_pushback(status),
    }
}

/// The server's `grpc-retry-pushback-ms`, if it sent a usable one.
pub fn retry_pushback(status: &tonic::Status) -> Option<Duration> {
    let ms: u64 = status
        .metadata()
        .get(RETRY_PUSHBACK)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_millis(ms).min(MAX_PUSHBACK))
}

/// The status message with the causes under it, on one line.
fn describe(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        let line = e.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = e.source();
    }
    text
}

fn is_timeout(status: &tonic::Status) -> bool {
    let text = describe(status).to_ascii_lowercase();
    text.contains("timed out") || text.contains("timeout") || text.contains("keep-alive")
}

/// The rustls certificate error somewhere under `status`, in words.
fn certificate_error(status: &tonic::Status) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(cause) = as_certificate_error(e) {
            return Some(cause);
        }
        // io::Error hides its inner error from `source()`: look inside explicitly.
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(cause) = as_certificate_error(inner) {
                return Some(cause);
            }
        }
        source = e.source();
    }
    // Last resort for wrappers that only keep the text.
    let text = describe(status);
    text.contains("invalid peer certificate").then_some(text)
}

fn as_certificate_error(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    match e.downcast_ref::<rustls::Error>()? {
        rustls::Error::InvalidCertificate(cert) => Some(format!("{cert:?}")),
        rustls::Error::NoCertificatesPresented => Some("no certificate presented".into()),
        _ => None,
    }
}

/// What `/config` and `/metrics` show about the link.
#[derive(Debug, Default, Clone)]
pub struct LinkStatus {
    /// The last failure, cleared by the next successful call.
    pub last_error: Option<LinkError>,
    /// Failures since start, by `Problem`.
    pub errors: [u64; Problem::ALL.len()],
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkError {
    /// `certify` or `discovery`.
    pub call: &'static str,
    pub problem: Problem,
    pub cause: String,
    /// RFC 3339.
    pub at: String,
}

impl LinkStatus {
    pub fn record(&mut self, call: &'static str, diagnosis: &Diagnosis) {
        self.errors[diagnosis.problem.index()] += 1;
        self.last_error = Some(LinkError {
            call,
            problem: diagnosis.problem,
            cause: diagnosis.cause.clone(),
            at: crate::identity::rfc3339(crate::identity::unix_now()),
        });
    }

    /// A call succeeded: a failure of that call is history.
    pub fn clear(&mut self, call: &'static str) {
        if self.last_error.as_ref().is_some_and(|e| e.call == call) {
            self.last_error = None;
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        let errors: serde_json::Map<String, serde_json::Value> = Problem::ALL
            .iter()
            .map(|p| (p.as_str().to_owned(), self.errors[p.index()].into()))
            .collect();
        serde_json::json!({ "lastError": self.last_error, "errors": errors })
    }
}

/// Logs a failed call once, at a level and with words that say what to do.
pub fn log_failure(call: &'static str, diagnosis: &Diagnosis, retry_in: Duration, name: &str) {
    match diagnosis.problem {
        Problem::Untrusted => tracing::error!(
            call,
            cause = %diagnosis.cause,
            retry_in = ?retry_in,
            "the control plane's certificate does not verify: it must chain to the root in \
             --control-plane-ca (TRELLIS_CONTROL_PLANE_CA) and name {name:?} \
             (--control-plane-name). If the control plane's CA was replaced, give the sidecars \
             the new root (docs/security.md: rotating the control plane's CA). Serving with the \
             config and certificate held until then"
        ),
        Problem::Exhausted => tracing::warn!(
            call,
            cause = %diagnosis.cause,
            retry_in = ?retry_in,
            "the control plane is at its stream limit; waiting as it asked"
        ),
        Problem::Refused => tracing::error!(
            call,
            cause = %diagnosis.cause,
            retry_in = ?retry_in,
            "the control plane refused this proxy's credential (--token-file / TRELLIS_TOKEN_FILE)"
        ),
        _ => {
            tracing::warn!(call, cause = %diagnosis.cause, retry_in = ?retry_in, "control plane call failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushback_is_read_and_capped() {
        let mut status = tonic::Status::resource_exhausted("too many streams");
        assert_eq!(retry_pushback(&status), None);
        status
            .metadata_mut()
            .insert(RETRY_PUSHBACK, "2500".parse().unwrap());
        let d = diagnose(&status);
        assert_eq!(d.problem, Problem::Exhausted);
        assert_eq!(d.pushback, Some(Duration::from_millis(2500)));
        status
            .metadata_mut()
            .insert(RETRY_PUSHBACK, "99999999".parse().unwrap());
        assert_eq!(retry_pushback(&status), Some(MAX_PUSHBACK));
        status
            .metadata_mut()
            .insert(RETRY_PUSHBACK, "soon".parse().unwrap());
        assert_eq!(retry_pushback(&status), None);
    }

    #[test]
    fn certificate_errors_are_found_under_io_errors() {
        let rustls_error =
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, rustls_error);
        let status = tonic::Status::from_error(Box::new(io));
        let d = diagnose(&status);
        assert_eq!(d.problem, Problem::Untrusted, "{}", d.cause);
        assert!(d.cause.contains("BadSignature"), "{}", d.cause);
    }

    #[test]
    fn codes_map_to_problems() {
        let cases = [
            (
                tonic::Status::unauthenticated("bad token"),
                Problem::Refused,
            ),
            (
                tonic::Status::permission_denied("identity"),
                Problem::Refused,
            ),
            (tonic::Status::deadline_exceeded("late"), Problem::Timeout),
            (
                tonic::Status::unavailable("connection refused"),
                Problem::Unavailable,
            ),
            (tonic::Status::internal("oops"), Problem::Other),
        ];
        for (status, problem) in cases {
            assert_eq!(diagnose(&status).problem, problem, "{status:?}");
        }
    }

    #[test]
    fn link_status_records_and_clears_per_call() {
        let mut s = LinkStatus::default();
        let d = diagnose(&tonic::Status::unavailable("down"));
        s.record("certify", &d);
        s.record("discovery", &d);
        assert_eq!(s.errors[Problem::Unavailable.index()], 2);
        s.clear("certify");
        assert_eq!(s.last_error.as_ref().map(|e| e.call), Some("discovery"));
        s.clear("discovery");
        assert!(s.last_error.is_none());
        let json = s.to_json();
        assert_eq!(json["errors"]["unavailable"], 2);
    }
}
