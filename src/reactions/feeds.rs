//! Publishing to the feeds: messages to the accounts concerned, on
//! `<ACCOUNT>.natster.global-events.<kind>` (each account imports its own as
//! `natster.global-events.<kind>`; the export's token position makes sure it gets no other).

use crate::contract::{feed_subject, FeedKind, OnlineNotice};
use crate::model::online::Transition;
use crate::projections::runner::Announce;
use crate::store::StoreError;
use crate::telemetry::metrics::FeedLabels;
use crate::write::Decider;
use futures::future::BoxFuture;
use prometheus_client::metrics::{counter::Counter, family::Family};
use serde::Serialize;

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

    /// Publishes `message` to the `kind` feed of every account in `recipients`, serialized
    /// once. Feeds are fire-and-forget (core NATS): a failure is logged, never returned.
    pub async fn publish(&self, recipients: &[String], kind: FeedKind, message: &impl Serialize) {
        let bytes =
            bytes::Bytes::from(serde_json::to_vec(message).expect("feed messages serialize"));
        self.publish_bytes(recipients, kind, bytes).await;
    }

    /// [`Feeds::publish`] of a message already serialized.
    pub async fn publish_bytes(
        &self,
        recipients: &[String],
        kind: FeedKind,
        payload: bytes::Bytes,
    ) {
        let sent = self
            .sent
            .get_or_create(&FeedLabels {
                kind: kind.as_str(),
            })
            .clone();
        for account in recipients {
            if let Err(error) = self
                .client
                .publish(feed_subject(account, kind), payload.clone())
                .await
            {
                tracing::warn!(kind = kind.as_str(), %error, "feed message not sent");
            } else {
                sent.inc();
            }
        }
    }

    /// Returns once the server has every message published so far (a round trip on the same
    /// connection): what a caller waits for before it records that it announced them.
    pub async fn confirm(&self) -> Result<(), StoreError> {
        crate::store::roundtrip::sync(&self.client)
            .await
            .map_err(|error| StoreError::unavailable("confirm feed messages", error))
    }

    /// Accounts `owner`'s catalog `catalog` is actively shared with (none when the catalog is
    /// unknown or owned by someone else), once the decision state has folded the log as it was
    /// at start.
    pub async fn shared_with(&self, catalog: &str, owner: &str) -> Result<Vec<String>, StoreError> {
        self.decider
            .read_started(|state| state.shared_with(catalog, owner))
            .await
            .map_err(|error| StoreError::unavailable("read who a catalog is shared with", error))
    }
}

/// The online projection's notices: each transition to the owner and every account the
/// catalog is shared with, as `catalog_online` / `catalog_offline`.
impl Announce<Transition> for Feeds {
    fn announce<'a>(
        &'a self,
        transitions: &'a [Transition],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            for transition in transitions {
                let mut recipients = vec![transition.owner.clone()];
                recipients.extend(
                    self.shared_with(&transition.catalog, &transition.owner)
                        .await?,
                );
                let kind = if transition.online {
                    FeedKind::CatalogOnline
                } else {
                    FeedKind::CatalogOffline
                };
                self.publish(&recipients, kind, &online_notice(transition))
                    .await;
            }
            self.confirm().await
        })
    }
}

/// The feed message of a transition; `at` in RFC 3339.
pub fn online_notice(transition: &Transition) -> OnlineNotice {
    let at = time::OffsetDateTime::from_unix_timestamp(transition.at)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    OnlineNotice {
        catalog: transition.catalog.clone(),
        account_key: transition.owner.clone(),
        revision: transition.revision,
        at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_carry_rfc3339_times() {
        let t = Transition {
            online: false,
            catalog: "films".into(),
            owner: "AOWNER".into(),
            revision: 2,
            at: 0,
        };
        assert_eq!(
            serde_json::to_value(online_notice(&t)).unwrap(),
            serde_json::json!({"catalog":"films","account_key":"AOWNER","revision":2,"at":"1970-01-01T00:00:00Z"})
        );
    }
}
