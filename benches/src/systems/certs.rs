//! Certificates the benchmark makes for itself: the load generator's mesh certificate for the
//! Trellis one-hop path (signed with the CA the control plane keeps in its state directory), and a small PKI (root, server certificate for an IP, client certificate) written
//! as PEM files for the peers' TLS-between-two-instances path.

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// A workload certificate signed by the mesh CA found in a control plane's state directory
/// (`ca.crt.pem`, `ca.key.pem`), as the control plane would issue it.
pub struct MeshCert {
    pub chain_der: Vec<Vec<u8>>,
    /// PKCS#8 DER.
    pub key_der: Vec<u8>,
    pub root_der: Vec<u8>,
}

/// Signs a P-256 certificate for exactly `spiffe_id` with the mesh CA in `state_dir`.
pub fn mesh_cert(state_dir: &Path, spiffe_id: &str) -> anyhow::Result<MeshCert> {
    use rustls_pki_types::pem::PemObject as _;
    let read = |name: &str| {
        let path = state_dir.join(name);
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    let (ca_pem, ca_key_pem) = (read("ca.crt.pem")?, read("ca.key.pem")?);
    let ca_key = KeyPair::from_pem(&ca_key_pem).context("parsing the mesh CA key")?;
    let root_der = rustls_pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .context("parsing the mesh CA certificate")?
        .to_vec();
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).context("loading the mesh CA")?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into()?)];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(MeshCert {
        chain_der: vec![cert.der().to_vec()],
        key_der: key.serialize_der(),
        root_der,
    })
}

/// The DNS name in the peers' server certificate, which the client side verifies.
pub const PEER_NAME: &str = "bench-peer";

/// PEM files of the peers' PKI.
#[derive(Debug, Clone)]
pub struct PeerPki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// A root, a server certificate for `server_ip`, and a client certificate, under `dir`.
pub fn peer_pki(dir: &Path, server_ip: IpAddr) -> anyhow::Result<PeerPki> {
    std::fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "trellis-bench peer CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf = |name: &str, server: bool| -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.subject_alt_names = vec![
            SanType::IpAddress(server_ip),
            SanType::DnsName(PEER_NAME.try_into()?),
        ];
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (server_cert, server_key) = leaf("bench-peer-server", true)?;
    let (client_cert, client_key) = leaf("bench-peer-client", false)?;
    let pki = PeerPki {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    };
    let write = |path: &Path, text: &str| {
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    };
    write(&pki.ca, &ca_cert.pem())?;
    write(&pki.server_cert, &server_cert)?;
    write(&pki.server_key, &server_key)?;
    write(&pki.client_cert, &client_cert)?;
    write(&pki.client_key, &client_key)?;
    Ok(pki)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pki_files_are_pem() {
        let dir = std::env::temp_dir().join(format!("trellis-bench-pki-{}", std::process::id()));
        let pki = peer_pki(&dir, IpAddr::from([127, 0, 0, 64]));
        let pki = match pki {
            Ok(p) => p,
            Err(e) => panic!("{e:#}"),
        };
        for path in [&pki.ca, &pki.server_cert, &pki.client_cert] {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            assert!(
                text.starts_with("-----BEGIN CERTIFICATE-----"),
                "{}",
                path.display()
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn mesh_cert_without_a_ca_says_which_file() {
        let err = mesh_cert(Path::new("/nonexistent"), "spiffe://t/ns/a/sa/b").err();
        assert!(err.is_some_and(|e| format!("{e:#}").contains("ca.crt.pem")));
    }
}
