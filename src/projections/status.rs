//! One projection's state, as `projections status` prints it.

use super::stored::{checkpoint, lease_key};
use crate::store::lease;
use crate::store::StoreError;
use async_nats::jetstream::{kv::Store as Bucket, stream};

/// One projection's state as `projections status` prints it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProjectionStatus {
    pub projection: String,
    /// The stream it applies (`NATSTER_EVENTS`, or `NATSTER_ONLINE` for `online`); sequences
    /// below are that stream's.
    pub stream: String,
    pub applied_seq: u64,
    pub stream_last_seq: u64,
    pub lag_events: u64,
    /// Instance that wrote the last checkpoint.
    pub instance: String,
    /// Who holds the projection's lease now (empty when nobody does).
    pub holder: String,
}

/// Status of projection `name`, which applies stream `events`.
pub async fn status(
    events: &stream::Stream,
    stats: &Bucket,
    name: &str,
) -> Result<ProjectionStatus, StoreError> {
    let mut events = events.clone();
    let info = events
        .info()
        .await
        .map_err(|e| StoreError::unavailable("read a stream's state", e))?;
    let (stream, last) = (info.config.name.clone(), info.state.last_sequence);
    let checkpoint = checkpoint(stats, name).await?;
    let holder = lease::holder(stats, &lease_key(name)).await;
    Ok(ProjectionStatus {
        projection: name.to_string(),
        stream,
        applied_seq: checkpoint.applied_seq,
        stream_last_seq: last,
        lag_events: last.saturating_sub(checkpoint.applied_seq),
        instance: checkpoint.instance,
        holder: holder.map(|h| h.owner).unwrap_or_default(),
    })
}
