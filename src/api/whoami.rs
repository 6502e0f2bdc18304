//! `whoami`: the caller's own identity as the service knows it; 404 until it initialised.

use super::{ApiContext, ApiError, ApiRequest, Handler};
use crate::contract::{op, WhoamiReply};
use crate::projections::{accounts::Accounts, Projection};

impl Handler for op::Whoami {
    /// Reads the caller's account record (never another account's: the key is the caller's
    /// proven identity).
    async fn handle(
        context: &ApiContext,
        request: &ApiRequest<'_>,
    ) -> Result<WhoamiReply, ApiError> {
        request.wait_min_seq(context, &[Accounts::NAME]).await?;
        match request.own_identity(context).await? {
            Some(identity) if identity.initialized > 0 => Ok(identity),
            _ => Err(ApiError::not_found(
                "this account has not initialised Natster",
            )),
        }
    }
}
