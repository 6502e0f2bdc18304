//! `heartbeats.put`: a running catalog server says its catalog is online. Only the catalog's
//! owner may (the caller must be the heartbeat's `account_key`, and the name must be unowned
//! or the caller's). Replies `{}` when the request has a reply subject.

use super::{parse_json, ApiContext, ApiError, ApiRequest};
use crate::model::{validate::catalog_name_problem, Heartbeat};

/// Validates a heartbeat.
pub async fn handle(
    context: &ApiContext,
    request: &ApiRequest<'_>,
) -> Result<serde_json::Value, ApiError> {
    let heartbeat: Heartbeat = parse_json(request.payload, "heartbeat")?;
    if heartbeat.account_key != request.caller.account {
        return Err(ApiError::forbidden(
            "a heartbeat can only be sent for the caller's own account",
        ));
    }
    if let Some(problem) = catalog_name_problem(&heartbeat.catalog) {
        return Err(ApiError::bad_request(problem));
    }
    let owner = context
        .decider
        .read(|state| state.owner_of(&heartbeat.catalog).map(str::to_string));
    if owner.is_some_and(|owner| owner != request.caller.account) {
        return Err(ApiError::forbidden(
            "this catalog is owned by another account",
        ));
    }
    Ok(serde_json::json!({}))
}
