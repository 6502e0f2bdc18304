//! Events a projection cannot apply, ever: parked, so the projection moves on.
//!
//! Applying one message is all or nothing: [`step`] computes every record the message touches
//! and checks each against what the bucket can hold (a valid key, a readable stored record, a
//! value within the server's `max_payload`). If any check fails the whole message is parked
//! for this projection: no record changes, nothing is counted or announced, and a
//! [`ParkedEvent`] is kept in `PROJ_PARKED` under `<projection>.<seq>`. The checks depend only
//! on the records before the message, the message and the size limit, so the incremental
//! runner and a rebuild park exactly the same messages (a stored record that does not decode
//! is the one exception: a rebuild never reads stored records, so it applies the message and
//! writes the record afresh — that is how parked messages are replayed).
//!
//! Transient failures (an unavailable server, a timeout, a lost compare-and-set) are never
//! parked: they happen while writing, and the runner retries them.

use super::Projection;
use crate::model::limits::MESSAGE_OVERHEAD;
use crate::store::kv::{self, is_valid_key};
use crate::store::StoreError;
use async_nats::jetstream::kv::Store as Bucket;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The largest encoded record a projection writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLimit {
    pub max_bytes: usize,
}

impl RecordLimit {
    /// What a server with `max_payload` accepts as a record (the rest of a message is its
    /// subject and headers).
    pub fn for_max_payload(max_payload: usize) -> RecordLimit {
        RecordLimit {
            max_bytes: max_payload.saturating_sub(MESSAGE_OVERHEAD),
        }
    }
}

impl Default for RecordLimit {
    /// A server's default `max_payload` (1 MiB).
    fn default() -> Self {
        RecordLimit::for_max_payload(1024 * 1024)
    }
}

/// Why a message cannot be applied to a projection. Retrying never changes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParkReason {
    #[error("{key:?} is not a key the bucket can hold")]
    InvalidKey { key: String },
    #[error(
        "the record at {key:?} would be {bytes} bytes, more than the {limit} bytes a message \
         of this server can carry"
    )]
    TooLarge {
        key: String,
        bytes: usize,
        limit: usize,
    },
    #[error("the stored record at {key:?} does not decode: {detail}")]
    Unreadable { key: String, detail: String },
}

/// A stored record as the fold sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored<R> {
    /// The record (`None`: the key holds nothing).
    Readable(Option<R>),
    /// A value that does not decode as the record type (the error, for the parked record).
    Unreadable(String),
}

/// One record a message changes, as [`step`] computed it.
pub struct Change<P: Projection> {
    pub key: String,
    /// Whether the key held a record before.
    pub existed: bool,
    pub before: super::CountDelta,
    pub after: Option<P::Record>,
    pub notice: Option<P::Notice>,
}

/// Applies `input` to every record it touches, or says why it parks. `current` gives a key's
/// record before the message (a [`ParkReason::Unreadable`] for a stored value that does not
/// decode). Records already at or past the message's sequence are left out (replays change
/// nothing).
pub fn step<'a, P: Projection>(
    input: &P::Input,
    limit: RecordLimit,
    current: impl Fn(&str) -> Result<Option<&'a P::Record>, ParkReason>,
) -> Result<Vec<Change<P>>, ParkReason>
where
    P::Record: 'a,
{
    let seq = P::seq(input);
    let mut changes = Vec::new();
    for key in P::keys(input) {
        if !is_valid_key(&key) {
            return Err(ParkReason::InvalidKey { key });
        }
        let record = current(&key)?;
        if record.is_some_and(|r| P::applied_seq(r) >= seq) {
            continue;
        }
        let before = P::tally(record);
        let (after, notice) = P::apply_announcing(&key, record.cloned(), input);
        if let Some(after) = after.as_ref().filter(|a| P::applied_seq(a) == seq) {
            let bytes = encoded_len(after);
            if bytes > limit.max_bytes {
                return Err(ParkReason::TooLarge {
                    key,
                    bytes,
                    limit: limit.max_bytes,
                });
            }
        }
        changes.push(Change {
            existed: record.is_some(),
            key,
            before,
            after,
            notice,
        });
    }
    Ok(changes)
}

/// Bytes of `record` as JSON, without building them.
fn encoded_len<T: Serialize>(record: &T) -> usize {
    struct Counting(usize);
    impl std::io::Write for Counting {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counting = Counting(0);
    serde_json::to_writer(&mut counting, record).expect("records serialize to JSON");
    counting.0
}

/// A message one projection did not apply (`<projection>.<seq>` in `PROJ_PARKED`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkedEvent {
    pub projection: String,
    pub seq: u64,
    pub subject: String,
    pub error: String,
    /// When it was first parked (Unix milliseconds).
    pub parked_unix_ms: u64,
}

impl ParkedEvent {
    /// `input` of projection `P`, parked for `reason` now.
    pub fn new<P: Projection>(input: &P::Input, reason: &ParkReason) -> ParkedEvent {
        ParkedEvent {
            projection: P::NAME.to_string(),
            seq: P::seq(input),
            subject: P::subject(input),
            error: reason.to_string(),
            parked_unix_ms: super::rebuild::unix_ms(),
        }
    }

    /// Its key in `PROJ_PARKED` (sequences zero-padded, so keys sort in log order).
    pub fn key(&self) -> String {
        parked_key(&self.projection, self.seq)
    }
}

/// Key of the parked message `seq` of `projection`.
pub fn parked_key(projection: &str, seq: u64) -> String {
    format!("{projection}.{seq:020}")
}

/// Records `event` unless it is recorded already; returns whether it is new. A bucket that
/// refuses it for good (full) is logged, not retried: the projection must move on.
pub async fn record(parked: &Bucket, event: &ParkedEvent) -> Result<bool, StoreError> {
    match kv::create(parked, &event.key(), kv::encode(event)).await {
        Ok(_) => Ok(true),
        Err(error) if error.is_conflict() => Ok(false),
        Err(error) if error.kind() == crate::store::StoreErrorKind::Permanent => {
            tracing::error!(projection = %event.projection, seq = event.seq, %error, "cannot record a parked event");
            Ok(true)
        }
        Err(error) => Err(error),
    }
}

/// Every parked message of `projection` (of every projection for `None`), in log order per
/// projection.
pub async fn list(
    parked: &Bucket,
    projection: Option<&str>,
) -> Result<Vec<ParkedEvent>, StoreError> {
    let mut keys = kv::keys(parked).await?;
    keys.retain(|key| projection.is_none_or(|p| key.split('.').next() == Some(p)));
    keys.sort();
    let mut events = Vec::with_capacity(keys.len());
    for key in keys {
        if let Some(bytes) = kv::get(parked, &key).await? {
            events.push(kv::decode(&parked.name, &bytes)?);
        }
    }
    Ok(events)
}

/// Makes the parked messages of `projection` exactly `now` (what a rebuild parked): records
/// the new ones and deletes those no longer parked. Returns how many were cleared.
pub async fn replace(
    parked: &Bucket,
    projection: &str,
    now: &[ParkedEvent],
) -> Result<usize, StoreError> {
    let keep: BTreeSet<String> = now.iter().map(ParkedEvent::key).collect();
    let mut cleared = 0;
    for old in list(parked, Some(projection)).await? {
        if !keep.contains(&old.key()) {
            kv::delete(parked, &old.key()).await?;
            cleared += 1;
        }
    }
    for event in now {
        record(parked, event).await?;
    }
    Ok(cleared)
}

#[cfg(test)]
mod tests;
