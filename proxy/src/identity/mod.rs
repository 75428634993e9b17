//! The proxy's own identity: a private key generated here (it never leaves the process), a CSR for
//! the workload's SPIFFE ID, and the certificate the control plane signs for it. The certificate is
//! renewed at about half its lifetime (jittered so a fleet does not renew in lockstep); on failure
//! the current certificate keeps serving while retries back off. Each request has a deadline, so a
//! renewal never waits on a dead control-plane connection (the channel's keepalive replaces it),
//! and renewal that keeps failing is logged as a warning once a quarter of the lifetime is left,
//! as an error once the certificate has expired.

use crate::control_plane::{self, LinkSettings};
use crate::discovery::SharedStatus;
use crate::tls::TlsContext;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tonic::transport::Channel;
use trellis_api::identity::{identity_client::IdentityClient, CertifyRequest};

/// What the admin port shows about the current certificate.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityInfo {
    pub spiffe_id: String,
    pub serial: String,
    /// Shown as `notAfter` only: one form of a time, the one people read.
    #[serde(skip)]
    pub not_after_unix: i64,
    /// `not_after_unix` as RFC 3339 (UTC).
    pub not_after: String,
}

impl IdentityInfo {
    pub fn new(spiffe_id: String, serial: String, not_after_unix: i64) -> Self {
        IdentityInfo {
            spiffe_id,
            serial,
            not_after: rfc3339(not_after_unix),
            not_after_unix,
        }
    }

    pub fn is_valid_now(&self) -> bool {
        unix_now() < self.not_after_unix
    }

    /// Seconds until the certificate expires (negative once it has).
    pub fn expires_in_seconds(&self) -> i64 {
        self.not_after_unix - unix_now()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("building the CSR: {0}")]
    Csr(#[from] rcgen::Error),
    #[error("control plane refused the certificate request: {0}")]
    Refused(#[from] tonic::Status),
    #[error("invalid credential for the authorization metadata")]
    Credential,
    #[error("control plane returned an unusable certificate: {0}")]
    BadCertificate(String),
}

pub struct IdentityManager {
    pub client: IdentityClient<Channel>,
    pub token: String,
    pub spiffe_id: String,
    pub tls: TlsContext,
    pub status: watch::Sender<Option<IdentityInfo>>,
    /// Where failures of the link are recorded (shared with discovery).
    pub link_status: SharedStatus,
    pub link: LinkSettings,
    /// The name the control plane's certificate must carry, for error messages.
    pub control_plane_name: String,
}

impl IdentityManager {
    /// Keeps a valid certificate in the TLS context for as long as it runs.
    pub async fn run(mut self) {
        let mut failures = 0u32;
        // Seconds the last certificate was issued for, to judge how urgent a failure is.
        let mut lifetime = 0i64;
        loop {
            match self.refresh().await {
                Ok(info) => {
                    failures = 0;
                    lifetime = (info.not_after_unix - unix_now()).max(2);
                    tracing::info!(spiffe_id = %info.spiffe_id, serial = %info.serial, not_after = %info.not_after, "certificate issued");
                    let _ = self.status.send(Some(info));
                    if let Ok(mut s) = self.link_status.lock() {
                        s.link.clear("certify");
                    }
                    // Renew at 50% of the lifetime, ±10%.
                    let half = Duration::from_millis(lifetime as u64 * 500);
                    tokio::time::sleep(jitter(half, 0.1)).await;
                }
                Err(e) => {
                    failures += 1;
                    let delay = self.report_failure(&e, failures, lifetime);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Logs and records a failed renewal; returns how long to wait before the next attempt.
    fn report_failure(&self, e: &IdentityError, failures: u32, lifetime: i64) -> Duration {
        let mut delay = backoff(failures);
        if let IdentityError::Refused(status) = e {
            let diagnosis = control_plane::diagnose(status);
            delay = delay.max(diagnosis.pushback.unwrap_or_default());
            control_plane::log_failure("certify", &diagnosis, delay, &self.control_plane_name);
            if let Ok(mut s) = self.link_status.lock() {
                s.link.record("certify", &diagnosis);
            }
        } else {
            tracing::warn!(error = %e, retry_in = ?delay, "certificate request failed");
        }
        if let Some(held) = &*self.status.borrow() {
            let left = held.expires_in_seconds();
            if left <= 0 {
                tracing::error!(
                    serial = %held.serial, not_after = %held.not_after, failures,
                    "the certificate has expired and cannot be renewed: peers refuse this \
                     sidecar's connections until the control plane is back"
                );
            } else if left * 4 <= lifetime {
                tracing::warn!(
                    serial = %held.serial, not_after = %held.not_after, expires_in_seconds = left,
                    failures, "certificate renewal keeps failing and the certificate expires soon"
                );
            }
        }
        delay
    }

    async fn refresh(&mut self) -> Result<IdentityInfo, IdentityError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let uri = self.spiffe_id.clone().try_into()?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        let csr = params.serialize_request(&key)?;
        let mut req = tonic::Request::new(CertifyRequest {
            identity: self.spiffe_id.clone(),
            csr_der: csr.der().to_vec(),
        });
        let bearer = format!("Bearer {}", self.token)
            .parse()
            .map_err(|_| IdentityError::Credential)?;
        req.metadata_mut()
            .insert(trellis_api::AUTHORIZATION, bearer);
        // Tells the server too (grpc-timeout); the channel enforces the same deadline.
        req.set_timeout(self.link.rpc_timeout);
        let rsp = self.client.certify(req).await?.into_inner();
        let chain: Vec<CertificateDer<'static>> = rsp
            .chain_der
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        let leaf = chain
            .first()
            .ok_or_else(|| IdentityError::BadCertificate("empty chain".into()))?;
        let serial = serial_of(leaf)
            .ok_or_else(|| IdentityError::BadCertificate("leaf does not parse".into()))?;
        match crate::tls::peer_identity(leaf) {
            Some(id) if id == self.spiffe_id => {}
            other => {
                return Err(IdentityError::BadCertificate(format!(
                    "leaf names {other:?}, expected {}",
                    self.spiffe_id
                )))
            }
        }
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing = self
            .tls
            .provider()
            .key_provider
            .load_private_key(der)
            .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
        // Until discovery delivers the trust bundle, trust the anchors the CA handed out.
        if self.tls.trust.is_empty() && !rsp.trust_anchors_der.is_empty() {
            self.tls.trust.set_roots(&rsp.trust_anchors_der);
        }
        self.tls
            .certs
            .set(Arc::new(rustls::sign::CertifiedKey::new(chain, signing)));
        Ok(IdentityInfo::new(
            self.spiffe_id.clone(),
            serial,
            rsp.not_after_unix,
        ))
    }
}

fn serial_of(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::prelude::*;
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    Some(parsed.raw_serial_as_string())
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `unix` seconds as an RFC 3339 UTC timestamp (`2026-12-02T05:22:59Z`).
pub fn rfc3339(unix: i64) -> String {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm, proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The inverse of [`rfc3339`], for readers of `/config` (the CLI, tests): `YYYY-MM-DDTHH:MM:SSZ`
/// only, the one form this process writes.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[19] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| text.get(r)?.parse::<i64>().ok();
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, m, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    // Civil date to days since 1970-01-01 (H. Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + m * 60 + s)
}

/// Retry n's step is this times 2^n (so the first retry waits 200–400 ms).
const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// No wait is longer: a control plane that returns is found within this long.
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Delay before retry `attempt` (1 = the first retry): exponential from 400 ms, capped at 10 s,
/// with "equal jitter" (uniform in the upper half of the step). The lower half bound keeps a
/// fleet that lost its control plane from hammering it in a tight loop (never zero), and the
/// spread keeps it from reconnecting in lockstep.
pub fn backoff(attempt: u32) -> Duration {
    backoff_with(attempt, crate::random::unit())
}

/// `backoff` with its random draw `unit` in [0, 1) given, so the bounds can be tested.
pub fn backoff_with(attempt: u32, unit: f64) -> Duration {
    let step = BACKOFF_BASE
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_MAX);
    let half = step / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

/// `base` ± `fraction` (fraction 1.0 means anywhere in [0, base]).
pub fn jitter(base: Duration, fraction: f64) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    let unit = (h.finish() % 10_000) as f64 / 10_000.0; // [0, 1)
    let factor = if fraction >= 1.0 {
        unit
    } else {
        1.0 - fraction + 2.0 * fraction * unit
    };
    base.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_929_779), "2026-11-29T05:22:59Z");
        assert_eq!(rfc3339(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn rfc3339_parses_back_what_it_writes() {
        for t in [
            0,
            951_782_400,
            1_795_929_779,
            4_107_542_399,
            -1,
            1_709_164_800,
        ] {
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t), "{t}");
        }
        for bad in [
            "",
            "2026-13-01T00:00:00Z",
            "2026-12-02 10:00:00Z",
            "2026-12-02T10:00:00",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn jitter_stays_in_bounds() {
        for _ in 0..100 {
            let d = jitter(Duration::from_secs(10), 0.1);
            assert!(
                d >= Duration::from_secs(9) && d <= Duration::from_secs(11),
                "{d:?}"
            );
        }
    }

    #[test]
    fn backoff_grows_then_is_capped() {
        // The same draw at successive attempts: doubles until the cap.
        let at = |attempt| backoff_with(attempt, 0.999);
        assert!(at(1) < at(2) && at(2) < at(3) && at(3) < at(4) && at(4) < at(5));
        assert_eq!(at(1).as_millis(), 399);
        assert!(at(6) <= BACKOFF_MAX && at(6) > Duration::from_secs(9));
        for attempt in [7, 20, 31, 32, 1000, u32::MAX] {
            assert!(backoff(attempt) <= BACKOFF_MAX, "attempt {attempt}");
            assert_eq!(at(attempt), at(6), "attempt {attempt}");
        }
    }

    #[test]
    fn backoff_is_never_zero_and_jitter_spreads_within_the_step() {
        for attempt in [0, 1, 3, 10] {
            let step = BACKOFF_BASE
                .saturating_mul(1 << attempt.min(16))
                .min(BACKOFF_MAX);
            assert_eq!(backoff_with(attempt, 0.0), step / 2);
            assert!(backoff_with(attempt, 0.0) > Duration::ZERO);
            let draws: Vec<Duration> = (0..200).map(|_| backoff(attempt)).collect();
            for d in &draws {
                assert!(
                    *d >= step / 2 && *d <= step,
                    "attempt {attempt}: {d:?} vs {step:?}"
                );
            }
            // 200 uniform draws over the half step: spread over most of it, not one value.
            let (min, max) = (draws.iter().min(), draws.iter().max());
            if let (Some(min), Some(max)) = (min, max) {
                assert!(
                    *max - *min > step / 4,
                    "attempt {attempt}: {min:?}..{max:?}"
                );
            }
        }
    }
}
