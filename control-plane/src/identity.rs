//! The identity service: a proxy proves who it is with a token and gets a certificate for exactly
//! that SPIFFE ID. The private key never leaves the proxy; we only sign its CSR.
use std::sync::Arc;

use tokio::sync::watch;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use trellis_api::identity::identity_server::Identity;
use trellis_api::identity::{CertifyRequest, CertifyResponse};

use crate::ca::CertificateAuthority;
use crate::resources::SharedSnapshot;
use crate::token::{Grant, TokenAuthority};

/// Verifies the `authorization: Bearer <token>` metadata. The token itself is never logged.
pub(crate) fn grant_from_metadata(
    tokens: &TokenAuthority,
    metadata: &MetadataMap,
) -> Result<Grant, Status> {
    let value = metadata
        .get(trellis_api::AUTHORIZATION)
        .ok_or_else(|| Status::unauthenticated("missing authorization metadata"))?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| Status::unauthenticated("authorization must be \"Bearer <token>\""))?;
    tokens
        .verify(token.trim())
        .map_err(|e| Status::unauthenticated(format!("invalid token: {e}")))
}

pub struct IdentityService {
    ca: Arc<CertificateAuthority>,
    tokens: Arc<TokenAuthority>,
    /// For the trust domain and certificate lifetime of the current config.
    snapshots: watch::Receiver<SharedSnapshot>,
}

impl IdentityService {
    pub fn new(
        ca: Arc<CertificateAuthority>,
        tokens: Arc<TokenAuthority>,
        snapshots: watch::Receiver<SharedSnapshot>,
    ) -> Self {
        IdentityService {
            ca,
            tokens,
            snapshots,
        }
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let grant = grant_from_metadata(&self.tokens, request.metadata())?;
        let (trust_domain, lifetime) = {
            let snap = self.snapshots.borrow();
            (snap.trust_domain.clone(), snap.certificate_lifetime)
        };
        let granted =
            trellis_api::spiffe_id(&trust_domain, &grant.namespace, &grant.service_account);
        let req = request.into_inner();
        if req.identity != granted {
            tracing::warn!(asked = %req.identity, %granted, "certificate refused: identity not granted");
            return Err(Status::permission_denied(format!(
                "identity {} is not the granted {granted}",
                req.identity
            )));
        }
        let issued = self
            .ca
            .sign_workload(&granted, &req.csr_der, lifetime)
            .map_err(|e| Status::invalid_argument(format!("CSR refused: {e}")))?;
        tracing::info!(identity = %granted, not_after = issued.not_after_unix, "certificate issued");
        Ok(Response::new(CertifyResponse {
            chain_der: issued.chain_der,
            not_after_unix: issued.not_after_unix,
            trust_anchors_der: vec![self.ca.root_der().to_vec()],
        }))
    }
}
