//! `whoami`: the caller's own identity as the service knows it; 404 until it initialised.

use super::{ApiContext, ApiError, ApiRequest};
use crate::model::{AccountRecord, WhoamiReply};

/// Reads the caller's account record. Never reads another account's record: the key is the
/// caller's proven identity.
pub async fn handle(
    context: &ApiContext,
    request: &ApiRequest<'_>,
) -> Result<serde_json::Value, ApiError> {
    let key = &request.caller.account;
    let entry = context.store.accounts.get(key).await.map_err(|error| {
        tracing::error!(%error, "reading the account projection failed");
        ApiError::unavailable("the account projection cannot be read right now")
    })?;
    let Some(value) = entry else {
        return Err(ApiError::not_found(
            "this account has not initialised Natster",
        ));
    };
    let record: AccountRecord = serde_json::from_slice(&value).map_err(|error| {
        tracing::error!(%error, "account record does not decode");
        ApiError::internal()
    })?;
    serde_json::to_value(WhoamiReply::from(&record)).map_err(|_| ApiError::internal())
}
