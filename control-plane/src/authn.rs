//! Who is calling: every identity and discovery RPC carries `authorization: Bearer <token>`, and an
//! `Authenticator` turns the token into a `Grant` (namespace, service account). The source decides
//! which one: the file source verifies the control plane's own bootstrap tokens (`token.rs`), the
//! Kubernetes source asks the API server with a TokenReview (`kubernetes/token_review.rs`). Tokens
//! are secrets: they are never logged.
use tonic::metadata::MetadataMap;
use tonic::Status;

use crate::token::{Grant, TokenAuthority};

/// Why a token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token does not prove an identity: the caller must not retry with it.
    #[error("{0}")]
    Rejected(String),
    /// The token could not be checked now (e.g. the API server is unreachable): retry later.
    #[error("{0}")]
    Unavailable(String),
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Status {
        match e {
            AuthError::Rejected(why) => Status::unauthenticated(why),
            AuthError::Unavailable(why) => Status::unavailable(why),
        }
    }
}

/// Verifies a bearer token and says which workload identity it speaks for.
#[tonic::async_trait]
pub trait Authenticator: Send + Sync + 'static {
    async fn authenticate(&self, token: &str) -> Result<Grant, AuthError>;
}

#[tonic::async_trait]
impl Authenticator for TokenAuthority {
    async fn authenticate(&self, token: &str) -> Result<Grant, AuthError> {
        self.verify(token)
            .map_err(|e| AuthError::Rejected(format!("invalid token: {e}")))
    }
}

/// Reads the `authorization: Bearer <token>` metadata and authenticates the token.
pub async fn grant_from_metadata(
    auth: &dyn Authenticator,
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
    Ok(auth.authenticate(token.trim()).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(value: &str) -> MetadataMap {
        let mut map = MetadataMap::new();
        map.insert(trellis_api::AUTHORIZATION, value.parse().unwrap());
        map
    }

    #[tokio::test]
    async fn bootstrap_tokens_authenticate() {
        let tokens = TokenAuthority::from_key(&[1; 32]);
        let token = tokens.issue("shop", "web");
        let grant = grant_from_metadata(&tokens, &metadata(&format!("Bearer {token}")))
            .await
            .unwrap();
        assert_eq!(
            (grant.namespace.as_str(), grant.service_account.as_str()),
            ("shop", "web")
        );
        let refused = grant_from_metadata(&tokens, &metadata("Bearer nope"))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        let malformed = grant_from_metadata(&tokens, &metadata(&token))
            .await
            .unwrap_err();
        assert_eq!(malformed.code(), tonic::Code::Unauthenticated);
        let missing = grant_from_metadata(&tokens, &MetadataMap::new())
            .await
            .unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
    }
}
