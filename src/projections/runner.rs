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
//! Reading and writing overlap: while one batch is being written, the next events are read
//! and folded in memory, and all of them go into the next flush. Flushes run one at a time and
//! in order, so the revisions each expects are the ones the previous flush stored. Under a
//! backlog a flush covers many events (fewer writes per event); caught up, each event is
//! flushed as soon as it arrives.
//!
//! A lost CAS (a stale holder or a rebuild wrote first) throws the in-memory state away and
//! starts over from the stored checkpoint; the result is the same because folding is
//! idempotent, and a record never moves backwards.

use super::{CountDelta, Projection};
use crate::events::{decode, Decoded};
use crate::lease::Lease;
use crate::model::Event;
use async_nats::jetstream::{self, consumer, kv, stream};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Fresh starts from the checkpoint after failed writes before the runner gives the lease up.
const BATCH_ATTEMPTS: usize = 8;

/// Tuning of a runner.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Most distinct records one flush writes. This bounds a batch's memory: folded events
    /// are dropped at once, the records they touched are kept until written. Under a backlog
    /// a flush waits for this many touched records (or `max_linger`), so every record is
    /// written once for as many events as possible.
    pub max_batch_records: usize,
    /// Record reads and writes in flight at once.
    pub write_concurrency: usize,
    /// Under a backlog, the longest a folded event waits for its flush (caught up, a flush
    /// starts at once).
    pub max_linger: Duration,
    /// Lease time: a standby instance takes over at most this long after the holder stops.
    pub takeover_after: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            max_batch_records: 65_536,
            write_concurrency: 64,
            max_linger: Duration::from_secs(1),
            takeover_after: Duration::from_secs(5),
        }
    }
}

/// Where a runner reports how far it got: the last applied sequence (for read-your-writes
/// waits) and the number of log messages applied (for metrics).
pub struct Progress {
    applied: watch::Sender<u64>,
    events: prometheus_client::metrics::counter::Counter,
}

impl Progress {
    /// Reports applied sequences to `applied`, counting into a counter of its own.
    pub fn new(applied: watch::Sender<u64>) -> Progress {
        Progress {
            applied,
            events: Default::default(),
        }
    }

    /// Also counts applied log messages into `events`.
    pub fn counting(mut self, events: prometheus_client::metrics::counter::Counter) -> Progress {
        self.events = events;
        self
    }

    /// Finishes a flush in `fold` and reports it.
    fn finish<R: Clone + PartialEq + Serialize + serde::de::DeserializeOwned>(
        &self,
        fold: &mut FoldState<R>,
        done: Flushed,
    ) {
        let before = fold.checkpoint.0;
        let seq = fold.finish(done);
        self.events.inc_by(seq.saturating_sub(before));
        self.applied.send_replace(seq);
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
    /// Catalogs online now (the online projection's counter; absent elsewhere).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub running_catalogs: i64,
}

fn is_zero(value: &i64) -> bool {
    *value == 0
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
    progress: Progress,
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
/// is cancelled. A failed write (a lost compare-and-set, an unavailable bucket) starts the
/// pipeline over from the stored checkpoint with nothing cached, a few times, before the
/// error goes up.
async fn lead<P: Projection>(
    events: &stream::Stream,
    records: &kv::Store,
    stats: &kv::Store,
    config: &RunnerConfig,
    progress: &Progress,
    shutdown: &CancellationToken,
    lease: &mut Lease,
) -> Result<(), RunnerError> {
    let mut attempt = 0;
    loop {
        let mut flushing = None;
        let result = pipeline::<P>(
            events,
            records,
            stats,
            config,
            progress,
            shutdown,
            lease,
            &mut flushing,
        )
        .await;
        // Never leave a write behind while starting over or handing the lease on.
        if let Some(flush) = flushing.take() {
            let _ = flush.await;
        }
        match result {
            Ok(()) => return Ok(()),
            Err(message) => {
                attempt += 1;
                if attempt >= BATCH_ATTEMPTS || !lease.is_held() {
                    return Err(RunnerError {
                        projection: P::NAME,
                        message,
                    });
                }
                tracing::debug!(projection = P::NAME, %message, "starting over from the checkpoint");
            }
        }
    }
}

/// A flush running in its own task.
type Flushing = tokio::task::JoinHandle<Result<Flushed, String>>;

/// The pipeline: the log is read and folded into memory while the previous batch is being
/// written, so reading, folding and writing overlap, and every event that arrives during a
/// flush joins the next one (the busier the log, the more events each write covers).
/// Flushes run one at a time, in order; each writes counters, records, then the checkpoint.
#[allow(clippy::too_many_arguments)]
async fn pipeline<P: Projection>(
    events: &stream::Stream,
    records: &kv::Store,
    stats: &kv::Store,
    config: &RunnerConfig,
    progress: &Progress,
    shutdown: &CancellationToken,
    lease: &mut Lease,
    flushing: &mut Option<Flushing>,
) -> Result<(), String> {
    let mut fold = FoldState::<P::Record>::load(stats, P::NAME).await?;
    fold.preload(records).await?;
    let start = fold.checkpoint.0 + 1;
    let consumer = events
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| format!("consumer: {e}"))?;
    let messages = consumer
        .messages()
        .await
        .map_err(|e| format!("reading the log: {e}"))?;
    let (mut batches, _reader) = spawn_log_reader(messages, start);
    let mut renew = tokio::time::interval(config.takeover_after / 4);
    renew.tick().await;
    // Whether the last message read was the log's last; while it is not, a flush waits for
    // more events (up to `max_batch_records` touched records or `max_linger`) so that each
    // write covers more of them.
    let mut caught_up = true;
    let mut pending_since = tokio::time::Instant::now();
    loop {
        let due = caught_up
            || fold.dirty.len() >= config.max_batch_records
            || pending_since.elapsed() >= config.max_linger;
        if flushing.is_none() && fold.has_pending() && due {
            if !lease.is_held() {
                // Too late to trust the lease (a pause, a slow renewal): let the next holder
                // start from the checkpoint.
                return Ok(());
            }
            let plan = fold.take_plan(lease.owner());
            *flushing = Some(tokio::spawn(execute_flush::<P>(
                records.clone(),
                stats.clone(),
                plan,
                config.write_concurrency,
            )));
        }
        let accepting = fold.dirty.len() < config.max_batch_records;
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                // Finish the batch in hand: the flush in flight, then what is folded.
                if let Some(flush) = flushing.take() {
                    let done = flush.await.map_err(|e| e.to_string())??;
                    progress.finish(&mut fold, done);
                }
                if fold.has_pending() && lease.is_held() {
                    let plan = fold.take_plan(lease.owner());
                    let done = execute_flush::<P>(records.clone(), stats.clone(), plan, config.write_concurrency).await?;
                    progress.finish(&mut fold, done);
                }
                return Ok(());
            }
            done = async { flushing.as_mut().expect("guarded").await }, if flushing.is_some() => {
                *flushing = None;
                let done = done.map_err(|e| e.to_string())??;
                progress.finish(&mut fold, done);
            }
            _ = tokio::time::sleep_until(pending_since + config.max_linger),
                if flushing.is_none() && fold.has_pending() => {}
            _ = renew.tick() => {
                if !lease.renew().await? {
                    tracing::warn!(projection = P::NAME, "lost the projection lease; standing by");
                    return Ok(());
                }
            }
            batch = batches.recv(), if accepting => {
                let ReadBatch { events, last_seq, caught_up: at_end } = batch
                    .ok_or_else(|| "the log reader ended".to_string())??;
                caught_up = at_end;
                if !fold.has_pending() {
                    pending_since = tokio::time::Instant::now();
                }
                fold.ensure_loaded::<P>(records, &events, config.write_concurrency).await?;
                fold.fold::<P>(&events, last_seq);
            }
        }
    }
}

/// Decoded events read from the log, in stream order.
struct ReadBatch {
    events: Vec<Event>,
    /// Last stream sequence read (events the projections ignore included).
    last_seq: u64,
    /// The last message read was the last in the log at the time.
    caught_up: bool,
}

/// Chunks of decoded events queued between the log reader and the folder.
const READ_AHEAD: usize = 32;

/// Reads and decodes the log in its own task, so that reading goes on while the runner folds.
/// The task ends when the receiver is dropped (the handle also aborts it when dropped), or
/// after sending the first error.
fn spawn_log_reader(
    messages: consumer::pull::Ordered,
    start: u64,
) -> (
    tokio::sync::mpsc::Receiver<Result<ReadBatch, String>>,
    tokio_util::task::AbortOnDropHandle<()>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
    let task = tokio::spawn(async move {
        let mut chunks = messages.ready_chunks(1024);
        let mut expected = start;
        while let Some(chunk) = chunks.next().await {
            let caught_up = chunk
                .last()
                .and_then(|m| m.as_ref().ok())
                .and_then(|m| m.info().ok())
                .is_none_or(|info| info.pending == 0);
            let mut events = Vec::with_capacity(chunk.len());
            let mut last_seq = None;
            for message in chunk {
                let message = match message {
                    Ok(message) => message,
                    Err(error) => {
                        let _ = tx.send(Err(format!("reading the log: {error}"))).await;
                        return;
                    }
                };
                match decode(&message) {
                    Some(Decoded::Event(event)) => {
                        last_seq = Some(event.seq);
                        // The ordered reader never goes back; anything below is applied.
                        if event.seq >= expected {
                            events.push(*event);
                        }
                    }
                    Some(Decoded::Unknown { seq, .. } | Decoded::Foreign { seq }) => {
                        last_seq = Some(seq)
                    }
                    None => {}
                }
            }
            let Some(last_seq) = last_seq else { continue };
            expected = last_seq + 1;
            let batch = ReadBatch {
                events,
                last_seq,
                caught_up,
            };
            if tx.send(Ok(batch)).await.is_err() {
                return;
            }
        }
    });
    (rx, tokio_util::task::AbortOnDropHandle::new(task))
}

/// What the holder of a projection knows: records with their stored revisions, the counters
/// and the checkpoint as stored, and what is folded but not yet written. Valid while it holds
/// the lease (it is the only writer then); a failed write throws all of it away.
struct FoldState<R> {
    /// Key → (record as folded, revision as stored by the last finished flush).
    cache: HashMap<String, (Option<R>, Option<u64>)>,
    /// Keys folded since the last flush started.
    dirty: HashSet<String>,
    /// Keys being written by the flush in flight (never evicted while it runs).
    in_flight: HashSet<String>,
    /// `cache` holds every key of the bucket: a key not in it is absent, no read needed.
    complete: bool,
    /// Counters as stored, and their revision.
    counters: (Counters, Option<u64>),
    /// Events above this sequence had their counter changes added to `delta`.
    counted_base: u64,
    delta: CountDelta,
    counted_something: bool,
    /// Checkpoint as stored, and its revision.
    checkpoint: (u64, Option<u64>),
    /// Last sequence folded and not yet handed to a flush.
    pending_seq: Option<u64>,
}

/// One flush: everything a batch writes, with the revisions it expects.
struct FlushPlan {
    counters: Option<(Counters, Option<u64>)>,
    /// Key, serialized record (`None`: delete), expected revision.
    writes: Vec<(String, Option<Bytes>, Option<u64>)>,
    checkpoint: (u64, Option<u64>),
    last_seq: u64,
    owner: String,
}

/// What a finished flush stored.
struct Flushed {
    counters: Option<(Counters, Option<u64>)>,
    revisions: Vec<(String, Option<u64>)>,
    checkpoint: Option<(u64, Option<u64>)>,
    last_seq: u64,
}

/// Records kept in memory before clean ones are dropped (bounds memory), and the largest
/// bucket read into memory whole when a holder starts.
const CACHE_LIMIT: usize = 200_000;

/// Longest wait for the next entry while reading a bucket into memory.
const PRELOAD_STALL: Duration = Duration::from_secs(10);

impl<R: Clone + PartialEq + Serialize + serde::de::DeserializeOwned> FoldState<R> {
    async fn load(stats: &kv::Store, name: &str) -> Result<FoldState<R>, String> {
        let (counters, counters_revision) = load::<Counters>(stats, &counters_key(name)).await?;
        let counters = counters.unwrap_or_default();
        let (checkpoint, checkpoint_revision) =
            load::<Checkpoint>(stats, &checkpoint_key(name)).await?;
        Ok(FoldState {
            cache: HashMap::new(),
            dirty: HashSet::new(),
            in_flight: HashSet::new(),
            complete: false,
            counted_base: counters.counted_seq,
            counters: (counters, counters_revision),
            delta: CountDelta::default(),
            counted_something: false,
            checkpoint: (checkpoint.map_or(0, |c| c.applied_seq), checkpoint_revision),
            pending_seq: None,
        })
    }

    /// Reads the whole bucket into memory when it holds at most [`CACHE_LIMIT`] entries (one
    /// ordered pass instead of a read per key), and marks the cache complete.
    async fn preload(&mut self, records: &kv::Store) -> Result<(), String> {
        let fail = |e: &dyn std::fmt::Display| format!("preloading the records: {e}");
        // Fresh stream info: `kv::Store::status` returns what was cached when the handle was
        // made.
        let values = records
            .stream
            .clone()
            .info()
            .await
            .map_err(|e| fail(&e))?
            .state
            .messages;
        if values > CACHE_LIMIT as u64 {
            return Ok(());
        }
        if values > 0 {
            let mut entries = records
                .watch_with_history(">")
                .await
                .map_err(|e| fail(&e))?;
            loop {
                let entry = tokio::time::timeout(PRELOAD_STALL, entries.next())
                    .await
                    .map_err(|_| fail(&"no entry within the stall timeout"))?
                    .ok_or_else(|| fail(&"the bucket reader ended"))?
                    .map_err(|e| fail(&e))?;
                let record = match entry.operation {
                    kv::Operation::Put => Some(
                        serde_json::from_slice(&entry.value)
                            .map_err(|e| format!("record {} does not decode: {e}", entry.key))?,
                    ),
                    kv::Operation::Delete | kv::Operation::Purge => None,
                };
                self.cache.insert(entry.key, (record, Some(entry.revision)));
                if entry.delta == 0 {
                    break;
                }
            }
        }
        self.complete = true;
        Ok(())
    }

    fn has_pending(&self) -> bool {
        self.pending_seq.is_some()
    }

    /// Reads the records of `events` that are not in memory yet.
    async fn ensure_loaded<P: Projection<Record = R>>(
        &mut self,
        records: &kv::Store,
        events: &[Event],
        concurrency: usize,
    ) -> Result<(), String> {
        if self.cache.len() > CACHE_LIMIT {
            let keep: HashSet<&String> = self.dirty.iter().chain(&self.in_flight).collect();
            self.cache.retain(|key, _| keep.contains(key));
            self.complete = false;
        }
        if self.complete {
            // `fold` knows a key it does not hold is absent.
            return Ok(());
        }
        let missing: BTreeSet<String> = events
            .iter()
            .flat_map(P::keys)
            .filter(|key| !self.cache.contains_key(key))
            .collect();
        let loaded: Vec<_> = futures::stream::iter(missing)
            .map(|key| async move {
                let result = load::<R>(records, &key).await;
                (key, result)
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        for (key, result) in loaded {
            self.cache.insert(key, result?);
        }
        Ok(())
    }

    /// Folds `events` (stream order, every key loaded by `ensure_loaded`) ending at
    /// `last_seq` into memory.
    fn fold<P: Projection<Record = R>>(&mut self, events: &[Event], last_seq: u64) {
        for event in events {
            for key in P::keys(event) {
                let (record, _) = match self.cache.get_mut(&key) {
                    Some(entry) => entry,
                    None => {
                        assert!(self.complete, "every touched key was loaded");
                        self.cache.entry(key.clone()).or_insert((None, None))
                    }
                };
                if record
                    .as_ref()
                    .is_some_and(|r| P::applied_seq(r) >= event.seq)
                {
                    continue;
                }
                let tally_before = P::tally(record.as_ref());
                let existed = record.is_some();
                // `apply` stamps every record it returns with the event's sequence, so a record
                // changes unless it is absent before and after.
                *record = P::apply(&key, record.take(), event);
                if event.seq > self.counted_base {
                    let change = P::tally(record.as_ref()) - tally_before;
                    self.counted_something |= !change.is_zero();
                    self.delta += change;
                }
                if existed || record.is_some() {
                    self.dirty.insert(key);
                }
            }
        }
        self.pending_seq = Some(last_seq);
    }

    /// Hands what is folded to a flush. Call only when no flush is in flight: the revisions
    /// it expects are those the previous flush stored.
    fn take_plan(&mut self, owner: &str) -> FlushPlan {
        let last_seq = self.pending_seq.take().expect("something is pending");
        // Counters move only when some event changes them: a batch whose every event counts
        // nothing counts nothing on replay either, so leaving `counted_seq` behind is safe
        // (and saves a write per batch for projections without counters).
        let counters =
            (self.counted_something && last_seq > self.counters.0.counted_seq).then(|| {
                let (stored, revision) = &self.counters;
                (
                    Counters {
                        counted_seq: last_seq,
                        total_initialized: stored.total_initialized + self.delta.total_initialized,
                        share_count: stored.share_count + self.delta.share_count,
                        running_catalogs: stored.running_catalogs,
                    },
                    *revision,
                )
            });
        self.delta = CountDelta::default();
        self.counted_something = false;
        self.in_flight = std::mem::take(&mut self.dirty);
        let writes = self
            .in_flight
            .iter()
            .map(|key| {
                let (record, revision) = &self.cache[key];
                let bytes = record.as_ref().map(|r| {
                    Bytes::from(serde_json::to_vec(r).expect("records serialize to JSON"))
                });
                (key.clone(), bytes, *revision)
            })
            .collect();
        FlushPlan {
            counters,
            writes,
            checkpoint: self.checkpoint,
            last_seq,
            owner: owner.to_string(),
        }
    }

    /// Takes in what a flush stored; returns the sequence now applied.
    fn finish(&mut self, done: Flushed) -> u64 {
        if let Some(counters) = done.counters {
            self.counters = counters;
        }
        for (key, revision) in done.revisions {
            if let Some(entry) = self.cache.get_mut(&key) {
                entry.1 = revision;
            }
        }
        if let Some(checkpoint) = done.checkpoint {
            self.checkpoint = checkpoint;
        }
        self.in_flight.clear();
        done.last_seq
    }
}

/// Writes one plan in the order the module documentation gives: counters, records (up to
/// `concurrency` at once), checkpoint. A checkpoint moved by someone else is left alone (the
/// checkpoint only moves forward; a stale writer finishing an old batch changes nothing).
async fn execute_flush<P: Projection>(
    records: kv::Store,
    stats: kv::Store,
    plan: FlushPlan,
    concurrency: usize,
) -> Result<Flushed, String> {
    let counters = match plan.counters {
        Some((counters, revision)) => {
            let stored = write(&stats, &counters_key(P::NAME), Some(&counters), revision).await?;
            Some((counters, stored))
        }
        None => None,
    };
    let revisions: Vec<(String, Option<u64>)> = futures::stream::iter(plan.writes)
        .map(|(key, record, revision)| {
            let records = &records;
            async move {
                let stored = write_bytes(records, &key, record, revision).await?;
                Ok::<_, String>((key, stored))
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await?;
    let (stored, revision) = plan.checkpoint;
    let checkpoint = if stored < plan.last_seq {
        let checkpoint = Checkpoint {
            applied_seq: plan.last_seq,
            instance: plan.owner,
        };
        match write(
            &stats,
            &checkpoint_key(P::NAME),
            Some(&checkpoint),
            revision,
        )
        .await
        {
            Ok(revision) => Some((plan.last_seq, revision)),
            Err(error) => {
                tracing::debug!(projection = P::NAME, %error, "checkpoint moved by another writer");
                let (stored, revision) =
                    load::<Checkpoint>(&stats, &checkpoint_key(P::NAME)).await?;
                Some((stored.map_or(0, |c| c.applied_seq), revision))
            }
        }
    } else {
        None
    };
    Ok(Flushed {
        counters,
        revisions,
        checkpoint,
        last_seq: plan.last_seq,
    })
}

/// Applies `events` (one batch, stream order, ending at `last_seq`) to the records of `P`,
/// its counters and checkpoint, in the order the module documentation gives, reading
/// everything from the bucket first (what a stale writer would do).
pub async fn apply_batch<P: Projection>(
    records: &kv::Store,
    stats: &kv::Store,
    events: &[Event],
    last_seq: u64,
    owner: &str,
) -> Result<(), String> {
    let mut fold = FoldState::<P::Record>::load(stats, P::NAME).await?;
    fold.ensure_loaded::<P>(records, events, 64).await?;
    fold.fold::<P>(events, last_seq);
    let plan = fold.take_plan(owner);
    execute_flush::<P>(records.clone(), stats.clone(), plan, 64).await?;
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
    let bytes = record
        .map(|r| serde_json::to_vec(r).map(Bytes::from))
        .transpose()
        .map_err(|e| e.to_string())?;
    write_bytes(bucket, key, bytes, revision).await
}

/// [`write`] of a record already serialized.
pub async fn write_bytes(
    bucket: &kv::Store,
    key: &str,
    bytes: Option<Bytes>,
    revision: Option<u64>,
) -> Result<Option<u64>, String> {
    let Some(bytes) = bytes else {
        return match revision {
            Some(revision) => bucket
                .delete_expect_revision(key, Some(revision))
                .await
                .map(|_| None)
                .map_err(|e| format!("delete {key}: {e}")),
            None => Ok(None),
        };
    };
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
