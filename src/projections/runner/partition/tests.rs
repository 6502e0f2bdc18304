use super::*;
use crate::model::{ContextBoundData, Event, EventBody, EventSubject, EventType, NatsterContext};
use crate::projections::accounts::Accounts;
use crate::projections::catalogs::Catalogs;
use crate::projections::oauth::OAuthIndex;
use crate::projections::{fold_parking, CountDelta};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};

/// Every key.
const ALL: Part = Part {
    first: 0,
    last: u64::MAX,
};

fn event(seq: u64, origin: &str, target: &str, catalog: &str, kind: EventType) -> Event {
    Event {
        seq,
        time: seq as i64,
        subject: EventSubject::new(origin, target, catalog, kind),
        body: EventBody::Empty,
    }
}

/// Random traffic over `accounts` accounts and twice as many names: inits, shares, unshares,
/// bindings that move between accounts, and now and then a name the buckets cannot hold.
fn random_log(seed: u64, events: u64, accounts: usize) -> Vec<Event> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let account = |rng: &mut rand::rngs::StdRng| format!("A{}", rng.gen_range(0..accounts));
    (1..=events)
        .map(|seq| {
            let origin = account(&mut rng);
            let target = account(&mut rng);
            let catalog = match rng.gen_range(0..50) {
                0 => "bad name".to_string(),
                _ => format!("c{}", rng.gen_range(0..2 * accounts)),
            };
            match rng.gen_range(0..20) {
                0 => Event {
                    seq,
                    time: seq as i64,
                    subject: EventSubject::new(&origin, "none", "none", EventType::ContextBound),
                    body: EventBody::ContextBound(ContextBoundData {
                        oauth_id: format!("gh{}", rng.gen_range(0..accounts)),
                        bound_context: NatsterContext::default(),
                        previous_oauth_id: Some(format!("gh{}", rng.gen_range(0..accounts))),
                        previous_account: Some(target.clone()),
                    }),
                },
                1..=3 => event(seq, &origin, "none", "none", EventType::NatsterInitialized),
                4..=7 => event(seq, &origin, &target, &catalog, EventType::CatalogUnshared),
                _ => event(seq, &origin, &target, &catalog, EventType::CatalogShared),
            }
        })
        .collect()
}

/// What a catch-up in passes leaves: the records, the counter changes, the sequences parked
/// and the number of passes.
struct InPasses<R> {
    records: BTreeMap<String, R>,
    delta: CountDelta,
    parked: BTreeSet<u64>,
    passes: usize,
    /// Sum of what the passes held at their ends.
    held: usize,
    /// Keys every pass held.
    pinned: Vec<String>,
}

/// Folds `log` from empty pass by pass, as the runner does, each pass within `budget`.
fn fold_in_passes<P: Projection>(
    log: &[P::Input],
    budget: usize,
    limit: RecordLimit,
) -> Result<InPasses<P::Record>, MayPark> {
    let mut done = Vec::new();
    let mut out = InPasses {
        records: BTreeMap::new(),
        delta: CountDelta::default(),
        parked: BTreeSet::new(),
        passes: 0,
        held: 0,
        pinned: Vec::new(),
    };
    let mut total = None;
    while let Some(part) = next_part(&done, total, budget) {
        let mut pass = PartFold::<P>::new(part, budget, limit, out.passes == 0, &out.pinned);
        for input in log {
            pass.fold(input)?;
            let part = pass.part();
            assert!(
                pass.held_bytes() <= budget || part.first == part.last,
                "a pass holds no more than its budget"
            );
        }
        if !pass.to_pin().is_empty() {
            assert_eq!(out.passes, 0, "only the first pass finds keys to pin");
            assert!(out.pinned.is_empty(), "and only once");
            out.pinned.extend(pass.to_pin().iter().cloned());
            continue;
        }
        total = Some(estimate_total(pass.held_bytes(), pass.part()));
        out.held += pass.held_bytes();
        out.passes += 1;
        out.delta += pass.delta();
        done.push(pass.part());
        let (parked, records) = pass.finish();
        out.parked.extend(parked.iter().map(|p| p.seq));
        for (key, record) in records {
            assert!(
                pass_part_contains(&done, &key),
                "a pass writes only its part"
            );
            let old = out.records.insert(key.to_string(), (*record).clone());
            assert!(old.is_none(), "no record is written by two passes");
        }
    }
    Ok(out)
}

fn pass_part_contains(done: &[Part], key: &str) -> bool {
    done.last().is_some_and(|part| part.contains(key))
}

/// One pass over all keys: what the runner and a rebuild compute.
fn fold_at_once<P: Projection>(
    log: &[P::Input],
    limit: RecordLimit,
) -> (BTreeMap<String, P::Record>, CountDelta, BTreeSet<u64>) {
    let mut records = BTreeMap::new();
    let mut parked = Vec::new();
    let delta = fold_parking::<P>(&mut records, log, limit, &mut parked);
    (records, delta, parked.iter().map(|p| p.seq).collect())
}

fn assert_passes_equal_one_fold<P: Projection<Input = Event>>(
    log: &[Event],
    budget: usize,
    limit: RecordLimit,
) {
    let passes = fold_in_passes::<P>(log, budget, limit).expect("no message may park for size");
    let (records, delta, parked) = fold_at_once::<P>(log, limit);
    assert_eq!(passes.records, records, "{}: the same records", P::NAME);
    assert_eq!(passes.delta, delta, "{}: the same counters", P::NAME);
    assert_eq!(
        passes.parked,
        parked,
        "{}: the same messages parked",
        P::NAME
    );
}

#[test]
fn folding_in_passes_equals_folding_at_once() {
    for seed in 0..8 {
        let log = random_log(seed, 3_000, 200);
        for budget in [usize::MAX, 64 << 10, 4 << 10] {
            assert_passes_equal_one_fold::<Accounts>(&log, budget, RecordLimit::default());
            assert_passes_equal_one_fold::<Catalogs>(&log, budget, RecordLimit::default());
        }
    }
}

#[test]
fn a_projection_without_growth_bounds_is_not_caught_up_in_passes_when_messages_touch_two_keys() {
    // A binding that moves an OAuth id touches two records whose sizes no pass can bound.
    let log = random_log(5, 3_000, 200);
    let error = fold_in_passes::<OAuthIndex>(&log, usize::MAX, RecordLimit::default())
        .err()
        .expect("abandoned");
    let first_move = log
        .iter()
        .find(|event| OAuthIndex::keys(event).len() > 1)
        .expect("the log moves an OAuth id");
    // A key of such a message is pinned, until more are needed than a pass may pin.
    let pinned: BTreeSet<String> = log
        .iter()
        .filter(|event| event.seq <= error.seq)
        .map(OAuthIndex::keys)
        .filter(|keys| keys.len() > 1)
        .flatten()
        .collect();
    assert!(error.seq > first_move.seq);
    assert!(pinned.len() > MAX_PINNED, "{} keys", pinned.len());
    // Without such messages, passes are exact.
    let plain: Vec<Event> = log
        .into_iter()
        .filter(|event| OAuthIndex::keys(event).len() < 2)
        .collect();
    assert_passes_equal_one_fold::<OAuthIndex>(&plain, 1 << 10, RecordLimit::default());
}

#[test]
fn a_small_budget_splits_the_keys_into_more_passes() {
    let log = random_log(7, 3_000, 200);
    let passes = |budget| {
        let run = fold_in_passes::<Accounts>(&log, budget, RecordLimit::default()).expect("exact");
        (run.passes, run.held.div_ceil(budget))
    };
    assert_eq!(passes(usize::MAX).0, 1);
    let ((few, budgets), (many, _)) = (passes(64 << 10), passes(4 << 10));
    assert!(1 < few && few < many, "{few} passes, then {many}");
    // Parts are sized by what the passes before found: about as many passes as budgets
    // (parts of a few records each vary more, and are halved more often).
    assert!(
        few <= budgets * 3 / 2 + 1,
        "{few} passes for {budgets} budgets of records"
    );
}

#[test]
fn a_record_of_one_key_too_large_parks_the_same_messages_in_passes() {
    // Catalog records have one key per message: each pass decides its own records exactly.
    let limit = RecordLimit { max_bytes: 75 };
    for seed in 0..5 {
        let log = random_log(seed, 3_000, 3);
        let (_, _, parked) = fold_at_once::<Catalogs>(&log, limit);
        assert!(
            parked.len() > 100,
            "records outgrow the limit: {}",
            parked.len()
        );
        // Six names, two or three to a pass.
        let passes = fold_in_passes::<Catalogs>(&log, 200, limit).expect("exact");
        assert!(passes.passes >= 2, "{} passes", passes.passes);
        assert_passes_equal_one_fold::<Catalogs>(&log, 200, limit);
    }
}

#[test]
fn records_of_several_keys_that_may_park_for_size_are_pinned_and_passes_stay_exact() {
    // Account records take both sides of every share: a pass cannot tell whether the record
    // of the other side outgrows the limit unless it holds it. One account every other one
    // shares with, with a limit its record passes: shares into it park, in every pass alike.
    let limit = RecordLimit { max_bytes: 20_000 };
    for seed in 0..2 {
        let mut log = random_log(seed, 3_000, 300);
        let first_seq = log.len() as u64 + 1;
        for i in 0..800u64 {
            let origin = format!("A{}", 1 + i % 299);
            let share = event(
                first_seq + i,
                &origin,
                "A0",
                &format!("h{i}"),
                EventType::CatalogShared,
            );
            log.push(share);
        }
        let (_, _, parked) = fold_at_once::<Accounts>(&log, limit);
        assert!(parked.len() > 100, "shares into A0 park: {}", parked.len());
        let passes = fold_in_passes::<Accounts>(&log, 32 << 10, limit).expect("exact");
        assert_eq!(passes.pinned, ["A0"], "the hub is pinned");
        assert!(passes.passes > 3, "{} passes", passes.passes);
        assert_passes_equal_one_fold::<Accounts>(&log, 32 << 10, limit);
    }
}

#[test]
fn more_records_that_may_park_than_a_pass_may_pin_abandons_the_first_pass() {
    // Twenty accounts whose records all outgrow a small limit.
    let limit = RecordLimit { max_bytes: 4_000 };
    let log = random_log(3, 3_000, 20);
    let (_, _, parked) = fold_at_once::<Accounts>(&log, limit);
    assert!(!parked.is_empty(), "some shares park at this limit");
    let error = fold_in_passes::<Accounts>(&log, 2 << 10, limit)
        .err()
        .expect("the catch-up in passes is abandoned");
    assert_eq!(error.limit, 4_000);
    assert!(
        error.seq <= *parked.first().unwrap(),
        "found before the first parked message"
    );
}

#[test]
fn a_sketch_bound_is_never_below_the_record() {
    let log = random_log(11, 5_000, 3_000);
    let mut sketch = SizeSketch::default();
    for event in &log {
        for key in Accounts::keys(event) {
            sketch.grow(key_hash(&key), Accounts::growth_bound(event));
        }
    }
    let (records, _, _) = fold_at_once::<Accounts>(&log, RecordLimit::default());
    for (key, record) in &records {
        let size = parking::encoded_len(record);
        assert!(
            sketch.bound(key_hash(key)) as usize >= size,
            "{key}: {size}"
        );
    }
}

#[test]
fn remaining_parts_are_the_complement_of_those_done() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut hashes: Vec<u64> = (0..2_000).map(|_| rng.gen()).collect();
    hashes.extend([0, u64::MAX]);
    for _ in 0..50 {
        // Cut at random, fold some of the parts.
        let mut parts = vec![ALL];
        for _ in 0..rng.gen_range(0..12) {
            let i = rng.gen_range(0..parts.len());
            let Some((low, high)) = parts[i].halves() else {
                continue;
            };
            parts[i] = low;
            parts.push(high);
        }
        let done: Vec<Part> = parts
            .iter()
            .copied()
            .filter(|_| rng.gen_bool(0.5))
            .collect();
        let todo = remaining(&done);
        for &hash in &hashes {
            let in_done = done.iter().filter(|p| p.contains_hash(hash)).count();
            let in_todo = todo.iter().filter(|p| p.contains_hash(hash)).count();
            assert_eq!(in_done + in_todo, 1, "every key in exactly one part");
        }
        let next = next_part(&done, Some(1 << 30), 1 << 20);
        assert_eq!(next.map(|p| p.first), todo.first().map(|p| p.first));
        if let (Some(next), Some(gap)) = (next, todo.first()) {
            assert!(
                next.last <= gap.last,
                "the next part is within what is left"
            );
        }
    }
    assert_eq!(remaining(&[]), vec![ALL]);
    assert!(remaining(&[ALL]).is_empty());
}

#[test]
fn the_next_part_is_sized_by_the_records_found_so_far() {
    assert_eq!(next_part(&[], None, 1 << 20), Some(ALL));
    // Records of 10 MiB in all, budgets of 1 MiB filled to 90 %: 12 parts of a twelfth each.
    let part = next_part(&[], Some(10 << 20), 1 << 20).unwrap();
    assert!((part.share() - 1.0 / 12.0).abs() < 1e-9, "{}", part.share());
    let second = next_part(&[part], Some(10 << 20), 1 << 20).unwrap();
    assert_eq!(second.first, part.last + 1);
    assert!(
        (second.share() - 1.0 / 12.0).abs() < 1e-9,
        "{}",
        second.share()
    );
    assert!(estimate_total(1 << 20, part).abs_diff(12 << 20) <= 1);
    // A first pass that kept a quarter of the keys, 36 MiB of 64: the other three quarters
    // (108 MiB) in two parts, not three.
    let first = Part {
        first: 0,
        last: u64::MAX / 4,
    };
    let total = estimate_total(36 << 20, first);
    let second = next_part(&[first], Some(total), 64 << 20).unwrap();
    assert!((second.share() - 0.375).abs() < 1e-9, "{}", second.share());
}

#[test]
fn the_key_hash_is_stable() {
    // Stored progress names parts by this hash: it must never change.
    assert_eq!(key_hash(""), 0xefd0_1f60_ba99_2926);
    assert_eq!(key_hash("natster"), 0xcd00_e434_3fc5_fb6b);
    assert_ne!(key_hash("A1"), key_hash("A2"));
}
