//! Durable consumers pinned to one instance at a time (JetStream priority groups, server
//! 2.11+): every instance pulls, the server delivers to one of them, and another takes over
//! `takeover_after` after it stops pulling. Used by the reactors whose side effects must happen
//! once per event (auto-share, share notices).

use super::error::StoreError;
use async_nats::jetstream::{consumer, stream};
use std::time::Duration;

/// Opens (creating when missing) durable consumer `name` on `events`, filtered to
/// `filter_subjects`, pinned within priority group `group`, and returns its message stream.
/// A new consumer starts at `deliver_policy`; an existing one keeps its position.
pub async fn pinned_messages(
    events: &stream::Stream,
    name: &str,
    description: &str,
    filter_subjects: Vec<String>,
    deliver_policy: consumer::DeliverPolicy,
    group: &str,
    takeover_after: Duration,
) -> Result<PinnedMessages, StoreError> {
    let consumer: consumer::PullConsumer = events
        .get_or_create_consumer(
            name,
            consumer::pull::Config {
                durable_name: Some(name.into()),
                description: Some(description.into()),
                filter_subjects,
                deliver_policy,
                ack_policy: consumer::AckPolicy::Explicit,
                // An event left unacked (its handler died) comes again this long after.
                ack_wait: (takeover_after * 2).max(Duration::from_secs(10)),
                priority_policy: consumer::PriorityPolicy::PinnedClient,
                priority_groups: vec![group.into()],
                priority_timeout: takeover_after,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| StoreError::unavailable(format!("consumer {name}"), e))?;
    let messages = consumer
        .stream()
        .group(group)
        .max_messages_per_batch(64)
        .expires(takeover_after / 3)
        .heartbeat(takeover_after / 10)
        .messages()
        .await
        .map_err(|e| StoreError::unavailable(format!("pull from {name}"), e))?;
    Ok(PinnedMessages {
        name: name.to_string(),
        messages,
    })
}

/// The messages of a pinned consumer.
pub struct PinnedMessages {
    name: String,
    messages: consumer::pull::Stream,
}

impl PinnedMessages {
    /// The next message, or `None` once `shutdown` is cancelled. Pull statuses (another
    /// instance holds the pin, heartbeats) are skipped; an error means the stream ended.
    pub async fn next(
        &mut self,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Result<Option<async_nats::jetstream::Message>, StoreError> {
        use futures::StreamExt;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                message = self.messages.next() => match message {
                    Some(Ok(message)) => return Ok(Some(message)),
                    Some(Err(error)) => {
                        tracing::debug!(consumer = %self.name, %error, "pull status");
                    }
                    None => {
                        return Err(StoreError::unavailable(
                            format!("pull from {}", self.name),
                            "the consumer stream ended",
                        ))
                    }
                },
            }
        }
    }
}
