//! The share feed: each `catalog_shared` / `catalog_unshared` appended to the log is announced
//! to the share's target and to the owner, once, whatever the number of instances.
//!
//! A durable consumer (filtered to share events, pinned to one instance at a time like the
//! auto-share reactor) delivers each event; the notice is published, then the event acked.
//! The consumer starts at the events appended after it was first created: an adopted log's
//! history is not announced again. A crash between publishing and acking repeats a notice;
//! nothing is lost.

use crate::events::{decode, Decoded};
use crate::feeds::Feeds;
use crate::model::{EventType, NONE};
use async_nats::jetstream::{consumer, stream};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Durable consumer of the share feed.
pub const CONSUMER: &str = "feed-shares";

/// The notice of a share event: `{"catalog","from_account","to_account","seq"}`.
pub fn share_notice(catalog: &str, from: &str, to: &str, seq: u64) -> serde_json::Value {
    serde_json::to_value(crate::model::ShareNotice {
        catalog: catalog.to_string(),
        from_account: from.to_string(),
        to_account: to.to_string(),
        seq,
    })
    .expect("a notice serializes")
}

/// Runs until `shutdown` is cancelled.
pub async fn run(
    events: &stream::Stream,
    feeds: Feeds,
    takeover_after: Duration,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let mut messages = crate::pinned::pinned_messages(
        events,
        CONSUMER,
        "natster share notices to owners and targets",
        [EventType::CatalogShared, EventType::CatalogUnshared]
            .iter()
            .map(|kind| format!("natster.events.*.*.*.{kind}"))
            .collect(),
        consumer::DeliverPolicy::New,
        "feeds",
        takeover_after,
    )
    .await?;
    while let Some(message) = messages.next(&shutdown).await? {
        if let Some(Decoded::Event(event)) = decode(&message) {
            let s = &event.subject;
            if s.target != NONE && s.catalog != NONE {
                let notice = share_notice(&s.catalog, &s.origin, &s.target, event.seq);
                let mut recipients = vec![s.target.clone()];
                if s.origin != s.target {
                    recipients.push(s.origin.clone());
                }
                feeds
                    .publish(&recipients, s.event_type.as_str(), &notice)
                    .await;
            }
        }
        if let Err(error) = message.ack().await {
            tracing::warn!(%error, "share feed ack failed; the notice may repeat");
        }
    }
    Ok(())
}
