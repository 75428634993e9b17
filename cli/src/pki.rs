//! The certificate work `install`, `upgrade` and `check` share: making the injector's webhook
//! serving certificate and the CA that signs it (the mesh CA itself is the control plane's code,
//! `trellis_control_plane::ca`), and reading certificates back: PEM bundles, expiry, DNS names,
//! and whether a CA signed a certificate. Kept apart from the mesh CA on purpose: the webhook CA
//! only has to convince the API server (it sits in the webhook's `caBundle`), so rotating it
//! never touches the workloads' trust.
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The webhook serving certificate's lifetime, and its CA's.
pub const WEBHOOK_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
const WEBHOOK_CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// `upgrade` renews, and `check` fails, a webhook or CA certificate this close to its expiry.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Tolerates API servers whose clock is a little behind ours.
const BACKDATE: Duration = Duration::from_secs(60);

/// A serving certificate and key, and the CA certificates a client should trust for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingTls {
    pub cert_pem: String,
    pub key_pem: String,
    /// The webhook's `caBundle` (PEM): the CA that signed `cert_pem`, possibly followed by the
    /// previous CA while pods still serve the previous certificate.
    pub ca_bundle_pem: String,
}

/// The DNS names of the injector's Service, which the API server calls.
pub fn webhook_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// A fresh webhook CA and a serving certificate for `names` signed by it. `previous_ca` (PEM)
/// is appended to the bundle, so the certificate being replaced is trusted until it is gone.
pub fn webhook_tls(names: &[String], previous_ca: Option<&str>) -> Result<ServingTls> {
    let now = OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = name("Trellis Webhook CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = now - BACKDATE;
    ca_params.not_after = now + WEBHOOK_CA_LIFETIME;
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .context("making the webhook CA")?;
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params =
        CertificateParams::new(names.to_vec()).context("the webhook certificate's names")?;
    params.distinguished_name = name(names.first().map_or("trellis-injector", String::as_str));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - BACKDATE;
    params.not_after = now + WEBHOOK_CERT_LIFETIME;
    let cert = params
        .signed_by(&key, &issuer)
        .context("signing the webhook certificate")?;
    let mut ca_bundle_pem = ca_cert.pem();
    if let Some(previous) = previous_ca {
        ca_bundle_pem.push_str(previous);
    }
    Ok(ServingTls {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        ca_bundle_pem,
    })
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Every certificate of a PEM text, as DER; an error names `what` and the reason.
pub fn certificates(what: &str, pem: &[u8]) -> Result<Vec<Vec<u8>>> {
    let mut ders = Vec::new();
    for item in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let item = item.map_err(|e| anyhow!("{what}: not PEM: {e}"))?;
        if item.label == "CERTIFICATE" {
            ders.push(item.contents);
        }
    }
    if ders.is_empty() {
        return Err(anyhow!("{what}: no PEM certificate in it"));
    }
    Ok(ders)
}

/// What `check` and `upgrade` need to know about one certificate.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub der: Vec<u8>,
    pub not_after: OffsetDateTime,
    pub dns_names: Vec<String>,
}

pub fn inspect(what: &str, der: &[u8]) -> Result<CertInfo> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| anyhow!("{what}: not a certificate: {e}"))?;
    let not_after = cert.validity().not_after.to_datetime();
    let mut dns_names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                dns_names.push(dns.to_string());
            }
        }
    }
    Ok(CertInfo {
        der: der.to_vec(),
        not_after,
        dns_names,
    })
}

/// The first certificate of `bundle` (DER) whose key signed `leaf`, if any.
pub fn signer<'a>(leaf: &[u8], bundle: &'a [Vec<u8>]) -> Option<&'a [u8]> {
    let (_, leaf) = X509Certificate::from_der(leaf).ok()?;
    bundle.iter().map(Vec::as_slice).find(|ca| {
        X509Certificate::from_der(ca)
            .map(|(_, ca)| leaf.verify_signature(Some(ca.public_key())).is_ok())
            .unwrap_or(false)
    })
}

/// Whole days from now to `not_after` (negative once expired).
pub fn days_left(not_after: OffsetDateTime) -> i64 {
    (not_after - OffsetDateTime::now_utc()).whole_days()
}

/// Whether `not_after` is within `RENEW_BEFORE` of now.
pub fn near_expiry(not_after: OffsetDateTime) -> bool {
    not_after - OffsetDateTime::now_utc() < RENEW_BEFORE
}

/// A DER certificate as PEM.
pub fn pem(der: &[u8]) -> String {
    trellis_control_plane::kubernetes::trust_bundle::pem(der)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_certificate_is_signed_by_the_bundle_and_names_the_service() {
        let names = webhook_names("trellis-injector", "trellis-system");
        let tls = webhook_tls(&names, None).unwrap();
        let leaf = certificates("leaf", tls.cert_pem.as_bytes()).unwrap();
        let bundle = certificates("bundle", tls.ca_bundle_pem.as_bytes()).unwrap();
        assert_eq!(bundle.len(), 1);
        assert!(signer(&leaf[0], &bundle).is_some());
        let info = inspect("leaf", &leaf[0]).unwrap();
        assert_eq!(info.dns_names, names);
        assert_eq!(days_left(info.not_after), 364);
        assert!(!near_expiry(info.not_after));

        // A renewal keeps the previous CA in the bundle, and the old leaf still verifies.
        let renewed = webhook_tls(&names, Some(&tls.ca_bundle_pem)).unwrap();
        let bundle = certificates("bundle", renewed.ca_bundle_pem.as_bytes()).unwrap();
        assert_eq!(bundle.len(), 2);
        assert!(signer(&leaf[0], &bundle).is_some());
        let other = webhook_tls(&names, None).unwrap();
        let other_bundle = certificates("bundle", other.ca_bundle_pem.as_bytes()).unwrap();
        assert!(signer(&leaf[0], &other_bundle).is_none());
    }

    #[test]
    fn bad_pem_is_named() {
        let err = certificates("Secret x/y tls.crt", b"hello").unwrap_err();
        assert_eq!(
            err.to_string(),
            "Secret x/y tls.crt: no PEM certificate in it"
        );
    }
}
