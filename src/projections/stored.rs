//! What the projections keep in `PROJ_STATS` besides their records: counters, checkpoints,
//! leases, rebuild progress and catch-ups in passes, each under `<kind>.<projection>`.

use crate::store::{kv, StoreError};
use async_nats::jetstream::kv::Store as Bucket;
use serde::{Deserialize, Serialize};

/// Counters of one projection (`counters.<name>`).
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

impl Counters {
    /// These counters with `delta` added and `counted_seq` moved to `seq`.
    pub fn advanced(&self, delta: super::CountDelta, seq: u64) -> Counters {
        Counters {
            counted_seq: seq,
            total_initialized: self.total_initialized + delta.total_initialized,
            share_count: self.share_count + delta.share_count,
            running_catalogs: self.running_catalogs + delta.running_catalogs,
        }
    }
}

/// Progress of one projection (`checkpoint.<name>`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Every message up to this sequence is applied to the records.
    pub applied_seq: u64,
    /// The instance that wrote it (see `crate::store::lease::instance_id`).
    #[serde(default)]
    pub instance: String,
}

/// A catch-up from empty in passes, as far as it got (`passes.<name>`; see
/// `runner::passes`). Gone once the run is done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassProgress {
    /// The first sequence the run applies (the checkpoint's next).
    pub from: u64,
    /// The last sequence it applies (the log's end when it started).
    pub to: u64,
    /// The record limit its first pass checked the log against; later passes decide with it.
    pub max_bytes: usize,
    /// Parts of the keys whose records are written.
    pub done: Vec<crate::projections::runner::partition::Part>,
    /// The part being written: its counter changes are in `delta`, some of its records may be
    /// written.
    pub writing: Option<crate::projections::runner::partition::Part>,
    /// Counter changes of the parts done and of the one being written.
    pub delta: super::CountDelta,
    /// What all records together take, as the last pass found (sizes the next part).
    #[serde(default)]
    pub total_bytes: Option<u64>,
    /// Keys whose records every pass holds (see `runner::partition`).
    #[serde(default)]
    pub pinned: Vec<String>,
}

/// Key of a projection's catch-up in passes.
pub fn passes_key(name: &str) -> String {
    format!("passes.{name}")
}

/// Key of a projection's counters.
pub fn counters_key(name: &str) -> String {
    format!("counters.{name}")
}

/// Key of a projection's checkpoint.
pub fn checkpoint_key(name: &str) -> String {
    format!("checkpoint.{name}")
}

/// Key of a projection's lease.
pub fn lease_key(name: &str) -> String {
    format!("lease.{name}")
}

/// Key of a projection's rebuild progress.
pub fn rebuild_key(name: &str) -> String {
    format!("rebuild.{name}")
}

/// The checkpoint of projection `name` as stored (the default before its first batch).
pub async fn checkpoint(stats: &Bucket, name: &str) -> Result<Checkpoint, StoreError> {
    Ok(kv::load::<Checkpoint>(stats, &checkpoint_key(name))
        .await?
        .value
        .unwrap_or_default())
}
