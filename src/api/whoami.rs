//! `whoami`: the caller's own identity as the service knows it; 404 until it initialised.

use super::{read_record, wait_min_seq, ApiContext, ApiError, ApiRequest};
use crate::model::{AccountRecord, WhoamiReply};
use crate::projections::{accounts::Accounts, Projection};

/// Reads the caller's account record (never another account's: the key is the caller's
/// proven identity).
pub async fn handle(
    context: &ApiContext,
    request: &ApiRequest<'_>,
) -> Result<serde_json::Value, ApiError> {
    wait_min_seq(context, request, &[Accounts::NAME]).await?;
    let record: Option<AccountRecord> =
        read_record(&context.store.accounts, &request.caller.account).await?;
    match record {
        Some(record) if record.initialized_at > 0 => {
            Ok(serde_json::to_value(WhoamiReply::from(&record))
                .map_err(|_| ApiError::internal())?)
        }
        _ => Err(ApiError::not_found(
            "this account has not initialised Natster",
        )),
    }
}
