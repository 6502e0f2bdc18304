//! A bounded in-memory cache of one projection bucket's records for the read ops, kept
//! coherent by a watch of the bucket's changes: a read it can answer costs no round trip to
//! the server.
//!
//! Contract:
//! - **Never older than a read of the bucket made when the request arrived, give or take the
//!   watch's delivery.** A record is taken in only from a read made after the key was
//!   announced as wanted; a change the watch delivers meanwhile wins over an older read, and
//!   every later change replaces the held record (by revision, so never backwards).
//! - **Not for `Natster-Min-Seq`.** The cache cannot tell that the projection's writes up to a
//!   checkpoint have reached it, so reads that wait for a sequence read the bucket.
//! - **Rebuilt, never patched.** A watch that fails or ends, and every reconnect of the client
//!   (changes may have been missed), empties the cache; until a new watch runs, reads go to
//!   the bucket and nothing is kept. So does a [`Pause`]: while this instance's runner writes
//!   the whole bucket in a catch-up, the cache goes without a watch (which would be delivered
//!   every record written) and reads go to the bucket.
//! - **Bounded.** It holds at most `limit` bytes (stored size of the records, what each derives
//!   from its record ([`CachedRecord::derived_bytes`]), keys and a fixed overhead each); past
//!   it, arbitrary records are dropped down to three quarters.

use crate::store::follow::{follow, Follower, Start};
use crate::store::kv as store_kv;
use crate::store::pause::Pause;
use crate::store::StoreError;
use async_nats::jetstream::kv;
use hashbrown::HashMap;
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use serde::de::DeserializeOwned;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;
/// Bytes counted for each held record beyond its stored size and key (map slot, allocation).
const ENTRY_OVERHEAD: usize = 96;

/// A record as a [`RecordCache`] holds it: decoded (and whatever the readers derive from it)
/// once, when it is read or a change of it arrives, never per lookup.
pub trait CachedRecord: DeserializeOwned + Send + Sync + 'static {
    /// Bytes it holds beyond what its stored size accounts for.
    fn derived_bytes(&self) -> usize {
        0
    }
}

/// Where the cache reports.
#[derive(Clone, Default)]
pub struct RecordCacheMetrics {
    pub hits: Counter,
    pub misses: Counter,
    pub bytes: Gauge,
    pub rebuilds: Counter,
}

/// A record as the bucket holds it (`None`: no record), at a stream revision.
struct Version<R> {
    record: Option<Arc<R>>,
    revision: u64,
    /// Its stored size; once held, what it counts against the bound (with key and overhead).
    bytes: usize,
}

impl<R> Clone for Version<R> {
    fn clone(&self) -> Self {
        Version {
            record: self.record.clone(),
            revision: self.revision,
            bytes: self.bytes,
        }
    }
}

struct Pending<R> {
    /// Reads of the key in flight.
    readers: u32,
    /// The newest change the watch delivered while they ran.
    newest: Option<Version<R>>,
}

struct CacheState<R> {
    records: HashMap<Box<str>, Version<R>>,
    pending: HashMap<Box<str>, Pending<R>>,
    bytes: usize,
    /// A watch is running: the cache may answer and take records in.
    live: bool,
    /// Moves on every rebuild: a read started before it takes nothing in.
    generation: u64,
}

impl<R> Default for CacheState<R> {
    fn default() -> Self {
        CacheState {
            records: HashMap::new(),
            pending: HashMap::new(),
            bytes: 0,
            live: false,
            generation: 0,
        }
    }
}

fn held_bytes(key: &str, bytes: usize) -> usize {
    key.len() + bytes + ENTRY_OVERHEAD
}

impl<R> CacheState<R> {
    /// Holds `version` at `key` unless a newer one is held; drops records past `limit`.
    fn hold(&mut self, key: &str, version: Version<R>, limit: usize) {
        let version = Version {
            bytes: held_bytes(key, version.bytes),
            ..version
        };
        match self.records.get_mut(key) {
            Some(held) if held.revision >= version.revision => {}
            Some(held) => {
                self.bytes = self.bytes - held.bytes + version.bytes;
                *held = version;
            }
            None => {
                self.bytes += version.bytes;
                self.records.insert(key.into(), version);
            }
        }
        if self.bytes > limit {
            let target = limit / 4 * 3;
            let mut bytes = self.bytes;
            self.records.retain(|_, held| {
                if bytes <= target {
                    return true;
                }
                bytes -= held.bytes;
                false
            });
            self.bytes = bytes;
        }
    }
}

/// A bounded, watched cache of the records of one bucket; cheap to clone.
pub struct RecordCache<R> {
    state: Arc<Mutex<CacheState<R>>>,
    bucket: kv::Store,
    limit: usize,
    metrics: RecordCacheMetrics,
}

impl<R> Clone for RecordCache<R> {
    fn clone(&self) -> Self {
        RecordCache {
            state: self.state.clone(),
            bucket: self.bucket.clone(),
            limit: self.limit,
            metrics: self.metrics.clone(),
        }
    }
}

impl<R: CachedRecord> RecordCache<R> {
    /// Starts watching `bucket` through `client` until `stop` is cancelled, holding at most
    /// `limit` bytes; while `pause` asks for it, without a watch (reads go to the bucket).
    pub fn start(
        client: async_nats::Client,
        bucket: kv::Store,
        limit: usize,
        metrics: RecordCacheMetrics,
        pause: Pause,
        stop: CancellationToken,
    ) -> RecordCache<R> {
        let cache = RecordCache {
            state: Arc::default(),
            bucket,
            limit,
            metrics,
        };
        tokio::spawn(follow(
            client,
            cache.bucket.clone(),
            Start::New,
            cache.clone(),
            pause,
            stop,
        ));
        cache
    }

    /// The record at `key` (`None`: none), from memory or read from the bucket.
    pub async fn get(&self, key: &str) -> Result<Option<Arc<R>>, StoreError> {
        let generation = {
            let mut state = self.state.lock().expect("record cache lock");
            if let Some(held) = state.records.get(key) {
                self.metrics.hits.inc();
                return Ok(held.record.clone());
            }
            if state.live {
                let pending = state.pending.entry_ref(key).or_insert(Pending {
                    readers: 0,
                    newest: None,
                });
                pending.readers += 1;
            }
            (state.live).then_some(state.generation)
        };
        self.metrics.misses.inc();
        let read = self.read(key).await;
        let mut state = self.state.lock().expect("record cache lock");
        let newest = match generation {
            Some(generation) if generation == state.generation => {
                let pending = state.pending.get_mut(key).expect("announced");
                pending.readers -= 1;
                let newest = pending.newest.clone();
                if pending.readers == 0 {
                    state.pending.remove(key);
                }
                newest
            }
            _ => return read.map(|version| version.record),
        };
        let read = read?;
        let version = match newest {
            Some(newest) if newest.revision > read.revision => newest,
            _ => read,
        };
        let record = version.record.clone();
        state.hold(key, version, self.limit);
        self.metrics.bytes.set(state.bytes as i64);
        Ok(record)
    }

    async fn read(&self, key: &str) -> Result<Version<R>, StoreError> {
        let stored = store_kv::load_bytes(&self.bucket, key).await?;
        let revision = stored.revision.unwrap_or(0);
        match stored.value {
            Some(bytes) => self.decoded(&bytes, revision),
            None => Ok(Version {
                record: None,
                revision,
                bytes: 0,
            }),
        }
    }

    /// The version of a stored record, decoded.
    fn decoded(&self, stored: &[u8], revision: u64) -> Result<Version<R>, StoreError> {
        let record = store_kv::decode::<R>(&self.bucket.name, stored)?;
        Ok(Version {
            bytes: stored.len() + record.derived_bytes(),
            record: Some(Arc::new(record)),
            revision,
        })
    }

    /// Takes in one change the watch delivered.
    fn absorb(&self, entry: &kv::Entry) {
        let wanted = {
            let state = self.state.lock().expect("record cache lock");
            state.records.contains_key(entry.key.as_str())
                || state.pending.contains_key(entry.key.as_str())
        };
        if !wanted {
            return;
        }
        let version = match entry.operation {
            kv::Operation::Put => match self.decoded(&entry.value, entry.revision) {
                Ok(version) => version,
                // Not a record this cache can hold: forget the key, reads go to the bucket.
                Err(_) => {
                    let mut state = self.state.lock().expect("record cache lock");
                    if let Some(held) = state.records.remove(entry.key.as_str()) {
                        state.bytes -= held.bytes;
                    }
                    return;
                }
            },
            kv::Operation::Delete | kv::Operation::Purge => Version {
                record: None,
                revision: entry.revision,
                bytes: 0,
            },
        };
        let mut state = self.state.lock().expect("record cache lock");
        if let Some(pending) = state.pending.get_mut(entry.key.as_str()) {
            if pending
                .newest
                .as_ref()
                .is_none_or(|newest| newest.revision < version.revision)
            {
                pending.newest = Some(version.clone());
            }
        }
        if state.records.contains_key(entry.key.as_str()) {
            state.hold(&entry.key, version, self.limit);
        }
        self.metrics.bytes.set(state.bytes as i64);
    }

    /// Empties the cache and sets whether it may take records in.
    fn reset(&self, live: bool) {
        let mut state = self.state.lock().expect("record cache lock");
        let generation = state.generation + 1;
        *state = CacheState {
            live,
            generation,
            ..CacheState::default()
        };
        self.metrics.bytes.set(0);
    }
}

impl<R: CachedRecord> Follower for RecordCache<R> {
    fn started(&mut self, _empty: bool) {
        // Changes from now on; what is held is read after this, so nothing is missed.
        self.reset(true);
    }

    fn change(&mut self, entry: &kv::Entry) {
        self.absorb(entry);
    }

    fn ended(&mut self, _reason: &'static str) {
        self.reset(false);
        self.metrics.rebuilds.inc();
    }
}

#[cfg(test)]
mod tests;
