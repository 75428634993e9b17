//! Authenticates proxies in Kubernetes: the sidecar sends its pod's projected service-account
//! token (audience `trellis`), and the API server says whose it is through the TokenReview API.
//! Accepted: `authenticated: true`, our audience among `status.audiences`, and a user
//! `system:serviceaccount:<namespace>:<name>`; that (namespace, name) is the grant. Positive
//! answers are cached for a minute (bounded), keyed by the token's SHA-256, so a reconnect storm
//! costs one review per pod, and the token itself is never kept or logged.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::{Api, PostParams};

use crate::authn::{AuthError, Authenticator};
use crate::token::Grant;

/// The audience the injector gives the projected token.
pub const AUDIENCE: &str = "trellis";
pub const CACHE_TTL: Duration = Duration::from_secs(60);
pub const CACHE_CAPACITY: usize = 4096;

type TokenHash = [u8; 32];

pub struct TokenReviewAuthenticator {
    reviews: Api<TokenReview>,
    audience: String,
    ttl: Duration,
    capacity: usize,
    cache: Mutex<HashMap<TokenHash, (Grant, Instant)>>,
}

impl TokenReviewAuthenticator {
    pub fn new(client: kube::Client) -> Self {
        Self::with_cache(client, CACHE_TTL, CACHE_CAPACITY)
    }

    pub fn with_cache(client: kube::Client, ttl: Duration, capacity: usize) -> Self {
        TokenReviewAuthenticator {
            reviews: Api::all(client),
            audience: AUDIENCE.to_owned(),
            ttl,
            capacity: capacity.max(1),
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, key: &TokenHash) -> Option<Grant> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(key)
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(grant, _)| grant.clone())
    }

    fn remember(&self, key: TokenHash, grant: Grant) {
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= self.capacity {
            cache.retain(|_, (_, expires)| *expires > now);
        }
        if cache.len() >= self.capacity {
            // Still full of live entries: drop the one closest to expiry.
            let oldest = cache.iter().min_by_key(|(_, (_, e))| *e).map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                cache.remove(&oldest);
            }
        }
        cache.insert(key, (grant, now + self.ttl));
    }
}

#[tonic::async_trait]
impl Authenticator for TokenReviewAuthenticator {
    async fn authenticate(&self, token: &str) -> Result<Grant, AuthError> {
        let mut key = [0u8; 32];
        key.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref());
        if let Some(grant) = self.cached(&key) {
            return Ok(grant);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..Default::default()
        };
        let answer = (self.reviews)
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                tracing::warn!("TokenReview failed: {e}");
                AuthError::Unavailable(format!("cannot review the token now: {e}"))
            })?;
        let grant = grant_from_review(answer.status.as_ref(), &self.audience)?;
        self.remember(key, grant.clone());
        Ok(grant)
    }
}

/// What a TokenReview's status grants, if anything.
pub fn grant_from_review(
    status: Option<&TokenReviewStatus>,
    audience: &str,
) -> Result<Grant, AuthError> {
    let status = status.ok_or_else(|| AuthError::Rejected("TokenReview has no status".into()))?;
    if status.authenticated != Some(true) {
        let why = status.error.as_deref().filter(|e| !e.is_empty());
        return Err(AuthError::Rejected(match why {
            Some(why) => format!("token not authenticated: {why}"),
            None => "token not authenticated".to_owned(),
        }));
    }
    // An audience-unaware reviewer answers without audiences; the token is then only proven for
    // the API server itself, not for us.
    let audiences = status.audiences.as_deref().unwrap_or_default();
    if !audiences.iter().any(|a| a == audience) {
        return Err(AuthError::Rejected(format!(
            "token is not for audience {audience:?} (reviewed audiences: {audiences:?})"
        )));
    }
    let username = (status.user.as_ref())
        .and_then(|u| u.username.as_deref())
        .unwrap_or("");
    service_account(username).ok_or_else(|| {
        AuthError::Rejected(format!(
            "{username:?} is not a service account (system:serviceaccount:<namespace>:<name>)"
        ))
    })
}

/// `system:serviceaccount:<namespace>:<name>` → the grant.
fn service_account(username: &str) -> Option<Grant> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (namespace, name) = rest.split_once(':')?;
    let valid = |s: &str| !s.is_empty() && !s.contains(':');
    (valid(namespace) && valid(name)).then(|| Grant {
        namespace: namespace.to_owned(),
        service_account: name.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;

    fn status(authenticated: bool, audiences: &[&str], user: &str) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(authenticated),
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
            user: Some(UserInfo {
                username: Some(user.to_owned()),
                ..Default::default()
            }),
            error: None,
        }
    }

    #[test]
    fn grants_service_accounts_for_our_audience_only() {
        let ok = status(true, &["trellis"], "system:serviceaccount:shop:web");
        let grant = grant_from_review(Some(&ok), AUDIENCE).unwrap();
        assert_eq!(
            (grant.namespace.as_str(), grant.service_account.as_str()),
            ("shop", "web")
        );
        for bad in [
            status(false, &["trellis"], "system:serviceaccount:shop:web"),
            status(true, &[], "system:serviceaccount:shop:web"),
            status(
                true,
                &["https://kubernetes.default.svc"],
                "system:serviceaccount:shop:web",
            ),
            status(true, &["trellis"], "jane@example.com"),
            status(true, &["trellis"], "system:serviceaccount:shop"),
            status(true, &["trellis"], "system:serviceaccount::web"),
            status(true, &["trellis"], "system:serviceaccount:shop:web:extra"),
        ] {
            assert!(grant_from_review(Some(&bad), AUDIENCE).is_err(), "{bad:?}");
        }
        assert!(grant_from_review(None, AUDIENCE).is_err());
    }
}
