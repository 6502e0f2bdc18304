//! What the holder of a projection keeps in memory between flushes: records with their
//! stored revisions, the counters and checkpoint as stored, and what is folded but not yet
//! written.

use super::flush::{FlushPlan, Flushed, RecordWrite, RecordWritten};
use super::CacheMetrics;
use crate::projections::parking::{self, Before, ParkedEvent, RecordLimit, Records, Stored};
use crate::projections::stored::{checkpoint_key, counters_key, Checkpoint, Counters};
use crate::projections::{changed, CountDelta, Projection};
use crate::store::kv::{self, is_valid_key};
use crate::store::StoreError;
use async_nats::jetstream::kv::Store as Bucket;
use hashbrown::{HashMap, HashSet};
use std::borrow::Borrow;
use std::collections::BTreeSet;
use std::sync::Arc;

/// A record in memory, held compact: a cache holds hundreds of thousands of them, keyed by
/// shared keys (the sets of keys being folded and written share them too).
struct Cached<R> {
    /// The record (`None`: the key holds nothing). Shared with a flush that writes it: a
    /// change while it is written copies it once.
    record: Option<Arc<R>>,
    /// Revision as stored by the last finished flush ([`NEVER_WRITTEN`]: none).
    revision: u64,
    /// Its size as stored (as last read or written; 0 until first written), which is what
    /// the cache bound counts.
    bytes: u32,
    /// An upper bound on the size of `record` as it would be stored now (exact when read or
    /// written; grown by each message's bound since), so that not every change is measured;
    /// [`UNKNOWN_SIZE`] when none is known.
    size_bound: u32,
}

/// KV revisions start at 1.
const NEVER_WRITTEN: u64 = 0;
/// A size bound not known (or past what a record can be: every record fits `max_payload`).
const UNKNOWN_SIZE: u32 = u32::MAX;

impl<R> Cached<R> {
    fn revision(&self) -> Option<u64> {
        (self.revision != NEVER_WRITTEN).then_some(self.revision)
    }

    fn size_bound(&self) -> Option<usize> {
        (self.size_bound != UNKNOWN_SIZE).then_some(self.size_bound as usize)
    }
}

/// A size as a record in memory keeps it: `u32`, [`UNKNOWN_SIZE`] for none (or past it).
pub(super) fn compact_size(size: Option<usize>) -> u32 {
    size.and_then(|size| u32::try_from(size).ok())
        .unwrap_or(UNKNOWN_SIZE)
}

type Cache<R> = HashMap<Arc<str>, Cached<R>>;

/// Valid while its holder holds the lease (the only writer then); a failed write throws all
/// of it away.
pub(super) struct FoldState<P: Projection> {
    cache: Cache<P::Record>,
    /// Stored values that do not decode (a message touching one parks); never dropped.
    unreadable: HashMap<Arc<str>, String>,
    /// Sum of the cached records' `bytes`.
    cache_bytes: usize,
    /// Past this many bytes, records already written are dropped from memory.
    cache_limit: usize,
    /// What the cache held after the last pass that dropped records, until a flush finishes:
    /// the next pass waits until the cache grows by a quarter of its bound past it, so that a
    /// cache full of records not yet written is not scanned again for every message read.
    evicted_down_to: usize,
    cache_metrics: CacheMetrics,
    /// Records read by `ensure_loaded` and not yet looked up by `fold` (which counts the
    /// rest of its lookups as hits).
    loaded_since_fold: u64,
    /// The largest record the bucket takes.
    limit: RecordLimit,
    /// Keys folded since the last flush started.
    pub(super) dirty: HashSet<Arc<str>>,
    /// Keys being written by the flush in flight (never evicted while it runs).
    in_flight: HashSet<Arc<str>>,
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

/// The cache as [`parking::step`] sees it, counting lookups.
struct CachedRecords<'a, R> {
    cache: &'a mut Cache<R>,
    unreadable: &'a HashMap<Arc<str>, String>,
    /// The cache holds every key of the bucket (a key not in it is absent).
    complete: bool,
    lookups: std::cell::Cell<u64>,
}

impl<R: Clone> Records<R> for CachedRecords<'_, R> {
    fn before(&self, key: &str) -> Result<Before<'_, R>, parking::ParkReason> {
        self.lookups.set(self.lookups.get() + 1);
        if let Some(detail) = self.unreadable.get(key) {
            return Err(parking::ParkReason::Unreadable {
                key: key.to_string(),
                detail: detail.clone(),
            });
        }
        match self.cache.get(key) {
            Some(cached) => Ok(Before {
                record: cached.record.as_deref(),
                size_bound: cached.size_bound(),
            }),
            None => {
                assert!(self.complete, "every touched key was loaded");
                Ok(Before {
                    record: None,
                    size_bound: Some(0),
                })
            }
        }
    }

    fn take(&mut self, key: &str) -> Option<R> {
        self.cache
            .get_mut(key)
            .and_then(|cached| cached.record.take())
            .map(Arc::unwrap_or_clone)
    }

    fn put(&mut self, key: String, record: Option<R>, size_bound: Option<usize>) {
        keep(self.cache, &key, record, size_bound);
    }
}

/// Holds what a change left at `key` in the cache (its revision and stored size stay those of
/// the stored record); returns the cache's key.
fn keep<R>(
    cache: &mut Cache<R>,
    key: &str,
    record: Option<R>,
    size_bound: Option<usize>,
) -> Arc<str> {
    let record = record.map(Arc::new);
    let size_bound = compact_size(size_bound);
    if let Some((key, cached)) = cache.get_key_value_mut(key) {
        cached.record = record;
        cached.size_bound = size_bound;
        return key.clone();
    }
    let key: Arc<str> = key.into();
    let cached = Cached {
        record,
        revision: NEVER_WRITTEN,
        bytes: 0,
        size_bound,
    };
    cache.insert(key.clone(), cached);
    key
}

/// A stored value as the fold holds it.
fn readable<R: serde::de::DeserializeOwned>(bucket: &str, bytes: &[u8]) -> Stored<Arc<R>> {
    match kv::decode(bucket, bytes) {
        Ok(record) => Stored::Readable(Some(Arc::new(record))),
        Err(error) => Stored::Unreadable(error.to_string()),
    }
}

impl<P: Projection> FoldState<P> {
    /// The counters and checkpoint of `P` as stored, nothing cached; records are kept in
    /// memory up to `cache.0` bytes, and the cache reports to `cache.1`.
    pub(super) async fn load(
        stats: &Bucket,
        limit: RecordLimit,
        cache: (usize, CacheMetrics),
    ) -> Result<FoldState<P>, StoreError> {
        let counters = kv::load::<Counters>(stats, &counters_key(P::NAME)).await?;
        let checkpoint = kv::load::<Checkpoint>(stats, &checkpoint_key(P::NAME)).await?;
        let stored = counters.value.unwrap_or_default();
        cache.1.bytes.set(0);
        Ok(FoldState {
            cache: HashMap::new(),
            unreadable: HashMap::new(),
            cache_bytes: 0,
            cache_limit: cache.0,
            evicted_down_to: 0,
            cache_metrics: cache.1,
            loaded_since_fold: 0,
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

    /// Reads the whole bucket into memory when it holds no more than the cache's bound (one
    /// ordered pass instead of a read per key), and marks the cache complete.
    pub(super) async fn preload(&mut self, records: &Bucket) -> Result<(), StoreError> {
        let limit = Some(self.cache_limit as u64);
        let bytes = kv::scan(records, limit, |entry| {
            let (record, bytes) = match &entry.value {
                Some(value) => (readable(&records.name, value), value.len()),
                None => (Stored::Readable(None), 0),
            };
            self.insert(entry.key.into(), record, Some(entry.revision), bytes);
        })
        .await?;
        self.complete = bytes <= self.cache_limit as u64;
        Ok(())
    }

    pub(super) fn has_pending(&self) -> bool {
        self.pending_seq.is_some()
    }

    /// Reads the records of `inputs` that are not in memory yet, in batched reads (`client`
    /// is a connection of the bucket's account), `concurrency` at once. First, past the
    /// cache's bound, drops the records that are written (those folded but not written stay).
    pub(super) async fn ensure_loaded(
        &mut self,
        records: &Bucket,
        client: &async_nats::Client,
        inputs: &[impl Borrow<P::Input>],
        concurrency: usize,
    ) -> Result<(), StoreError> {
        if self.cache_bytes > self.cache_limit
            && self.cache_bytes >= self.evicted_down_to + self.cache_limit / 4
        {
            self.evict_written();
        }
        if self.complete {
            // `fold` knows a key it does not hold is absent.
            return Ok(());
        }
        // A key the bucket cannot hold is never read: its message parks.
        let missing: BTreeSet<String> = inputs
            .iter()
            .flat_map(|input| P::keys(input.borrow()))
            .filter(|key| {
                is_valid_key(key)
                    && !self.cache.contains_key(key.as_str())
                    && !self.unreadable.contains_key(key.as_str())
            })
            .collect();
        self.cache_metrics.misses.inc_by(missing.len() as u64);
        self.loaded_since_fold += missing.len() as u64;
        for (key, stored) in kv::load_many(client, records, missing, concurrency).await? {
            let (record, bytes) = match stored.value {
                Some(bytes) => (readable(&records.name, &bytes), bytes.len()),
                None => (Stored::Readable(None), 0),
            };
            self.insert(key.into(), record, stored.revision, bytes);
        }
        Ok(())
    }

    fn insert(
        &mut self,
        key: Arc<str>,
        record: Stored<Arc<P::Record>>,
        revision: Option<u64>,
        bytes: usize,
    ) {
        let record = match record {
            Stored::Readable(record) => record,
            Stored::Unreadable(detail) => {
                self.unreadable.insert(key, detail);
                return;
            }
        };
        let cached = Cached {
            record,
            revision: revision.unwrap_or(NEVER_WRITTEN),
            bytes: compact_size(Some(bytes)),
            size_bound: compact_size(Some(bytes)),
        };
        self.cache_bytes += bytes;
        if let Some(old) = self.cache.insert(key, cached) {
            self.cache_bytes -= old.bytes as usize;
        }
        self.cache_metrics.bytes.set(self.cache_bytes as i64);
    }

    /// Drops records that are written (not folded since, not being written) until the cache
    /// holds at most three quarters of its bound, so most of what it held stays a hit; a key
    /// not in memory is no longer known to be absent.
    fn evict_written(&mut self) {
        let target = self.cache_limit / 4 * 3;
        let (dirty, in_flight) = (&self.dirty, &self.in_flight);
        let mut held = self.cache_bytes;
        self.cache.retain(|key, cached| {
            if held <= target || dirty.contains(key) || in_flight.contains(key) {
                return true;
            }
            held -= cached.bytes as usize;
            false
        });
        self.cache.shrink_to_fit();
        self.cache_bytes = held;
        self.evicted_down_to = held;
        self.cache_metrics.bytes.set(held as i64);
        self.complete = false;
    }

    /// Whether the records held (as stored) exceed the cache's bound even after dropping the
    /// written ones: what is folded must be written before memory can be given back.
    pub(super) fn over_bound(&self) -> bool {
        self.cache_bytes > self.cache_limit
    }

    /// Folds `inputs` (stream order, every key loaded by `ensure_loaded`) ending at
    /// `last_seq` into memory; a message [`parking::step`] refuses changes nothing and is
    /// parked.
    pub(super) fn fold(&mut self, inputs: &[impl Borrow<P::Input>], last_seq: u64) {
        let mut lookups = 0;
        for input in inputs {
            let input = input.borrow();
            let seq = P::seq(input);
            let mut records = CachedRecords {
                cache: &mut self.cache,
                unreadable: &self.unreadable,
                complete: self.complete,
                lookups: std::cell::Cell::new(0),
            };
            let step = parking::step::<P>(input, self.limit, &mut records);
            lookups += records.lookups.get();
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
                let key = keep(
                    &mut self.cache,
                    &change.key,
                    change.after,
                    change.size_bound,
                );
                if changed {
                    self.dirty.insert(key);
                }
            }
        }
        self.pending_seq = Some(last_seq);
        let hits = lookups.saturating_sub(std::mem::take(&mut self.loaded_since_fold));
        self.cache_metrics.hits.inc_by(hits);
    }

    /// Hands what is folded to a flush. Call only when no flush is in flight: the revisions
    /// it expects are those the previous flush stored.
    pub(super) fn take_plan(&mut self, owner: &str) -> FlushPlan<P::Notice, P::Record> {
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
        // The records are shared with the flush, which serializes each as it writes it: a
        // batch never holds all of its records encoded at once.
        let writes = self
            .in_flight
            .iter()
            .map(|key| {
                let cached = self.cache.get(key).expect("a folded record is in memory");
                RecordWrite {
                    key: key.clone(),
                    record: cached.record.clone(),
                    expected: cached.revision(),
                }
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
        for RecordWritten {
            key,
            revision,
            bytes: size,
        } in done.revisions
        {
            if let Some(entry) = self.cache.get_mut(&key) {
                entry.revision = revision.unwrap_or(NEVER_WRITTEN);
                self.cache_bytes = self.cache_bytes + size - entry.bytes as usize;
                entry.bytes = compact_size(Some(size));
                if !self.dirty.contains(&key) {
                    // Unchanged since it was written: its size is known exactly.
                    entry.size_bound = compact_size(Some(size));
                }
            }
        }
        self.cache_metrics.bytes.set(self.cache_bytes as i64);
        if let Some(checkpoint) = done.checkpoint {
            self.checkpoint = checkpoint;
        }
        self.in_flight.clear();
        // What it wrote may be dropped now.
        self.evicted_down_to = 0;
        done.last_seq
    }
}
