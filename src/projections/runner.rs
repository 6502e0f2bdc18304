//! The shared projection runner: a durable pull consumer per projection, batches folded per
//! key, one compare-and-set write per touched key, then one ack for the batch.
//!
//! Order of writes in a batch, and why:
//! 1. `counters.<projection>` (CAS) — the counter changes of the events after its
//!    `counted_seq`, and `counted_seq` moves to the batch's last sequence. Written first, so a
//!    crash after it never counts an event twice: on redelivery those events are at or below
//!    `counted_seq` and count nothing, and no record has applied them yet.
//! 2. every touched record (CAS on its revision), each carrying `applied_seq`; a record at or
//!    past an event's sequence skips it, so redelivery and replay change nothing.
//! 3. `checkpoint.<projection>` — readers waiting for `Natster-Min-Seq` trust it only after
//!    the records are written.
//! 4. one ack (ack policy `all`) for the batch.
//!
//! A lost CAS (another writer: a stale owner or a rebuild) reloads and re-folds the batch; the
//! result is the same because folding is idempotent. Only one instance applies a projection
//! at a time: the consumer pins one pulling client (`pinned_client` priority policy) and moves
//! the pin to a standby instance when the pinned one stops pulling for `priority_timeout`.

use super::{CountDelta, Projection};
use crate::events::{decode, Decoded};
use crate::model::Event;
use async_nats::jetstream::{self, consumer, kv, stream};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Priority group every projector instance pulls in.
const GROUP: &str = "projector";
/// Attempts at one batch before it is left to redelivery.
const BATCH_ATTEMPTS: usize = 8;

/// Tuning of a runner.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Largest batch folded at once.
    pub batch_size: usize,
    /// How long the pinned instance may stop pulling before another takes over.
    pub takeover_after: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            batch_size: 512,
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

/// This process's name in checkpoints: host and process id.
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

/// Key of a projection's counters.
pub fn counters_key(name: &str) -> String {
    format!("counters.{name}")
}

/// Key of a projection's checkpoint.
pub fn checkpoint_key(name: &str) -> String {
    format!("checkpoint.{name}")
}

/// Durable consumer name of a projection.
pub fn consumer_name(name: &str) -> String {
    format!("projection-{name}")
}

/// Why a runner stopped.
#[derive(Debug, thiserror::Error)]
#[error("projection {projection}: {message}")]
pub struct RunnerError {
    pub projection: &'static str,
    pub message: String,
}

/// Runs projection `P` until `shutdown` is cancelled: pulls (when pinned), folds, writes,
/// acks. `progress` receives the last applied sequence after every batch.
///
/// Cancellation: the batch in hand is finished and acked before returning.
pub async fn run<P: Projection>(
    events: &stream::Stream,
    records: kv::Store,
    stats: kv::Store,
    config: RunnerConfig,
    progress: watch::Sender<u64>,
    shutdown: CancellationToken,
) -> Result<(), RunnerError> {
    loop {
        match run_once::<P>(events, &records, &stats, &config, &progress, &shutdown).await {
            Ok(()) => return Ok(()),
            Err(error) => {
                // The consumer may have been recreated by a rebuild, or the server restarted.
                tracing::warn!(%error, "projection runner restarting");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }
}

/// The consumer configuration of projection `name` (also used when a rebuild recreates it).
pub fn consumer_config(
    name: &str,
    config: &RunnerConfig,
    deliver: consumer::DeliverPolicy,
) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(consumer_name(name)),
        description: Some(format!("natster projection {name}")),
        deliver_policy: deliver,
        ack_policy: consumer::AckPolicy::All,
        ack_wait: Duration::from_secs(30),
        max_ack_pending: 100_000,
        priority_policy: consumer::PriorityPolicy::PinnedClient,
        priority_groups: vec![GROUP.to_string()],
        priority_timeout: config.takeover_after,
        ..Default::default()
    }
}

async fn run_once<P: Projection>(
    events: &stream::Stream,
    records: &kv::Store,
    stats: &kv::Store,
    config: &RunnerConfig,
    progress: &watch::Sender<u64>,
    shutdown: &CancellationToken,
) -> Result<(), RunnerError> {
    let fail = |message: String| RunnerError {
        projection: P::NAME,
        message,
    };
    let name = consumer_name(P::NAME);
    let consumer: consumer::PullConsumer = events
        .get_or_create_consumer(
            &name,
            consumer_config(P::NAME, config, consumer::DeliverPolicy::All),
        )
        .await
        .map_err(|e| fail(format!("consumer {name}: {e}")))?;
    let messages = consumer
        .stream()
        .group(GROUP)
        .max_messages_per_batch(config.batch_size)
        .expires(config.takeover_after / 3)
        .heartbeat(config.takeover_after / 10)
        .messages()
        .await
        .map_err(|e| fail(format!("pulling: {e}")))?;
    let mut batches = messages.ready_chunks(config.batch_size);
    loop {
        let batch = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            batch = batches.next() => match batch {
                Some(batch) => batch,
                None => return Err(fail("the consumer stream ended".into())),
            },
        };
        let mut messages = Vec::with_capacity(batch.len());
        for message in batch {
            match message {
                Ok(message) => messages.push(message),
                Err(error) => {
                    use consumer::pull::MessagesErrorKind;
                    match error.kind() {
                        MessagesErrorKind::ConsumerDeleted | MessagesErrorKind::NoResponders => {
                            return Err(fail(format!("consumer gone: {error}")))
                        }
                        _ => tracing::debug!(projection = P::NAME, %error, "pull status"),
                    }
                }
            }
        }
        let Some(last) = messages.last() else {
            continue;
        };
        let Some(last_seq) = last.info().ok().map(|i| i.stream_sequence) else {
            continue;
        };
        let events: Vec<Event> = messages
            .iter()
            .filter_map(|m| match decode(m) {
                Some(Decoded::Event(event)) => Some(*event),
                _ => None,
            })
            .collect();
        match apply_batch::<P>(records, stats, &events, last_seq).await {
            Ok(()) => {
                if let Err(error) = last.ack().await {
                    tracing::warn!(projection = P::NAME, %error, "ack failed; the batch will be redelivered and re-applied as a no-op");
                }
                progress.send_replace(last_seq);
            }
            Err(error) => {
                tracing::warn!(projection = P::NAME, %error, "batch not applied; it will be redelivered");
            }
        }
    }
}

/// Applies `events` (one batch, stream order, ending at `last_seq`) to the records of `P`,
/// its counters and checkpoint, in the order the module documentation gives.
pub async fn apply_batch<P: Projection>(
    records: &kv::Store,
    stats: &kv::Store,
    events: &[Event],
    last_seq: u64,
) -> Result<(), String> {
    let mut last_error = String::new();
    for _ in 0..BATCH_ATTEMPTS {
        match try_apply_batch::<P>(records, stats, events, last_seq).await {
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
) -> Result<(), String> {
    let counters_key = counters_key(P::NAME);
    let (counters, counters_revision) = load::<Counters>(stats, &counters_key).await?;
    let counters = counters.unwrap_or_default();

    let keys: BTreeSet<String> = events.iter().flat_map(P::keys).collect();
    let loaded =
        futures::future::join_all(keys.iter().map(|key| load::<P::Record>(records, key))).await;
    let mut state: BTreeMap<String, (Option<P::Record>, Option<u64>)> = BTreeMap::new();
    for (key, result) in keys.iter().zip(loaded) {
        state.insert(key.clone(), result?);
    }
    let before: BTreeMap<String, Option<P::Record>> = state
        .iter()
        .map(|(k, (r, _))| (k.clone(), r.clone()))
        .collect();

    let mut delta = CountDelta::default();
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
                delta += P::count(record.as_ref(), after.as_ref());
            }
            *record = after;
        }
    }

    if last_seq > counters.counted_seq {
        let updated = Counters {
            counted_seq: last_seq,
            total_initialized: counters.total_initialized + delta.total_initialized,
            share_count: counters.share_count + delta.share_count,
        };
        write(stats, &counters_key, Some(&updated), counters_revision).await?;
    }

    let writes = state
        .iter()
        .filter(|(key, (record, _))| before.get(*key) != Some(record))
        .map(|(key, (record, revision))| write(records, key, record.as_ref(), *revision));
    for result in futures::future::join_all(writes).await {
        result?;
    }

    let checkpoint = serde_json::to_vec(&Checkpoint {
        applied_seq: last_seq,
        instance: instance_id(),
    })
    .map_err(|e| e.to_string())?;
    stats
        .put(checkpoint_key(P::NAME), checkpoint.into())
        .await
        .map_err(|e| format!("checkpoint: {e}"))?;
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

/// Writes (or deletes, for `None`) `key` only if it is still at `revision`.
pub async fn write<T: Serialize>(
    bucket: &kv::Store,
    key: &str,
    record: Option<&T>,
    revision: Option<u64>,
) -> Result<(), String> {
    let Some(record) = record else {
        return match revision {
            Some(revision) => bucket
                .delete_expect_revision(key, Some(revision))
                .await
                .map_err(|e| format!("delete {key}: {e}")),
            None => Ok(()),
        };
    };
    let bytes = Bytes::from(serde_json::to_vec(record).map_err(|e| e.to_string())?);
    match revision {
        Some(revision) => bucket
            .update(key, bytes, revision)
            .await
            .map(|_| ())
            .map_err(|e| format!("update {key}: {e}")),
        None => bucket
            .create(key, bytes)
            .await
            .map(|_| ())
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
