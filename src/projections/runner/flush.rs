//! One flush: everything a batch writes, in the order that makes a crash anywhere safe.

use super::Announce;
use crate::projections::parking::{self, ParkedEvent};
use crate::projections::stored::{checkpoint_key, counters_key, Checkpoint, Counters};
use crate::store::{kv, StoreError};
use async_nats::jetstream::kv::Store as Bucket;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use std::sync::Arc;

/// Everything a batch writes, with the revisions it expects.
pub(super) struct FlushPlan<N, R> {
    pub counters: Option<(Counters, Option<u64>)>,
    /// What the batch announces.
    pub notices: Vec<N>,
    /// Messages of the batch the projection could not apply.
    pub parked: Vec<ParkedEvent>,
    /// Each record is serialized as it is written.
    pub writes: Vec<RecordWrite<R>>,
    pub checkpoint: (u64, Option<u64>),
    pub last_seq: u64,
    pub owner: String,
}

/// One record a flush writes.
pub(super) struct RecordWrite<R> {
    pub key: Arc<str>,
    /// `None`: delete. Shared with the cache of the fold.
    pub record: Option<Arc<R>>,
    /// The revision it replaces (`None`: the key holds nothing yet).
    pub expected: Option<u64>,
}

/// One record a flush wrote.
pub(super) struct RecordWritten {
    pub key: Arc<str>,
    /// Its revision now (as the write returned it).
    pub revision: Option<u64>,
    /// Its size as stored.
    pub bytes: usize,
}

/// What a finished flush stored.
pub(super) struct Flushed {
    pub counters: Option<(Counters, Option<u64>)>,
    /// Every record written.
    pub revisions: Vec<RecordWritten>,
    pub checkpoint: Option<(u64, Option<u64>)>,
    pub last_seq: u64,
}

/// Where a flush writes, and how wide.
#[derive(Clone)]
pub(super) struct Target<N> {
    pub projection: &'static str,
    pub records: Bucket,
    pub stats: Bucket,
    pub announce: Arc<dyn Announce<N>>,
    /// Where parked messages are recorded, and counted.
    pub parked: Bucket,
    pub parked_total: prometheus_client::metrics::counter::Counter,
    pub concurrency: usize,
}

/// Writes one plan in this order:
/// 1. the counters (compare-and-set): the changes of the messages after their `counted_seq`,
///    which moves to the batch's last sequence, so a crash after it never counts a message
///    twice (on replay those messages are at or below `counted_seq`);
/// 2. the notices, before the records, so a crash can repeat a notice but never lose one (the
///    fold announces every change of a record not yet written, counted before or not);
/// 3. every touched record (compare-and-set on its revision, up to `concurrency` at once),
///    each carrying `applied_seq`, so replays change nothing;
/// 4. the messages it parked, each recorded once (a replay finds them recorded and neither
///    counts nor logs them again);
/// 5. the checkpoint: the batch's acknowledgement. The next holder starts after it, and
///    readers waiting for `Natster-Min-Seq` trust it only once the records are written. A
///    checkpoint moved by someone else is left alone (a checkpoint only moves forward; a stale
///    writer finishing an old batch changes nothing).
pub(super) async fn execute<N, R: serde::Serialize>(
    target: Target<N>,
    plan: FlushPlan<N, R>,
) -> Result<Flushed, StoreError> {
    let counters = match plan.counters {
        Some((counters, revision)) => {
            let key = counters_key(target.projection);
            let stored = kv::write(&target.stats, &key, Some(&counters), revision).await?;
            Some((counters, stored))
        }
        None => None,
    };
    if !plan.notices.is_empty() {
        crate::crashpoint::reached(crate::crashpoint::BEFORE_ANNOUNCE).await;
        target.announce.announce(&plan.notices).await?;
    }
    let revisions = write_records(&target, plan.writes).await?;
    record_parked(&target, &plan.parked).await?;
    let checkpoint = write_checkpoint(&target, plan.checkpoint, plan.last_seq, plan.owner).await?;
    Ok(Flushed {
        counters,
        revisions,
        checkpoint,
        last_seq: plan.last_seq,
    })
}

/// Writes `writes` (compare-and-set each, `target.concurrency` at once); returns what each
/// stored. Stops at the first failure (those written stay written).
async fn write_records<N, R: serde::Serialize>(
    target: &Target<N>,
    writes: Vec<RecordWrite<R>>,
) -> Result<Vec<RecordWritten>, StoreError> {
    futures::stream::iter(writes)
        .map(|write| {
            let records = &target.records;
            async move {
                let bytes = write.record.as_deref().map(kv::encode);
                let size = bytes.as_ref().map_or(0, Bytes::len);
                let revision = kv::write_bytes(records, &write.key, bytes, write.expected).await?;
                Ok::<_, StoreError>(RecordWritten {
                    key: write.key,
                    revision,
                    bytes: size,
                })
            }
        })
        .buffer_unordered(target.concurrency.max(1))
        .try_collect()
        .await
}

/// Records each of `parked` once (a replay finds it recorded and neither counts nor logs it
/// again).
pub(super) async fn record_parked<N>(
    target: &Target<N>,
    parked: &[ParkedEvent],
) -> Result<(), StoreError> {
    for event in parked {
        if parking::record(&target.parked, event).await? {
            target.parked_total.inc();
            tracing::warn!(
                projection = target.projection,
                seq = event.seq,
                subject = %event.subject,
                error = %event.error,
                "parked an event this projection cannot apply; it moves on without it \
                 (`natster-global projections parked` lists it)"
            );
        }
    }
    Ok(())
}

/// Moves the checkpoint from `stored` (at `revision`) to `last_seq`; returns the checkpoint
/// now stored, `None` when it was at or past `last_seq` already.
pub(super) async fn write_checkpoint<N>(
    target: &Target<N>,
    (stored, revision): (u64, Option<u64>),
    last_seq: u64,
    owner: String,
) -> Result<Option<(u64, Option<u64>)>, StoreError> {
    if stored >= last_seq {
        return Ok(None);
    }
    let key = checkpoint_key(target.projection);
    let checkpoint = Checkpoint {
        applied_seq: last_seq,
        instance: owner,
    };
    match kv::write(&target.stats, &key, Some(&checkpoint), revision).await {
        Ok(revision) => Ok(Some((last_seq, revision))),
        Err(error) if error.is_conflict() => {
            tracing::debug!(projection = target.projection, %error, "checkpoint moved by another writer");
            let stored = kv::load::<Checkpoint>(&target.stats, &key).await?;
            Ok(Some((
                stored.value.map_or(0, |c| c.applied_seq),
                stored.revision,
            )))
        }
        Err(error) => Err(error),
    }
}
