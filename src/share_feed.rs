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
use futures::StreamExt;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Durable consumer of the share feed.
pub const CONSUMER: &str = "feed-shares";

/// The notice of a share event: `{"catalog","from_account","to_account","seq"}`.
pub fn share_notice(catalog: &str, from: &str, to: &str, seq: u64) -> serde_json::Value {
    serde_json::json!({"catalog": catalog, "from_account": from, "to_account": to, "seq": seq})
}

/// Runs until `shutdown` is cancelled.
pub async fn run(
    events: &stream::Stream,
    feeds: Feeds,
    takeover_after: Duration,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let consumer: consumer::PullConsumer = events
        .get_or_create_consumer(
            CONSUMER,
            consumer::pull::Config {
                durable_name: Some(CONSUMER.into()),
                description: Some("natster share notices to owners and targets".into()),
                filter_subjects: [EventType::CatalogShared, EventType::CatalogUnshared]
                    .iter()
                    .map(|kind| format!("natster.events.*.*.*.{kind}"))
                    .collect(),
                deliver_policy: consumer::DeliverPolicy::New,
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                priority_policy: consumer::PriorityPolicy::PinnedClient,
                priority_groups: vec!["feeds".into()],
                priority_timeout: takeover_after,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("consumer {CONSUMER}: {e}"))?;
    let mut messages = consumer
        .stream()
        .group("feeds")
        .max_messages_per_batch(256)
        .expires(takeover_after / 3)
        .heartbeat(takeover_after / 10)
        .messages()
        .await
        .map_err(|e| format!("pulling: {e}"))?;
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            message = messages.next() => match message {
                Some(Ok(message)) => message,
                Some(Err(error)) => {
                    tracing::debug!(%error, "share feed pull status");
                    continue;
                }
                None => return Err("the share feed consumer stream ended".into()),
            },
        };
        if let Some(Decoded::Event(event)) = decode(&message) {
            let s = &event.subject;
            if s.target != NONE && s.catalog != NONE {
                let notice = share_notice(&s.catalog, &s.origin, &s.target, event.seq);
                let kind = s.event_type.as_str();
                feeds.publish(&s.target, kind, &notice).await;
                if s.origin != s.target {
                    feeds.publish(&s.origin, kind, &notice).await;
                }
            }
        }
        if let Err(error) = message.ack().await {
            tracing::warn!(%error, "share feed ack failed; the notice may repeat");
        }
    }
}
