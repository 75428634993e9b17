//! The mesh's certificate authority: one ECDSA P-256 root, kept in the state directory (or given as
//! PEM files), signing short-lived workload certificates whose only name is a SPIFFE ID, and the
//! control plane's own serving certificate. Workload certificates are built from fresh parameters,
//! never from the CSR's, so a proxy can only choose its public key, not what it is called.
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    SignatureAlgorithm,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use time::OffsetDateTime;
use x509_parser::prelude::FromDer;

use crate::files::write_atomic;

pub const CERT_FILE: &str = "ca.crt.pem";
pub const KEY_FILE: &str = "ca.key.pem";
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
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

/// Where the root comes from.
#[derive(Debug, Clone)]
pub enum CaSource {
    /// `<dir>/ca.crt.pem` and `<dir>/ca.key.pem`, generated on first start.
    StateDir(PathBuf),
    /// Operator-provided PEM files.
    Files { cert: PathBuf, key: PathBuf },
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
            CaSource::Files { cert, key } => Self::from_files(cert, key),
            CaSource::StateDir(dir) => {
                let (cert, key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
                if cert.exists() || key.exists() {
                    return Self::from_files(&cert, &key);
                }
                let ca = Self::generate()?;
                // The key is written first: a crash between the two writes leaves a key without a
                // certificate, which is refused at the next start rather than silently replaced.
                let key_pem = ca.issuer.key().serialize_pem();
                write_atomic(&key, key_pem.as_bytes(), 0o600)
                    .map_err(|source| CaError::Io { path: key, source })?;
                write_atomic(&cert, ca.root_pem.as_bytes(), 0o644)
                    .map_err(|source| CaError::Io { path: cert, source })?;
                Ok(ca)
            }
        }
    }

    /// A fresh root held in memory only.
    pub fn generate() -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Trellis Root CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial()?);
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + ROOT_LIFETIME;
        let cert = params.self_signed(&key)?;
        Ok(CertificateAuthority {
            root_der: cert.der().to_vec(),
            root_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    fn from_files(cert: &Path, key: &Path) -> Result<Self, CaError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| CaError::Io {
                path: path.to_owned(),
                source,
            })
        };
        let bad = |path: &Path, reason: String| CaError::BadFile {
            path: path.to_owned(),
            reason,
        };
        let (cert_pem, key_pem) = (read(cert)?, read(key)?);
        let key_pair = KeyPair::from_pem(&key_pem).map_err(|e| bad(key, e.to_string()))?;
        let root_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| bad(cert, e.to_string()))?
            .to_vec();
        let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(&root_der)
            .map_err(|e| bad(cert, e.to_string()))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key_pair.public_key_raw() {
            return Err(bad(key, "the key does not match the certificate".into()));
        }
        let issuer =
            Issuer::from_ca_cert_pem(&cert_pem, key_pair).map_err(|e| bad(cert, e.to_string()))?;
        Ok(CertificateAuthority {
            issuer,
            root_pem: cert_pem,
            root_der,
        })
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
        Ok(Issued {
            chain_der: vec![cert.der().to_vec()],
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
        Ok((cert.pem(), key.serialize_pem()))
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
fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Random)?;
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

#[cfg(test)]
mod tests;
