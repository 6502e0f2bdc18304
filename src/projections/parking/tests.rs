use super::*;
use crate::model::{Event, EventBody, EventSubject, EventType};
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

#[test]
fn an_unreadable_record_parks_what_touches_it() {
    let share = event(5, "A", "B", "movies", EventType::CatalogShared);
    let parked = step::<Catalogs>(&share, RecordLimit::default(), |key| {
        Err(ParkReason::Unreadable {
            key: key.to_string(),
            detail: "expected value at line 1 column 1".into(),
        })
    })
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
