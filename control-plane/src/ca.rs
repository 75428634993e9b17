//! The mesh's certificate authority: a root and an issuing intermediate that signs short-lived
//! workload certificates whose only name is a SPIFFE ID, and the control plane's own serving
//! certificate. Chains handed out are leaf + intermediate; peers verify them up to the root.
//! Workload certificates are built from fresh parameters, never from the CSR's, so a proxy can
//! only choose its public key, not what it is called.
//!
//! Where the keys come from: the state directory (root and intermediate generated on first start,
//! keys written 0600; a state directory from before intermediates gets one made by its root), or
//! operator PEM files: the issuing certificate and key, plus the root certificate alone, so the
//! root key can stay offline. A self-signed issuing certificate without a root is a root-only CA.
//! Key material is never logged (`Debug` shows nothing of it).
use std::path::PathBuf;
use std::time::Duration;

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    SignatureAlgorithm,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::CertificateSigningRequestDer;
use time::OffsetDateTime;
use x509_parser::prelude::FromDer;

/// The root certificate (the trust anchor proxies are given).
pub const CERT_FILE: &str = "ca.crt.pem";
/// The root key; may be deleted once the intermediate exists (the root can then stay offline).
pub const KEY_FILE: &str = "ca.key.pem";
/// The issuing intermediate and its key.
pub const ISSUER_CERT_FILE: &str = "issuer.crt.pem";
pub const ISSUER_KEY_FILE: &str = "issuer.key.pem";
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const INTERMEDIATE_LIFETIME: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
/// Tolerates clocks that are a little behind ours.
const BACKDATE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("the CSR cannot be parsed or its signature does not verify: {0}")]
    BadCsr(rcgen::Error),
    #[error("the CSR must name exactly one URI SAN, {expected}; it names {found}")]
    WrongNames { expected: String, found: String },
    #[error("unsupported key algorithm {0} (use ECDSA P-256/P-384 or Ed25519)")]
    UnsupportedKey(String),
    #[error("certificate lifetime {0:?} is out of range")]
    BadLifetime(Duration),
    #[error("cannot generate randomness")]
    Random,
    #[error("cannot build certificate: {0}")]
    Build(#[from] rcgen::Error),
}

/// Where the CA comes from.
#[derive(Debug, Clone)]
pub enum CaSource {
    /// The root (`ca.*.pem`) and intermediate (`issuer.*.pem`) in `<dir>`, made on first start.
    StateDir(PathBuf),
    /// Operator-provided PEM files: the issuing certificate and its key, and the root certificate
    /// when the issuer is an intermediate (`None`: the issuer is a self-signed root).
    Files {
        cert: PathBuf,
        key: PathBuf,
        root: Option<PathBuf>,
    },
}

/// A certificate signed for a workload.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Leaf first; the root is not included.
    pub chain_der: Vec<Vec<u8>>,
    pub not_after_unix: i64,
}

pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    /// The issuing intermediate (DER, PEM), sent after every leaf; `None` when the root signs.
    intermediate: Option<(Vec<u8>, String)>,
    root_der: Vec<u8>,
    root_pem: String,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertificateAuthority { .. }")
    }
}

impl CertificateAuthority {
    pub fn load(source: &CaSource) -> Result<Self, CaError> {
        match source {
            CaSource::Files { cert, key, root } => load::from_files(cert, key, root.as_deref()),
            CaSource::StateDir(dir) => load::from_state_dir(dir),
        }
    }

    /// A fresh root and intermediate held in memory only.
    pub fn generate() -> Result<Self, CaError> {
        Ok(load::generate()?.0)
    }

    /// The issuing intermediate (DER), if the root does not sign directly.
    pub fn intermediate_der(&self) -> Option<&[u8]> {
        self.intermediate.as_ref().map(|(der, _)| der.as_slice())
    }

    pub fn root_der(&self) -> &[u8] {
        &self.root_der
    }

    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Signs `csr_der` for `spiffe_id`, refusing CSRs that ask for any other name.
    pub fn sign_workload(
        &self,
        spiffe_id: &str,
        csr_der: &[u8],
        lifetime: Duration,
    ) -> Result<Issued, CaError> {
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(CaError::BadCsr)?;
        check_key_algorithm(csr_der, csr.public_key.algorithm())?;
        let names = &csr.params.subject_alt_names;
        let exact = matches!(names.as_slice(), [SanType::URI(uri)] if uri.as_str() == spiffe_id);
        if !exact {
            return Err(CaError::WrongNames {
                expected: spiffe_id.to_owned(),
                found: format!("{names:?}"),
            });
        }
        let lifetime_t =
            time::Duration::try_from(lifetime).map_err(|_| CaError::BadLifetime(lifetime))?;
        let now = OffsetDateTime::now_utc();
        let not_after = now
            .checked_add(lifetime_t)
            .ok_or(CaError::BadLifetime(lifetime))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into()?)];
        params.not_before = now - BACKDATE;
        params.not_after = not_after;
        params.serial_number = Some(random_serial()?);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        let mut chain_der = vec![cert.der().to_vec()];
        chain_der.extend(self.intermediate_der().map(<[u8]>::to_vec));
        Ok(Issued {
            chain_der,
            not_after_unix: not_after.unix_timestamp(),
        })
    }

    /// The control plane's own TLS certificate and key (PEM): DNS SANs for `names`, IP SANs for
    /// those that parse as addresses, and the control plane's SPIFFE ID.
    pub fn server_certificate(
        &self,
        trust_domain: &str,
        names: &[String],
    ) -> Result<(String, String), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "trellis-control-plane");
        let id = trellis_api::spiffe_id(trust_domain, "trellis-system", "trellis-control-plane");
        params.subject_alt_names.push(SanType::URI(id.try_into()?));
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + ROOT_LIFETIME / 10;
        params.serial_number = Some(random_serial()?);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        let mut chain_pem = cert.pem();
        if let Some((_, pem)) = &self.intermediate {
            chain_pem.push_str(pem);
        }
        Ok((chain_pem, key.serialize_pem()))
    }
}

/// Accepts ECDSA P-256/P-384 and Ed25519 keys, and requires the CSR's signature algorithm to match
/// the key's, since rcgen derives the certificate's key algorithm from it.
fn check_key_algorithm(csr_der: &[u8], alg: &SignatureAlgorithm) -> Result<(), CaError> {
    use x509_parser::oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_SIG_ED25519,
    };
    let (_, req) = x509_parser::certification_request::X509CertificationRequest::from_der(csr_der)
        .map_err(|_| CaError::BadCsr(rcgen::Error::CouldNotParseCertificationRequest))?;
    let spki = &req.certification_request_info.subject_pki.algorithm;
    let curve = spki
        .parameters
        .as_ref()
        .and_then(|p| x509_parser::der_parser::asn1_rs::Oid::try_from(p).ok());
    let expected: &SignatureAlgorithm = if spki.algorithm == OID_SIG_ED25519 {
        &rcgen::PKCS_ED25519
    } else if spki.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY && curve == Some(OID_EC_P256) {
        &rcgen::PKCS_ECDSA_P256_SHA256
    } else if spki.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY && curve == Some(OID_NIST_EC_P384) {
        &rcgen::PKCS_ECDSA_P384_SHA384
    } else {
        return Err(CaError::UnsupportedKey(spki.algorithm.to_id_string()));
    };
    if alg != expected {
        return Err(CaError::UnsupportedKey(format!("{alg:?}")));
    }
    Ok(())
}

/// 16 random bytes with the top bit cleared, so the DER integer is positive.
pub(crate) fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Random)?;
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

mod load;
#[cfg(test)]
mod tests;
