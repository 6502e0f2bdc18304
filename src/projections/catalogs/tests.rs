use super::*;
use crate::model::{DecisionState, EventBody, EventSubject};
use crate::projections::fold;
use std::collections::BTreeMap;

fn account() -> String {
    nkeys::KeyPair::new_account().public_key()
}

/// Builds a log with consecutive sequences starting at 1.
#[derive(Default)]
struct Log(Vec<Event>);

impl Log {
    fn push_body(
        &mut self,
        origin: &str,
        target: &str,
        catalog: &str,
        ty: EventType,
        body: EventBody,
    ) -> Event {
        let seq = self.0.len() as u64 + 1;
        let event = Event {
            seq,
            time: 2_000_000 + 3 * seq as i64,
            subject: EventSubject::new(origin, target, catalog, ty),
            body,
        };
        self.0.push(event.clone());
        event
    }

    fn push(&mut self, origin: &str, target: &str, catalog: &str, ty: EventType) -> Event {
        self.push_body(origin, target, catalog, ty, EventBody::Empty)
    }

    fn share(&mut self, from: &str, to: &str, catalog: &str) -> Event {
        self.push(from, to, catalog, EventType::CatalogShared)
    }

    fn unshare(&mut self, from: &str, to: &str, catalog: &str) -> Event {
        self.push(from, to, catalog, EventType::CatalogUnshared)
    }
}

fn folded(events: &[Event]) -> (BTreeMap<String, CatalogRecord>, CountDelta) {
    let mut records = BTreeMap::new();
    let delta = fold::<Catalogs>(&mut records, events);
    (records, delta)
}

fn shares(n: i64) -> CountDelta {
    CountDelta {
        total_initialized: 0,
        share_count: n,
        ..CountDelta::default()
    }
}

/// A log with a bit of everything, historical oddities included.
fn mixed_log() -> (Log, Vec<String>) {
    let k: Vec<String> = (0..5).map(|_| account()).collect();
    let mut log = Log::default();
    log.push(&k[0], NONE, NONE, EventType::NatsterInitialized);
    log.share(&k[0], &k[1], "movies");
    log.share(&k[0], &k[2], "movies");
    log.share(&k[4], &k[0], "welcome"); // auto-share from the hub
    log.share(&k[4], &k[1], "welcome");
    log.push(&k[1], &k[0], "movies", EventType::CatalogImported);
    log.unshare(&k[0], &k[1], "movies");
    log.share(&k[1], &k[3], "movies"); // non-owner
    log.unshare(&k[1], &k[2], "movies"); // non-owner
    log.share(&k[0], NONE, "movies"); // junk
    log.share(&k[2], NONE, "junk"); // junk
    log.share(&k[0], &k[1], NONE); // junk
    log.share(&k[0], &k[0], "movies"); // junk
    log.unshare(&k[3], &k[2], "music"); // nothing to unshare
    log.share(&k[2], &k[3], "music");
    log.share(&k[0], &k[1], "movies");
    log.share(&k[0], &k[1], "movies"); // duplicate
    log.unshare(&k[2], &k[3], "music");
    log.push(&k[0], NONE, NONE, EventType::ContextBound);
    log.share(&k[2], &k[0], "music");
    (log, k)
}

#[test]
fn keys() {
    let a = account();
    let b = account();
    let mut log = Log::default();
    assert_eq!(Catalogs::keys(&log.share(&a, &b, "movies")), vec!["movies"]);
    assert_eq!(
        Catalogs::keys(&log.unshare(&a, &b, "movies")),
        vec!["movies"]
    );
    for ty in [EventType::CatalogShared, EventType::CatalogUnshared] {
        assert!(Catalogs::keys(&log.push(&a, NONE, "movies", ty)).is_empty());
        assert!(Catalogs::keys(&log.push(&a, &b, NONE, ty)).is_empty());
        assert!(Catalogs::keys(&log.push(&a, &a, "movies", ty)).is_empty());
    }
    for ty in [
        EventType::CatalogImported,
        EventType::NatsterInitialized,
        EventType::ContextBound,
    ] {
        assert!(Catalogs::keys(&log.push(&a, &b, "movies", ty)).is_empty());
    }
}

#[test]
fn first_share_creates_the_record_and_counts() {
    let a = account();
    let b = account();
    let mut log = Log::default();
    log.share(&a, &b, "movies");
    let (records, delta) = folded(&log.0);
    assert_eq!(
        records["movies"],
        CatalogRecord {
            catalog_name: "movies".into(),
            owner: a.clone(),
            shared_with: vec![b.clone()],
            applied_seq: 1,
        }
    );
    assert_eq!(delta, shares(1));
}

#[test]
fn shares_keep_their_order_and_are_not_duplicated() {
    let a = account();
    let t: Vec<String> = (0..3).map(|_| account()).collect();
    let mut log = Log::default();
    log.share(&a, &t[2], "movies");
    log.share(&a, &t[0], "movies");
    log.share(&a, &t[2], "movies"); // duplicate
    log.share(&a, &t[1], "movies");
    let (records, delta) = folded(&log.0);
    assert_eq!(
        records["movies"].shared_with,
        vec![t[2].clone(), t[0].clone(), t[1].clone()]
    );
    assert_eq!(records["movies"].applied_seq, 4);
    assert_eq!(delta, shares(3));
    // An unshare then reshare moves the account to the end.
    log.unshare(&a, &t[2], "movies");
    log.share(&a, &t[2], "movies");
    let (records, delta) = folded(&log.0);
    assert_eq!(
        records["movies"].shared_with,
        vec![t[0].clone(), t[1].clone(), t[2].clone()]
    );
    assert_eq!(delta, shares(3));
}

/// The original service never removed the account from `shared_with` on unshare.
#[test]
fn unshare_removes_the_account_and_decrements_share_count() {
    let a = account();
    let b = account();
    let c = account();
    let mut log = Log::default();
    log.share(&a, &b, "movies");
    log.share(&a, &c, "movies");
    let mut records = BTreeMap::new();
    assert_eq!(fold::<Catalogs>(&mut records, &log.0), shares(2));
    let unshare = log.unshare(&a, &b, "movies");
    assert_eq!(fold::<Catalogs>(&mut records, &[unshare]), shares(-1));
    assert_eq!(records["movies"].shared_with, vec![c.clone()]);
    assert_eq!(records["movies"].owner, a);
    assert_eq!(records["movies"].applied_seq, 3);
    // The last unshare leaves an empty record that still names the owner.
    let unshare = log.unshare(&a, &c, "movies");
    assert_eq!(fold::<Catalogs>(&mut records, &[unshare]), shares(-1));
    assert!(records["movies"].shared_with.is_empty());
    assert_eq!(records["movies"].owner, a);
    // Unsharing an account that is not shared with changes no count.
    let unshare = log.unshare(&a, &b, "movies");
    assert!(fold::<Catalogs>(&mut records, &[unshare]).is_zero());
    assert_eq!(records["movies"].applied_seq, 5);
}

#[test]
fn unshare_of_an_absent_record_leaves_it_absent() {
    let a = account();
    let b = account();
    let mut log = Log::default();
    log.unshare(&a, &b, "movies");
    let (records, delta) = folded(&log.0);
    assert!(records.is_empty());
    assert!(delta.is_zero());
    assert_eq!(Catalogs::apply("movies", None, &log.0[0]), None);
    // The first *share* decides the owner, not the earlier unshare.
    log.share(&b, &a, "movies");
    let (records, _) = folded(&log.0);
    assert_eq!(records["movies"].owner, b);
}

#[test]
fn non_owners_leave_the_record_unchanged_but_for_applied_seq() {
    let owner = account();
    let other = account();
    let t1 = account();
    let t2 = account();
    let mut log = Log::default();
    log.share(&owner, &t1, "movies");
    let mut records = BTreeMap::new();
    fold::<Catalogs>(&mut records, &log.0);
    let before = records["movies"].clone();
    for event in [
        log.share(&other, &t2, "movies"),
        log.unshare(&other, &t1, "movies"),
        log.share(&t1, &owner, "movies"),
    ] {
        assert!(fold::<Catalogs>(&mut records, std::slice::from_ref(&event)).is_zero());
        assert_eq!(
            records["movies"],
            CatalogRecord {
                applied_seq: event.seq,
                ..before.clone()
            }
        );
    }
}

#[test]
fn none_tokens_self_shares_and_other_types_touch_nothing() {
    let a = account();
    let b = account();
    let mut log = Log::default();
    for ty in [EventType::CatalogShared, EventType::CatalogUnshared] {
        log.push(&a, NONE, "movies", ty);
        log.push(&a, &b, NONE, ty);
        log.push(&a, &a, "movies", ty);
    }
    log.push(&b, &a, "movies", EventType::CatalogImported);
    log.push(&a, NONE, NONE, EventType::NatsterInitialized);
    log.push(&a, NONE, NONE, EventType::ContextBound);
    let (records, delta) = folded(&log.0);
    assert!(records.is_empty(), "{records:?}");
    assert!(delta.is_zero());
    // ...so the first proper share still decides the owner.
    log.share(&b, &a, "movies");
    let (records, _) = folded(&log.0);
    assert_eq!(records["movies"].owner, b);
}

#[test]
fn historical_empty_and_null_bodies_work() {
    let a = account();
    let b = account();
    let mut log = Log::default();
    for (ty, raw) in [
        (EventType::CatalogShared, &b""[..]),
        (EventType::CatalogUnshared, &b"null"[..]),
        (EventType::CatalogShared, &b"null"[..]),
    ] {
        log.push_body(&a, &b, "movies", ty, EventBody::decode(ty, raw));
    }
    let (records, delta) = folded(&log.0);
    assert_eq!(records["movies"].shared_with, vec![b]);
    assert_eq!(records["movies"].applied_seq, 3);
    assert_eq!(delta, shares(1));
}

#[test]
fn mixed_log_final_records() {
    let (log, k) = mixed_log();
    let (records, delta) = folded(&log.0);
    assert_eq!(records.len(), 3);
    assert_eq!(records["movies"].owner, k[0]);
    assert_eq!(
        records["movies"].shared_with,
        vec![k[2].clone(), k[1].clone()]
    );
    assert_eq!(records["welcome"].owner, k[4]);
    assert_eq!(
        records["welcome"].shared_with,
        vec![k[0].clone(), k[1].clone()]
    );
    assert_eq!(records["music"].owner, k[2]);
    assert_eq!(records["music"].shared_with, vec![k[0].clone()]);
    assert_eq!(delta, shares(5));
    assert!(!records.contains_key("junk"));
    assert!(!records.contains_key(NONE));
}

#[test]
fn replays_change_nothing() {
    let (log, _) = mixed_log();
    let (mut records, _) = folded(&log.0);
    let snapshot = records.clone();
    assert!(fold::<Catalogs>(&mut records, &log.0).is_zero());
    for i in 0..log.0.len() {
        assert!(fold::<Catalogs>(&mut records, &log.0[i..=i]).is_zero());
    }
    assert_eq!(records, snapshot);
}

#[test]
fn batch_splits_do_not_matter() {
    let (log, _) = mixed_log();
    let (whole, whole_delta) = folded(&log.0);
    let n = log.0.len();
    for i in 0..=n {
        for j in i..=n {
            let mut records = BTreeMap::new();
            let mut delta = CountDelta::default();
            for batch in [&log.0[..i], &log.0[i..j], &log.0[j..]] {
                delta += fold::<Catalogs>(&mut records, batch);
            }
            assert_eq!(records, whole, "split at {i}, {j}");
            assert_eq!(delta, whole_delta, "split at {i}, {j}");
        }
    }
}

#[test]
fn delta_matches_the_records_and_applied_seq_is_the_last_touch() {
    let (log, _) = mixed_log();
    for end in 0..=log.0.len() {
        let events = &log.0[..end];
        let (records, delta) = folded(events);
        let total: usize = records.values().map(|r| r.shared_with.len()).sum();
        assert_eq!(delta.share_count, total as i64, "prefix {end}");
        assert_eq!(delta.total_initialized, 0);
        for (key, record) in &records {
            assert_eq!(&record.catalog_name, key);
            assert!(!record.shared_with.contains(&record.owner));
            let last = events
                .iter()
                .filter(|e| Catalogs::keys(e).contains(key))
                .map(|e| e.seq)
                .max();
            assert_eq!(Some(record.applied_seq), last, "{key} at prefix {end}");
            assert_eq!(Catalogs::applied_seq(record), record.applied_seq);
        }
    }
}

/// For any log `decide` can produce, the catalog projection agrees with the decision
/// state about owners and active shares.
#[test]
fn agrees_with_the_decision_state_on_decided_logs() {
    let keys: Vec<String> = (0..5).map(|_| account()).collect();
    let names = ["movies", "music", "Books"];
    let mut state = DecisionState::default();
    let mut events: Vec<Event> = Vec::new();
    let mut next = crate::model::testing::xorshift(0x2545_F491_4F6C_DD1D);
    for _ in 0..1500 {
        let command = crate::model::testing::random_command(&mut next, &keys, &names);
        crate::model::testing::append_decided(&mut state, &mut events, &command);
    }
    let (records, delta) = folded(&events);
    assert!(!records.is_empty());
    let mut total = 0;
    for catalog in state.catalogs() {
        let name = &catalog.name;
        let record = &records[name];
        assert_eq!(record.owner, catalog.owner, "{name}");
        let mut shared: Vec<&String> = record.shared_with.iter().collect();
        shared.sort();
        assert_eq!(shared, catalog.shares.keys().collect::<Vec<_>>(), "{name}");
        total += catalog.shares.len();
    }
    assert_eq!(records.len(), state.catalogs().count());
    assert_eq!(delta, shares(total as i64));
}

#[test]
fn shares_without_a_real_target_make_no_owner_like_the_projections() {
    let event = |seq: u64, origin: &str, target: &str, catalog: &str, ty: EventType| Event {
        seq,
        time: seq as i64,
        subject: EventSubject::new(origin, target, catalog, ty),
        body: EventBody::Empty,
    };
    let (a, b, c) = (account(), account(), account());
    let mut state = DecisionState::default();
    state.apply(&event(1, &a, NONE, "movies", EventType::CatalogShared));
    state.apply(&event(2, &c, &c, "music", EventType::CatalogShared));
    assert_eq!(state.owner_of("movies"), None);
    assert_eq!(state.owner_of("music"), None);
    assert_eq!(
        state.catalog_facts("movies").unwrap().last_seq,
        1,
        "the sequence still moves"
    );
    state.apply(&event(3, &b, &c, "movies", EventType::CatalogShared));
    assert_eq!(state.owner_of("movies"), Some(b.as_str()));
    let mut records = std::collections::BTreeMap::new();
    fold::<Catalogs>(
        &mut records,
        &[
            event(1, &a, NONE, "movies", EventType::CatalogShared),
            event(3, &b, &c, "movies", EventType::CatalogShared),
        ],
    );
    assert_eq!(records["movies"].owner, b);
}

#[test]
fn the_computed_encoded_length_is_the_json_length() {
    use crate::model::testing::{awkward_string, xorshift};
    let mut next = xorshift(0x5eed_ca7a);
    for _ in 0..2_000 {
        let shared_with = (0..next(5))
            .map(|_| awkward_string(&mut next, 60))
            .collect();
        let record = CatalogRecord {
            catalog_name: awkward_string(&mut next, 12),
            owner: awkward_string(&mut next, 60),
            shared_with,
            applied_seq: [0, 5, 10, 123_456_789, u64::MAX][next(5)],
        };
        let json = serde_json::to_vec(&record).expect("a record serializes");
        assert_eq!(Catalogs::encoded_len(&record), json.len(), "{record:?}");
    }
}
