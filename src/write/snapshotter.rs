//! Where the decision-state snapshot lives and when it is written.
//!
//! One object, [`SNAPSHOT_OBJECT`], in the snapshots object store. An instance that starts
//! reads it ([`load`]) and folds only the log after it; the instance holding the snapshot
//! lease writes it every interval while its state has moved, and once more when it stops
//! ([`keep_written`]), so a restart folds at most one interval of the log. Single writer:
//! two instances writing the object at once could leave chunks of one of them behind. A write
//! that falls due while this instance's projections catch up in passes waits until they are
//! done: both need the same cores, readiness waits for the projections, and the snapshot loses
//! nothing by coming a few seconds later.
//!
//! Writing reads the state and the remembered requests under the state's lock (in the tail's
//! lock order: state, then requests), so both are of the same sequence.

use super::snapshot::{self, LogIdentity, Restored};
use super::Decider;
use crate::store::lease::Held;
use crate::store::pause::Pause;
use crate::telemetry::metrics::{Metrics, ReasonLabels};
use async_nats::jetstream::object_store::{GetErrorKind, ObjectMetadata, ObjectStore};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

/// The snapshot's name in the snapshots object store.
pub const SNAPSHOT_OBJECT: &str = "decision-state";
/// Object metadata holding the sequence a snapshot reaches.
const SEQUENCE_METADATA: &str = "last_seq";

/// Why a snapshot was not written.
#[derive(Debug, thiserror::Error)]
#[error("writing the decision-state snapshot: {0}")]
pub struct SnapshotWriteError(#[source] async_nats::Error);

/// A snapshot written.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    pub seq: u64,
    pub bytes: usize,
    pub took: Duration,
}

/// The stored snapshot of `log`, if there is one this version can use; otherwise `None`, with
/// a warning that says why (the caller then folds the whole log).
pub(super) async fn load(
    bucket: &ObjectStore,
    log: &LogIdentity,
    log_last_seq: u64,
    metrics: &Metrics,
) -> Option<Restored> {
    let started = Instant::now();
    let mut object = match bucket.get(SNAPSHOT_OBJECT).await {
        Ok(object) => object,
        Err(error) if error.kind() == GetErrorKind::NotFound => {
            tracing::info!("no decision-state snapshot yet; folding the whole log");
            return None;
        }
        Err(error) => {
            tracing::warn!(%error, "cannot read the decision-state snapshot; folding the whole log");
            return None;
        }
    };
    let mut bytes = Vec::with_capacity(object.info().size);
    // The object store checks the object's digest as it reads: a damaged object fails here.
    let read = object.read_to_end(&mut bytes).await;
    let decoded = match read {
        Ok(_) => snapshot::decode(&bytes, log, log_last_seq),
        Err(error) => Err(snapshot::Unusable::Corrupt(error.to_string())),
    };
    match decoded {
        Ok(restored) => {
            tracing::info!(
                seq = restored.state.last_seq,
                bytes = bytes.len(),
                took = ?started.elapsed(),
                "restored the decision state from its snapshot"
            );
            metrics
                .decision_snapshot_sequence
                .set(restored.state.last_seq as i64);
            Some(restored)
        }
        Err(unusable) => {
            tracing::warn!(
                reason = unusable.reason(),
                "ignoring the decision-state snapshot, which is {unusable}; folding the whole log"
            );
            let labels = ReasonLabels {
                reason: unusable.reason(),
            };
            metrics
                .decision_snapshots_unusable
                .get_or_create(&labels)
                .inc();
            None
        }
    }
}

/// Writes a snapshot of `decider`'s state unless the stored one already reaches as far.
pub async fn write(
    decider: &Decider,
    bucket: &ObjectStore,
    log: &LogIdentity,
) -> Result<Option<Written>, SnapshotWriteError> {
    let stored = match bucket.info(SNAPSHOT_OBJECT).await {
        Ok(info) => info
            .metadata
            .get(SEQUENCE_METADATA)
            .and_then(|s| s.parse().ok()),
        Err(_) => None,
    };
    let started = Instant::now();
    let (seq, bytes) = {
        let state = decider.state.read().expect("decision state lock");
        if stored.is_some_and(|stored: u64| stored >= state.last_seq) {
            return Ok(None);
        }
        let recent = decider.recent.lock().expect("recent requests lock");
        (
            state.last_seq,
            snapshot::encode(log, &state, &recent.remembered()),
        )
    };
    let meta = ObjectMetadata {
        name: SNAPSHOT_OBJECT.into(),
        description: Some(format!("natster decision state up to sequence {seq}")),
        metadata: [(SEQUENCE_METADATA.to_string(), seq.to_string())].into(),
        ..ObjectMetadata::default()
    };
    bucket
        .put(meta, &mut bytes.as_slice())
        .await
        .map_err(|e| SnapshotWriteError(e.into()))?;
    let written = Written {
        seq,
        bytes: bytes.len(),
        took: started.elapsed(),
    };
    let metrics = &decider.metrics;
    metrics.decision_snapshots_written.inc();
    metrics.decision_snapshot_sequence.set(seq as i64);
    metrics
        .decision_snapshot_size_bytes
        .set(written.bytes as i64);
    metrics
        .decision_snapshot_write_duration
        .observe(written.took.as_secs_f64());
    Ok(Some(written))
}

/// While `held`: writes a snapshot every `interval` (a write that falls due while `pause` is
/// asked for waits until it is lifted), and once more when `stop` is cancelled (then returns).
/// Returns at once when the lease is lost. A failed write is logged and tried again at the
/// next tick.
pub async fn keep_written(
    decider: Decider,
    bucket: ObjectStore,
    log: LogIdentity,
    interval: Duration,
    held: Held,
    mut pause: Pause,
    stop: CancellationToken,
) -> Result<(), SnapshotWriteError> {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            () = held.lost() => return Ok(()),
            _ = ticks.tick() => {}
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            () = held.lost() => return Ok(()),
            () = pause.lifted() => {}
        }
        if !held.is_held() {
            continue;
        }
        match write(&decider, &bucket, &log).await {
            Ok(Some(w)) => {
                tracing::debug!(seq = w.seq, bytes = w.bytes, took = ?w.took, "wrote the decision-state snapshot");
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, "decision-state snapshot not written; trying again later");
            }
        }
    }
    // The last snapshot before stopping: the next start folds nothing it did not have to.
    if held.is_held() {
        write(&decider, &bucket, &log).await?;
    }
    Ok(())
}
