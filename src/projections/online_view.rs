//! An in-memory view of `PROJ_ONLINE` (whether each catalog is online, and its last
//! revision), kept current by a watch of the bucket, so `my.shares` answers the online state
//! of every shared catalog without a read per catalog.
//!
//! Contract:
//! - **Complete or unused.** The view answers only once it holds every record the bucket held
//!   at some moment after its watch started, and every change since, in order; until then (at
//!   start, and while it is rebuilt) [`OnlineView::lookup`] returns `None` and callers read
//!   the bucket as before.
//! - **Rebuilt, never patched.** A watch that fails or ends, and every reconnect of the client
//!   (the server the watch lived on may have lost changes, or be another node now), throws
//!   the view away and starts a new watch from the bucket's current values.
//! - **Bounded by the bucket.** It holds one small entry per record of `PROJ_ONLINE` (one per
//!   catalog that ever went online, which the per-account cap of catalogs online bounds per
//!   tenant); `natster_online_view_entries` and `natster_online_view_bytes` report it.

use crate::model::online::OnlineRecord;
use crate::store::follow::{follow, Follower, Start};
use crate::store::pause::Pause;
use async_nats::jetstream::kv;
use hashbrown::HashMap;
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use std::sync::{Arc, RwLock};
use tokio_util::sync::CancellationToken;

/// Where the view reports its size and rebuilds.
#[derive(Clone, Default)]
pub struct ViewMetrics {
    pub entries: Gauge,
    pub bytes: Gauge,
    pub rebuilds: Counter,
}

/// What the view knows of one catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnlineEntry {
    pub online: bool,
    /// Last revision heartbeated (kept after the catalog goes offline).
    pub revision: i64,
}

impl ViewState {
    fn size(&self) -> (usize, usize) {
        let slot = std::mem::size_of::<(Box<str>, OnlineEntry)>() + 1;
        let bytes = self.records.capacity() * slot + self.key_bytes;
        (self.records.len(), bytes)
    }

    fn insert(&mut self, key: &str, entry: OnlineEntry) {
        match self.records.get_mut(key) {
            Some(held) => *held = entry,
            None => {
                self.key_bytes += key.len();
                self.records.insert(key.into(), entry);
            }
        }
    }

    fn remove(&mut self, key: &str) {
        if self.records.remove(key).is_some() {
            self.key_bytes -= key.len();
        }
    }
}

impl From<&OnlineRecord> for OnlineEntry {
    fn from(record: &OnlineRecord) -> Self {
        OnlineEntry {
            online: record.online,
            revision: record.revision,
        }
    }
}

#[derive(Default)]
struct ViewState {
    /// By `<owner>.<catalog>`.
    records: HashMap<Box<str>, OnlineEntry>,
    /// Bytes of the keys of `records`.
    key_bytes: usize,
    /// `records` is complete (see the module's contract).
    ready: bool,
}

/// A live view of `PROJ_ONLINE`; cheap to clone.
#[derive(Clone)]
pub struct OnlineView {
    state: Arc<RwLock<ViewState>>,
}

impl OnlineView {
    /// Starts following `bucket` through `client` until `stop` is cancelled; the view is
    /// usable once its first watch has delivered the bucket's current values.
    pub fn start(
        client: async_nats::Client,
        bucket: kv::Store,
        metrics: ViewMetrics,
        stop: CancellationToken,
    ) -> OnlineView {
        let view = OnlineView {
            state: Arc::default(),
        };
        let follower = OnlineFollower {
            view: view.clone(),
            metrics,
        };
        tokio::spawn(follow(
            client,
            bucket,
            Start::Current,
            follower,
            Pause::never(),
            stop,
        ));
        view
    }

    /// The entry of each of `keys` (`None` for a key the bucket does not hold), or `None`
    /// when the view is not complete.
    pub fn lookup<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a str>,
    ) -> Option<Vec<Option<OnlineEntry>>> {
        let state = self.state.read().expect("online view lock");
        state.ready.then(|| {
            keys.into_iter()
                .map(|k| state.records.get(k).copied())
                .collect()
        })
    }

    /// Empties the view; `ready`: it is complete as it is (empty).
    fn reset(&self, ready: bool) {
        *self.state.write().expect("online view lock") = ViewState {
            ready,
            ..ViewState::default()
        };
    }

    /// Takes in one change; returns the view's size (as [`OnlineView::size`]).
    fn absorb(&self, entry: &kv::Entry) -> (usize, usize) {
        let mut state = self.state.write().expect("online view lock");
        match entry.operation {
            kv::Operation::Put => match serde_json::from_slice::<OnlineRecord>(&entry.value) {
                Ok(record) => state.insert(&entry.key, OnlineEntry::from(&record)),
                // The online projection writes only records it can read back; anything else
                // is not a catalog's state.
                Err(error) => {
                    tracing::debug!(key = %entry.key, %error, "online view skips an undecodable record");
                    state.remove(&entry.key);
                }
            },
            kv::Operation::Delete | kv::Operation::Purge => state.remove(&entry.key),
        }
        // The first watch delivers the bucket's values with the count still to come; at 0
        // the view holds all of them.
        if entry.delta == 0 {
            state.ready = true;
        }
        state.size()
    }
}

/// The view's side of following `PROJ_ONLINE`.
struct OnlineFollower {
    view: OnlineView,
    metrics: ViewMetrics,
}

impl Follower for OnlineFollower {
    fn started(&mut self, empty: bool) {
        // An empty bucket delivers nothing to say the view is complete.
        self.view.reset(empty);
    }

    fn change(&mut self, entry: &kv::Entry) {
        let (entries, bytes) = self.view.absorb(entry);
        self.metrics.entries.set(entries as i64);
        self.metrics.bytes.set(bytes as i64);
    }

    fn ended(&mut self, _reason: &'static str) {
        self.view.reset(false);
        self.metrics.entries.set(0);
        self.metrics.bytes.set(0);
        self.metrics.rebuilds.inc();
    }
}

#[cfg(test)]
mod tests;
