//! TLS between sidecars: TLS 1.3 only, ALPN h2, client certificates required, and peers verified
//! by SPIFFE ID rather than host name. The workload certificate and the trust anchors live in
//! swappable stores, so certificate renewal and trust-bundle rotation take effect for new
//! handshakes without rebuilding listeners or closing connections. Connections end when their
//! peer's certificate expires (`expiry`), since rustls checks it only at the handshake.

mod expiry;
#[cfg(test)]
pub mod test_pki;
mod verify;

pub use expiry::{record_retired, PeerExpiry, EXPIRY_GRACE};
pub use verify::{peer_identity, SpiffeClientVerifier, SpiffeServerVerifier};

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, TrustAnchor};
use std::sync::Arc;

/// The proxy's own certificate, replaced on renewal.
#[derive(Debug, Default)]
pub struct CertStore {
    current: ArcSwapOption<CertifiedKey>,
}

impl CertStore {
    pub fn set(&self, key: Arc<CertifiedKey>) {
        self.current.store(Some(key));
    }
    pub fn get(&self) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }
}

impl rustls::client::ResolvesClientCert for CertStore {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
    fn has_certs(&self) -> bool {
        true
    }
}

impl rustls::server::ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
}

/// The roots peers are verified against (several during a CA rotation).
#[derive(Debug, Default)]
pub struct TrustStore {
    anchors: ArcSwap<Vec<TrustAnchor<'static>>>,
}

impl TrustStore {
    /// Replaces the anchors; roots that fail to parse were already refused by config decoding.
    pub fn set_roots(&self, roots_der: &[Vec<u8>]) {
        let anchors = roots_der
            .iter()
            .filter_map(|der| {
                webpki::anchor_from_trusted_cert(&CertificateDer::from(der.as_slice()))
                    .ok()
                    .map(|a| a.to_owned())
            })
            .collect();
        self.anchors.store(Arc::new(anchors));
    }
    pub fn anchors(&self) -> arc_swap::Guard<Arc<Vec<TrustAnchor<'static>>>> {
        self.anchors.load()
    }
    pub fn is_empty(&self) -> bool {
        self.anchors.load().is_empty()
    }
}

/// Everything needed to make TLS configs for this proxy.
#[derive(Debug, Clone)]
pub struct TlsContext {
    pub certs: Arc<CertStore>,
    pub trust: Arc<TrustStore>,
    provider: Arc<CryptoProvider>,
}

impl Default for TlsContext {
    fn default() -> Self {
        TlsContext {
            certs: Arc::default(),
            trust: Arc::default(),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("tls configuration: {0}")]
pub struct TlsConfigError(#[from] rustls::Error);

impl TlsContext {
    pub fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    /// Client config for connections to a peer that must prove `expected_identity`.
    pub fn client_config(
        &self,
        expected_identity: &str,
    ) -> Result<Arc<rustls::ClientConfig>, TlsConfigError> {
        let verifier = SpiffeServerVerifier::new(
            expected_identity.to_string(),
            self.trust.clone(),
            self.provider.clone(),
        );
        let mut config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(self.certs.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        // Peers are named by SPIFFE ID, which is not a DNS name: SNI would only leak it.
        config.enable_sni = false;
        // A resumed session skips certificate verification and reports the first session's
        // chain: the reconnect after a peer's certificate expired would carry the expired
        // identity (and one after a trust-bundle rotation an untrusted one). Connections are
        // long-lived, so a full handshake each time costs little.
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(config))
    }

    /// Server config for the inbound listener: a client certificate chaining to the trust bundle
    /// is mandatory.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
        let verifier = SpiffeClientVerifier::new(self.trust.clone(), self.provider.clone());
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(self.certs.clone());
        // No resumption, as on the client side: every connection verifies the peer's current
        // certificate against the current trust bundle.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        // `trellis-opaque`: opaque TCP between sidecars (listeners/opaque.rs).
        config.alpn_protocols = vec![
            b"h2".to_vec(),
            b"http/1.1".to_vec(),
            crate::listeners::opaque::ALPN.to_vec(),
        ];
        Ok(Arc::new(config))
    }
}

/// The name given to rustls for peer connections; never sent (SNI is off) and never checked (the
/// verifier checks the SPIFFE ID instead).
pub fn placeholder_server_name() -> rustls_pki_types::ServerName<'static> {
    #[allow(clippy::expect_used)]
    rustls_pki_types::ServerName::try_from("trellis.mesh").expect("a constant, valid DNS name")
}
