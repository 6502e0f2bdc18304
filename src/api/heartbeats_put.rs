//! `heartbeats.put`: a catalog server says its catalog is up (or, with `"offline": true`, that
//! it stops). Only the catalog's owner may heartbeat it. Reply `{}` when the request has a
//! reply subject; the original client publishes without one.

use super::{ApiContext, ApiError, ApiRequest, Handler};
use crate::contract::{op, EmptyReply, FeedKind, HeartbeatRequest};
use crate::model::online::{online_subject, OFFLINE_HEADER};
use crate::model::validate::{catalog_name_problem, is_account_public_key};
use crate::store::StoreError;
use async_nats::HeaderMap;

impl Handler for op::HeartbeatsPut {
    /// Checks ownership, records the heartbeat in `NATSTER_ONLINE` (expiring after the online
    /// TTL), and forwards it to the accounts the catalog is shared with. A heartbeat with a
    /// reply subject is answered once the stream has stored it; one without is forwarded once
    /// the record is sent (see [`crate::api::heartbeat_acks`]).
    async fn handle(
        context: &ApiContext,
        request: &ApiRequest<'_>,
    ) -> Result<EmptyReply, ApiError> {
        context.metrics.heartbeats_received.inc();
        let heartbeat = request.body::<Self>("heartbeat")?;
        // Malformed input is a 400 before any authorization: "nope" is no account key at all,
        // a valid key of another account is 403.
        if !is_account_public_key(&heartbeat.account_key) {
            return Err(ApiError::bad_request(
                "account_key must be an account public key (56 characters starting with A)",
            ));
        }
        if let Some(problem) = catalog_name_problem(&heartbeat.catalog) {
            return Err(ApiError::bad_request(problem));
        }
        let owner = &request.caller.account;
        if &heartbeat.account_key != owner {
            return Err(ApiError::forbidden(
                "a heartbeat can only be sent for the caller's own account",
            ));
        }
        // One look at the decision state: who owns the name, and who it is shared with.
        let (current_owner, recipients) = context
            .decider
            .read_started(|state| {
                (
                    state.owner_of(&heartbeat.catalog).map(str::to_string),
                    state.shared_with(&heartbeat.catalog, owner),
                )
            })
            .await?;
        if current_owner.is_some_and(|current| &current != owner) {
            return Err(ApiError::forbidden(
                "this catalog is owned by another account",
            ));
        }
        let now = std::time::Instant::now();
        if let Err(capped) =
            context
                .online_catalogs
                .heartbeat(owner, &heartbeat.catalog, heartbeat.offline, now)
        {
            if !request.replies {
                context.metrics.heartbeat_dropped("online_catalogs");
            }
            return Err(ApiError::conflict(capped.to_string()));
        }
        let message = HeartbeatRequest {
            offline: false,
            ..heartbeat.clone()
        };
        let payload =
            bytes::Bytes::from(serde_json::to_vec(&message).map_err(|_| ApiError::internal())?);
        record(context, &heartbeat, payload.clone(), request.replies).await?;
        if !heartbeat.offline {
            context
                .feeds
                .publish_bytes(&recipients, FeedKind::Heartbeat, payload)
                .await;
        }
        Ok(EmptyReply {})
    }
}

/// Appends the heartbeat to `NATSTER_ONLINE` with the online TTL (and the offline header for
/// a stop). `confirmed`: waits for the stream's acknowledgement; otherwise the record is only
/// sent, its acknowledgement going to [`crate::api::heartbeat_acks`], which counts a refusal.
async fn record(
    context: &ApiContext,
    heartbeat: &HeartbeatRequest,
    payload: bytes::Bytes,
    confirmed: bool,
) -> Result<(), ApiError> {
    let mut headers = HeaderMap::new();
    let ttl = context.settings.online_ttl.as_secs().max(1);
    headers.insert("Nats-TTL", ttl.to_string().as_str());
    if heartbeat.offline {
        headers.insert(OFFLINE_HEADER, "true");
    }
    let subject = online_subject(&heartbeat.account_key, &heartbeat.catalog);
    let recorded = if confirmed {
        store_confirmed(context, subject, headers, payload).await
    } else {
        context
            .heartbeat_acks
            .publish(subject, headers, payload)
            .await
            .map_err(|e| StoreError::unavailable("record a heartbeat", e))
    };
    recorded.map_err(|e| ApiError::store("the online stream cannot take the heartbeat", &e))
}

/// Publishes the record and waits until the stream has stored it.
async fn store_confirmed(
    context: &ApiContext,
    subject: String,
    headers: HeaderMap,
    payload: bytes::Bytes,
) -> Result<(), StoreError> {
    let refused = |e: &async_nats::jetstream::context::PublishError| {
        StoreError::publish("record a heartbeat", e)
    };
    context
        .store
        .js
        .publish_with_headers(subject, headers, payload)
        .await
        .map_err(|e| refused(&e))?
        .await
        .map_err(|e| refused(&e))?;
    Ok(())
}
