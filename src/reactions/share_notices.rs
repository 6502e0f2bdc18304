//! The share feed: each `catalog_shared` / `catalog_unshared` appended to the log is announced
//! to the share's target and to the owner, once, whatever the number of instances.
//!
//! A durable consumer (filtered to share events, pinned to one instance at a time like the
//! auto-share reactor) delivers each event; the notice is published, the server is seen to
//! hold it (a round trip), then the event acked; an unacked event comes again after the
//! consumer's ack wait.
//! The consumer starts at the events appended after it was first created, and the service
//! creates it before it first answers ([`consumer`], ensured by the service's start): every
//! share appended through the service is announced, and an adopted log's history is not
//! announced again. A crash between publishing and acking repeats a notice; nothing is lost.

use super::Feeds;
use crate::contract::{FeedKind, ShareNotice};
use crate::model::{Decoded, EventType, NONE};
use crate::store::pinned::PinnedConsumer;
use crate::store::StoreError;
use async_nats::jetstream::{consumer, stream};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Durable consumer of the share feed.
pub const CONSUMER: &str = "feed-shares";

/// The share feed's consumer: share events appended after it was first created, pinned to
/// one instance at a time (takeover after `takeover_after`).
pub fn consumer(takeover_after: Duration) -> PinnedConsumer {
    PinnedConsumer {
        name: CONSUMER,
        description: "natster share notices to owners and targets",
        filter_subjects: [EventType::CatalogShared, EventType::CatalogUnshared]
            .iter()
            .map(|kind| format!("natster.events.*.*.*.{kind}"))
            .collect(),
        deliver_policy: consumer::DeliverPolicy::New,
        group: "feeds",
        takeover_after,
    }
}

/// Runs until `shutdown` is cancelled.
pub async fn run(
    events: &stream::Stream,
    feeds: Feeds,
    takeover_after: Duration,
    shutdown: CancellationToken,
) -> Result<(), StoreError> {
    let mut messages = consumer(takeover_after).messages(events).await?;
    while let Some(message) = messages.next(&shutdown).await? {
        let seq = message.info().map_or(0, |info| info.stream_sequence);
        let decoded = Decoded::from_parts(seq, 0, &message.subject, &message.payload);
        if let Decoded::Event(event) = decoded {
            let s = &event.subject;
            if s.target != NONE && s.catalog != NONE {
                let notice = ShareNotice {
                    catalog: s.catalog.clone(),
                    from_account: s.origin.clone(),
                    to_account: s.target.clone(),
                    seq: event.seq,
                };
                let mut recipients = vec![s.target.clone()];
                if s.origin != s.target {
                    recipients.push(s.origin.clone());
                }
                let kind = match s.event_type {
                    EventType::CatalogShared => FeedKind::CatalogShared,
                    _ => FeedKind::CatalogUnshared,
                };
                crate::crashpoint::reached(crate::crashpoint::BEFORE_SHARE_NOTICE).await;
                feeds.publish(&recipients, kind, &notice).await;
                // The ack is what moves the consumer on: only once the server has the notice.
                if let Err(error) = feeds.confirm().await {
                    tracing::warn!(%error, "share notice not confirmed; it comes again");
                    continue;
                }
            }
        }
        if let Err(error) = message.ack().await {
            tracing::warn!(%error, "share feed ack failed; the notice may repeat");
        }
    }
    Ok(())
}
