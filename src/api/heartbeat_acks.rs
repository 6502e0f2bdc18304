//! Heartbeats nobody waits for. A catalog server that publishes its heartbeat without a reply
//! subject (as the original client does) is told nothing, so the service does not wait for
//! `NATSTER_ONLINE` to acknowledge the record either: every such record asks for its
//! acknowledgement on one subscription of this instance, which counts the ones the stream
//! refused (`natster_heartbeats_dropped_total{reason="record"}`).
//!
//! Nothing is held per heartbeat meanwhile. Waiting for its own acknowledgement, each
//! heartbeat kept a task, its in-flight slot and an entry in the client's reply map until the
//! acknowledgement came, and cost the process about a fifth more CPU (`benches/heartbeats.rs`).

use crate::store::StoreError;
use crate::telemetry::Metrics;
use async_nats::{HeaderMap, Message, Subject};
use bytes::Bytes;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// Records heartbeats without waiting; cheap to share.
pub struct HeartbeatAcks {
    client: async_nats::Client,
    /// Where the stream sends the acknowledgements (an inbox of this instance).
    acks: Subject,
}

impl HeartbeatAcks {
    /// Subscribes to the acknowledgements and counts refusals in `metrics` until `stop` is
    /// cancelled. The subscription is the client's, so it outlives reconnects.
    pub async fn start(
        client: &async_nats::Client,
        metrics: Metrics,
        stop: CancellationToken,
    ) -> Result<HeartbeatAcks, StoreError> {
        let acks = Subject::from(client.new_inbox());
        let mut subscription = client
            .subscribe(acks.clone())
            .await
            .map_err(|e| StoreError::unavailable("subscribe to heartbeat acknowledgements", e))?;
        tokio::spawn(async move {
            loop {
                let ack = tokio::select! {
                    _ = stop.cancelled() => break,
                    ack = subscription.next() => ack,
                };
                let Some(ack) = ack else { break };
                if refused(&ack) {
                    tracing::debug!(ack = %String::from_utf8_lossy(&ack.payload), "a heartbeat published without reply was not recorded");
                    metrics.heartbeat_dropped("record");
                }
            }
        });
        Ok(HeartbeatAcks {
            client: client.clone(),
            acks,
        })
    }

    /// Publishes a record to `subject` with its acknowledgement sent to the subscription;
    /// returns once the client has taken it (the server may still refuse it: counted then).
    pub async fn publish(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<(), async_nats::PublishError> {
        self.client
            .publish_with_reply_and_headers(subject, self.acks.clone(), headers, payload)
            .await
    }
}

/// Whether an acknowledgement says the record was not stored: a status instead of an answer
/// (no stream listens on the subject), or an answer with an error.
fn refused(ack: &Message) -> bool {
    #[derive(serde::Deserialize)]
    struct Ack {
        error: Option<serde::de::IgnoredAny>,
    }
    if ack.status.is_some() {
        return true;
    }
    serde_json::from_slice::<Ack>(&ack.payload).map_or(true, |ack| ack.error.is_some())
}
