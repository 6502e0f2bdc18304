//! `otc.claim` (web accounts only): consume a one-time code and bind its context to an OAuth
//! identity with a `context_bound` event. A code is consumed atomically (delete at its
//! revision), so two claims of one code cannot both succeed; a used or expired code is 404.
//! The reply waits (up to 2 s) until `context.get` can read the binding.

use super::{ApiContext, ApiError, ApiRequest, Handler, MIN_SEQ_WAIT};
use crate::contract::op;
use crate::model::validate::oauth_id_problem;
use crate::model::{Command, ContextBoundData, NatsterContext};
use crate::otc;
use crate::projections::{oauth::OAuthIndex, Projection};
use crate::store::kv;
use sha2::{Digest, Sha256};

impl Handler for op::OtcClaim {
    /// Claims a code and returns the bound context without its access token.
    async fn handle(
        context: &ApiContext,
        request: &ApiRequest<'_>,
    ) -> Result<NatsterContext, ApiError> {
        if !context.is_web(&request.caller.account) {
            return Err(ApiError::forbidden(
                "only the website's account may claim one-time codes",
            ));
        }
        let claim = request.body::<Self>("claim")?;
        let unknown = || ApiError::not_found("unknown, expired or already used one-time code");
        if !otc::is_well_formed(&claim.code) {
            return Err(unknown());
        }
        if let Some(problem) = oauth_id_problem(&claim.oauth_id) {
            return Err(ApiError::bad_request(problem));
        }
        let codes = &context.store.codes;
        let entry = kv::load::<NatsterContext>(codes, &claim.code)
            .await
            .map_err(|error| ApiError::store("one-time codes cannot be read", &error))?;
        let (Some(stored), Some(revision)) = (entry.value, entry.revision) else {
            return Err(unknown());
        };
        kv::write_bytes(codes, &claim.code, None, Some(revision))
            .await
            .map_err(|_| unknown())?;
        let command = Command::BindContext {
            account: stored.account_public_key.clone(),
            data: ContextBoundData {
                oauth_id: claim.oauth_id,
                bound_context: stored.clone(),
            },
        };
        let code_hash =
            data_encoding::BASE64URL_NOPAD.encode(&Sha256::digest(claim.code.as_bytes()));
        let appended = context
            .decider
            .execute(&command, Some(&format!("otc:{code_hash}")))
            .await?;
        context.metrics.codes_claimed.inc();
        // The website asks for the bound context right after claiming: answer once the OAuth
        // index holds it (bounded; past the bound the claim stands and the read retries).
        let _ = context
            .view
            .wait_applied(&[OAuthIndex::NAME], appended.seq, MIN_SEQ_WAIT)
            .await;
        Ok(stored.without_token())
    }
}
