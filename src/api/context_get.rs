//! `context.get` (web accounts only): the context bound to an OAuth id, with NATS user
//! credentials from the credentials provider. The access token is opened only to hand it to
//! the provider; the reply carries it empty.

use super::{ApiContext, ApiError, ApiRequest, Handler};
use crate::contract::{op, ContextReply, OAuthId};
use crate::model::{validate::oauth_id_problem, OAuthRecord};
use crate::projections::{oauth, oauth::OAuthIndex, Projection};

impl Handler for op::ContextGet {
    /// Looks the OAuth id (raw string payload) up in the OAuth index.
    async fn handle(
        context: &ApiContext,
        request: &ApiRequest<'_>,
    ) -> Result<ContextReply, ApiError> {
        if !context.is_web(&request.caller.account) {
            return Err(ApiError::forbidden(
                "only the website's account may read bound contexts",
            ));
        }
        request.wait_min_seq(context, &[OAuthIndex::NAME]).await?;
        let OAuthId(oauth_id) = request.body::<Self>("OAuth id")?;
        if let Some(problem) = oauth_id_problem(&oauth_id) {
            return Err(ApiError::bad_request(problem));
        }
        let record: Option<OAuthRecord> = request
            .read_record(&context.store.oauth, &oauth::key(&oauth_id))
            .await?;
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
        Ok(ContextReply {
            context: record.context.without_token(),
            user_jwt: credentials.user_jwt,
            user_seed: credentials.user_seed,
        })
    }
}
