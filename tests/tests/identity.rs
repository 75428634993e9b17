//! Identities between sidecars: the destination app learns who called from a header only its
//! sidecar can set; the inbound listener refuses clients without a valid mesh certificate; the CA
//! signs only the identity a credential grants.

use bytes::Bytes;
use http::Request;
use rcgen::{CertificateParams, DistinguishedName, Issuer, KeyPair, SanType};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trellis_tests::client::{collect, full};
use trellis_tests::{Mesh, Service};

async fn mesh() -> Mesh {
    Mesh::client_and(Service::http1("hello")).await
}

#[tokio::test]
async fn app_sees_callers_spiffe_id_and_forged_header_is_dropped() {
    let mesh = mesh().await;
    let client = mesh.client("client", false);
    let req = Request::get("http://hello/who")
        .header(
            "trellis-client-id",
            "spiffe://trellis.local/ns/default/sa/admin",
        )
        .body(full(Bytes::new()))
        .expect("request");
    let (rsp, _) = collect(client.send(req).await.expect("sent"))
        .await
        .expect("body");
    assert_eq!(rsp.status(), 200);
    let seen: Vec<&str> = rsp
        .headers()
        .get_all("x-echo-h-trellis-client-id")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert_eq!(seen, vec!["spiffe://trellis.local/ns/default/sa/client"]);
}

/// Root and key of a CA the mesh does not trust.
fn foreign_ca() -> (Issuer<'static, KeyPair>, KeyPair) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let issuer_key = KeyPair::generate().expect("key");
    (Issuer::new(params, issuer_key), key)
}

/// A workload certificate for `spiffe_id` signed by `issuer`, valid in [not_before, not_after].
fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    key: &KeyPair,
    spiffe_id: &str,
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
) -> CertificateDer<'static> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into().expect("uri"))];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
    ];
    params.not_before = not_before;
    params.not_after = not_after;
    params.signed_by(key, issuer).expect("signed").der().clone()
}

/// Attempts an mTLS handshake plus one HTTP/2 request to `addr`; Ok(status line bytes) if the
/// server answered at all.
async fn try_inbound(
    addr: std::net::SocketAddr,
    client_cert: Option<(CertificateDer<'static>, &KeyPair)>,
) -> Result<(), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny));
    let mut config = match client_cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![cert],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .map_err(|e| e.to_string())?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls_pki_types::ServerName::try_from("trellis.mesh").expect("name"),
            tcp,
        )
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    // In TLS 1.3 the server checks the client certificate after the client thinks the handshake
    // is done: a refusal shows as an alert or EOF on the first read.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = [0u8; 9];
    match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Ok(()),
        Ok(Ok(_)) => Err("closed".into()),
        Ok(Err(e)) => Err(format!("read: {e}")),
        Err(_) => Err("timeout".into()),
    }
}

#[derive(Debug)]
struct AcceptAny;

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The mesh's own CA, loaded from the control plane's state directory.
fn mesh_ca(mesh: &Mesh) -> Issuer<'static, KeyPair> {
    let key_pem = std::fs::read_to_string(mesh.state_dir.join("ca.key.pem")).expect("ca key");
    let key = KeyPair::from_pem(&key_pem).expect("parse ca key");
    Issuer::from_ca_cert_pem(mesh.ca_pem(), key).expect("ca issuer")
}

#[tokio::test]
async fn inbound_refuses_missing_foreign_and_expired_certificates() {
    let mesh = mesh().await;
    let inbound = mesh.workload("hello").inbound;
    let now = time::OffsetDateTime::now_utc();
    let id = "spiffe://trellis.local/ns/default/sa/client";
    let key = KeyPair::generate().expect("key");

    // Control: a valid mesh certificate gets an answer, so the refusals below are meaningful.
    let ca = mesh_ca(&mesh);
    let good = leaf(
        &ca,
        &key,
        id,
        now - time::Duration::minutes(1),
        now + time::Duration::hours(1),
    );
    try_inbound(inbound, Some((good, &key)))
        .await
        .expect("a valid mesh certificate is accepted");

    assert!(
        try_inbound(inbound, None).await.is_err(),
        "no client certificate"
    );

    let (foreign, _) = foreign_ca();
    let other_ca = leaf(
        &foreign,
        &key,
        id,
        now - time::Duration::minutes(1),
        now + time::Duration::hours(1),
    );
    assert!(
        try_inbound(inbound, Some((other_ca, &key))).await.is_err(),
        "certificate from another CA"
    );

    let expired = leaf(
        &ca,
        &key,
        id,
        now - time::Duration::hours(2),
        now - time::Duration::hours(1),
    );
    assert!(
        try_inbound(inbound, Some((expired, &key))).await.is_err(),
        "expired certificate"
    );

    // The app never saw any of these connections.
    assert_eq!(mesh.workload("hello").app.requests(), 0);
}

#[tokio::test]
async fn a_credential_for_one_identity_cannot_get_another() {
    use trellis_api::identity::{identity_client::IdentityClient, CertifyRequest};
    let mesh = mesh().await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("https://{}", mesh.control_plane_addr()))
            .expect("url")
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(mesh.ca_pem()))
                    .domain_name("localhost"),
            )
            .expect("tls")
            .connect()
            .await
            .expect("connect");
    let token = mesh.token("client").expect("token").to_string();
    let certify = |identity: &str| {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(identity.try_into().expect("uri"))];
        let mut req = tonic::Request::new(CertifyRequest {
            identity: identity.to_string(),
            csr_der: params.serialize_request(&key).expect("csr").der().to_vec(),
        });
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("metadata"),
        );
        req
    };
    let mut client = IdentityClient::new(channel);
    let own = client
        .certify(certify("spiffe://trellis.local/ns/default/sa/client"))
        .await;
    assert!(own.is_ok(), "own identity: {own:?}");
    let other = client
        .certify(certify("spiffe://trellis.local/ns/default/sa/hello"))
        .await;
    assert_eq!(
        other.map(|_| ()).unwrap_err().code(),
        tonic::Code::PermissionDenied
    );
    let mut forged = certify("spiffe://trellis.local/ns/default/sa/client");
    forged.metadata_mut().insert(
        "authorization",
        "Bearer trellis1.default.client.00"
            .parse()
            .expect("metadata"),
    );
    assert_eq!(
        client.certify(forged).await.map(|_| ()).unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
}
