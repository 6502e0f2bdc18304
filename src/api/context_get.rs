//! `context.get` (web accounts only): the context bound to an OAuth id, with NATS user
//! credentials from the credentials provider. The access token is opened only to hand it to
//! the provider; the reply carries it empty.

use super::{read_record, wait_min_seq, ApiContext, ApiError, ApiRequest};
use crate::model::{ContextReply, OAuthRecord};
use crate::projections::{oauth, oauth::OAuthIndex, Projection};

/// Looks the OAuth id (raw string payload) up in the OAuth index.
pub async fn handle(
    context: &ApiContext,
    request: &ApiRequest<'_>,
) -> Result<serde_json::Value, ApiError> {
    if !context.is_web(&request.caller.account) {
        return Err(ApiError::forbidden(
            "only the website's account may read bound contexts",
        ));
    }
    wait_min_seq(context, request, &[OAuthIndex::NAME]).await?;
    let oauth_id = request.text()?;
    if let Some(problem) = crate::model::validate::oauth_id_problem(oauth_id) {
        return Err(ApiError::bad_request(problem));
    }
    let record: Option<OAuthRecord> =
        read_record(&context.store.oauth, &oauth::key(oauth_id)).await?;
    let Some(record) = record else {
        return Err(ApiError::not_found("no context is bound to this OAuth id"));
    };
    let token = context
        .sealer()?
        .open(&record.context.access_token)
        .map_err(|error| {
            tracing::error!(%error, "a bound context's access token could not be opened");
            ApiError::internal()
        })?;
    let credentials = context
        .credentials
        .credentials(&record.context, &token)
        .await
        .map_err(|error| {
            tracing::error!(%error, "the credentials provider failed");
            ApiError::unavailable("credentials cannot be fetched right now; retry shortly")
        })?;
    let reply = ContextReply {
        context: record.context.without_token(),
        user_jwt: credentials.user_jwt,
        user_seed: credentials.user_seed,
    };
    serde_json::to_value(reply).map_err(|_| ApiError::internal())
}
