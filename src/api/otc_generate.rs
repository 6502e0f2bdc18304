//! `otc.generate`: a one-time code that lets the website bind the caller's context to an
//! OAuth identity. Codes carry 128 bits from the OS CSPRNG, are claimable for the code TTL in
//! force when they are generated (stored with the code, so `valid_minutes` holds whatever the
//! bucket's max age), and are claimed at most once. The context's access token is sealed before it is
//! stored; the code itself is never logged.

use super::{ApiContext, ApiError, ApiRequest, Handler};
use crate::contract::{op, OtcGenerateReply};
use crate::model::NatsterContext;
use crate::otc::{new_code, unix_now, StoredCode};
use crate::store::kv;

impl Handler for op::OtcGenerate {
    /// Issues a code for the caller's own, initialised account.
    async fn handle(
        context: &ApiContext,
        request: &ApiRequest<'_>,
    ) -> Result<OtcGenerateReply, ApiError> {
        let natster_context = request.body::<Self>("context")?;
        if natster_context.account_public_key != request.caller.account {
            return Err(ApiError::forbidden(
                "a one-time code can only be generated for the caller's own account",
            ));
        }
        let caller = &request.caller.account;
        if !context
            .decider
            .holds(|state| state.is_initialized(caller))
            .await?
        {
            return Err(ApiError::not_found(
                "this account has not initialised Natster",
            ));
        }
        let sealer = context.sealer()?;
        let ttl = context.settings.code_ttl;
        let stored = StoredCode {
            context: NatsterContext {
                access_token: sealer.seal(&natster_context.access_token),
                ..natster_context
            },
            valid_until: Some(unix_now() + ttl.as_secs()),
        };
        let code = new_code();
        kv::create(&context.store.codes, &code, kv::encode(&stored))
            .await
            .map_err(|error| ApiError::store("one-time codes cannot be stored", &error))?;
        context.metrics.codes_issued.inc();
        context.codes.issued(code.clone());
        Ok(OtcGenerateReply {
            claim_url: format!("{}{code}", context.settings.claim_url_base),
            code,
            valid_minutes: (ttl.as_secs() / 60).max(1),
        })
    }
}
