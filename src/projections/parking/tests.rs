use super::*;
use crate::model::{Event, EventBody, EventSubject, EventType, NONE};
use crate::projections::catalogs::Catalogs;
use crate::projections::{accounts::Accounts, fold_parking};
use crate::store::kv::is_valid_key;
use std::collections::BTreeMap;

fn event(seq: u64, origin: &str, target: &str, catalog: &str, kind: EventType) -> Event {
    Event {
        seq,
        time: 1,
        subject: EventSubject::new(origin, target, catalog, kind),
        body: EventBody::Empty,
    }
}

#[test]
fn keys_follow_the_kv_rule() {
    for good in [
        "movies",
        "a.b",
        "A-Z_0=9/x",
        "gh|1".replace('|', "_").as_str(),
    ] {
        assert!(is_valid_key(good), "{good}");
    }
    for bad in ["", ".a", "a.", "café", "a$b", "a@b", "a b", "a*", "a>"] {
        assert!(!is_valid_key(bad), "{bad}");
    }
}

#[test]
fn a_key_the_bucket_refuses_parks_the_whole_message_for_that_projection_only() {
    let log = [
        event(1, "A", "B", "movies", EventType::CatalogShared),
        event(2, "A", "B", "café", EventType::CatalogShared),
        event(3, "A", "C", "music", EventType::CatalogShared),
    ];
    let mut catalogs = BTreeMap::new();
    let mut parked = Vec::new();
    let delta = fold_parking::<Catalogs>(&mut catalogs, &log, RecordLimit::default(), &mut parked);
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].seq, 2);
    assert_eq!(parked[0].projection, "catalogs");
    assert_eq!(parked[0].subject, "natster.events.A.B.café.catalog_shared");
    assert!(parked[0].error.contains("café"), "{}", parked[0].error);
    assert_eq!(catalogs.keys().collect::<Vec<_>>(), ["movies", "music"]);
    assert_eq!(delta.share_count, 2, "the parked share is not counted");

    // The account projection keys by account: it applies all three.
    let mut accounts = BTreeMap::new();
    let mut parked = Vec::new();
    fold_parking::<Accounts>(&mut accounts, &log, RecordLimit::default(), &mut parked);
    assert!(parked.is_empty());
    assert_eq!(accounts["A"].out_shares.len(), 3);
}

#[test]
fn a_record_past_the_limit_parks_the_message_and_leaves_every_record_as_it_was() {
    let limit = RecordLimit { max_bytes: 250 };
    let log: Vec<Event> = (1..=8)
        .map(|seq| {
            event(
                seq,
                "A",
                "B",
                &format!("catalog{seq:02}"),
                EventType::CatalogShared,
            )
        })
        .collect();
    let mut accounts = BTreeMap::new();
    let mut parked = Vec::new();
    fold_parking::<Accounts>(&mut accounts, &log, limit, &mut parked);
    let first_parked = parked.first().expect("the record outgrows 250 bytes").seq;
    // Every later share makes the record larger still, so each parks too.
    assert_eq!(
        parked.iter().map(|p| p.seq).collect::<Vec<_>>(),
        (first_parked..=8).collect::<Vec<_>>()
    );
    // Both records the message touches stay as they were (all or nothing).
    for key in ["A", "B"] {
        let record = &accounts[key];
        assert_eq!(record.applied_seq, first_parked - 1);
        assert!(crate::store::kv::encode(record).len() <= limit.max_bytes);
    }
    assert!(parked[0].error.contains("250 bytes"), "{}", parked[0].error);
}

/// Records whose every stored value fails to decode.
struct AllUnreadable;

impl<R> Records<R> for AllUnreadable {
    fn before(&self, key: &str) -> Result<Before<'_, R>, ParkReason> {
        Err(ParkReason::Unreadable {
            key: key.to_string(),
            detail: "expected value at line 1 column 1".into(),
        })
    }

    fn take(&mut self, _key: &str) -> Option<R> {
        unreachable!("nothing is taken from records that do not decode")
    }

    fn put(&mut self, _key: String, _record: Option<R>, _size_bound: Option<usize>) {
        unreachable!("nothing is changed in records that do not decode")
    }
}

#[test]
fn an_unreadable_record_parks_what_touches_it() {
    let share = event(5, "A", "B", "movies", EventType::CatalogShared);
    let parked = step::<Catalogs>(&share, RecordLimit::default(), &mut AllUnreadable)
        .err()
        .expect("parks");
    assert_eq!(
        parked,
        ParkReason::Unreadable {
            key: "movies".into(),
            detail: "expected value at line 1 column 1".into()
        }
    );
}

#[test]
fn parked_keys_sort_in_log_order() {
    assert!(parked_key("accounts", 9) < parked_key("accounts", 10));
    assert_eq!(parked_key("catalogs", 42), "catalogs.00000000000000000042");
}

/// Folds `log` into `P`'s records the way the runner does when it knows sizes (changing
/// records in place when they are known to fit). Checks on the way that every bound `step`
/// returns holds.
fn fold_with_size_bounds<P: Projection>(
    log: &[P::Input],
    limit: RecordLimit,
) -> (BTreeMap<String, P::Record>, Vec<ParkedEvent>) {
    let mut records = SizedRecords::<P::Record>::default();
    let mut parked = Vec::new();
    for input in log {
        match step::<P>(input, limit, &mut records) {
            Ok(changes) => {
                for change in changes {
                    if let Some(after) = &change.after {
                        let bound = change.size_bound.expect("known sizes stay known");
                        assert!(encoded_len(after) <= bound, "a size bound holds");
                    }
                    records.put(change.key, change.after, change.size_bound);
                }
            }
            Err(reason) => parked.push(ParkedEvent::new::<P>(input, &reason)),
        }
    }
    (records.into_records().collect(), parked)
}

/// Random share traffic among a few accounts (keys of different lengths) over catalog names
/// that JSON has to escape, with bindings whose OAuth ids do too. Sequences jump now and then
/// (so a record's applied sequence grows from one digit to twenty) and times include the
/// widest (so does an initialisation time).
fn escaping_log(seed: u64, events: u64) -> Vec<Event> {
    use crate::model::{ContextBoundData, NatsterContext};
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let accounts = ["A", "B", "C", "D0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"];
    let mut seq = 0_u64;
    let mut next_seq = move |rng: &mut rand::rngs::StdRng| {
        seq = match rng.gen_range(0..100) {
            0 => seq
                .saturating_mul(rng.gen_range(2..=40))
                .min(u64::MAX - events),
            _ => seq,
        } + 1;
        seq
    };
    let times = [0, 1, -1, i64::MIN, i64::MAX, 1_700_000_000];
    let long_escapes = "\u{1}".repeat(100);
    let catalogs = [
        "movies",
        "q\"uote",
        "back\\slash",
        "ctl\u{1}\u{2}",
        "tab\tnl\n",
        "x",
        &long_escapes,
    ];
    (1..=events)
        .map(|_| {
            let seq = next_seq(&mut rng);
            let time = times[rng.gen_range(0..times.len())];
            let origin = accounts[rng.gen_range(0..accounts.len())];
            let target = accounts[rng.gen_range(0..accounts.len())];
            let catalog = catalogs[rng.gen_range(0..catalogs.len())];
            match rng.gen_range(0..10) {
                0 => Event {
                    seq,
                    time,
                    subject: EventSubject::new(origin, "none", "none", EventType::ContextBound),
                    body: EventBody::ContextBound(ContextBoundData {
                        oauth_id: format!("gh\u{1}{}", rng.gen_range(0..3)),
                        bound_context: NatsterContext::default(),
                        previous_oauth_id: None,
                        previous_account: None,
                    }),
                },
                1 => Event {
                    time,
                    ..event(seq, origin, "none", "none", EventType::NatsterInitialized)
                },
                2..=3 => event(seq, origin, target, catalog, EventType::CatalogUnshared),
                _ => event(seq, origin, target, catalog, EventType::CatalogShared),
            }
        })
        .collect()
}

/// The same events parked for the same reasons (when they were parked aside).
fn same_parked(a: &[ParkedEvent], b: &[ParkedEvent]) -> bool {
    let what = |p: &[ParkedEvent]| {
        p.iter()
            .map(|e| (e.seq, e.error.clone()))
            .collect::<Vec<_>>()
    };
    what(a) == what(b)
}

#[test]
fn size_bounds_hold_and_park_exactly_what_measuring_every_change_parks() {
    for (seed, max_bytes) in [(1, 2_000), (2, 3_000), (3, 1_000_000)] {
        let log = escaping_log(seed, 3_000);
        let limit = RecordLimit { max_bytes };
        let mut measured = BTreeMap::new();
        let mut measured_parked = Vec::new();
        fold_parking::<Accounts>(&mut measured, &log, limit, &mut measured_parked);
        let (bounded, bounded_parked) = fold_with_size_bounds::<Accounts>(&log, limit);
        assert_eq!(bounded, measured, "accounts, seed {seed}");
        assert!(
            same_parked(&bounded_parked, &measured_parked),
            "accounts, seed {seed}"
        );
        if max_bytes < 5_000 {
            assert!(
                !measured_parked.is_empty(),
                "the limit is reached (seed {seed})"
            );
        }
        let mut measured = BTreeMap::new();
        let mut measured_parked = Vec::new();
        fold_parking::<Catalogs>(&mut measured, &log, limit, &mut measured_parked);
        let (bounded, bounded_parked) = fold_with_size_bounds::<Catalogs>(&log, limit);
        assert_eq!(bounded, measured, "catalogs, seed {seed}");
        assert!(
            same_parked(&bounded_parked, &measured_parked),
            "catalogs, seed {seed}"
        );
    }
}

#[test]
fn a_string_is_measured_as_json_writes_it() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let alphabet = [
        'a', 'Z', '"', '\\', '\n', '\t', '\r', '\u{8}', '\u{c}', '\u{0}', '\u{1f}', '\u{7f}', 'é',
        '😀', '/',
    ];
    // Plain characters only, in account keys' and catalog names' lengths and longer.
    let plain = ['a', 'Z', '7', '.', '-', '\u{7f}', 'é', '😀', '/'];
    for round in 0..4_000 {
        let (chars, len) = match round % 2 {
            0 => (&alphabet[..], rng.gen_range(0..40)),
            _ => (&plain[..], rng.gen_range(0..200)),
        };
        let mut s: String = (0..len)
            .map(|_| chars[rng.gen_range(0..chars.len())])
            .collect();
        // Half the plain strings get one character to escape, anywhere in them.
        if round % 4 == 1 {
            let at = s
                .char_indices()
                .map(|(i, _)| i)
                .nth(rng.gen_range(0..=len / 2));
            let escaped = alphabet[rng.gen_range(2..11)];
            s.insert(at.unwrap_or(s.len()), escaped);
        }
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(crate::projections::json_string_len(&s), json.len(), "{s:?}");
    }
}

/// What applying `event` to `record` at `key` adds to its JSON, and the bound `P` gives for an
/// existing record.
fn growth_and_bound<P: Projection>(key: &str, record: P::Record, event: &P::Input) -> (i64, i64) {
    let before = encoded_len(&record) as i64;
    let after = P::apply(key, Some(record), event).expect("the record stays");
    let bound = P::existing_growth_bound(event).expect("a bound is known") as i64;
    (encoded_len(&after) as i64 - before, bound)
}

#[test]
fn the_worst_case_of_each_existing_record_growth_reaches_its_bound_exactly() {
    use crate::model::{AccountRecord, CatalogRecord, ContextBoundData, NatsterContext, ShareRef};
    // Every number goes from one digit to twenty, every list already has an entry (so a new
    // one brings a comma), the other account is the longest key and the strings escape.
    let long = "D0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let account = AccountRecord {
        account_key: "A".into(),
        initialized_at: 0,
        out_shares: vec![ShareRef {
            catalog: "c".into(),
            account: "B".into(),
        }],
        in_shares: vec![],
        oauth_id: None,
        applied_seq: 1,
    };
    let last = u64::MAX;
    let share = event(last, "A", long, "q\"uote\u{1}", EventType::CatalogShared);
    let init = Event {
        time: i64::MIN,
        ..event(last, "A", NONE, NONE, EventType::NatsterInitialized)
    };
    let bind = Event {
        body: EventBody::ContextBound(ContextBoundData {
            oauth_id: "gh\"\u{2}".into(),
            bound_context: NatsterContext::default(),
            previous_oauth_id: None,
            previous_account: None,
        }),
        ..event(last, "A", NONE, NONE, EventType::ContextBound)
    };
    let unshare = event(last, "A", "B", "c", EventType::CatalogUnshared);
    for (what, event) in [("share", share.clone()), ("init", init), ("bind", bind)] {
        let (growth, bound) = growth_and_bound::<Accounts>("A", account.clone(), &event);
        assert_eq!(growth, bound, "accounts: {what}");
    }
    let (growth, bound) = growth_and_bound::<Accounts>("A", account.clone(), &unshare);
    assert!(
        growth < 0 && bound == 19,
        "accounts: unshare {growth} {bound}"
    );
    let catalog = CatalogRecord {
        catalog_name: "q\"uote\u{1}".into(),
        owner: "A".into(),
        shared_with: vec!["B".into()],
        applied_seq: 1,
    };
    let (growth, bound) = growth_and_bound::<Catalogs>("q\"uote\u{1}", catalog, &share);
    assert_eq!(growth, bound, "catalogs: share");
}
