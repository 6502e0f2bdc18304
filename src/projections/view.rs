//! An in-memory view of `PROJ_STATS` (counters and checkpoints of every projection), kept
//! current by a KV watch: `stats` answers from it without I/O, and read ops wait on it for
//! `Natster-Min-Seq`.

use super::stored::{Checkpoint, Counters};
use crate::store::{kv as store_kv, StoreError};
use async_nats::jetstream::kv;
use futures::StreamExt;
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

/// A live view of `PROJ_STATS`; cheap to clone.
#[derive(Clone)]
pub struct StatsView {
    snapshot: watch::Receiver<StatsSnapshot>,
}

impl StatsView {
    /// Loads the current values, then follows updates until `stop` is cancelled.
    pub async fn start(
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
        let mut updates = stats
            .watch_with_history(">")
            .await
            .map_err(|e| StoreError::unavailable("watch PROJ_STATS", e))?;
        tokio::spawn(async move {
            loop {
                let entry = tokio::select! {
                    _ = stop.cancelled() => break,
                    entry = updates.next() => entry,
                };
                match entry {
                    Some(Ok(entry)) => {
                        if entry.operation == kv::Operation::Put {
                            tx.send_modify(|s| s.absorb(&entry.key, &entry.value));
                        }
                    }
                    // A broken watch is not polled again: it is replaced by a new one (which
                    // replays the current values first).
                    _ => loop {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
                        }
                        match stats.watch_with_history(">").await {
                            Ok(watch) => {
                                updates = watch;
                                break;
                            }
                            Err(error) => tracing::debug!(%error, "re-creating the stats watch"),
                        }
                    },
                }
            }
        });
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
