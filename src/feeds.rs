//! Live feeds: messages the service publishes to the accounts concerned, on
//! `<ACCOUNT>.natster.global-events.<kind>` (each account imports its own as
//! `natster.global-events.<kind>`; the export's token position makes sure it gets no other).

use crate::decider::Decider;
use crate::telemetry::metrics::FeedLabels;
use prometheus_client::metrics::{counter::Counter, family::Family};

/// Subject of `kind` in `account`'s feed.
pub fn feed_subject(account: &str, kind: &str) -> String {
    format!("{account}.natster.global-events.{kind}")
}

/// Publishes feed messages; cheap to clone.
#[derive(Clone)]
pub struct Feeds {
    client: async_nats::Client,
    decider: Decider,
    sent: Family<FeedLabels, Counter>,
}

impl Feeds {
    /// Feeds on `client` (connected in the service account), taking share lists from the
    /// decider's state (kept current by tailing the log: no read per message).
    /// `sent` counts messages by kind, one per recipient.
    pub fn new(
        client: async_nats::Client,
        decider: Decider,
        sent: Family<FeedLabels, Counter>,
    ) -> Feeds {
        Feeds {
            client,
            decider,
            sent,
        }
    }

    /// Publishes `payload` to the `kind` feed of every account in `recipients`. Feeds are
    /// fire-and-forget (core NATS): a failure is logged, never returned.
    pub async fn publish(
        &self,
        recipients: &[String],
        kind: &'static str,
        payload: &serde_json::Value,
    ) {
        let bytes = bytes::Bytes::from(serde_json::to_vec(payload).unwrap_or_default());
        self.publish_bytes(recipients, kind, bytes).await;
    }

    /// [`Feeds::publish`] of a payload already serialized.
    pub async fn publish_bytes(
        &self,
        recipients: &[String],
        kind: &'static str,
        payload: bytes::Bytes,
    ) {
        let sent = self.sent.get_or_create(&FeedLabels { kind }).clone();
        for account in recipients {
            if let Err(error) = self
                .client
                .publish(feed_subject(account, kind), payload.clone())
                .await
            {
                tracing::warn!(kind, %error, "feed message not sent");
            } else {
                sent.inc();
            }
        }
    }

    /// Accounts `owner`'s catalog `catalog` is actively shared with (none when the catalog is
    /// unknown or owned by someone else).
    pub fn shared_with(&self, catalog: &str, owner: &str) -> Vec<String> {
        self.decider.read(|state| state.shared_with(catalog, owner))
    }
}
