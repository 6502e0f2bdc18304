//! The auto-share reactor: each `natster_initialized` leads to exactly one `catalog_shared`
//! of the hub's catalog to the new account.
//!
//! A durable consumer (filtered to init events, pinned to one instance at a time like the
//! projections) delivers each init once per ack; the share goes through the decider, so it is
//! refused when the name belongs to another account or the share already exists, and its
//! `Nats-Msg-Id` (`autoshare:<account>`) makes a redelivery within the duplicate window append
//! nothing new. Across restarts, an unacked init is redelivered and finds the share active.

use crate::model::validate::is_account_public_key;
use crate::model::{Command, Decoded, EventType};
use crate::store::pinned::PinnedConsumer;
use crate::store::StoreError;
use crate::telemetry::Metrics;
use crate::write::{Decider, ExecuteError};
use async_nats::jetstream::{consumer, stream};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The hub catalog shared automatically with every account that initialises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubShare {
    pub account: String,
    pub catalog: String,
}

/// Durable consumer of the reactor.
pub const CONSUMER: &str = "reactor-autoshare";

/// Runs until `shutdown` is cancelled.
pub async fn run(
    events: &stream::Stream,
    decider: Decider,
    hub: HubShare,
    takeover_after: Duration,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), StoreError> {
    let mut messages = PinnedConsumer {
        name: CONSUMER,
        description: "natster auto-share of the hub catalog",
        filter_subjects: vec![format!(
            "natster.events.*.*.*.{}",
            EventType::NatsterInitialized
        )],
        deliver_policy: consumer::DeliverPolicy::All,
        group: "reactor",
        takeover_after,
    }
    .messages(events)
    .await?;
    while let Some(message) = messages.next(&shutdown).await? {
        let seq = message.info().map_or(0, |info| info.stream_sequence);
        let Decoded::Event(event) = Decoded::from_parts(seq, 0, &message.subject, &message.payload)
        else {
            let _ = message.ack().await;
            continue;
        };
        let account = event.subject.origin.clone();
        if account != hub.account && is_account_public_key(&account) {
            // Make sure the decision sees everything up to the init, so an existing share is
            // recognised.
            let _ = decider.catch_up_to(event.seq, Duration::from_secs(5)).await;
            let already = decider.read(|state| {
                state
                    .shared_with(&hub.catalog, &hub.account)
                    .contains(&account)
            });
            if already {
                tracing::debug!("auto-share not needed: the hub catalog is shared already");
                let _ = message.ack().await;
                continue;
            }
            let command = Command::AutoShare {
                hub: hub.account.clone(),
                target: account.clone(),
                catalog: hub.catalog.clone(),
            };
            match decider
                .execute(&command, Some(&format!("autoshare:{account}")))
                .await
            {
                Ok(appended) => {
                    tracing::info!(
                        seq = appended.seq,
                        "shared the hub catalog with a new account"
                    )
                }
                // A refusal is final (the hub's catalog name owned by another account, a
                // share limit): the account goes without the hub catalog, which an operator
                // must hear of.
                Err(ExecuteError::Rejected(rejection)) => {
                    metrics.autoshare_failed(rejection.reason());
                    tracing::warn!(
                        account = %account,
                        reason = %rejection,
                        "auto-share of the hub catalog refused; this account does not get it"
                    )
                }
                Err(error) => {
                    metrics.autoshare_failed("unavailable");
                    tracing::warn!(%error, "auto-share failed; the init will be redelivered");
                    continue;
                }
            }
        }
        if let Err(error) = message.ack().await {
            tracing::warn!(%error, "reactor ack failed; the init will be redelivered");
        }
    }
    Ok(())
}
