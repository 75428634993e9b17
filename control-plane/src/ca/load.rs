//! Making and loading the CA: a fresh root and intermediate, the state directory's files (written
//! key first, mode 0600), and operator PEM files with the checks that catch a wrong file early
//! (the key matches the certificate, the issuer is a CA, it is signed by the given root).
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{
    random_serial, CaError, CertificateAuthority, BACKDATE, CERT_FILE, INTERMEDIATE_LIFETIME,
    ISSUER_CERT_FILE, ISSUER_KEY_FILE, KEY_FILE, ROOT_LIFETIME,
};
use crate::files::CreatedFiles;

fn ca_params(
    common_name: &str,
    lifetime: std::time::Duration,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(random_serial()?);
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + lifetime;
    Ok(params)
}

/// A fresh root and intermediate; also returns the root key (PEM) for the state directory.
pub(super) fn generate() -> Result<(CertificateAuthority, String), CaError> {
    let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = ca_params("Trellis Root CA", ROOT_LIFETIME)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let root = params.self_signed(&root_key)?;
    let root_key_pem = root_key.serialize_pem();
    let root_issuer = Issuer::new(params, root_key);
    let ca = with_new_intermediate(&root_issuer, root.der().to_vec(), root.pem())?;
    Ok((ca, root_key_pem))
}

/// A new intermediate signed by `root`.
fn with_new_intermediate(
    root: &Issuer<'_, KeyPair>,
    root_der: Vec<u8>,
    root_pem: String,
) -> Result<CertificateAuthority, CaError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = ca_params("Trellis Intermediate CA", INTERMEDIATE_LIFETIME)?;
    // It signs workload certificates only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, root)?;
    Ok(CertificateAuthority {
        intermediate: Some((cert.der().to_vec(), cert.pem())),
        issuer: Issuer::new(params, key),
        root_der,
        root_pem,
    })
}

/// Loads the CA from `dir`, making what is missing: everything on first start, an intermediate
/// when only a root is there (state directories from before intermediates).
pub(super) fn from_state_dir(dir: &Path) -> Result<CertificateAuthority, CaError> {
    // Two processes starting at once on a fresh directory (two `serve`, or `serve` and `token`)
    // would each write their own root and intermediate over the other's, leaving keys that do not
    // match their certificates, or one would read the other's files half made. Under the
    // directory's lock the second one finds the first one's complete set and loads it. The lock
    // needs no write access, so a read-only directory still loads.
    let _lock = crate::files::lock_dir(dir);
    let (cert, key) = (dir.join(ISSUER_CERT_FILE), dir.join(ISSUER_KEY_FILE));
    if cert.exists() || key.exists() {
        return from_files(&cert, &key, Some(&dir.join(CERT_FILE)));
    }
    create_in_state_dir(dir)
}

/// `from_state_dir` once it holds the lock and found no intermediate.
fn create_in_state_dir(dir: &Path) -> Result<CertificateAuthority, CaError> {
    let (root_cert, root_key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    let (cert, key) = (dir.join(ISSUER_CERT_FILE), dir.join(ISSUER_KEY_FILE));
    // Everything written below is new; if any write fails (full disk, read-only mount), what
    // this start wrote is removed again, so the next start begins from the same state, and files
    // that were already there are never touched.
    let mut created = CreatedFiles::default();
    let mut write = |path: &Path, text: &str, mode: u32| {
        created
            .write_new(path, text.as_bytes(), mode)
            .map_err(|source| CaError::Io {
                path: path.to_owned(),
                source,
            })
    };
    let ca = if root_cert.exists() || root_key.exists() {
        let root = from_files(&root_cert, &root_key, None)?;
        with_new_intermediate(&root.issuer, root.root_der.clone(), root.root_pem.clone())?
    } else {
        let (ca, root_key_pem) = generate()?;
        // Keys are written before certificates: a crash in between leaves a key without a
        // certificate, which is refused at the next start rather than silently replaced.
        write(&root_key, &root_key_pem, 0o600)?;
        write(&root_cert, &ca.root_pem, 0o644)?;
        ca
    };
    write(&key, &ca.issuer.key().serialize_pem(), 0o600)?;
    let pem = ca.intermediate.as_ref().map_or("", |(_, pem)| pem.as_str());
    write(&cert, pem, 0o644)?;
    created.keep();
    Ok(ca)
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|source| CaError::Io {
        path: path.to_owned(),
        source,
    })
}

fn bad(path: &Path, reason: impl Into<String>) -> CaError {
    CaError::BadFile {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// The first certificate of a PEM file, as DER.
fn first_cert(path: &Path, pem: &str) -> Result<Vec<u8>, CaError> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|d| d.to_vec())
        .map_err(|e| bad(path, e.to_string()))
}

fn parse<'a>(path: &Path, der: &'a [u8]) -> Result<X509Certificate<'a>, CaError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| bad(path, e.to_string()))?;
    if !cert.is_ca() {
        return Err(bad(
            path,
            "not a CA certificate (basicConstraints CA is not set)",
        ));
    }
    Ok(cert)
}

/// The issuing certificate and key at `cert`/`key`; `root` is the root certificate when the
/// issuer is an intermediate (its key is not needed).
pub(super) fn from_files(
    cert: &Path,
    key: &Path,
    root: Option<&Path>,
) -> Result<CertificateAuthority, CaError> {
    let (cert_pem, key_pem) = (read(cert)?, read(key)?);
    let key_pair = KeyPair::from_pem(&key_pem).map_err(|e| bad(key, e.to_string()))?;
    let issuer_der = first_cert(cert, &cert_pem)?;
    let parsed = parse(cert, &issuer_der)?;
    if parsed.public_key().subject_public_key.data.as_ref() != key_pair.public_key_raw() {
        return Err(bad(key, "the key does not match the certificate"));
    }
    let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(issuer_der.as_slice()), key_pair)
        .map_err(|e| bad(cert, e.to_string()))?;
    let (root_der, root_pem) = match root {
        Some(root) => {
            let root_pem = read(root)?;
            let root_der = first_cert(root, &root_pem)?;
            let parsed_root = parse(root, &root_der)?;
            if parsed_root.verify_signature(None).is_err() {
                return Err(bad(root, "the root is not self-signed"));
            }
            if parsed
                .verify_signature(Some(parsed_root.public_key()))
                .is_err()
            {
                return Err(bad(cert, "not signed by the root given with it"));
            }
            (root_der, root_pem)
        }
        None => {
            if parsed.verify_signature(None).is_err() {
                return Err(bad(
                    cert,
                    "not self-signed: give the root certificate too (--ca-root)",
                ));
            }
            (issuer_der.clone(), cert_pem.clone())
        }
    };
    // The file's PEM goes after the leaf as is (an intermediate, possibly with its own chain).
    let intermediate = (issuer_der != root_der).then_some((issuer_der, cert_pem));
    Ok(CertificateAuthority {
        issuer,
        intermediate,
        root_der,
        root_pem,
    })
}
