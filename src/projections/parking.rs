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

/// A key's record before a message, as the caller holds it.
pub struct Before<'a, R> {
    /// The record (`None`: the key holds nothing).
    pub record: Option<&'a R>,
    /// An upper bound on its stored size, when the caller knows one.
    pub size_bound: Option<usize>,
}

impl<'a, R> Before<'a, R> {
    /// `record`, its size unknown (every change to it is measured).
    pub fn unmeasured(record: Option<&'a R>) -> Self {
        Before {
            record,
            size_bound: None,
        }
    }
}

/// The records a message is applied to, as [`step`] needs them.
pub trait Records<R> {
    /// The record at `key` before the message; a [`ParkReason::Unreadable`] for a stored
    /// value that does not decode.
    fn before(&self, key: &str) -> Result<Before<'_, R>, ParkReason>;

    /// Takes the record at `key` out to change it without a copy; the caller puts the
    /// [`Change`]'s `after` back (also when it is unchanged).
    fn take(&mut self, key: &str) -> Option<R>;

    /// Stores what a change left at `key` (`None`: no record), with its size bound.
    fn put(&mut self, key: String, record: Option<R>, size_bound: Option<usize>);
}

/// Records in an ordered map, sizes unknown (tests).
impl<R> Records<R> for std::collections::BTreeMap<String, R> {
    fn before(&self, key: &str) -> Result<Before<'_, R>, ParkReason> {
        Ok(Before::unmeasured(self.get(key)))
    }

    fn take(&mut self, key: &str) -> Option<R> {
        self.remove(key)
    }

    fn put(&mut self, key: String, record: Option<R>, _size_bound: Option<usize>) {
        match record {
            Some(record) => self.insert(key, record),
            None => self.remove(&key),
        };
    }
}

/// Records in memory with a size bound each, every key of the projection (a key not held is
/// absent): what a rebuild folds into. Changes are made in place while the bounds show the
/// records fit.
pub struct SizedRecords<R> {
    records: hashbrown::HashMap<String, (R, Option<usize>)>,
}

impl<R> Default for SizedRecords<R> {
    fn default() -> Self {
        SizedRecords {
            records: hashbrown::HashMap::new(),
        }
    }
}

impl<R> SizedRecords<R> {
    /// The records, in no particular order.
    pub fn into_records(self) -> impl Iterator<Item = (String, R)> {
        self.records
            .into_iter()
            .map(|(key, (record, _))| (key, record))
    }

    /// The record at `key`.
    pub fn get(&self, key: &str) -> Option<&R> {
        self.records.get(key).map(|(record, _)| record)
    }

    /// Removes and returns the record at `key`.
    pub fn remove(&mut self, key: &str) -> Option<R> {
        self.records.remove(key).map(|(record, _)| record)
    }
}

impl<R> Records<R> for SizedRecords<R> {
    fn before(&self, key: &str) -> Result<Before<'_, R>, ParkReason> {
        Ok(match self.records.get(key) {
            Some((record, size_bound)) => Before {
                record: Some(record),
                size_bound: *size_bound,
            },
            None => Before {
                record: None,
                size_bound: Some(0),
            },
        })
    }

    fn take(&mut self, key: &str) -> Option<R> {
        self.remove(key)
    }

    fn put(&mut self, key: String, record: Option<R>, size_bound: Option<usize>) {
        match record {
            Some(record) => self.records.insert(key, (record, size_bound)),
            None => self.records.remove(&key),
        };
    }
}

/// One record a message changes, as [`step`] computed it.
pub struct Change<P: Projection> {
    pub key: String,
    /// Whether the key held a record before.
    pub existed: bool,
    pub before: super::CountDelta,
    /// The record after the message; unchanged when its `applied_seq` is older than the
    /// message's.
    pub after: Option<P::Record>,
    /// An upper bound on the stored size of `after`, when known (exact when it was measured).
    pub size_bound: Option<usize>,
    pub notice: Option<P::Notice>,
}

/// What a message finds at one key, checked before anything changes.
struct Touched {
    key: String,
    existed: bool,
    before: super::CountDelta,
    size_bound: Option<usize>,
    /// The size bound after the message, when it is known to stay within the limit.
    grown: Option<usize>,
}

/// Applies `input` to every record it touches, or says why it parks. Records already at or
/// past the message's sequence are left out (replays change nothing).
///
/// All or nothing: every check that depends on the records before the message (valid keys,
/// readable records) is made first. When every touched record's size bound plus the
/// message's [`Projection::growth_bound`] (its [`Projection::existing_growth_bound`] for a
/// record that exists) stays within the limit, the records are taken out
/// and changed without a copy (nothing can park any more); otherwise each is copied, changed
/// and measured, and nothing is taken unless all fit. So the same messages park whether or
/// not the caller knows sizes.
pub fn step<P: Projection>(
    input: &P::Input,
    limit: RecordLimit,
    records: &mut impl Records<P::Record>,
) -> Result<Vec<Change<P>>, ParkReason> {
    let keys = P::keys(input);
    step_within::<P>(
        input,
        keys,
        |_, _| true,
        P::growth_bound(input),
        limit,
        records,
    )
}

/// [`step`] for the keys of `input` (`keys`, its [`Projection::keys`], which the caller has at
/// hand) that `within` selects (called with each key's index in `keys` and the key), given the message's `growth` bound
/// for a new record (its [`Projection::growth_bound`], at hand too; the bound for records that
/// exist is asked for here): every key is checked to be valid, only those selected are read,
/// changed and measured (a catch-up in passes folds one partition of the keys at a time, and
/// knows by other means that the keys it leaves out cannot park the message).
pub fn step_within<P: Projection>(
    input: &P::Input,
    keys: Vec<String>,
    within: impl Fn(usize, &str) -> bool,
    growth: Option<usize>,
    limit: RecordLimit,
    records: &mut impl Records<P::Record>,
) -> Result<Vec<Change<P>>, ParkReason> {
    let seq = P::seq(input);
    let mut touched = Vec::new();
    // Asked for only when a touched record exists.
    let mut existing_growth = None;
    for (index, key) in keys.into_iter().enumerate() {
        if !is_valid_key(&key) {
            return Err(ParkReason::InvalidKey { key });
        }
        if !within(index, &key) {
            continue;
        }
        let Before { record, size_bound } = records.before(&key)?;
        if record.is_some_and(|r| P::applied_seq(r) >= seq) {
            continue;
        }
        let growth = match record {
            Some(_) => *existing_growth.get_or_insert_with(|| P::existing_growth_bound(input)),
            None => growth,
        };
        let grown = size_bound
            .zip(growth)
            .map(|(size, growth)| size.saturating_add(growth))
            .filter(|grown| *grown <= limit.max_bytes);
        touched.push(Touched {
            existed: record.is_some(),
            before: P::tally(record),
            key,
            size_bound,
            grown,
        });
    }
    let in_place = touched.iter().all(|t| t.grown.is_some());
    let mut applied = Vec::with_capacity(touched.len());
    for t in touched {
        let record = match in_place {
            true => records.take(&t.key),
            false => records.before(&t.key)?.record.cloned(),
        };
        let (after, notice) = P::apply_announcing(&t.key, record, input);
        let size_bound = match after.as_ref() {
            None => Some(0),
            Some(after) if P::applied_seq(after) != seq => t.size_bound,
            Some(_) if in_place => t.grown,
            Some(after) => {
                let bytes = P::encoded_len(after);
                if bytes > limit.max_bytes {
                    return Err(ParkReason::TooLarge {
                        key: t.key,
                        bytes,
                        limit: limit.max_bytes,
                    });
                }
                Some(bytes)
            }
        };
        applied.push(Change {
            key: t.key,
            existed: t.existed,
            before: t.before,
            after,
            size_bound,
            notice,
        });
    }
    Ok(applied)
}

/// Bytes of `record` as JSON, without building them.
pub fn encoded_len<T: Serialize>(record: &T) -> usize {
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
