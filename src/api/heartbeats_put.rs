//! `heartbeats.put`: a catalog server says its catalog is up (or, with `"offline": true`, that
//! it stops). Only the catalog's owner may heartbeat it. Reply `{}` when the request has a
//! reply subject; the original client publishes without one.

use super::{parse_json, ApiContext, ApiError, ApiRequest};
use crate::model::validate::catalog_name_problem;
use crate::model::HeartbeatRequest;
use crate::online::{online_subject, OFFLINE_HEADER};

/// Checks ownership, records the heartbeat in `NATSTER_ONLINE` (expiring after the online
/// TTL), and forwards it to the accounts the catalog is shared with.
pub async fn handle(
    context: &ApiContext,
    request: &ApiRequest<'_>,
) -> Result<serde_json::Value, ApiError> {
    context.metrics.heartbeats_received.inc();
    let heartbeat: HeartbeatRequest = parse_json(request.payload, "heartbeat")?;
    let owner = &request.caller.account;
    if &heartbeat.account_key != owner {
        return Err(ApiError::forbidden(
            "a heartbeat can only be sent for the caller's own account",
        ));
    }
    if let Some(problem) = catalog_name_problem(&heartbeat.catalog) {
        return Err(ApiError::bad_request(problem));
    }
    // One look at the decision state: who owns the name, and who it is shared with.
    let (current_owner, recipients) = context.decider.read(|state| {
        (
            state.owner_of(&heartbeat.catalog).map(str::to_string),
            state.shared_with(&heartbeat.catalog, owner),
        )
    });
    if current_owner.is_some_and(|current| &current != owner) {
        return Err(ApiError::forbidden(
            "this catalog is owned by another account",
        ));
    }

    let payload = bytes::Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "catalog": heartbeat.catalog,
            "account_key": owner,
            "revision": heartbeat.revision,
        }))
        .map_err(|_| ApiError::internal())?,
    );
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "Nats-TTL",
        context
            .config
            .online_ttl
            .as_secs()
            .max(1)
            .to_string()
            .as_str(),
    );
    if heartbeat.offline {
        headers.insert(OFFLINE_HEADER, "true");
    }
    let ack = context
        .store
        .js
        .publish_with_headers(
            online_subject(owner, &heartbeat.catalog),
            headers,
            payload.clone(),
        )
        .await
        .map_err(|e| ApiError::unavailable(format!("the online stream is not available: {e}")))?;
    ack.await.map_err(|e| {
        ApiError::unavailable(format!("the online stream did not take the heartbeat: {e}"))
    })?;

    if !heartbeat.offline {
        context
            .feeds
            .publish_bytes(&recipients, "heartbeat", payload)
            .await;
    }
    Ok(serde_json::json!({}))
}
