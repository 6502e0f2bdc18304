//! Read models projected from the streams. Each projection is a pure `apply` over one record
//! (plus the counters it contributes to `stats`, and for the online projection the notices it
//! announces); [`runner`] is the one shell that feeds every projection from its stream, and
//! [`registry`] the one list of projections that the wiring, the probe, the metrics and the
//! CLI take them from.

/// The items of a [`Projection`] that applies the event log and announces nothing: its input
/// is the log's events, decoded by [`decode_event`].
macro_rules! reads_the_event_log {
    () => {
        type Input = $crate::model::Event;
        type Notice = std::convert::Infallible;

        fn decode(
            seq: u64,
            time: i64,
            message: &async_nats::jetstream::Message,
        ) -> Option<$crate::model::Event> {
            $crate::projections::decode_event(seq, time, message)
        }

        fn seq(event: &$crate::model::Event) -> u64 {
            event.seq
        }

        fn subject(event: &$crate::model::Event) -> String {
            event.subject.to_subject()
        }
    };
}

pub mod accounts;
pub mod catalogs;
pub mod oauth;
pub mod online;
pub mod online_view;
pub mod parking;
pub mod rebuild;
pub mod record_cache;
pub mod registry;
pub mod runner;
pub mod status;
pub mod stored;
pub mod view;

use crate::model::{Decoded, Event};
use serde::{de::DeserializeOwned, Serialize};

/// Counters a projection contributes to `stats`, as changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CountDelta {
    pub total_initialized: i64,
    pub share_count: i64,
    pub running_catalogs: i64,
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
            running_catalogs: self.running_catalogs - other.running_catalogs,
        }
    }
}

impl std::ops::AddAssign for CountDelta {
    fn add_assign(&mut self, other: CountDelta) {
        self.total_initialized += other.total_initialized;
        self.share_count += other.share_count;
        self.running_catalogs += other.running_catalogs;
    }
}

/// One read model: which records a stream message touches and how it changes each of them.
///
/// Contract: `apply` is pure and deterministic (only message data and the stream timestamp);
/// a record it changes comes back stamped with the message's sequence (`applied_seq`), and a
/// record it returns with an older `applied_seq` is unchanged (not written). The runner never
/// calls it for a message at or below the record's `applied_seq`, so redelivery and replay
/// change nothing.
pub trait Projection: Send + Sync + 'static {
    /// Name in metrics, keys of `PROJ_STATS`, logs and the CLI.
    const NAME: &'static str;
    /// Bucket that holds the records.
    const BUCKET: &'static str;
    /// One message of the projection's stream, decoded.
    type Input: Clone + Send + Sync + 'static;
    /// One record.
    type Record: Serialize + DeserializeOwned + Clone + PartialEq + Send + Sync + std::fmt::Debug;
    /// What the projection announces when a record changes in a way others must hear of
    /// (`Infallible` for projections that announce nothing).
    type Notice: Send + Sync + 'static;
    /// Most records one flush writes, whatever the runner's configuration allows.
    const MAX_BATCH_RECORDS: usize = usize::MAX;
    /// Whether a runner that finds the bucket empty and a deep backlog may catch up in passes
    /// (one part of the keys at a time; `runner::passes`). Projections that announce changes
    /// must not: their notices go out with each flush, in log order.
    const CATCH_UP_IN_PASSES: bool = true;

    /// Decodes a stored message of the stream; `None` for messages this projection ignores.
    fn decode(seq: u64, time: i64, message: &async_nats::jetstream::Message)
        -> Option<Self::Input>;

    /// The stream sequence of `input`.
    fn seq(input: &Self::Input) -> u64;

    /// The stream subject of `input` (for parked messages).
    fn subject(input: &Self::Input) -> String;

    /// Keys of the records `input` changes, each once (none for messages this projection
    /// ignores).
    fn keys(input: &Self::Input) -> Vec<String>;

    /// The record at `key` after `input`; `None` = no record.
    fn apply(key: &str, record: Option<Self::Record>, input: &Self::Input) -> Option<Self::Record>;

    /// [`Projection::apply`], and the notice the change brings, if any.
    fn apply_announcing(
        key: &str,
        record: Option<Self::Record>,
        input: &Self::Input,
    ) -> (Option<Self::Record>, Option<Self::Notice>) {
        (Self::apply(key, record, input), None)
    }

    /// Last sequence applied to `record`.
    fn applied_seq(record: &Self::Record) -> u64;

    /// An upper bound on the bytes `input` adds to the stored (JSON) form of any record it
    /// changes or creates, when one is known: then a record whose size is known to stay under
    /// the limit is not measured after every message (measuring means serializing it). `None`
    /// measures every change.
    fn growth_bound(_input: &Self::Input) -> Option<usize> {
        None
    }

    /// [`Projection::growth_bound`] for a record that exists already: a message adds an entry
    /// or a longer number to it, never a new record's framing, so the bound can be tighter
    /// (a record's bound that runs ahead of its size is measured again, which costs a
    /// serialization). Must hold for every record `input` changes; defaults to
    /// `growth_bound`.
    fn existing_growth_bound(input: &Self::Input) -> Option<usize> {
        Self::growth_bound(input)
    }

    /// Bytes of `record` as stored (its JSON), exactly: what the record limit and a pass's
    /// budget count. Serializes it into a counter unless the projection computes it from its
    /// fields (a pass measures a record each time its size bound doubles: a tenth of a
    /// catch-up's fold went to serializing records only to count their bytes).
    fn encoded_len(record: &Self::Record) -> usize {
        parking::encoded_len(record)
    }

    /// What one record contributes to the counters; a message changes them by the record's
    /// tally after it minus its tally before.
    fn tally(_record: Option<&Self::Record>) -> CountDelta {
        CountDelta::default()
    }
}

/// The event log's messages as the log projections read them: events only.
pub fn decode_event(
    seq: u64,
    time: i64,
    message: &async_nats::jetstream::Message,
) -> Option<Event> {
    match Decoded::from_parts(seq, time, &message.subject, &message.payload) {
        Decoded::Event(event) => Some(*event),
        Decoded::Unknown { .. } | Decoded::Foreign { .. } => None,
    }
}

/// Bytes of field names, punctuation and numbers one message can add to a record.
const JSON_FRAME_BYTES: usize = 256;

/// An upper bound on what a message adds to a record's JSON when every string it copies in
/// is one of `copied`: each as JSON writes it, plus the framing of one new entry, one new
/// record and its numbers.
pub fn json_growth_bound<'a>(copied: impl IntoIterator<Item = &'a str>) -> usize {
    copied.into_iter().map(json_string_len).sum::<usize>() + JSON_FRAME_BYTES
}

/// Most bytes a number of a record can gain when it changes: from one digit to twenty (a
/// `u64` sequence, or an `i64` time from `0` to `-9223372036854775808`).
pub const NUMBER_GROWTH_BYTES: usize = 19;

/// Bytes of `s` as a JSON string (serde_json's escapes: two bytes for a quote, a backslash and
/// the control characters with a short escape, six for the other control characters), quotes
/// included.
pub fn json_string_len(s: &str) -> usize {
    // Most strings escape nothing (account keys, catalog names): this check is one pass
    // without branches, which the compiler vectorizes; only a string that escapes something
    // is summed byte by byte. Records are measured as a catch-up folds them.
    let escapes_something = s.bytes().fold(false, |found, byte| {
        found | (byte < 0x20) | (byte == b'"') | (byte == b'\\')
    });
    if !escapes_something {
        return s.len() + 2;
    }
    let escaped: usize = s
        .bytes()
        .map(|byte| match byte {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0x00..=0x1f => 6,
            _ => 1,
        })
        .sum();
    escaped + 2
}

/// Bytes of `n` as a JSON number.
pub fn json_u64_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |digits| digits as usize + 1)
}

/// Bytes of `n` as a JSON number, its sign included.
pub fn json_i64_len(n: i64) -> usize {
    json_u64_len(n.unsigned_abs()) + usize::from(n < 0)
}

/// Bytes of `items` as a JSON array whose items take `item_len` each.
pub fn json_array_len<T>(items: &[T], item_len: impl Fn(&T) -> usize) -> usize {
    let commas = items.len().saturating_sub(1);
    items.iter().map(item_len).sum::<usize>() + commas + 2
}

/// Whether `apply` changed a record: it removed it, or stamped it with the message's sequence.
pub fn changed<P: Projection>(existed: bool, after: Option<&P::Record>, seq: u64) -> bool {
    match after {
        None => existed,
        Some(record) => P::applied_seq(record) == seq,
    }
}

/// Folds `inputs` (in stream order) into `records`, exactly as the runner does batch by
/// batch, parking what [`parking::step`] refuses into `parked`; returns the counter changes.
/// Used by rebuilds and tests.
pub fn fold_parking<P: Projection>(
    records: &mut impl parking::Records<P::Record>,
    inputs: &[P::Input],
    limit: parking::RecordLimit,
    parked: &mut Vec<parking::ParkedEvent>,
) -> CountDelta {
    let mut delta = CountDelta::default();
    for input in inputs {
        match parking::step::<P>(input, limit, records) {
            Ok(changes) => {
                for change in changes {
                    delta += P::tally(change.after.as_ref()) - change.before;
                    records.put(change.key, change.after, change.size_bound);
                }
            }
            Err(reason) => parked.push(parking::ParkedEvent::new::<P>(input, &reason)),
        }
    }
    delta
}

/// [`fold_parking`] at the default record limit, dropping what it parks.
#[cfg(any(test, feature = "test-util"))]
pub fn fold<P: Projection>(
    records: &mut std::collections::BTreeMap<String, P::Record>,
    inputs: &[P::Input],
) -> CountDelta {
    fold_parking::<P>(
        records,
        inputs,
        parking::RecordLimit::default(),
        &mut Vec::new(),
    )
}
