//! One pass of a catch-up in passes, pure: the log's messages from the start of the run
//! folded into the records of one part of the keys, the other keys left out.
//!
//! A part is the keys whose [`key_hash`] lies in a range. A pass folds only its part's
//! records, all in memory, so it writes each of them once; when they outgrow the pass's budget
//! the part is halved and the half left out is folded by a later pass (nothing of it is
//! written yet, so nothing is lost). Parts are sized by what the passes before found
//! ([`next_part`]), so that `k` passes suffice where the records take `k` budgets. Every pass starts from an empty bucket, which is the only
//! case the runner catches up in passes (a key not held is absent).
//!
//! Exactness: a message that touches keys of several parts is applied to each part's records
//! by that part's pass, so it must park in all passes or in none. Whether it parks depends on
//! every touched record (one too large parks it everywhere), and a pass does not hold the
//! records of other parts. [`SizeSketch`] keeps, for every key, an upper bound on its
//! record's stored size (the sum of what each message may add to it). The first pass checks
//! every message touching several keys: a key whose bound could pass the record limit (an
//! account many others share with) is *pinned*: every pass holds its record exactly, so every
//! pass decides the same for the messages touching it, and only the pass of its part writes
//! it. The first pass is then read again with those keys pinned. More than [`MAX_PINNED`] such
//! keys and the catch-up in passes is abandoned before anything is written; the runner folds
//! the log in one pass as usual. Otherwise no message touching keys of several parts can park
//! for the size of a record some pass does not hold, so every pass decides exactly what one
//! pass over all keys would; later passes would find the same keys, since the bounds depend
//! only on the log and the limit (kept with the run's progress, with the pinned keys). Keys
//! the bucket cannot hold are checked by every pass (a message with one parks in each pass that
//! holds one of its keys). No stored record is unreadable: the bucket held nothing at the start.

use super::fold::compact_size;
use crate::projections::parking::{self, Before, ParkReason, ParkedEvent, RecordLimit, Records};
use crate::projections::{CountDelta, Projection};
use hashbrown::HashMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::Arc;

/// The hash that places a key in a part: FNV-1a, finished with MurmurHash3's mixer so that
/// its first bits depend on every byte. Stable across versions and processes: a run's
/// progress, kept in the store, names parts by it.
pub fn key_hash(key: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

/// The keys whose [`key_hash`] lies in `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub first: u64,
    pub last: u64,
}

/// How full of the budget a part is planned to be: records spread evenly over the hash, so
/// parts sized by the passes before come out within a few percent of the plan, and one that
/// outgrows its budget all the same loses half its keys to a later pass.
const PLANNED_FILL: f64 = 0.9;

impl Part {
    pub fn contains_hash(&self, hash: u64) -> bool {
        self.first <= hash && hash <= self.last
    }

    pub fn contains(&self, key: &str) -> bool {
        self.contains_hash(key_hash(key))
    }

    /// Its share of all keys (of the hash space).
    pub fn share(&self) -> f64 {
        (u128::from(self.last - self.first) + 1) as f64 / 2f64.powi(64)
    }

    /// The two halves (none for a part of a single hash).
    pub fn halves(&self) -> Option<(Part, Part)> {
        (self.first < self.last).then(|| {
            let mid = self.first + (self.last - self.first) / 2;
            (
                Part {
                    first: self.first,
                    last: mid,
                },
                Part {
                    first: mid + 1,
                    last: self.last,
                },
            )
        })
    }
}

/// The parts still to fold when `done` are folded, in hash order.
pub fn remaining(done: &[Part]) -> Vec<Part> {
    let mut done = done.to_vec();
    done.sort_by_key(|part| part.first);
    let mut todo = Vec::new();
    let mut next: u128 = 0;
    for part in done {
        if u128::from(part.first) > next {
            todo.push(Part {
                first: next as u64,
                last: part.first - 1,
            });
        }
        next = next.max(u128::from(part.last) + 1);
    }
    if next <= u128::from(u64::MAX) {
        todo.push(Part {
            first: next as u64,
            last: u64::MAX,
        });
    }
    todo
}

/// The next part to fold when `done` are folded: the first keys not folded, a share of what
/// is left that splits it into as few parts as fit [`PLANNED_FILL`] of `budget` each when all
/// the records together take about `total_bytes` (unknown before the first pass: then all
/// that is left).
pub fn next_part(done: &[Part], total_bytes: Option<u64>, budget: usize) -> Option<Part> {
    let left = remaining(done);
    let gap = *left.first()?;
    let Some(total) = total_bytes.filter(|total| *total > 0) else {
        return Some(gap);
    };
    let left_share: f64 = left.iter().map(Part::share).sum();
    let parts = (left_share * total as f64 / (budget as f64 * PLANNED_FILL)).ceil();
    let share = left_share / parts.max(1.0);
    let width = (share * 2f64.powi(64)).max(1.0) as u128;
    let last = (u128::from(gap.first) + width - 1).min(u128::from(gap.last));
    Some(Part {
        first: gap.first,
        last: last as u64,
    })
}

/// What all records together take, estimated from a pass that held `held_bytes` for `part`.
pub fn estimate_total(held_bytes: usize, part: Part) -> u64 {
    (held_bytes as f64 / part.share()) as u64
}

/// Slots per row of a [`SizeSketch`].
const SKETCH_SLOTS: usize = 1 << 19;

/// Upper bounds on the stored size of every key's record, in fixed memory (two rows of
/// [`SKETCH_SLOTS`] counters, 4 MiB): each row adds what a message may add to a key's record
/// to one slot picked by the key's hash, and a key's bound is the smaller of its two slots.
/// Keys sharing a slot only make its bound larger, never smaller: a bound is never below the
/// truth.
pub struct SizeSketch {
    slots: Vec<u32>,
}

impl Default for SizeSketch {
    fn default() -> Self {
        SizeSketch {
            slots: vec![0; 2 * SKETCH_SLOTS],
        }
    }
}

impl SizeSketch {
    fn slots(hash: u64) -> [usize; 2] {
        let mask = SKETCH_SLOTS as u64 - 1;
        [
            (hash & mask) as usize,
            SKETCH_SLOTS + ((hash >> 32) & mask) as usize,
        ]
    }

    /// The bound of the key hashed to `hash`.
    pub fn bound(&self, hash: u64) -> u32 {
        let [a, b] = Self::slots(hash);
        self.slots[a].min(self.slots[b])
    }

    /// Adds `bytes` to the bound of the key hashed to `hash` (`None`: no bound is known any
    /// more).
    pub fn grow(&mut self, hash: u64, bytes: Option<usize>) {
        let bytes = compact_size(bytes);
        for slot in Self::slots(hash) {
            self.slots[slot] = self.slots[slot].saturating_add(bytes);
        }
    }
}

/// Why a catch-up in passes cannot be exact for this log: messages touching several keys
/// might park for the size of more records than a pass may pin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the message at {seq} touches several records, and more than {MAX_PINNED} records of such \
     messages may outgrow {limit} bytes"
)]
pub struct MayPark {
    pub seq: u64,
    pub limit: usize,
}

/// Most keys a run pins: their records are held in every pass (up to the record limit each),
/// beside the budget.
pub const MAX_PINNED: usize = 16;

/// A record of the part in memory, with a bound on its stored size.
struct Held<R> {
    record: Option<R>,
    /// Upper bound on its stored size (what the budget counts).
    bound: u32,
    /// Its size when last measured: the bound is measured again once it doubles, so that it
    /// stays within about twice the truth for a measurement per doubling.
    measured: u32,
}

/// Below this share of the budget once measured, a pass's records are not halved.
const REMEASURED_FILL: f64 = 0.75;

/// Sizes below this are not measured again (a new record is measured once it is larger).
const MEASURE_FLOOR: u32 = 256;

/// The part's records as [`parking::step_within`] sees them, and the pinned ones.
struct PartRecords<R> {
    records: HashMap<String, Held<R>>,
    /// Sum of the bounds of `records`.
    bytes: usize,
    /// The records of the pinned keys, whatever their part (a key absent has an entry with
    /// no record), outside the budget.
    pinned: HashMap<String, Held<R>>,
    /// A record's stored size ([`Projection::encoded_len`]).
    measure: fn(&R) -> usize,
}

impl<R> PartRecords<R> {
    fn get(&self, key: &str) -> Option<&Held<R>> {
        self.pinned.get(key).or_else(|| self.records.get(key))
    }
}

impl<R> Records<R> for PartRecords<R> {
    fn before(&self, key: &str) -> Result<Before<'_, R>, ParkReason> {
        Ok(match self.get(key) {
            Some(held) => Before {
                record: held.record.as_ref(),
                size_bound: Some(held.bound as usize),
            },
            None => Before {
                record: None,
                size_bound: Some(0),
            },
        })
    }

    fn take(&mut self, key: &str) -> Option<R> {
        match self.pinned.get_mut(key) {
            Some(held) => held.record.take(),
            None => self
                .records
                .get_mut(key)
                .and_then(|held| held.record.take()),
        }
    }

    fn put(&mut self, key: String, record: Option<R>, size_bound: Option<usize>) {
        if let Some(held) = self.pinned.get_mut(&key) {
            held.bound = compact_size(size_bound);
            held.record = record;
            return;
        }
        let Some(record) = record else {
            if let Some(held) = self.records.remove(&key) {
                self.bytes -= held.bound as usize;
            }
            return;
        };
        // One lookup: the key was just read and taken, so it is usually held already.
        let held = self.records.entry(key).or_insert(Held {
            record: None,
            bound: 0,
            measured: 0,
        });
        let old_bound = held.bound;
        held.bound = compact_size(size_bound);
        if held.bound > 2 * held.measured.max(MEASURE_FLOOR) {
            let exact = compact_size(Some((self.measure)(&record)));
            held.bound = exact;
            held.measured = exact;
        }
        held.record = Some(record);
        self.bytes = self.bytes - old_bound as usize + held.bound as usize;
    }
}

/// A record a pass writes, with its key.
pub type PartRecord<R> = (Arc<str>, Arc<R>);

impl<R> PartRecords<R> {
    /// Measures every record, so that each bound is its exact size.
    fn measure_all(&mut self) {
        let mut bytes = 0;
        for held in self.records.values_mut() {
            if let Some(record) = &held.record {
                let exact = compact_size(Some((self.measure)(record)));
                held.bound = exact;
                held.measured = exact;
            }
            bytes += held.bound as usize;
        }
        self.bytes = bytes;
    }
}

/// One pass: the records of `part` folded from an empty bucket, message by message in log
/// order.
pub struct PartFold<P: Projection> {
    part: Part,
    records: PartRecords<P::Record>,
    /// Past this many bytes (by the records' bounds) the part is halved.
    budget: usize,
    sketch: SizeSketch,
    /// Whether this pass checks that no message can park for a record of another part.
    check: bool,
    /// Keys the check found whose records may outgrow the limit and are not pinned.
    to_pin: BTreeSet<String>,
    /// Keys whose records every pass holds (their records are in `records.pinned`).
    pinned: hashbrown::HashSet<String>,
    limit: RecordLimit,
    parked: Vec<ParkedEvent>,
}

impl<P: Projection> PartFold<P> {
    /// A pass over `part` within `budget` bytes of records (`usize::MAX`: never halved),
    /// holding the records of the `pinned` keys too; `check` makes it the run's first pass,
    /// which checks the whole log for messages no pass can decide alone.
    pub fn new(
        part: Part,
        budget: usize,
        limit: RecordLimit,
        check: bool,
        pinned: &[String],
    ) -> Self {
        let pinned_records = pinned
            .iter()
            .map(|key| {
                let held = Held {
                    record: None,
                    bound: 0,
                    measured: 0,
                };
                (key.clone(), held)
            })
            .collect();
        PartFold {
            part,
            records: PartRecords {
                records: HashMap::new(),
                bytes: 0,
                pinned: pinned_records,
                measure: P::encoded_len,
            },
            budget,
            sketch: SizeSketch::default(),
            check,
            to_pin: BTreeSet::new(),
            pinned: pinned.iter().cloned().collect(),
            limit,
            parked: Vec::new(),
        }
    }

    /// Keys the first pass found that must be pinned for the passes to be exact (none: the
    /// pass is exact as it is). A pass that found some must be run again with them pinned.
    pub fn to_pin(&self) -> &BTreeSet<String> {
        &self.to_pin
    }

    /// The part this pass folds (smaller than it started when it was halved).
    pub fn part(&self) -> Part {
        self.part
    }

    /// Bytes of records held, by their bounds.
    pub fn held_bytes(&self) -> usize {
        self.records.bytes
    }

    /// Folds the next message of the log (log order, from the start of the run).
    pub fn fold(&mut self, input: &P::Input) -> Result<(), MayPark> {
        let keys = P::keys(input);
        if keys.is_empty() {
            return Ok(());
        }
        let growth = P::growth_bound(input);
        let hashes: Vec<u64> = keys.iter().map(|key| key_hash(key)).collect();
        if self.check && keys.len() > 1 {
            self.check_sizes(input, &keys, &hashes, growth)?;
        }
        for &hash in &hashes {
            self.sketch.grow(hash, growth);
        }
        let (part, pinned) = (self.part, &self.pinned);
        let touches_part = hashes.iter().any(|&hash| part.contains_hash(hash));
        if !touches_part && !keys.iter().any(|key| pinned.contains(key)) {
            return Ok(());
        }
        // The keys' hashes are at hand: a key's part is not hashed again.
        let within =
            |index: usize, key: &str| part.contains_hash(hashes[index]) || pinned.contains(key);
        let records = &mut self.records;
        match parking::step_within::<P>(input, keys, within, growth, self.limit, records) {
            Ok(changes) => {
                for change in changes {
                    self.records
                        .put(change.key, change.after, change.size_bound);
                }
            }
            Err(reason) => self.parked.push(ParkedEvent::new::<P>(input, &reason)),
        }
        if self.records.bytes > self.budget {
            self.halve();
        }
        Ok(())
    }

    /// The first pass's check of a message touching several keys: each key not pinned whose
    /// record may outgrow the limit (by the sketch) is to be pinned; more than [`MAX_PINNED`]
    /// in all and passes cannot be exact.
    fn check_sizes(
        &mut self,
        input: &P::Input,
        keys: &[String],
        hashes: &[u64],
        growth: Option<usize>,
    ) -> Result<(), MayPark> {
        let limit = self.limit.max_bytes;
        for (key, &hash) in keys.iter().zip(hashes) {
            if self.pinned.contains(key) {
                continue;
            }
            let may_outgrow =
                growth.is_none_or(|growth| self.sketch.bound(hash) as usize + growth > limit);
            if may_outgrow
                && self.to_pin.insert(key.clone())
                && self.pinned.len() + self.to_pin.len() > MAX_PINNED
            {
                let seq = P::seq(input);
                return Err(MayPark { seq, limit });
            }
        }
        Ok(())
    }

    /// Called when the records' bounds pass the budget: measures them all (bounds run up to
    /// twice the truth), and unless they then take less than [`REMEASURED_FILL`] of it halves
    /// the part until its records fit; the upper halves are left to later passes (see
    /// [`remaining`]). Measuring costs a serialization of the records held, paid again only
    /// after they grew by a quarter of the budget.
    fn halve(&mut self) {
        let fill = self.budget as f64 * REMEASURED_FILL;
        self.records.measure_all();
        if (self.records.bytes as f64) < fill {
            return;
        }
        while self.records.bytes as f64 >= fill {
            let Some((low, _)) = self.part.halves() else {
                return;
            };
            let bytes = &mut self.records.bytes;
            self.records.records.retain(|key, held| {
                let keep = low.contains(key);
                if !keep {
                    *bytes -= held.bound as usize;
                }
                keep
            });
            self.part = low;
        }
        self.records.records.shrink_to_fit();
    }

    /// The records of the part: those held for it, and the pinned ones that belong to it.
    fn part_records(&self) -> impl Iterator<Item = (&String, &Held<P::Record>)> {
        let part = self.part;
        let pinned = self.records.pinned.iter();
        let pinned = pinned.filter(move |(key, _)| part.contains(key));
        self.records.records.iter().chain(pinned)
    }

    /// What the part's records add to the counters (the bucket held nothing before).
    pub fn delta(&self) -> CountDelta {
        let mut delta = CountDelta::default();
        for (_, held) in self.part_records() {
            delta += P::tally(held.record.as_ref()) - P::tally(None);
        }
        delta
    }

    /// The messages this pass parked, and the part's records (absent ones left out).
    pub fn finish(self) -> (Vec<ParkedEvent>, Vec<PartRecord<P::Record>>) {
        let part = self.part;
        let pinned = self.records.pinned.into_iter();
        let records = self
            .records
            .records
            .into_iter()
            .chain(pinned.filter(|(key, _)| part.contains(key)))
            .filter_map(|(key, held)| Some((key.into(), Arc::new(held.record?))))
            .collect();
        (self.parked, records)
    }
}

#[cfg(test)]
mod tests;
