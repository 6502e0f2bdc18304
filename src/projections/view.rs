//! An in-memory view of `PROJ_STATS` (counters and checkpoints of every projection), kept
//! current by a watch of the bucket (`store::follow`): `stats` answers from it without I/O,
//! and read ops wait on it for `Natster-Min-Seq`.

use super::stored::{Checkpoint, Counters};
use crate::store::follow::{follow, Follower, Start};
use crate::store::pause::Pause;
use crate::store::{kv as store_kv, StoreError};
use async_nats::jetstream::kv;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::watch;

/// Counters and checkpoints by projection name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsSnapshot {
    pub counters: BTreeMap<String, Counters>,
    pub checkpoints: BTreeMap<String, u64>,
    /// Progress of the running or last rebuild, by projection.
    pub rebuilds: BTreeMap<String, super::rebuild::RebuildProgress>,
}

impl StatsSnapshot {
    /// Applied sequence of `projection` (0 before its first batch).
    pub fn applied(&self, projection: &str) -> u64 {
        self.checkpoints.get(projection).copied().unwrap_or(0)
    }

    /// Counters of `projection`.
    pub fn counters(&self, projection: &str) -> Counters {
        self.counters.get(projection).cloned().unwrap_or_default()
    }

    fn absorb(&mut self, key: &str, value: &[u8]) {
        if let Some(name) = key.strip_prefix("checkpoint.") {
            if let Ok(checkpoint) = serde_json::from_slice::<Checkpoint>(value) {
                let applied = self.checkpoints.entry(name.to_string()).or_default();
                *applied = (*applied).max(checkpoint.applied_seq);
            }
        } else if let Some(name) = key.strip_prefix("rebuild.") {
            if let Ok(progress) = serde_json::from_slice(value) {
                self.rebuilds.insert(name.to_string(), progress);
            }
        } else if let Some(name) = key.strip_prefix("counters.") {
            if let Ok(counters) = serde_json::from_slice::<Counters>(value) {
                let current = self.counters.entry(name.to_string()).or_default();
                if counters.counted_seq >= current.counted_seq {
                    *current = counters;
                }
            }
        }
    }
}

/// Takes every value a watch of `PROJ_STATS` delivers into the snapshot.
struct StatsFollower {
    snapshot: watch::Sender<StatsSnapshot>,
}

impl Follower for StatsFollower {
    fn started(&mut self, _empty: bool) {}

    fn change(&mut self, entry: &kv::Entry) {
        if entry.operation == kv::Operation::Put {
            self.snapshot
                .send_modify(|s| s.absorb(&entry.key, &entry.value));
        }
    }

    fn ended(&mut self, reason: &'static str) {
        tracing::debug!(reason, "the stats watch ended; following PROJ_STATS again");
    }
}

/// A live view of `PROJ_STATS`; cheap to clone.
#[derive(Clone)]
pub struct StatsView {
    snapshot: watch::Receiver<StatsSnapshot>,
}

impl StatsView {
    /// Loads the current values, then follows updates through `client` (with
    /// [`follow`](crate::store::follow::follow): a lost watch is replaced within seconds) until
    /// `stop` is cancelled. Values only move forward (checkpoints by their maximum, counters by
    /// the sequence they counted to), so a new watch replaying current values changes nothing
    /// already seen.
    pub async fn start(
        client: async_nats::Client,
        stats: kv::Store,
        stop: tokio_util::sync::CancellationToken,
    ) -> Result<StatsView, StoreError> {
        let mut initial = StatsSnapshot::default();
        for key in store_kv::keys(&stats).await? {
            if let Some(value) = store_kv::get(&stats, &key).await? {
                initial.absorb(&key, &value);
            }
        }
        let (tx, snapshot) = watch::channel(initial);
        tokio::spawn(follow(
            client,
            stats,
            Start::Current,
            StatsFollower { snapshot: tx },
            Pause::never(),
            stop,
        ));
        Ok(StatsView { snapshot })
    }

    /// The current values.
    pub fn snapshot(&self) -> StatsSnapshot {
        self.snapshot.borrow().clone()
    }

    /// Waits until every projection in `projections` has applied `seq`; on timeout returns
    /// the first lagging projection and its applied sequence.
    pub async fn wait_applied(
        &self,
        projections: &[&'static str],
        seq: u64,
        within: Duration,
    ) -> Result<(), (&'static str, u64)> {
        let mut snapshot = self.snapshot.clone();
        let all_applied = |s: &StatsSnapshot| projections.iter().all(|p| s.applied(p) >= seq);
        let reached = tokio::time::timeout(within, async {
            snapshot.wait_for(all_applied).await.is_ok()
        })
        .await;
        match reached {
            Ok(true) => Ok(()),
            _ => {
                let s = self.snapshot();
                let lagging = projections
                    .iter()
                    .find(|p| s.applied(p) < seq)
                    .copied()
                    .unwrap_or(projections[0]);
                Err((lagging, s.applied(lagging)))
            }
        }
    }
}
