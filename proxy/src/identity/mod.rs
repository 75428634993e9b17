//! The proxy's own identity: a private key generated here (it never leaves the process), a CSR for
//! the workload's SPIFFE ID, and the certificate the control plane signs for it. The certificate is
//! renewed at about half its lifetime (jittered so a fleet does not renew in lockstep); on failure
//! the current certificate keeps serving while retries back off.

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
pub struct IdentityInfo {
    pub spiffe_id: String,
    pub serial: String,
    pub not_after_unix: i64,
}

impl IdentityInfo {
    pub fn is_valid_now(&self) -> bool {
        unix_now() < self.not_after_unix
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
}

impl IdentityManager {
    /// Keeps a valid certificate in the TLS context for as long as it runs.
    pub async fn run(mut self) {
        let mut failures = 0u32;
        loop {
            match self.refresh().await {
                Ok(info) => {
                    failures = 0;
                    let lifetime = (info.not_after_unix - unix_now()).max(2) as u64;
                    tracing::info!(spiffe_id = %info.spiffe_id, serial = %info.serial, "certificate issued");
                    let _ = self.status.send(Some(info));
                    // Renew at 50% of the lifetime, ±10%.
                    let half = Duration::from_millis(lifetime * 500);
                    tokio::time::sleep(jitter(half, 0.1)).await;
                }
                Err(e) => {
                    failures += 1;
                    let delay = backoff(failures);
                    tracing::warn!(error = %e, retry_in = ?delay, "certificate request failed");
                    tokio::time::sleep(delay).await;
                }
            }
        }
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
        Ok(IdentityInfo {
            spiffe_id: self.spiffe_id.clone(),
            serial,
            not_after_unix: rsp.not_after_unix,
        })
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

/// Exponential backoff from 200 ms to 10 s, with full jitter.
pub fn backoff(attempt: u32) -> Duration {
    let cap = Duration::from_millis(200u64.saturating_mul(1 << attempt.min(6)))
        .min(Duration::from_secs(10));
    jitter(cap, 1.0)
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
    fn jitter_stays_in_bounds() {
        for _ in 0..100 {
            let d = jitter(Duration::from_secs(10), 0.1);
            assert!(
                d >= Duration::from_secs(9) && d <= Duration::from_secs(11),
                "{d:?}"
            );
            assert!(backoff(20) <= Duration::from_secs(10));
        }
    }
}
