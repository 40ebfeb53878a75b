//! Bearer JWTs, verified locally against the issuer's JWKS.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::backend::PaymentBackend;
use crate::credential::{BearerVerifier, TokenError};
use crate::rejection::Rejection;
use crate::types::AccessToken;

/// A JWKS is fetched again for an unknown key at most this often.
const JWKS_REFETCH: Duration = Duration::from_secs(60);
/// After a failed JWKS fetch, how long bearer requests share its failure (like the
/// balance path's back-off).
const JWKS_FAILURE_BACKOFF: Duration = Duration::from_secs(1);

/// The bearer verifier built from the backend's JWKS, fetched once and again for an
/// unknown key at most once a minute. One fetch at a time: requests that waited on a
/// fetch take its result, and after a failure every request shares it for a second
/// instead of fetching again.
#[derive(Default)]
pub(super) struct JwksCache {
    current: RwLock<Option<(Arc<BearerVerifier>, Instant)>>,
    /// When the last fetch failed.
    failed_at: RwLock<Option<Instant>>,
    fetching: tokio::sync::Mutex<()>,
}

impl JwksCache {
    fn snapshot(&self) -> Option<(Arc<BearerVerifier>, Instant)> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_failed_at(&self, at: Option<Instant>) {
        *self.failed_at.write().unwrap_or_else(|p| p.into_inner()) = at;
    }

    /// Fetches the JWKS unless someone else did since `seen` (or within a minute), or
    /// a fetch failed while this request waited or less than a second ago.
    async fn refresh(
        &self,
        seen: Option<Instant>,
        backend: &dyn PaymentBackend,
    ) -> Result<(Arc<BearerVerifier>, Instant), Rejection> {
        let asked = Instant::now();
        let _one_at_a_time = self.fetching.lock().await;
        if let Some((verifier, at)) = self.snapshot() {
            if Some(at) != seen || at.elapsed() < JWKS_REFETCH {
                return Ok((verifier, at));
            }
        }
        let failed_at = *self.failed_at.read().unwrap_or_else(|p| p.into_inner());
        if failed_at.is_some_and(|t| t >= asked || t.elapsed() < JWKS_FAILURE_BACKOFF) {
            return Err(Rejection::issuer_keys_unavailable());
        }
        let jwks = match backend.access_token_jwks().await {
            Ok(jwks) => jwks,
            Err(err) => {
                self.set_failed_at(Some(Instant::now()));
                tracing::warn!(error = %err, "cannot fetch the token issuer's keys");
                return Err(Rejection::unavailable());
            }
        };
        let verifier = BearerVerifier::from_jwks(&jwks).map_err(|_| {
            self.set_failed_at(Some(Instant::now()));
            tracing::error!("the backend's JWKS has no usable key");
            Rejection::issuer_keys_unusable()
        })?;
        self.set_failed_at(None);
        let fresh = (Arc::new(verifier), Instant::now());
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(fresh.clone());
        Ok(fresh)
    }

    pub(super) async fn verify(
        &self,
        token: &AccessToken,
        backend: &dyn PaymentBackend,
    ) -> Result<crate::types::AccessTokenClaims, Rejection> {
        let (verifier, at) = match self.snapshot() {
            Some(current) => current,
            None => self.refresh(None, backend).await?,
        };
        let mut result = verifier.verify(token.expose());
        // Perhaps signed with a key published after our fetch.
        if matches!(result, Err(TokenError::UnknownKey)) && at.elapsed() >= JWKS_REFETCH {
            let (verifier, _) = self.refresh(Some(at), backend).await?;
            result = verifier.verify(token.expose());
        }
        result.map_err(|err| {
            if err.is_malformed() {
                Rejection::bearer_malformed()
            } else {
                // TokenError messages never contain the credential.
                Rejection::bearer_not_acceptable(err)
            }
        })
    }
}
