//! Rebuilding a projection from the log, and its status.
//!
//! A rebuild seizes the projection's lease (the running holder notices at its next renewal
//! and stands by), replays the log up to its current last sequence with an ordered consumer
//! (no acks) into memory, then writes each rebuilt record over the stored one where the bytes
//! differ and deletes records that no longer exist — readers always see a complete record, old
//! or new, never a gap — sets the counters and checkpoint, and releases the lease; the next
//! holder continues after the rebuilt checkpoint. Folding is the same code as the incremental
//! runner, so the result is byte-identical.

use super::runner::{self, checkpoint_key, counters_key, lease_key, Checkpoint, Counters};
use super::{fold, Projection};
use crate::events::{decode, Decoded};
use crate::lease::{self, Lease};
use crate::model::Event;
use async_nats::jetstream::{consumer, kv, stream};
use bytes::Bytes;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::time::Duration;

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
}

/// Rebuilds projection `P`; `progress(done, total)` is called as events are replayed.
pub async fn rebuild<P: Projection>(
    events: &stream::Stream,
    records: &kv::Store,
    stats: &kv::Store,
    mut progress: impl FnMut(u64, u64),
) -> Result<RebuildReport, String> {
    let mut lease = Lease::new(
        stats.clone(),
        lease_key(P::NAME),
        format!("rebuild@{}", runner::instance_id()),
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
    let result = rebuild_leased::<P>(events, records, stats, &mut progress).await;
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

/// Key of a projection's rebuild progress.
pub fn rebuild_key(name: &str) -> String {
    format!("rebuild.{name}")
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Writes a rebuild progress record; a failure only costs the dashboards an update.
async fn report_progress(stats: &kv::Store, name: &str, done: u64, total: u64, running: bool) {
    let record = RebuildProgress {
        running,
        done,
        total,
        updated_unix_ms: unix_ms(),
    };
    let bytes = serde_json::to_vec(&record).expect("progress serializes");
    if let Err(error) = stats.put(rebuild_key(name), bytes.into()).await {
        tracing::debug!(%error, "writing rebuild progress");
    }
}

async fn rebuild_leased<P: Projection>(
    events: &stream::Stream,
    records: &kv::Store,
    stats: &kv::Store,
    progress: &mut impl FnMut(u64, u64),
) -> Result<RebuildReport, String> {
    let mut events = events.clone();
    let info = events.info().await.map_err(|e| e.to_string())?.clone();
    let last_seq = info.state.last_sequence;
    let total = info.state.messages;
    let mut rebuilt: BTreeMap<String, P::Record> = BTreeMap::new();
    let mut counts = super::CountDelta::default();
    let mut replayed = 0u64;
    let mut reported = std::time::Instant::now();
    if last_seq > 0 {
        let consumer = events
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
        let mut chunk: Vec<Event> = Vec::with_capacity(1024);
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| e.to_string())?;
            let seq = message.info().map_err(|e| e.to_string())?.stream_sequence;
            if seq > last_seq {
                break;
            }
            if let Some(Decoded::Event(event)) = decode(&message) {
                chunk.push(*event);
            }
            replayed += 1;
            if chunk.len() == chunk.capacity() || seq == last_seq {
                counts += fold::<P>(&mut rebuilt, &chunk);
                chunk.clear();
                progress(replayed, total);
                if reported.elapsed() >= PROGRESS_EVERY {
                    report_progress(stats, P::NAME, replayed, total, true).await;
                    reported = std::time::Instant::now();
                }
            }
            if seq == last_seq {
                break;
            }
        }
        counts += fold::<P>(&mut rebuilt, &chunk);
    }
    progress(replayed, total);

    let mut report = RebuildReport {
        projection: P::NAME,
        events: replayed,
        last_seq,
        ..Default::default()
    };
    let mut stored_keys = Vec::new();
    if let Ok(mut keys) = records.keys().await {
        while let Some(key) = keys.next().await {
            stored_keys.push(key.map_err(|e| e.to_string())?);
        }
    }
    for (key, record) in &rebuilt {
        let bytes = Bytes::from(serde_json::to_vec(record).map_err(|e| e.to_string())?);
        let stored = records.get(key).await.map_err(|e| e.to_string())?;
        if stored.as_ref() == Some(&bytes) {
            report.unchanged += 1;
        } else {
            records.put(key, bytes).await.map_err(|e| e.to_string())?;
            report.written += 1;
        }
    }
    for key in stored_keys.iter().filter(|k| !rebuilt.contains_key(*k)) {
        records.delete(key).await.map_err(|e| e.to_string())?;
        report.deleted += 1;
    }
    let counters = Counters {
        counted_seq: last_seq,
        total_initialized: counts.total_initialized,
        share_count: counts.share_count,
        running_catalogs: 0,
    };
    stats
        .put(
            counters_key(P::NAME),
            serde_json::to_vec(&counters)
                .map_err(|e| e.to_string())?
                .into(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let checkpoint = Checkpoint {
        applied_seq: last_seq,
        instance: format!("rebuild@{}", runner::instance_id()),
    };
    stats
        .put(
            checkpoint_key(P::NAME),
            serde_json::to_vec(&checkpoint)
                .map_err(|e| e.to_string())?
                .into(),
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(report)
}

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
    stats: &kv::Store,
    name: &str,
) -> Result<ProjectionStatus, String> {
    let mut events = events.clone();
    let info = events.info().await.map_err(|e| e.to_string())?;
    let (stream, last) = (info.config.name.clone(), info.state.last_sequence);
    let (checkpoint, _) = runner::load::<Checkpoint>(stats, &checkpoint_key(name)).await?;
    let checkpoint = checkpoint.unwrap_or_default();
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
