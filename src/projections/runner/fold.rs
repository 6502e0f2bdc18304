//! What the holder of a projection keeps in memory between flushes: records with their
//! stored revisions, the counters and checkpoint as stored, and what is folded but not yet
//! written.

use super::flush::{FlushPlan, Flushed};
use crate::projections::parking::{self, ParkedEvent, RecordLimit, Stored};
use crate::projections::stored::{checkpoint_key, counters_key, Checkpoint, Counters};
use crate::projections::{changed, CountDelta, Projection};
use crate::store::kv::{self, is_valid_key};
use crate::store::StoreError;
use async_nats::jetstream::kv::{Operation, Store as Bucket};
use futures::StreamExt;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

/// Records kept in memory before clean ones are dropped (bounds memory), and the largest
/// bucket read into memory whole when a holder starts.
pub(super) const CACHE_LIMIT: usize = 200_000;

/// Longest wait for the next entry while reading a bucket into memory.
const PRELOAD_STALL: Duration = Duration::from_secs(10);

/// Valid while its holder holds the lease (the only writer then); a failed write throws all
/// of it away.
pub(super) struct FoldState<P: Projection> {
    /// Key → (record as folded, revision as stored by the last finished flush).
    cache: HashMap<String, (Stored<P::Record>, Option<u64>)>,
    /// The largest record the bucket takes.
    limit: RecordLimit,
    /// Keys folded since the last flush started.
    pub(super) dirty: HashSet<String>,
    /// Keys being written by the flush in flight (never evicted while it runs).
    in_flight: HashSet<String>,
    /// `cache` holds every key of the bucket: a key not in it is absent, no read needed.
    complete: bool,
    /// Counters as stored, and their revision.
    counters: (Counters, Option<u64>),
    /// Messages above this sequence had their counter changes added to `delta` (below it, a
    /// replay: counted before).
    counted_base: u64,
    delta: CountDelta,
    counted_something: bool,
    notices: Vec<P::Notice>,
    /// Messages parked since the last flush started.
    parked: Vec<ParkedEvent>,
    /// Checkpoint as stored, and its revision.
    pub(super) checkpoint: (u64, Option<u64>),
    /// Last sequence folded and not yet handed to a flush.
    pending_seq: Option<u64>,
}

/// A stored value as the fold holds it.
fn readable<R: serde::de::DeserializeOwned>(bucket: &str, bytes: &[u8]) -> Stored<R> {
    match kv::decode(bucket, bytes) {
        Ok(record) => Stored::Readable(Some(record)),
        Err(error) => Stored::Unreadable(error.to_string()),
    }
}

impl<P: Projection> FoldState<P> {
    /// The counters and checkpoint of `P` as stored, nothing cached.
    pub(super) async fn load(
        stats: &Bucket,
        limit: RecordLimit,
    ) -> Result<FoldState<P>, StoreError> {
        let counters = kv::load::<Counters>(stats, &counters_key(P::NAME)).await?;
        let checkpoint = kv::load::<Checkpoint>(stats, &checkpoint_key(P::NAME)).await?;
        let stored = counters.value.unwrap_or_default();
        Ok(FoldState {
            cache: HashMap::new(),
            limit,
            dirty: HashSet::new(),
            in_flight: HashSet::new(),
            complete: false,
            counted_base: stored.counted_seq,
            counters: (stored, counters.revision),
            delta: CountDelta::default(),
            counted_something: false,
            notices: Vec::new(),
            parked: Vec::new(),
            checkpoint: (
                checkpoint.value.map_or(0, |c| c.applied_seq),
                checkpoint.revision,
            ),
            pending_seq: None,
        })
    }

    /// Reads the whole bucket into memory when it holds at most [`CACHE_LIMIT`] entries (one
    /// ordered pass instead of a read per key), and marks the cache complete.
    pub(super) async fn preload(&mut self, records: &Bucket) -> Result<(), StoreError> {
        let action = || format!("read {} into memory", records.name);
        // Fresh stream info: `kv::Store::status` returns what was cached when the handle was
        // made.
        let values = records
            .stream
            .clone()
            .info()
            .await
            .map_err(|e| StoreError::unavailable(action(), e))?
            .state
            .messages;
        if values > CACHE_LIMIT as u64 {
            return Ok(());
        }
        if values > 0 {
            let mut entries = records
                .watch_with_history(">")
                .await
                .map_err(|e| StoreError::unavailable(action(), e))?;
            loop {
                let entry = tokio::time::timeout(PRELOAD_STALL, entries.next())
                    .await
                    .map_err(|_| {
                        StoreError::unavailable(action(), "no entry within the stall timeout")
                    })?
                    .ok_or_else(|| StoreError::unavailable(action(), "the bucket reader ended"))?
                    .map_err(|e| StoreError::unavailable(action(), e))?;
                let record = match entry.operation {
                    Operation::Put => readable(&records.name, &entry.value),
                    Operation::Delete | Operation::Purge => Stored::Readable(None),
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

    pub(super) fn has_pending(&self) -> bool {
        self.pending_seq.is_some()
    }

    /// Reads the records of `inputs` that are not in memory yet.
    pub(super) async fn ensure_loaded(
        &mut self,
        records: &Bucket,
        inputs: &[P::Input],
        concurrency: usize,
    ) -> Result<(), StoreError> {
        if self.cache.len() > CACHE_LIMIT {
            let keep: HashSet<&String> = self.dirty.iter().chain(&self.in_flight).collect();
            self.cache.retain(|key, _| keep.contains(key));
            self.complete = false;
        }
        if self.complete {
            // `fold` knows a key it does not hold is absent.
            return Ok(());
        }
        // A key the bucket cannot hold is never read: its message parks.
        let missing: BTreeSet<String> = inputs
            .iter()
            .flat_map(P::keys)
            .filter(|key| is_valid_key(key) && !self.cache.contains_key(key))
            .collect();
        let loaded: Vec<_> = futures::stream::iter(missing)
            .map(|key| async move {
                let result = kv::load_bytes(records, &key).await;
                (key, result)
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        for (key, result) in loaded {
            let stored = result?;
            let record = match &stored.value {
                Some(bytes) => readable(&records.name, bytes),
                None => Stored::Readable(None),
            };
            self.cache.insert(key, (record, stored.revision));
        }
        Ok(())
    }

    /// Folds `inputs` (stream order, every key loaded by `ensure_loaded`) ending at
    /// `last_seq` into memory; a message [`parking::step`] refuses changes nothing and is
    /// parked.
    pub(super) fn fold(&mut self, inputs: &[P::Input], last_seq: u64) {
        for input in inputs {
            let seq = P::seq(input);
            let cache = &self.cache;
            let complete = self.complete;
            let step = parking::step::<P>(input, self.limit, |key| match cache.get(key) {
                Some((Stored::Readable(record), _)) => Ok(record.as_ref()),
                Some((Stored::Unreadable(detail), _)) => Err(parking::ParkReason::Unreadable {
                    key: key.to_string(),
                    detail: detail.clone(),
                }),
                None => {
                    assert!(complete, "every touched key was loaded");
                    Ok(None)
                }
            });
            let changes = match step {
                Ok(changes) => changes,
                Err(reason) => {
                    self.parked.push(ParkedEvent::new::<P>(input, &reason));
                    continue;
                }
            };
            for change in changes {
                let changed = changed::<P>(change.existed, change.after.as_ref(), seq);
                if seq > self.counted_base {
                    let delta = P::tally(change.after.as_ref()) - change.before;
                    self.counted_something |= !delta.is_zero();
                    self.delta += delta;
                }
                // Notices go out before records are written, so a change to a record not yet
                // written is announced again whether or not it was counted: at least once.
                self.notices.extend(change.notice);
                let entry = self
                    .cache
                    .entry(change.key.clone())
                    .or_insert((Stored::Readable(None), None));
                entry.0 = Stored::Readable(change.after);
                if changed {
                    self.dirty.insert(change.key);
                }
            }
        }
        self.pending_seq = Some(last_seq);
    }

    /// Hands what is folded to a flush. Call only when no flush is in flight: the revisions
    /// it expects are those the previous flush stored.
    pub(super) fn take_plan(&mut self, owner: &str) -> FlushPlan<P::Notice> {
        let last_seq = self.pending_seq.take().expect("something is pending");
        // Counters move only when some message changes them: a batch whose every message
        // counts nothing counts nothing on replay either, so leaving `counted_seq` behind is
        // safe (and saves a write per batch for projections without counters).
        let counters =
            (self.counted_something && last_seq > self.counters.0.counted_seq).then(|| {
                (
                    self.counters.0.advanced(self.delta, last_seq),
                    self.counters.1,
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
                let Stored::Readable(record) = record else {
                    unreachable!("an unreadable record is never folded")
                };
                (key.clone(), record.as_ref().map(kv::encode), *revision)
            })
            .collect();
        FlushPlan {
            counters,
            notices: std::mem::take(&mut self.notices),
            parked: std::mem::take(&mut self.parked),
            writes,
            checkpoint: self.checkpoint,
            last_seq,
            owner: owner.to_string(),
        }
    }

    /// Takes in what a flush stored; returns the sequence now applied.
    pub(super) fn finish(&mut self, done: Flushed) -> u64 {
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
