//! The identity service: a proxy proves who it is with a token (checked by the source's
//! `Authenticator`, see `authn.rs`) and gets a certificate for exactly that SPIFFE ID. The private
//! key never leaves the proxy; we only sign its CSR. Issued certificates and refusals (by reason)
//! are counted in `ControlPlaneMetrics`, so a fleet failing to renew shows before certificates
//! expire.
use std::sync::Arc;

use tokio::sync::watch;
use tonic::{Request, Response, Status};
use trellis_api::identity::identity_server::Identity;
use trellis_api::identity::{CertifyRequest, CertifyResponse};

use crate::authn::{grant_from_metadata, Authenticator};
use crate::ca::CertificateAuthority;
use crate::metrics::{CertificateFailure, ControlPlaneMetrics};
use crate::resources::SharedSnapshot;
use crate::token::TokenAuthority;

pub struct IdentityService {
    ca: Arc<CertificateAuthority>,
    auth: Arc<dyn Authenticator>,
    /// For the trust domain and certificate lifetime of the current config.
    snapshots: watch::Receiver<SharedSnapshot>,
    metrics: Arc<ControlPlaneMetrics>,
}

impl IdentityService {
    /// Authenticates callers with bootstrap tokens.
    pub fn new(
        ca: Arc<CertificateAuthority>,
        tokens: Arc<TokenAuthority>,
        snapshots: watch::Receiver<SharedSnapshot>,
    ) -> Self {
        Self::with_authenticator(ca, tokens, snapshots)
    }

    pub fn with_authenticator(
        ca: Arc<CertificateAuthority>,
        auth: Arc<dyn Authenticator>,
        snapshots: watch::Receiver<SharedSnapshot>,
    ) -> Self {
        IdentityService {
            ca,
            auth,
            snapshots,
            metrics: ControlPlaneMetrics::new(),
        }
    }

    /// Counts certificates and refusals in `metrics` (by default, in a private instance).
    pub fn with_metrics(mut self, metrics: Arc<ControlPlaneMetrics>) -> Self {
        self.metrics = metrics;
        self
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let grant = grant_from_metadata(self.auth.as_ref(), request.metadata())
            .await
            .inspect_err(|status| {
                self.metrics.certificate_failed(match status.code() {
                    tonic::Code::Unavailable => CertificateFailure::AuthUnavailable,
                    _ => CertificateFailure::Unauthenticated,
                })
            })?;
        let (trust_domain, lifetime) = {
            let snap = self.snapshots.borrow();
            (snap.trust_domain.clone(), snap.certificate_lifetime)
        };
        let granted =
            trellis_api::spiffe_id(&trust_domain, &grant.namespace, &grant.service_account);
        let req = request.into_inner();
        if req.identity != granted {
            tracing::warn!(asked = %req.identity, %granted, "certificate refused: identity not granted");
            self.metrics
                .certificate_failed(CertificateFailure::IdentityMismatch);
            return Err(Status::permission_denied(format!(
                "identity {} is not the granted {granted}",
                req.identity
            )));
        }
        let issued = self
            .ca
            .sign_workload(&granted, &req.csr_der, lifetime)
            .map_err(|e| {
                self.metrics
                    .certificate_failed(CertificateFailure::InvalidCsr);
                Status::invalid_argument(format!("CSR refused: {e}"))
            })?;
        self.metrics.certificate_issued();
        tracing::info!(identity = %granted, not_after = issued.not_after_unix, "certificate issued");
        Ok(Response::new(CertifyResponse {
            chain_der: issued.chain_der,
            not_after_unix: issued.not_after_unix,
            trust_anchors_der: vec![self.ca.root_der().to_vec()],
        }))
    }
}
