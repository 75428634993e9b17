//! Certificates for tests: a root CA and workload contexts whose certificates expire when the test
//! says, for the expiry tests of the transport and the listeners.

use super::TlsContext;
use rcgen::{CertificateParams, IsCa, KeyPair, SanType};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

pub struct Ca {
    der: CertificateDer<'static>,
    issuer: rcgen::Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn generate() -> Ca {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("root");
        Ca {
            der: CertificateDer::from(cert.der().to_vec()),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A TLS context holding a certificate for `id` valid until `not_after` (Unix seconds).
    pub fn context(&self, id: &str, not_after: i64) -> (TlsContext, CertificateDer<'static>) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(id.try_into().expect("uri"))];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).expect("time");
        let leaf = params.signed_by(&key, &self.issuer).expect("leaf");
        let leaf = CertificateDer::from(leaf.der().to_vec());
        let tls = TlsContext::default();
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing = (tls.provider().key_provider)
            .load_private_key(der)
            .expect("signing key");
        tls.certs.set(Arc::new(rustls::sign::CertifiedKey::new(
            vec![leaf.clone()],
            signing,
        )));
        tls.trust.set_roots(&[self.der.to_vec()]);
        (tls, leaf)
    }
}
