//! Durable consumers pinned to one instance at a time (JetStream priority groups, server
//! 2.11+): every instance pulls, the server delivers to one of them, and another takes over
//! `takeover_after` after it stops pulling. Used by the reactors whose side effects must happen
//! once per event (auto-share, share notices).

use super::error::StoreError;
use async_nats::jetstream::{consumer, stream};
use std::time::Duration;

/// A durable consumer of the event log pinned within a priority group.
#[derive(Debug, Clone)]
pub struct PinnedConsumer {
    pub name: &'static str,
    pub description: &'static str,
    pub filter_subjects: Vec<String>,
    /// Where a new consumer starts; an existing one keeps its position.
    pub deliver_policy: consumer::DeliverPolicy,
    pub group: &'static str,
    /// How long after the pinned instance stops pulling another takes over.
    pub takeover_after: Duration,
}

impl PinnedConsumer {
    /// Creates the consumer on `events` when it is missing; an existing one is left as it is
    /// (position and configuration).
    pub async fn ensure(
        &self,
        events: &stream::Stream,
    ) -> Result<consumer::PullConsumer, StoreError> {
        events
            .get_or_create_consumer(
                self.name,
                consumer::pull::Config {
                    durable_name: Some(self.name.into()),
                    description: Some(self.description.into()),
                    filter_subjects: self.filter_subjects.clone(),
                    deliver_policy: self.deliver_policy,
                    ack_policy: consumer::AckPolicy::Explicit,
                    // An event left unacked (its handler died) comes again this long after.
                    ack_wait: (self.takeover_after * 2).max(Duration::from_secs(10)),
                    priority_policy: consumer::PriorityPolicy::PinnedClient,
                    priority_groups: vec![self.group.into()],
                    priority_timeout: self.takeover_after,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| StoreError::unavailable(format!("consumer {}", self.name), e))
    }

    /// The consumer's messages (creating it when missing), pulled within its group.
    pub async fn messages(&self, events: &stream::Stream) -> Result<PinnedMessages, StoreError> {
        let consumer = self.ensure(events).await?;
        let takeover_after = self.takeover_after;
        let messages = consumer
            .stream()
            .group(self.group)
            .max_messages_per_batch(64)
            .expires(takeover_after / 3)
            .heartbeat(takeover_after / 10)
            .messages()
            .await
            .map_err(|e| StoreError::unavailable(format!("pull from {}", self.name), e))?;
        Ok(PinnedMessages {
            name: self.name.to_string(),
            messages,
        })
    }
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

    /// The next message (waiting for it, as [`PinnedMessages::next`]) and those delivered
    /// already after it, at most `max` in all. An end or a failure met after the first is
    /// left for the next call. Cancellation-safe: nothing is taken before the one await.
    pub async fn next_batch(
        &mut self,
        max: usize,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Result<Option<Vec<async_nats::jetstream::Message>>, StoreError> {
        use futures::FutureExt;
        let Some(first) = self.next(shutdown).await? else {
            return Ok(None);
        };
        let mut batch = vec![first];
        while batch.len() < max {
            match self.next(shutdown).now_or_never() {
                Some(Ok(Some(message))) => batch.push(message),
                _ => break,
            }
        }
        Ok(Some(batch))
    }
}
