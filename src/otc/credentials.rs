//! Where `context.get` gets NATS user credentials for a bound context. The access token is
//! opened only here and handed to the provider; it is never logged or returned.

use crate::model::NatsterContext;
use futures::future::BoxFuture;

/// NATS user credentials returned by `context.get`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct UserCredentials {
    pub user_jwt: String,
    pub user_seed: String,
}

impl std::fmt::Debug for UserCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserCredentials")
            .field("user_jwt", &self.user_jwt)
            .field("user_seed", &"<redacted>")
            .finish()
    }
}

/// A provider failed.
#[derive(Debug, thiserror::Error)]
#[error("credentials provider: {0}")]
pub struct ProviderError(pub String);

/// Fetches credentials for a context.
pub trait CredentialsProvider: Send + Sync {
    /// Credentials for `context`, using its opened `access_token`.
    fn credentials<'a>(
        &'a self,
        context: &'a NatsterContext,
        access_token: &'a str,
    ) -> BoxFuture<'a, Result<UserCredentials, ProviderError>>;
}

/// The default: no control plane to ask, so `user_jwt` and `user_seed` are empty.
pub struct NoCredentials;

impl CredentialsProvider for NoCredentials {
    fn credentials<'a>(
        &'a self,
        _context: &'a NatsterContext,
        _access_token: &'a str,
    ) -> BoxFuture<'a, Result<UserCredentials, ProviderError>> {
        tracing::info!("no credentials provider is configured: context.get returns empty user_jwt and user_seed");
        Box::pin(async { Ok(UserCredentials::default()) })
    }
}
