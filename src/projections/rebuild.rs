//! Rebuilding a projection from the log.
//!
//! A rebuild seizes the projection's lease (the running holder notices at its next renewal
//! and stands by), replays the log up to its current last sequence with the shared log reader
//! into memory, then writes each rebuilt record over the stored one where the bytes
//! differ and deletes records that no longer exist — readers always see a complete record, old
//! or new, never a gap — sets the counters and checkpoint, and releases the lease; the next
//! holder continues after the rebuilt checkpoint. Folding is the same code as the incremental
//! runner, so the result is byte-identical, and it parks the same messages: the projection's
//! parked list becomes what the rebuild parked. A rebuild is also how parked messages are
//! replayed (`projections replay-parked`): applying one message out of order would be wrong,
//! applying the whole log in order with the cause removed (a larger `max_payload`, a
//! repaired record) is right.

use super::parking::{self, ParkedEvent, RecordLimit, SizedRecords};
use super::stored::{checkpoint_key, counters_key, lease_key, rebuild_key, Checkpoint, Counters};
use super::{fold_parking, Projection};
use crate::store::lease::{instance_id, Lease};
use crate::store::log::LogReader;
use crate::store::{kv, StoreError};
use async_nats::jetstream::{kv::Store as Bucket, stream};
use futures::{StreamExt, TryStreamExt};
use std::time::Duration;

/// Record writes (and deletes) of a rebuild in flight at once.
const WRITE_CONCURRENCY: usize = 64;

/// What a rebuild did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebuildReport {
    pub projection: &'static str,
    /// Events replayed.
    pub events: u64,
    /// The log position the projection now stands at.
    pub last_seq: u64,
    /// Records written because they differed.
    pub written: usize,
    /// Records already identical.
    pub unchanged: usize,
    /// Stored records that no longer exist.
    pub deleted: usize,
    /// Messages the rebuild parked.
    pub parked: usize,
    /// Messages parked before that the rebuild applied.
    pub unparked: usize,
}

/// Where a rebuild reads and writes.
pub struct RebuildTarget<'a> {
    pub events: &'a stream::Stream,
    pub records: &'a Bucket,
    pub stats: &'a Bucket,
    pub parked: &'a Bucket,
    /// The largest record `records` takes (from the server's `max_payload`).
    pub limit: RecordLimit,
}

/// Rebuilds projection `P`; `progress(done, total)` is called as events are replayed.
pub async fn rebuild<P: Projection>(
    target: RebuildTarget<'_>,
    mut progress: impl FnMut(u64, u64),
) -> Result<RebuildReport, StoreError> {
    let stats = target.stats;
    let mut lease = Lease::new(
        stats.clone(),
        lease_key(P::NAME),
        format!("rebuild@{}", instance_id()),
        Duration::from_secs(600),
    );
    // A holder that was mid-batch may still write that batch after this; its writes are
    // compare-and-set and in log order, so they can only carry records forward, and the next
    // holder re-applies everything after the rebuilt checkpoint as no-ops.
    lease.seize().await?;
    report_progress(stats, P::NAME, 0, 0, true).await;
    let mut last = (0, 0);
    let mut progress = |done: u64, total: u64| {
        last = (done, total);
        progress(done, total);
    };
    let result = rebuild_leased::<P>(&target, &mut progress).await;
    report_progress(stats, P::NAME, last.0, last.1, false).await;
    lease.release().await;
    result
}

/// `rebuild.<projection>` in `PROJ_STATS`: how far the running (or last) rebuild got, so that
/// every service instance can export it while `projections rebuild` runs in another process.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RebuildProgress {
    pub running: bool,
    /// Log messages replayed, of `total`.
    pub done: u64,
    pub total: u64,
    /// When this record was written (Unix milliseconds): a running rebuild refreshes it
    /// every second, so a stale one is a rebuild that died.
    pub updated_unix_ms: u64,
}

/// How often a running rebuild writes its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// A running rebuild not heard of for this long is taken for dead.
const REBUILD_STALE_MS: u64 = 30_000;

impl RebuildProgress {
    /// Running and heard of recently.
    pub fn is_running(&self) -> bool {
        self.running && unix_ms().saturating_sub(self.updated_unix_ms) < REBUILD_STALE_MS
    }

    /// Share replayed, 0 to 1 (1 for an empty log).
    pub fn ratio(&self) -> f64 {
        if self.total == 0 {
            return if self.running { 0.0 } else { 1.0 };
        }
        (self.done as f64 / self.total as f64).min(1.0)
    }
}

pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Writes a rebuild progress record; a failure only costs the dashboards an update.
async fn report_progress(stats: &Bucket, name: &str, done: u64, total: u64, running: bool) {
    let record = RebuildProgress {
        running,
        done,
        total,
        updated_unix_ms: unix_ms(),
    };
    if let Err(error) = kv::put(stats, &rebuild_key(name), kv::encode(&record)).await {
        tracing::debug!(%error, "writing rebuild progress");
    }
}

/// The log as it was when the rebuild began, folded in memory.
struct Replayed<P: Projection> {
    records: SizedRecords<P::Record>,
    counts: super::CountDelta,
    parked: Vec<ParkedEvent>,
    /// Messages replayed.
    messages: u64,
    /// The log's last sequence when the rebuild began.
    last_seq: u64,
}

/// Replays the log up to its last sequence now into memory, reporting progress.
async fn replay<P: Projection>(
    target: &RebuildTarget<'_>,
    progress: &mut impl FnMut(u64, u64),
) -> Result<Replayed<P>, StoreError> {
    let (events, stats) = (target.events, target.stats);
    let state = events
        .clone()
        .info()
        .await
        .map_err(|e| StoreError::unavailable("read the event log's state", e))?
        .state
        .clone();
    let (last_seq, total) = (state.last_sequence, state.messages);
    let mut replayed = Replayed {
        records: SizedRecords::default(),
        counts: super::CountDelta::default(),
        parked: Vec::new(),
        messages: 0,
        last_seq,
    };
    let mut reader = LogReader::new(events.clone(), 1, P::decode, 1024).up_to(last_seq);
    let mut reported = std::time::Instant::now();
    while reader.position() < last_seq {
        let chunk = reader.next_chunk().await?;
        replayed.messages += chunk.read as u64;
        replayed.counts += fold_parking::<P>(
            &mut replayed.records,
            &chunk.items,
            target.limit,
            &mut replayed.parked,
        );
        progress(replayed.messages, total);
        if reported.elapsed() >= PROGRESS_EVERY {
            report_progress(stats, P::NAME, replayed.messages, total, true).await;
            reported = std::time::Instant::now();
        }
    }
    progress(replayed.messages, total);
    Ok(replayed)
}

/// Writes the replayed records over the stored ones (only where the bytes differ), deletes
/// records that no longer exist, replaces the parked list, then sets the counters and the
/// checkpoint. The stored records are compared in one ordered pass over the bucket; writes
/// and deletes go out [`WRITE_CONCURRENCY`] at a time.
async fn rebuild_leased<P: Projection>(
    target: &RebuildTarget<'_>,
    progress: &mut impl FnMut(u64, u64),
) -> Result<RebuildReport, StoreError> {
    let (records, stats) = (target.records, target.stats);
    let mut replayed = replay::<P>(target, progress).await?;
    let mut report = RebuildReport {
        projection: P::NAME,
        events: replayed.messages,
        last_seq: replayed.last_seq,
        ..Default::default()
    };
    let mut gone = Vec::new();
    kv::scan(records, None, |stored| {
        let Some(bytes) = stored.value else { return };
        match replayed.records.get(&stored.key).map(kv::encode) {
            Some(rebuilt) if rebuilt == bytes => {
                replayed.records.remove(&stored.key);
                report.unchanged += 1;
            }
            Some(_) => {}
            None => gone.push(stored.key),
        }
    })
    .await?;
    report.written = futures::stream::iter(replayed.records.into_records())
        .map(|(key, record)| async move { kv::put(records, &key, kv::encode(&record)).await })
        .buffer_unordered(WRITE_CONCURRENCY)
        .try_fold(0, |written, _| async move { Ok(written + 1) })
        .await?;
    report.deleted = futures::stream::iter(gone)
        .map(|key| async move { kv::delete(records, &key).await })
        .buffer_unordered(WRITE_CONCURRENCY)
        .try_fold(0, |deleted, _| async move { Ok(deleted + 1) })
        .await?;
    report.parked = replayed.parked.len();
    report.unparked = parking::replace(target.parked, P::NAME, &replayed.parked).await?;
    let counters = Counters::default().advanced(replayed.counts, replayed.last_seq);
    kv::put(stats, &counters_key(P::NAME), kv::encode(&counters)).await?;
    let checkpoint = Checkpoint {
        applied_seq: replayed.last_seq,
        instance: format!("rebuild@{}", instance_id()),
    };
    kv::put(stats, &checkpoint_key(P::NAME), kv::encode(&checkpoint)).await?;
    Ok(report)
}
