//! `otc.claim` (web accounts only): consume a one-time code and bind its context to an OAuth
//! identity with a `context_bound` event. A code is consumed atomically (delete at its
//! revision), so two claims of one code cannot both succeed; a used or expired code is 404.
//! The reply waits (up to 2 s) until `context.get` can read the binding.

use super::{parse_json, ApiContext, ApiError, ApiRequest};
use crate::model::{Command, ContextBoundData, NatsterContext, OtcClaimRequest};
use async_nats::jetstream::kv;
use sha2::{Digest, Sha256};

/// Claims a code and returns the bound context without its access token.
pub async fn handle(
    context: &ApiContext,
    request: &ApiRequest<'_>,
) -> Result<serde_json::Value, ApiError> {
    if !context.is_web(&request.caller.account) {
        return Err(ApiError::forbidden(
            "only the website's account may claim one-time codes",
        ));
    }
    let claim: OtcClaimRequest = parse_json(request.payload, "claim")?;
    let unknown = || ApiError::not_found("unknown, expired or already used one-time code");
    if claim.code.is_empty()
        || claim.code.len() > 64
        || !claim
            .code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(unknown());
    }
    if let Some(problem) = crate::model::validate::oauth_id_problem(&claim.oauth_id) {
        return Err(ApiError::bad_request(problem));
    }
    let codes = &context.store.codes;
    let entry = codes.entry(&claim.code).await.map_err(|error| {
        tracing::error!(%error, "reading a one-time code failed");
        ApiError::unavailable("one-time codes cannot be read right now; retry shortly")
    })?;
    let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
        return Err(unknown());
    };
    let stored: NatsterContext =
        serde_json::from_slice(&entry.value).map_err(|_| ApiError::internal())?;
    codes
        .delete_expect_revision(&claim.code, Some(entry.revision))
        .await
        .map_err(|_| unknown())?;
    let account = stored.account_public_key.clone();
    let command = Command::BindContext {
        account,
        data: ContextBoundData {
            oauth_id: claim.oauth_id,
            bound_context: stored.clone(),
        },
    };
    let code_hash = data_encoding::BASE64URL_NOPAD.encode(&Sha256::digest(claim.code.as_bytes()));
    let appended = context
        .decider
        .execute(&command, Some(&format!("otc:{code_hash}")))
        .await?;
    context.metrics.codes_claimed.inc();
    // The website asks for the bound context right after claiming: answer once the OAuth
    // index holds it (bounded; past the bound the claim stands and the read retries).
    let _ = context
        .view
        .wait_applied(
            &[<crate::projections::oauth::OAuthIndex as crate::projections::Projection>::NAME],
            appended.seq,
            super::MIN_SEQ_WAIT,
        )
        .await;
    serde_json::to_value(stored.without_token()).map_err(|_| ApiError::internal())
}
