use super::*;
use crate::model::{ContextBoundData, EventSubject, InitData, NatsterContext};
use crate::projections::fold;
use std::collections::BTreeMap;

fn account() -> String {
    nkeys::KeyPair::new_account().public_key()
}

/// Builds a log with consecutive sequences starting at 1 and stream times
/// `1_000_000 + 7 * seq` (so a time is never mistaken for a sequence).
#[derive(Default)]
struct Log(Vec<Event>);

impl Log {
    fn push(&mut self, origin: &str, target: &str, catalog: &str, ty: EventType) -> Event {
        let body = EventBody::Empty;
        self.push_body(origin, target, catalog, ty, body)
    }

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
            time: 1_000_000 + 7 * seq as i64,
            subject: EventSubject::new(origin, target, catalog, ty),
            body,
        };
        self.0.push(event.clone());
        event
    }

    fn init(&mut self, key: &str) -> Event {
        let body = EventBody::Initialized(InitData {
            account_id: "id".into(),
            account_name: "name".into(),
            account_key: key.into(),
        });
        self.push_body(key, NONE, NONE, EventType::NatsterInitialized, body)
    }

    fn share(&mut self, from: &str, to: &str, catalog: &str) -> Event {
        self.push(from, to, catalog, EventType::CatalogShared)
    }

    fn unshare(&mut self, from: &str, to: &str, catalog: &str) -> Event {
        self.push(from, to, catalog, EventType::CatalogUnshared)
    }

    fn bind(&mut self, key: &str, oauth_id: &str) -> Event {
        let body = EventBody::ContextBound(ContextBoundData {
            oauth_id: oauth_id.into(),
            bound_context: NatsterContext {
                account_public_key: key.into(),
                access_token: "SEALED-ACCESS-TOKEN".into(),
                ..NatsterContext::default()
            },
            ..ContextBoundData::default()
        });
        self.push_body(key, NONE, NONE, EventType::ContextBound, body)
    }
}

fn folded(events: &[Event]) -> (BTreeMap<String, AccountRecord>, CountDelta) {
    let mut records = BTreeMap::new();
    let delta = fold::<Accounts>(&mut records, events);
    (records, delta)
}

fn share_ref(catalog: &str, account: &str) -> ShareRef {
    ShareRef {
        catalog: catalog.into(),
        account: account.into(),
    }
}

/// A log with a bit of everything, historical oddities included.
fn mixed_log() -> (Log, Vec<String>) {
    let k: Vec<String> = (0..5).map(|_| account()).collect();
    let hub = &k[4];
    let mut log = Log::default();
    log.init(&k[0]);
    log.init(&k[1]);
    log.share(&k[0], &k[1], "movies");
    log.share(&k[0], &k[2], "movies"); // k[2] not initialised yet
    log.share(hub, &k[0], "welcome"); // hub never initialises
    log.push(&k[1], &k[0], "movies", EventType::CatalogImported);
    log.bind(&k[0], "github|1");
    log.init(&k[2]);
    log.unshare(&k[0], &k[1], "movies");
    log.share(&k[1], &k[3], "movies"); // non-owner share (historical)
    log.share(&k[0], NONE, "movies"); // historical junk
    log.share(&k[0], &k[1], NONE); // historical junk
    log.share(&k[0], &k[0], "self"); // historical junk
    log.init(&k[0]); // second init (historical)
    log.unshare(&k[3], &k[2], "music"); // unshare of nothing, no records
    log.share(&k[2], &k[3], "music");
    log.bind(&k[0], "google|2");
    log.share(&k[0], &k[1], "movies");
    log.share(&k[0], &k[1], "movies"); // duplicate (historical)
    log.unshare(&k[2], &k[3], "music");
    log.init(&k[3]);
    (log, k)
}

#[test]
fn keys() {
    let a = account();
    let b = account();
    let mut log = Log::default();
    assert_eq!(Accounts::keys(&log.init(&a)), vec![a.clone()]);
    assert_eq!(Accounts::keys(&log.bind(&a, "x")), vec![a.clone()]);
    assert_eq!(
        Accounts::keys(&log.share(&a, &b, "movies")),
        vec![a.clone(), b.clone()]
    );
    assert_eq!(
        Accounts::keys(&log.unshare(&a, &b, "movies")),
        vec![a.clone(), b.clone()]
    );
    assert!(Accounts::keys(&log.push(&b, &a, "movies", EventType::CatalogImported)).is_empty());
    for ty in [EventType::CatalogShared, EventType::CatalogUnshared] {
        assert!(Accounts::keys(&log.push(&a, NONE, "movies", ty)).is_empty());
        assert!(Accounts::keys(&log.push(&a, &b, NONE, ty)).is_empty());
        assert!(Accounts::keys(&log.push(&a, &a, "movies", ty)).is_empty());
    }
}

#[test]
fn init_takes_the_stream_time_and_counts_once() {
    let a = account();
    let mut log = Log::default();
    let first = log.init(&a);
    log.init(&a);
    let (records, delta) = folded(&log.0);
    let r = &records[&a];
    assert_eq!(r.initialized_at, first.time);
    assert_eq!(r.initialized_at, 1_000_007);
    assert_eq!(r.account_key, a);
    assert_eq!(r.applied_seq, 2);
    assert!(r.out_shares.is_empty() && r.in_shares.is_empty() && r.oauth_id.is_none());
    assert_eq!(
        delta,
        CountDelta {
            total_initialized: 1,
            share_count: 0,
            ..CountDelta::default()
        }
    );
    // Folding the second init separately yields no change in the count either.
    let mut records = BTreeMap::new();
    let d1 = fold::<Accounts>(&mut records, &log.0[..1]);
    let d2 = fold::<Accounts>(&mut records, &log.0[1..]);
    assert_eq!(d1.total_initialized, 1);
    assert!(d2.is_zero());
    assert_eq!(records[&a].initialized_at, first.time);
}

#[test]
fn init_time_is_the_events_not_the_clock() {
    let a = account();
    let event = Event {
        seq: 5,
        time: 42,
        subject: EventSubject::new(&a, NONE, NONE, EventType::NatsterInitialized),
        body: EventBody::Empty,
    };
    let record = Accounts::apply(&a, None, &event).expect("a record");
    assert_eq!(record.initialized_at, 42);
    assert_eq!(record.applied_seq, 5);
    assert_eq!(Accounts::apply(&a, None, &event), Some(record));
}

#[test]
fn several_inits_count_each_account() {
    let mut log = Log::default();
    let keys: Vec<String> = (0..4).map(|_| account()).collect();
    for key in &keys {
        log.init(key);
    }
    let (records, delta) = folded(&log.0);
    assert_eq!(records.len(), 4);
    assert_eq!(delta.total_initialized, 4);
}

#[test]
fn share_reaches_both_accounts_and_creates_an_uninitialised_target() {
    let a = account();
    let b = account();
    let mut log = Log::default();
    log.init(&a);
    log.share(&a, &b, "movies");
    let (records, delta) = folded(&log.0);
    assert_eq!(records[&a].out_shares, vec![share_ref("movies", &b)]);
    assert!(records[&a].in_shares.is_empty());
    let target = &records[&b];
    assert_eq!(target.account_key, b);
    assert_eq!(target.in_shares, vec![share_ref("movies", &a)]);
    assert!(target.out_shares.is_empty());
    assert_eq!(target.initialized_at, 0);
    assert_eq!(target.applied_seq, 2);
    assert_eq!(delta.total_initialized, 1);
    assert_eq!(delta.share_count, 0);
    // When the target initialises later it counts, and keeps its share.
    log.init(&b);
    let (records, delta) = folded(&log.0);
    assert_eq!(delta.total_initialized, 2);
    assert_eq!(records[&b].initialized_at, log.0[2].time);
    assert_eq!(records[&b].in_shares, vec![share_ref("movies", &a)]);
}

#[test]
fn an_uninitialised_hub_does_not_count() {
    let hub = account();
    let a = account();
    let mut log = Log::default();
    log.init(&a);
    log.share(&hub, &a, "welcome");
    let (records, delta) = folded(&log.0);
    assert_eq!(records[&hub].initialized_at, 0);
    assert_eq!(records[&hub].out_shares, vec![share_ref("welcome", &a)]);
    assert_eq!(delta.total_initialized, 1);
}

#[test]
fn unshare_removes_both_sides_only_for_that_catalog_and_target() {
    let a = account();
    let b = account();
    let c = account();
    let mut log = Log::default();
    log.init(&a);
    log.share(&a, &b, "movies");
    log.share(&a, &c, "movies");
    log.share(&a, &b, "music");
    log.share(&b, &a, "movies2");
    log.unshare(&a, &b, "movies");
    let (records, _) = folded(&log.0);
    assert_eq!(
        records[&a].out_shares,
        vec![share_ref("movies", &c), share_ref("music", &b)]
    );
    assert_eq!(records[&a].in_shares, vec![share_ref("movies2", &b)]);
    assert_eq!(records[&b].in_shares, vec![share_ref("music", &a)]);
    assert_eq!(records[&b].out_shares, vec![share_ref("movies2", &a)]);
    assert_eq!(records[&c].in_shares, vec![share_ref("movies", &a)]);
    assert_eq!(records[&a].applied_seq, 6);
    assert_eq!(records[&b].applied_seq, 6);
    assert_eq!(records[&c].applied_seq, 3);
    // Records stay after their last share goes.
    log.unshare(&a, &c, "movies");
    let (records, _) = folded(&log.0);
    assert!(records[&c].in_shares.is_empty());
    assert_eq!(records[&c].applied_seq, 7);
}

#[test]
fn unshare_of_absent_records_leaves_them_absent() {
    let a = account();
    let b = account();
    let c = account();
    let mut log = Log::default();
    log.unshare(&a, &b, "movies");
    let (records, delta) = folded(&log.0);
    assert!(records.is_empty());
    assert!(delta.is_zero());
    // With only the origin present, the target stays absent.
    log.init(&a);
    log.unshare(&a, &c, "movies");
    let (records, _) = folded(&log.0);
    assert_eq!(records.keys().collect::<Vec<_>>(), vec![&a]);
    assert_eq!(records[&a].applied_seq, 3);
    assert_eq!(Accounts::apply(&b, None, &log.0[0]), None);
}

#[test]
fn duplicate_shares_are_listed_once_and_reshares_come_back() {
    let a = account();
    let b = account();
    let mut log = Log::default();
    log.share(&a, &b, "movies");
    log.share(&a, &b, "movies");
    let (records, _) = folded(&log.0);
    assert_eq!(records[&a].out_shares.len(), 1);
    assert_eq!(records[&b].in_shares.len(), 1);
    log.unshare(&a, &b, "movies");
    log.share(&a, &b, "movies");
    let (records, _) = folded(&log.0);
    assert_eq!(records[&a].out_shares, vec![share_ref("movies", &b)]);
    assert_eq!(records[&b].in_shares, vec![share_ref("movies", &a)]);
}

#[test]
fn shares_with_none_tokens_or_to_self_touch_nothing() {
    let a = account();
    let b = account();
    let mut log = Log::default();
    for ty in [EventType::CatalogShared, EventType::CatalogUnshared] {
        log.push(&a, NONE, "movies", ty);
        log.push(&a, &b, NONE, ty);
        log.push(&a, &a, "movies", ty);
        log.push(&b, &a, "movies", EventType::CatalogImported);
    }
    let (records, delta) = folded(&log.0);
    assert!(records.is_empty(), "{records:?}");
    assert!(delta.is_zero());
}

#[test]
fn historical_empty_and_null_bodies_work_for_shares() {
    let a = account();
    let b = account();
    let mut log = Log::default();
    for (ty, raw) in [
        (EventType::CatalogShared, &b""[..]),
        (EventType::CatalogUnshared, &b"null"[..]),
        (EventType::CatalogShared, &b"  "[..]),
    ] {
        log.push_body(&a, &b, "movies", ty, EventBody::decode(ty, raw));
    }
    assert!(log.0.iter().all(|e| e.body == EventBody::Empty));
    let (records, _) = folded(&log.0);
    assert_eq!(records[&a].out_shares, vec![share_ref("movies", &b)]);
    assert_eq!(records[&b].in_shares, vec![share_ref("movies", &a)]);
    assert_eq!(records[&a].applied_seq, 3);
}

#[test]
fn non_owner_shares_still_update_account_records() {
    // Documented: only the catalog projection and the decision state know about
    // ownership; account records list whatever was shared.
    let owner = account();
    let other = account();
    let target = account();
    let mut log = Log::default();
    log.share(&owner, &target, "movies");
    log.share(&other, &target, "movies");
    let (records, _) = folded(&log.0);
    assert_eq!(
        records[&other].out_shares,
        vec![share_ref("movies", &target)]
    );
    assert_eq!(
        records[&target].in_shares,
        vec![share_ref("movies", &owner), share_ref("movies", &other)]
    );
}

#[test]
fn context_bound_sets_the_oauth_id_and_no_token() {
    let a = account();
    let mut log = Log::default();
    log.init(&a);
    log.bind(&a, "github|1");
    let (records, delta) = folded(&log.0);
    assert_eq!(records[&a].oauth_id.as_deref(), Some("github|1"));
    assert_eq!(records[&a].applied_seq, 2);
    assert_eq!(records[&a].initialized_at, log.0[0].time);
    assert_eq!(delta.total_initialized, 1);
    log.bind(&a, "google|2");
    let (records, _) = folded(&log.0);
    assert_eq!(records[&a].oauth_id.as_deref(), Some("google|2"));
    let json = serde_json::to_string(&records[&a]).unwrap();
    assert!(!json.contains("SEALED-ACCESS-TOKEN"), "{json}");
    assert!(json.contains("\"oauth_id\":\"google|2\""), "{json}");
    // A context_bound whose body did not decode changes no id.
    log.push_body(
        &a,
        NONE,
        NONE,
        EventType::ContextBound,
        EventBody::Other(serde_json::json!([1])),
    );
    let (records, _) = folded(&log.0);
    assert_eq!(records[&a].oauth_id.as_deref(), Some("google|2"));
    assert_eq!(records[&a].applied_seq, 4);
}

#[test]
fn unbound_records_serialise_without_oauth_id() {
    let a = account();
    let mut log = Log::default();
    log.init(&a);
    let (records, _) = folded(&log.0);
    let value = serde_json::to_value(&records[&a]).unwrap();
    let object = value.as_object().unwrap();
    assert!(!object.contains_key("oauth_id"));
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "account_key",
            "applied_seq",
            "in_shares",
            "initialized_at",
            "out_shares"
        ]
    );
}

#[test]
fn mixed_log_final_records() {
    let (log, k) = mixed_log();
    let (records, delta) = folded(&log.0);
    assert_eq!(delta.total_initialized, 4); // k0..k3, not the hub
    assert_eq!(delta.share_count, 0);
    assert_eq!(
        records[&k[0]].out_shares,
        vec![share_ref("movies", &k[2]), share_ref("movies", &k[1])]
    );
    assert_eq!(records[&k[0]].in_shares, vec![share_ref("welcome", &k[4])]);
    assert_eq!(records[&k[0]].oauth_id.as_deref(), Some("google|2"));
    assert_eq!(records[&k[0]].initialized_at, log.0[0].time);
    assert_eq!(records[&k[1]].in_shares, vec![share_ref("movies", &k[0])]);
    assert_eq!(records[&k[1]].out_shares, vec![share_ref("movies", &k[3])]);
    assert!(records[&k[2]].out_shares.is_empty());
    assert_eq!(records[&k[3]].in_shares, vec![share_ref("movies", &k[1])]);
    assert_eq!(records[&k[3]].initialized_at, log.0.last().unwrap().time);
    assert_eq!(records[&k[4]].initialized_at, 0);
    assert_eq!(records.len(), 5);
}

#[test]
fn replays_change_nothing() {
    let (log, _) = mixed_log();
    let (mut records, _) = folded(&log.0);
    let snapshot = records.clone();
    assert!(fold::<Accounts>(&mut records, &log.0).is_zero());
    assert_eq!(records, snapshot);
    for start in 0..log.0.len() {
        assert!(fold::<Accounts>(&mut records, &log.0[start..start + 1]).is_zero());
    }
    assert!(fold::<Accounts>(&mut records, &log.0[3..9]).is_zero());
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
                delta += fold::<Accounts>(&mut records, batch);
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
        let initialized = records.values().filter(|r| r.initialized_at > 0).count();
        assert_eq!(delta.total_initialized, initialized as i64, "prefix {end}");
        for (key, record) in &records {
            assert_eq!(&record.account_key, key);
            let last = events
                .iter()
                .filter(|e| Accounts::keys(e).contains(key))
                .map(|e| e.seq)
                .max();
            assert_eq!(Some(record.applied_seq), last, "{key} at prefix {end}");
            assert_eq!(Accounts::applied_seq(record), record.applied_seq);
        }
    }
}

#[test]
fn the_computed_encoded_length_is_the_json_length() {
    use crate::model::testing::{awkward_string, xorshift};
    let mut next = xorshift(0x5eed_acc0);
    let times = [0, 1, 9, 10, 1_000_000, i64::MAX, -1, -10, i64::MIN];
    let sequences = [0, 1, 9, 10, 123_456_789, u64::MAX];
    for _ in 0..2_000 {
        let record = AccountRecord {
            account_key: awkward_string(&mut next, 60),
            initialized_at: times[next(times.len())],
            out_shares: awkward_shares(&mut next),
            in_shares: awkward_shares(&mut next),
            oauth_id: (next(2) == 0).then(|| awkward_string(&mut next, 20)),
            applied_seq: sequences[next(sequences.len())],
        };
        let json = serde_json::to_vec(&record).expect("a record serializes");
        assert_eq!(Accounts::encoded_len(&record), json.len(), "{record:?}");
    }
}

fn awkward_shares(next: &mut impl FnMut(usize) -> usize) -> Vec<ShareRef> {
    use crate::model::testing::awkward_string;
    (0..next(4))
        .map(|_| ShareRef {
            catalog: awkward_string(next, 12),
            account: awkward_string(next, 60),
        })
        .collect()
}
