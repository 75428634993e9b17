use super::*;
use rustls_pki_types::{pem::PemObject, CertificateDer};
use x509_parser::extensions::GeneralName;

const ID: &str = "spiffe://trellis.local/ns/default/sa/hello";

fn csr(sans: Vec<SanType>, alg: &'static SignatureAlgorithm) -> Vec<u8> {
    let key = KeyPair::generate_for(alg).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    params.serialize_request(&key).unwrap().der().to_vec()
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

#[test]
fn signs_a_csr_for_the_granted_identity_only() {
    let ca = CertificateAuthority::generate().unwrap();
    let der = csr(vec![uri(ID)], &rcgen::PKCS_ECDSA_P256_SHA256);
    let issued = ca
        .sign_workload(ID, &der, Duration::from_secs(3600))
        .unwrap();
    assert_eq!(issued.chain_der.len(), 2, "leaf and intermediate");
    let (_, cert) =
        x509_parser::certificate::X509Certificate::from_der(&issued.chain_der[0]).unwrap();
    let sans = &cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert_eq!(sans.len(), 1);
    assert!(matches!(sans[0], GeneralName::URI(u) if u == ID));
    let bc = cert.basic_constraints().unwrap().unwrap().value;
    assert!(!bc.ca);
    assert_eq!(cert.subject().iter().count(), 0);
    assert_eq!(cert.validity().not_after.timestamp(), issued.not_after_unix);
    let lifetime = issued.not_after_unix - cert.validity().not_before.timestamp();
    assert!((3600..=3600 + 61).contains(&lifetime), "{lifetime}");
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(cert.serial.bits() <= 128);
    // The leaf chains to the root through the intermediate.
    let (_, root) = x509_parser::certificate::X509Certificate::from_der(ca.root_der()).unwrap();
    let (_, inter) =
        x509_parser::certificate::X509Certificate::from_der(&issued.chain_der[1]).unwrap();
    assert!(cert.verify_signature(Some(inter.public_key())).is_ok());
    assert!(inter.verify_signature(Some(root.public_key())).is_ok());
    assert!(root.is_ca() && inter.is_ca());
    assert_eq!(ca.intermediate_der(), Some(issued.chain_der[1].as_slice()));
}

#[test]
fn accepts_p384_and_ed25519() {
    let ca = CertificateAuthority::generate().unwrap();
    for alg in [&rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519] {
        let der = csr(vec![uri(ID)], alg);
        assert!(ca.sign_workload(ID, &der, Duration::from_secs(60)).is_ok());
    }
}

#[test]
fn refuses_extra_or_different_names() {
    let ca = CertificateAuthority::generate().unwrap();
    let extra = csr(
        vec![
            uri(ID),
            SanType::DnsName("evil.example".try_into().unwrap()),
        ],
        &rcgen::PKCS_ECDSA_P256_SHA256,
    );
    let err = ca
        .sign_workload(ID, &extra, Duration::from_secs(60))
        .unwrap_err();
    assert!(matches!(err, CaError::WrongNames { .. }), "{err}");
    let other = csr(
        vec![uri("spiffe://trellis.local/ns/default/sa/admin")],
        &rcgen::PKCS_ECDSA_P256_SHA256,
    );
    let err = ca
        .sign_workload(ID, &other, Duration::from_secs(60))
        .unwrap_err();
    assert!(matches!(err, CaError::WrongNames { .. }), "{err}");
    let none = csr(vec![], &rcgen::PKCS_ECDSA_P256_SHA256);
    assert!(ca
        .sign_workload(ID, &none, Duration::from_secs(60))
        .is_err());
    assert!(matches!(
        ca.sign_workload(ID, b"not a csr", Duration::from_secs(60)),
        Err(CaError::BadCsr(_))
    ));
}

#[test]
fn root_is_persisted_and_reloaded() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let source = CaSource::StateDir(dir.path().to_owned());
    let first = CertificateAuthority::load(&source).unwrap();
    let mode = std::fs::metadata(dir.path().join(KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let second = CertificateAuthority::load(&source).unwrap();
    assert_eq!(first.root_der(), second.root_der());
    // A certificate from the reloaded CA verifies against the original root.
    let der = csr(vec![uri(ID)], &rcgen::PKCS_ECDSA_P256_SHA256);
    let issued = second
        .sign_workload(ID, &der, Duration::from_secs(60))
        .unwrap();
    let (_, leaf) =
        x509_parser::certificate::X509Certificate::from_der(&issued.chain_der[0]).unwrap();
    let (_, inter) =
        x509_parser::certificate::X509Certificate::from_der(first.intermediate_der().unwrap())
            .unwrap();
    assert!(leaf.verify_signature(Some(inter.public_key())).is_ok());
    assert_eq!(second.intermediate_der(), first.intermediate_der());
    for key in [KEY_FILE, ISSUER_KEY_FILE] {
        let mode = std::fs::metadata(dir.path().join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    // The root alone (self-signed) loads as a root-only CA.
    let root_only = CaSource::Files {
        cert: dir.path().join(CERT_FILE),
        key: dir.path().join(KEY_FILE),
        root: None,
    };
    let ca = CertificateAuthority::load(&root_only).unwrap();
    assert_eq!(ca.root_der(), first.root_der());
    assert!(ca.intermediate_der().is_none());
}

#[test]
fn runs_with_the_intermediate_and_the_root_certificate_only() {
    let dir = tempfile::tempdir().unwrap();
    let first = CertificateAuthority::load(&CaSource::StateDir(dir.path().to_owned())).unwrap();
    // The root key goes offline.
    std::fs::remove_file(dir.path().join(KEY_FILE)).unwrap();
    let files = CaSource::Files {
        cert: dir.path().join(ISSUER_CERT_FILE),
        key: dir.path().join(ISSUER_KEY_FILE),
        root: Some(dir.path().join(CERT_FILE)),
    };
    let ca = CertificateAuthority::load(&files).unwrap();
    assert_eq!(ca.root_der(), first.root_der());
    let der = csr(vec![uri(ID)], &rcgen::PKCS_ECDSA_P256_SHA256);
    let issued = ca.sign_workload(ID, &der, Duration::from_secs(60)).unwrap();
    assert_eq!(issued.chain_der[1], first.intermediate_der().unwrap());
    // The same state directory without the root key still loads.
    CertificateAuthority::load(&CaSource::StateDir(dir.path().to_owned())).unwrap();
}

#[test]
fn refuses_an_intermediate_with_the_wrong_root_or_no_root() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    CertificateAuthority::load(&CaSource::StateDir(a.path().to_owned())).unwrap();
    CertificateAuthority::load(&CaSource::StateDir(b.path().to_owned())).unwrap();
    let files = |root: Option<std::path::PathBuf>| CaSource::Files {
        cert: a.path().join(ISSUER_CERT_FILE),
        key: a.path().join(ISSUER_KEY_FILE),
        root,
    };
    let err = CertificateAuthority::load(&files(Some(b.path().join(CERT_FILE)))).unwrap_err();
    assert!(err.to_string().contains("not signed by the root"), "{err}");
    let err = CertificateAuthority::load(&files(None)).unwrap_err();
    assert!(err.to_string().contains("--ca-root"), "{err}");
    // A key that is not the certificate's.
    let mismatched = CaSource::Files {
        cert: a.path().join(ISSUER_CERT_FILE),
        key: b.path().join(ISSUER_KEY_FILE),
        root: Some(a.path().join(CERT_FILE)),
    };
    let err = CertificateAuthority::load(&mismatched).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
}

#[test]
fn server_certificate_names() {
    let ca = CertificateAuthority::generate().unwrap();
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let (cert_pem, _key) = ca.server_certificate("trellis.local", &names).unwrap();
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der).unwrap();
    let sans = &cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert!(sans
        .iter()
        .any(|n| matches!(n, GeneralName::DNSName("localhost"))));
    assert!(sans
        .iter()
        .any(|n| matches!(n, GeneralName::IPAddress(ip) if *ip == [127, 0, 0, 1])));
    assert!(sans.iter().any(|n| matches!(
        n,
        GeneralName::URI("spiffe://trellis.local/ns/trellis-system/sa/trellis-control-plane")
    )));
}
