//! `otc.generate`: a one-time code that lets the website bind the caller's context to an
//! OAuth identity. Codes carry 128 bits from the OS CSPRNG, expire with the codes bucket's
//! TTL, and are claimed at most once. The context's access token is sealed before it is
//! stored; the code itself is never logged.

use super::{parse_json, ApiContext, ApiError, ApiRequest};
use crate::model::{NatsterContext, OtcGenerateReply};
use data_encoding::BASE64URL_NOPAD;
use rand::RngCore;

/// Issues a code for the caller's own, initialised account.
pub async fn handle(
    context: &ApiContext,
    request: &ApiRequest<'_>,
) -> Result<serde_json::Value, ApiError> {
    let natster_context: NatsterContext = parse_json(request.payload, "context")?;
    if natster_context.account_public_key != request.caller.account {
        return Err(ApiError::forbidden(
            "a one-time code can only be generated for the caller's own account",
        ));
    }
    if !context
        .decider
        .read(|state| state.is_initialized(&request.caller.account))
    {
        return Err(ApiError::not_found(
            "this account has not initialised Natster",
        ));
    }
    let sealer = context.sealer()?;
    let stored = NatsterContext {
        access_token: sealer.seal(&natster_context.access_token),
        ..natster_context
    };
    let code = new_code();
    let value = serde_json::to_vec(&stored).map_err(|_| ApiError::internal())?;
    context
        .store
        .codes
        .create(&code, value.into())
        .await
        .map_err(|error| {
            tracing::error!(%error, "storing a one-time code failed");
            ApiError::unavailable("one-time codes cannot be stored right now; retry shortly")
        })?;
    context.metrics.codes_issued.inc();
    context.codes.issued(code.clone());
    let ttl = context.config.store.code_ttl;
    let reply = OtcGenerateReply {
        claim_url: format!("{}{code}", context.config.claim_url_base),
        code,
        valid_minutes: (ttl.as_secs() / 60).max(1),
    };
    serde_json::to_value(reply).map_err(|_| ApiError::internal())
}

/// 128 random bits from the OS CSPRNG, URL-safe (22 characters).
pub fn new_code() -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    BASE64URL_NOPAD.encode(&bytes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn codes_are_url_safe_and_distinct() {
        let a = super::new_code();
        assert_eq!(a.len(), 22);
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_ne!(a, super::new_code());
    }
}
