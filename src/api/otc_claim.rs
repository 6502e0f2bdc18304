//! `otc.claim` (web accounts only): consume a one-time code and bind its context to an OAuth
//! identity with a `context_bound` event.
//!
//! The binding is appended first, under an idempotency key derived from the code, and the
//! code is deleted (at the revision read) only after: a claim that fails to append leaves the
//! code claimable, so its retry succeeds; a repeated claim (same code, same OAuth id) answers
//! like the first; a second claim of the code for another OAuth id is refused by the key's
//! fingerprint while the code lives and by its absence after, so two claims of one code
//! cannot both bind. A used or expired code is 404. The reply waits (up to 2 s) until
//! `context.get` can read the binding.

use super::{ApiContext, ApiError, ApiRequest, Handler, MIN_SEQ_WAIT};
use crate::contract::op;
use crate::model::validate::oauth_id_problem;
use crate::model::{Command, ContextBoundData, NatsterContext};
use crate::otc::{self, unix_now, StoredCode};
use crate::projections::{oauth::OAuthIndex, Projection};
use crate::store::kv;
use crate::write::ExecuteError;
use sha2::{Digest, Sha256};
use std::time::Duration;

/// Deletes of a claimed code tried before giving up.
const DELETE_ATTEMPTS: u32 = 3;

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
        let entry = kv::load::<StoredCode>(codes, &claim.code)
            .await
            .map_err(|error| ApiError::store("one-time codes cannot be read", &error))?;
        let (Some(code), Some(revision)) = (entry.value, entry.revision) else {
            return Err(unknown());
        };
        if !code.is_valid_at(unix_now()) {
            return Err(unknown());
        }
        let stored = code.context;
        let command = Command::BindContext {
            account: stored.account_public_key.clone(),
            data: ContextBoundData {
                oauth_id: claim.oauth_id,
                bound_context: stored.clone(),
                // Decided from the state.
                previous_oauth_id: None,
                previous_account: None,
            },
        };
        let code_hash =
            data_encoding::BASE64URL_NOPAD.encode(&Sha256::digest(claim.code.as_bytes()));
        let appended = match context
            .decider
            .execute(&command, Some(&format!("otc:{code_hash}")))
            .await
        {
            Ok(appended) => appended,
            // The code was claimed for another OAuth id a moment ago.
            Err(ExecuteError::KeyReused { .. }) => return Err(unknown()),
            Err(error) => return Err(error.into()),
        };
        if !appended.duplicate {
            context.metrics.codes_claimed.inc();
        }
        consume(codes, &claim.code, revision).await;
        // The website asks for the bound context right after claiming: answer once the OAuth
        // index holds it (bounded; past the bound the claim stands and the read retries).
        let _ = context
            .view
            .wait_applied(&[OAuthIndex::NAME], appended.seq, MIN_SEQ_WAIT)
            .await;
        Ok(stored.without_token())
    }
}

/// Deletes a claimed code at the revision it was read at. A code already gone (a concurrent
/// retry deleted it) is fine; an unavailable bucket is tried again a few times, and past that
/// the code stays until it expires, harmless while its binding's idempotency key outlives it
/// and answered like a repeated claim if the same identity claims it again.
async fn consume(codes: &async_nats::jetstream::kv::Store, code: &str, revision: u64) {
    for attempt in 1..=DELETE_ATTEMPTS {
        match kv::write_bytes(codes, code, None, Some(revision)).await {
            Ok(_) => return,
            Err(error) if error.is_conflict() => return,
            Err(error) if attempt == DELETE_ATTEMPTS => {
                tracing::warn!(detail = %error, "a claimed one-time code could not be deleted; it stays until it expires");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await,
        }
    }
}
