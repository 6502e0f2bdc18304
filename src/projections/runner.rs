//! The shared projection runner: the log read in order from the projection's checkpoint,
//! batches folded per key, one compare-and-set write per touched key, then the checkpoint.
//!
//! Only one instance applies a projection at a time: it holds the projection's lease
//! (`lease.<projection>` in `PROJ_STATS`, see [`crate::lease`]), renews it while it works, and
//! stops the moment a renewal fails. Standby instances try to take the lease and do so once it
//! has expired (`takeover_after`). The holder reads the log with an ordered consumer starting
//! after the checkpoint, so events are applied strictly in stream order even across crashes
//! and takeovers (a durable consumer would hand a new instance later events while a dead
//! one's batch waits for redelivery).
//!
//! Order of writes in a batch, and why:
//! 1. `counters.<projection>` (CAS) — the counter changes of the events after its
//!    `counted_seq`, and `counted_seq` moves to the batch's last sequence. Written first, so a
//!    crash after it never counts an event twice: on replay those events are at or below
//!    `counted_seq` and count nothing, and no record has applied them yet.
//! 2. every touched record (CAS on its revision), each carrying `applied_seq`; a record at or
//!    past an event's sequence skips it, so replays change nothing.
//! 3. `checkpoint.<projection>` — the batch's acknowledgement: the next holder starts after it,
//!    and readers waiting for `Natster-Min-Seq` trust it only after the records are written.
//!
//! A lost CAS (a stale holder or a rebuild wrote first) reloads and re-folds the batch; the
//! result is the same because folding is idempotent, and a record never moves backwards.

use super::{CountDelta, Projection};
use crate::events::{decode, Decoded};
use crate::lease::Lease;
use crate::model::Event;
use async_nats::jetstream::{self, consumer, kv, stream};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Messages still pending in the log after the last one of `batch`.
fn backlog(batch: &[Result<jetstream::Message, consumer::pull::OrderedError>]) -> u64 {
    batch
        .last()
        .and_then(|m| m.as_ref().ok())
        .and_then(|m| m.info().ok())
        .map_or(0, |info| info.pending)
}

/// Attempts at one batch before the runner gives the lease up and starts over.
const BATCH_ATTEMPTS: usize = 8;

/// Tuning of a runner.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Largest batch folded at once.
    pub batch_size: usize,
    /// Lease time: a standby instance takes over at most this long after the holder stops.
    pub takeover_after: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            batch_size: 8192,
            takeover_after: Duration::from_secs(5),
        }
    }
}

/// Counters of one projection (`counters.<name>` in `PROJ_STATS`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Last sequence whose counter changes are included.
    pub counted_seq: u64,
    #[serde(default)]
    pub total_initialized: i64,
    #[serde(default)]
    pub share_count: i64,
}

/// Progress of one projection (`checkpoint.<name>` in `PROJ_STATS`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Every event up to this sequence is applied to the records.
    pub applied_seq: u64,
    /// The instance that wrote it (see [`instance_id`]).
    #[serde(default)]
    pub instance: String,
}

/// This process's name: host and process id.
pub fn instance_id() -> String {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "host".into());
        format!("{host}/{}", std::process::id())
    })
    .clone()
}

/// A name for one runner: the process plus a random suffix, so two service instances in one
/// process (tests, benchmarks) never mistake each other's lease for their own.
pub fn runner_id() -> String {
    use rand::Rng;
    let suffix: u32 = rand::thread_rng().gen();
    format!("{}#{suffix:08x}", instance_id())
}

/// Key of a projection's counters.
pub fn counters_key(name: &str) -> String {
    format!("counters.{name}")
}

/// Key of a projection's checkpoint.
pub fn checkpoint_key(name: &str) -> String {
    format!("checkpoint.{name}")
}

/// Why a runner stopped.
#[derive(Debug, thiserror::Error)]
#[error("projection {projection}: {message}")]
pub struct RunnerError {
    pub projection: &'static str,
    pub message: String,
}

/// Key of a projection's lease.
pub fn lease_key(name: &str) -> String {
    format!("lease.{name}")
}

/// Runs projection `P` until `shutdown` is cancelled: waits for the lease, then applies the
/// log from the checkpoint on, batch by batch. `progress` receives the last applied sequence
/// after every batch.
///
/// Cancellation: the batch in hand is finished and its checkpoint written, then the lease is
/// released so a standby instance takes over at once.
pub async fn run<P: Projection>(
    events: &stream::Stream,
    records: kv::Store,
    stats: kv::Store,
    config: RunnerConfig,
    progress: watch::Sender<u64>,
    shutdown: CancellationToken,
) -> Result<(), RunnerError> {
    let mut lease = Lease::new(
        stats.clone(),
        lease_key(P::NAME),
        runner_id(),
        config.takeover_after,
    );
    let tick = config.takeover_after / 4;
    loop {
        match lease.try_acquire().await {
            Ok(true) => {
                tracing::info!(projection = P::NAME, "holding the projection lease");
                let result = lead::<P>(
                    events, &records, &stats, &config, &progress, &shutdown, &mut lease,
                )
                .await;
                if shutdown.is_cancelled() {
                    lease.release().await;
                    return Ok(());
                }
                if let Err(error) = result {
                    tracing::warn!(projection = P::NAME, %error, "projection runner restarting");
                    lease.release().await;
                }
            }
            Ok(false) => {}
            Err(error) => tracing::debug!(projection = P::NAME, %error, "lease check failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(tick) => {}
        }
    }
}

/// Applies the log while `lease` is held. Returns `Ok` when the lease is lost or `shutdown`
/// is cancelled.
async fn lead<P: Projection>(
    events: &stream::Stream,
    records: &kv::Store,
    stats: &kv::Store,
    config: &RunnerConfig,
    progress: &watch::Sender<u64>,
    shutdown: &CancellationToken,
    lease: &mut Lease,
) -> Result<(), RunnerError> {
    let fail = |message: String| RunnerError {
        projection: P::NAME,
        message,
    };
    let start = checkpoint(stats, P::NAME).await.map_err(fail)? + 1;
    let consumer = events
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| fail(format!("consumer: {e}")))?;
    let messages = consumer
        .messages()
        .await
        .map_err(|e| fail(format!("reading the log: {e}")))?;
    let mut batches = messages.ready_chunks(config.batch_size);
    let mut renew = tokio::time::interval(config.takeover_after / 4);
    renew.tick().await;
    let mut expected = start;
    let mut cache = WriteCache::default();
    loop {
        let batch = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = renew.tick() => {
                if !lease.renew().await.map_err(fail)? {
                    tracing::warn!(projection = P::NAME, "lost the projection lease; standing by");
                    return Ok(());
                }
                continue;
            }
            batch = batches.next() => match batch {
                Some(batch) => batch,
                None => return Err(fail("the log reader ended".into())),
            },
        };
        // While the log has a backlog, fill the batch: bigger batches fold more events per key
        // and share the per-batch writes. Caught up, a batch goes out at once.
        let mut batch = batch;
        while batch.len() < config.batch_size && backlog(&batch) > 0 {
            match tokio::time::timeout(Duration::from_millis(20), batches.next()).await {
                Ok(Some(more)) => batch.extend(more),
                Ok(None) => return Err(fail("the log reader ended".into())),
                Err(_) => break,
            }
        }
        if !lease.is_held() {
            // Too late to trust the lease (a pause, a slow renewal): let the next holder start
            // from the checkpoint.
            return Ok(());
        }
        let mut events = Vec::with_capacity(batch.len());
        let mut last_seq = None;
        for message in batch {
            let message = message.map_err(|e| fail(format!("reading the log: {e}")))?;
            match decode(&message) {
                Some(Decoded::Event(event)) => {
                    last_seq = Some(event.seq);
                    events.push(*event);
                }
                Some(Decoded::Unknown { seq, .. } | Decoded::Foreign { seq }) => {
                    last_seq = Some(seq)
                }
                None => {}
            }
        }
        let Some(last_seq) = last_seq else { continue };
        if let Some(first) = events.first() {
            if first.seq < expected {
                // The ordered reader never goes back; anything below is already applied.
                events.retain(|e| e.seq >= expected);
            }
        }
        apply_batch_cached::<P>(records, stats, &events, last_seq, lease.owner(), &mut cache)
            .await
            .map_err(fail)?;
        expected = last_seq + 1;
        progress.send_replace(last_seq);
    }
}

/// What the holder of a projection knows it wrote: records with their revisions, the
/// counters and the checkpoint. Valid while it holds the lease (it is the only writer then);
/// an entry is dropped when a compare-and-set on it fails, and re-read on next use.
pub struct WriteCache<R> {
    records: HashMap<String, (Option<R>, Option<u64>)>,
    counters: Option<(Counters, Option<u64>)>,
    checkpoint: Option<(u64, Option<u64>)>,
}

/// Records kept in a [`WriteCache`] before it starts over (bounds memory).
const CACHE_LIMIT: usize = 500_000;

impl<R> Default for WriteCache<R> {
    fn default() -> Self {
        WriteCache {
            records: HashMap::new(),
            counters: None,
            checkpoint: None,
        }
    }
}

/// Applies `events` (one batch, stream order, ending at `last_seq`) to the records of `P`,
/// its counters and checkpoint, in the order the module documentation gives, reading
/// everything from the bucket (no cache; what a stale writer would do).
pub async fn apply_batch<P: Projection>(
    records: &kv::Store,
    stats: &kv::Store,
    events: &[Event],
    last_seq: u64,
    owner: &str,
) -> Result<(), String> {
    apply_batch_cached::<P>(
        records,
        stats,
        events,
        last_seq,
        owner,
        &mut WriteCache::default(),
    )
    .await
}

/// [`apply_batch`] with the holder's cache.
pub async fn apply_batch_cached<P: Projection>(
    records: &kv::Store,
    stats: &kv::Store,
    events: &[Event],
    last_seq: u64,
    owner: &str,
    cache: &mut WriteCache<P::Record>,
) -> Result<(), String> {
    let mut last_error = String::new();
    for _ in 0..BATCH_ATTEMPTS {
        match try_apply_batch::<P>(records, stats, events, last_seq, owner, cache).await {
            Ok(()) => return Ok(()),
            Err(error) => last_error = error,
        }
    }
    Err(last_error)
}

async fn try_apply_batch<P: Projection>(
    records: &kv::Store,
    stats: &kv::Store,
    events: &[Event],
    last_seq: u64,
    owner: &str,
    cache: &mut WriteCache<P::Record>,
) -> Result<(), String> {
    if cache.records.len() > CACHE_LIMIT {
        cache.records.clear();
    }
    let counters_key = counters_key(P::NAME);
    let (counters, counters_revision) = match cache.counters.take() {
        Some(cached) => cached,
        None => {
            let (counters, revision) = load::<Counters>(stats, &counters_key).await?;
            (counters.unwrap_or_default(), revision)
        }
    };

    let keys: BTreeSet<String> = events.iter().flat_map(P::keys).collect();
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !cache.records.contains_key(*k))
        .collect();
    let loaded =
        futures::future::join_all(missing.iter().map(|key| load::<P::Record>(records, key))).await;
    for (key, result) in missing.into_iter().zip(loaded) {
        cache.records.insert(key.clone(), result?);
    }
    let mut state: BTreeMap<String, (Option<P::Record>, Option<u64>)> = keys
        .iter()
        .map(|k| (k.clone(), cache.records[k].clone()))
        .collect();

    let mut delta = CountDelta::default();
    let mut counted_something = false;
    let mut changed: BTreeSet<String> = BTreeSet::new();
    for event in events {
        for key in P::keys(event) {
            let (record, _) = state.get_mut(&key).expect("every touched key was loaded");
            if record
                .as_ref()
                .is_some_and(|r| P::applied_seq(r) >= event.seq)
            {
                continue;
            }
            let after = P::apply(&key, record.clone(), event);
            if event.seq > counters.counted_seq {
                let change = P::count(record.as_ref(), after.as_ref());
                counted_something |= !change.is_zero();
                delta += change;
            }
            if after != *record {
                changed.insert(key.clone());
            }
            *record = after;
        }
    }

    // Counters move only when some event changes them: a batch whose every event counts
    // nothing counts nothing on replay either, so leaving `counted_seq` behind is safe (and
    // saves a write per batch for projections without counters).
    let counters = if counted_something && last_seq > counters.counted_seq {
        let updated = Counters {
            counted_seq: last_seq,
            total_initialized: counters.total_initialized + delta.total_initialized,
            share_count: counters.share_count + delta.share_count,
        };
        // A failure leaves the cache without counters: the retry reads them again.
        let revision = write(stats, &counters_key, Some(&updated), counters_revision).await?;
        (updated, revision)
    } else {
        (counters, counters_revision)
    };
    cache.counters = Some(counters);

    let writes = changed.iter().map(|key| {
        let (record, revision) = &state[key];
        async move { (key, write(records, key, record.as_ref(), *revision).await) }
    });
    let mut failed = None;
    for (key, result) in futures::future::join_all(writes).await {
        match result {
            Ok(revision) => {
                cache
                    .records
                    .insert(key.clone(), (state[key].0.clone(), revision));
            }
            Err(error) => {
                cache.records.remove(key);
                failed = Some(error);
            }
        }
    }
    if let Some(error) = failed {
        return Err(error);
    }

    // The checkpoint only moves forward: a stale writer finishing an old batch leaves a newer
    // checkpoint alone.
    let key = checkpoint_key(P::NAME);
    let (stored, revision) = match cache.checkpoint.take() {
        Some(cached) => cached,
        None => {
            let (stored, revision) = load::<Checkpoint>(stats, &key).await?;
            (stored.map_or(0, |c| c.applied_seq), revision)
        }
    };
    if stored < last_seq {
        let checkpoint = Checkpoint {
            applied_seq: last_seq,
            instance: owner.to_string(),
        };
        match write(stats, &key, Some(&checkpoint), revision).await {
            Ok(revision) => cache.checkpoint = Some((last_seq, revision)),
            Err(error) => {
                tracing::debug!(projection = P::NAME, %error, "checkpoint moved by another writer");
            }
        }
    } else {
        cache.checkpoint = Some((stored, revision));
    }
    Ok(())
}

/// Reads a JSON record and its revision (`None` revision: the key never existed or is
/// deleted).
pub async fn load<T: serde::de::DeserializeOwned>(
    bucket: &kv::Store,
    key: &str,
) -> Result<(Option<T>, Option<u64>), String> {
    match bucket
        .entry(key)
        .await
        .map_err(|e| format!("read {key}: {e}"))?
    {
        Some(entry) if entry.operation == kv::Operation::Put => {
            let record = serde_json::from_slice(&entry.value)
                .map_err(|e| format!("record {key} does not decode: {e}"))?;
            Ok((Some(record), Some(entry.revision)))
        }
        Some(entry) => Ok((None, Some(entry.revision))),
        None => Ok((None, None)),
    }
}

/// Writes (or deletes, for `None`) `key` only if it is still at `revision`; returns the new
/// revision (`None` after a delete).
pub async fn write<T: Serialize>(
    bucket: &kv::Store,
    key: &str,
    record: Option<&T>,
    revision: Option<u64>,
) -> Result<Option<u64>, String> {
    let Some(record) = record else {
        return match revision {
            Some(revision) => bucket
                .delete_expect_revision(key, Some(revision))
                .await
                .map(|_| None)
                .map_err(|e| format!("delete {key}: {e}")),
            None => Ok(None),
        };
    };
    let bytes = Bytes::from(serde_json::to_vec(record).map_err(|e| e.to_string())?);
    match revision {
        Some(revision) => bucket
            .update(key, bytes, revision)
            .await
            .map(Some)
            .map_err(|e| format!("update {key}: {e}")),
        None => bucket
            .create(key, bytes)
            .await
            .map(Some)
            .map_err(|e| format!("create {key}: {e}")),
    }
}

/// Checkpoint of a projection as stored (0 when none yet).
pub async fn checkpoint(stats: &kv::Store, name: &str) -> Result<u64, String> {
    Ok(load::<Checkpoint>(stats, &checkpoint_key(name))
        .await?
        .0
        .map_or(0, |c| c.applied_seq))
}

/// The JetStream context type, re-exported for callers building runners.
pub type Context = jetstream::Context;
