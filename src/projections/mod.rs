//! Read models projected from the event log. Each projection is a pure `apply` over one
//! record (plus the counters it contributes to `stats`); [`runner`] is the shared shell that
//! feeds them from a durable consumer.

pub mod accounts;
pub mod catalogs;
pub mod oauth;
pub mod rebuild;
pub mod runner;
pub mod view;

use crate::model::Event;
use serde::{de::DeserializeOwned, Serialize};

/// Counters a projection contributes to `stats`, as changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CountDelta {
    pub total_initialized: i64,
    pub share_count: i64,
}

impl CountDelta {
    /// Whether nothing changes.
    pub fn is_zero(&self) -> bool {
        *self == CountDelta::default()
    }
}

impl std::ops::Sub for CountDelta {
    type Output = CountDelta;
    fn sub(self, other: CountDelta) -> CountDelta {
        CountDelta {
            total_initialized: self.total_initialized - other.total_initialized,
            share_count: self.share_count - other.share_count,
        }
    }
}

impl std::ops::AddAssign for CountDelta {
    fn add_assign(&mut self, other: CountDelta) {
        self.total_initialized += other.total_initialized;
        self.share_count += other.share_count;
    }
}

/// One read model: which records an event touches and how it changes each of them.
///
/// Contract: `apply` is pure and deterministic (only event data and the stream timestamp);
/// every record it returns has `applied_seq == event.seq`; the runner never calls it for an
/// event at or below the record's `applied_seq`, so redelivery and replay change nothing.
pub trait Projection: Send + Sync + 'static {
    /// Name in metrics, the consumer name and the CLI.
    const NAME: &'static str;
    /// Bucket that holds the records.
    const BUCKET: &'static str;
    /// One record.
    type Record: Serialize + DeserializeOwned + Clone + PartialEq + Send + Sync + std::fmt::Debug;

    /// Keys of the records `event` changes (none for events this projection ignores).
    fn keys(event: &Event) -> Vec<String>;

    /// The record at `key` after `event`; `None` = no record.
    fn apply(key: &str, record: Option<Self::Record>, event: &Event) -> Option<Self::Record>;

    /// Last sequence applied to `record`.
    fn applied_seq(record: &Self::Record) -> u64;

    /// What one record contributes to the counters; an event changes them by the record's
    /// tally after it minus its tally before.
    fn tally(_record: Option<&Self::Record>) -> CountDelta {
        CountDelta::default()
    }
}

/// Folds `events` (in stream order) into `records`, exactly as the runner does batch by batch;
/// returns the counter changes. Used by rebuilds, tests and the runner itself.
pub fn fold<P: Projection>(
    records: &mut std::collections::BTreeMap<String, P::Record>,
    events: &[Event],
) -> CountDelta {
    let mut delta = CountDelta::default();
    for event in events {
        for key in P::keys(event) {
            if records
                .get(&key)
                .is_some_and(|r| P::applied_seq(r) >= event.seq)
            {
                continue;
            }
            let before = records.remove(&key);
            let tally_before = P::tally(before.as_ref());
            let after = P::apply(&key, before, event);
            delta += P::tally(after.as_ref()) - tally_before;
            if let Some(record) = after {
                records.insert(key, record);
            }
        }
    }
    delta
}
