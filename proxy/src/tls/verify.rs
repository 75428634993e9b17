//! Certificate verification by SPIFFE ID. Chains are checked with webpki against the current trust
//! anchors (so a rotated bundle applies to the next handshake); the client side additionally
//! requires the server's leaf to carry exactly the SPIFFE ID the endpoint is expected to have.
//! Both refuse a chain from its earliest notAfter on (`super::expiry`).

use super::TrustStore;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::Arc;

/// The handshake-signature half of both verifiers: the same for clients and servers, delegated
/// to the crypto provider's algorithms (identity checks are the part that differs).
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            let algs = &self.provider.signature_verification_algorithms;
            rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            let algs = &self.provider.signature_verification_algorithms;
            rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}

/// The SPIFFE ID in a certificate: its single URI SAN starting with `spiffe://`.
/// X.509-SVIDs carry exactly one URI SAN; a certificate with several is not an SVID.
pub fn peer_identity(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::prelude::*;
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(uri) => Some(*uri),
        _ => None,
    });
    let first = uris.next()?;
    if uris.next().is_some() || !first.starts_with("spiffe://") {
        return None;
    }
    Some(first.to_string())
}

fn verify_chain(
    trust: &TrustStore,
    provider: &CryptoProvider,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: webpki::KeyUsage,
) -> Result<(), Error> {
    let anchors = trust.anchors();
    if anchors.is_empty() {
        return Err(Error::General("no trust anchors yet".into()));
    }
    let cert = webpki::EndEntityCert::try_from(end_entity).map_err(|e| {
        Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
            Arc::new(e),
        )))
    })?;
    cert.verify_for_usage(
        provider.signature_verification_algorithms.all,
        anchors.as_slice(),
        intermediates,
        now,
        usage,
        None,
        None,
    )
    .map_err(webpki_error)?;
    // webpki accepts the whole notAfter second; from notAfter on, connections are retired
    // (`super::expiry`), so the handshake that would replace one is refused too.
    let not_after = super::expiry::chain_not_after(end_entity, intermediates);
    if not_after.is_some_and(|t| t <= i64::try_from(now.as_secs()).unwrap_or(i64::MAX)) {
        return Err(Error::InvalidCertificate(rustls::CertificateError::Expired));
    }
    Ok(())
}

fn webpki_error(e: webpki::Error) -> Error {
    use rustls::CertificateError as C;
    Error::InvalidCertificate(match e {
        webpki::Error::CertExpired { .. } => C::Expired,
        webpki::Error::CertNotValidYet { .. } => C::NotValidYet,
        webpki::Error::UnknownIssuer => C::UnknownIssuer,
        webpki::Error::InvalidSignatureForPublicKey => C::BadSignature,
        other => C::Other(rustls::OtherError(Arc::new(other))),
    })
}

/// Client-side verifier: the server must chain to the trust bundle and be `expected`.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    expected: String,
    trust: Arc<TrustStore>,
    provider: Arc<CryptoProvider>,
}

impl SpiffeServerVerifier {
    pub fn new(expected: String, trust: Arc<TrustStore>, provider: Arc<CryptoProvider>) -> Self {
        SpiffeServerVerifier {
            expected,
            trust,
            provider,
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        verify_chain(
            &self.trust,
            &self.provider,
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        )?;
        match peer_identity(end_entity) {
            Some(id) if id == self.expected => Ok(ServerCertVerified::assertion()),
            Some(id) => Err(Error::General(format!(
                "peer identity {id} is not the expected {}",
                self.expected
            ))),
            None => Err(Error::General("peer certificate has no SPIFFE ID".into())),
        }
    }

    handshake_signatures!();
}

/// Server-side verifier: a client certificate is mandatory and must chain to the trust bundle.
/// Which identities may call is authorization's business, after the handshake.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    trust: Arc<TrustStore>,
    provider: Arc<CryptoProvider>,
}

impl SpiffeClientVerifier {
    pub fn new(trust: Arc<TrustStore>, provider: Arc<CryptoProvider>) -> Self {
        SpiffeClientVerifier { trust, provider }
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        verify_chain(
            &self.trust,
            &self.provider,
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
        )?;
        if peer_identity(end_entity).is_none() {
            return Err(Error::General("client certificate has no SPIFFE ID".into()));
        }
        Ok(ClientCertVerified::assertion())
    }

    handshake_signatures!();
}
