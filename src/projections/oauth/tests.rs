use super::*;
use crate::model::{ContextBoundData, EventSubject, NatsterContext, NONE};
use crate::projections::{fold, CountDelta};
use std::collections::BTreeMap;

fn account() -> String {
    nkeys::KeyPair::new_account().public_key()
}

fn context(account: &str, token: &str) -> NatsterContext {
    NatsterContext {
        team_id: "team".into(),
        system_id: "system".into(),
        account_id: "account-id".into(),
        account_name: "account-name".into(),
        account_public_key: account.into(),
        access_token: token.into(),
        user_id: "user".into(),
        creds: "-----BEGIN NATS USER JWT-----".into(),
    }
}

#[derive(Default)]
struct Log(Vec<Event>);

impl Log {
    fn push_body(&mut self, origin: &str, ty: EventType, body: EventBody) -> Event {
        let seq = self.0.len() as u64 + 1;
        let event = Event {
            seq,
            time: 3_000_000 + seq as i64,
            subject: EventSubject::new(origin, NONE, NONE, ty),
            body,
        };
        self.0.push(event.clone());
        event
    }

    fn bind(&mut self, account: &str, oauth_id: &str, token: &str) -> Event {
        let body = EventBody::ContextBound(ContextBoundData {
            oauth_id: oauth_id.into(),
            bound_context: context(account, token),
            ..ContextBoundData::default()
        });
        self.push_body(account, EventType::ContextBound, body)
    }
}

fn folded(events: &[Event]) -> (BTreeMap<String, OAuthRecord>, CountDelta) {
    let mut records = BTreeMap::new();
    let delta = fold::<OAuthIndex>(&mut records, events);
    (records, delta)
}

fn mixed_log() -> (Log, Vec<String>) {
    let k: Vec<String> = (0..3).map(|_| account()).collect();
    let mut log = Log::default();
    log.push_body(&k[0], EventType::NatsterInitialized, EventBody::Empty);
    log.bind(&k[0], "github|1", "tok-a");
    log.bind(&k[1], "google-oauth2|2", "tok-b");
    log.push_body(&k[1], EventType::CatalogShared, EventBody::Empty);
    log.bind(&k[2], "github|1", "tok-c"); // the id moves to another account
    log.push_body(
        &k[2],
        EventType::ContextBound,
        EventBody::Other(serde_json::json!({"oauth_id": 5})),
    );
    log.bind(&k[1], "google-oauth2|2", "tok-b2"); // same account rebinds
    log.bind(&k[0], "email|a@b.c", "tok-a2");
    (log, k)
}

#[test]
fn kv_keys_are_url_safe_base64_and_distinct() {
    assert_eq!(key("github|123"), "Z2l0aHVifDEyMw");
    let ids = [
        "github|123",
        "github|124",
        "google-oauth2|1",
        "email|a@b.c",
        "a.b.*>",
        "ümlaut",
        "a b",
        "??>>",
    ];
    let mut seen = std::collections::BTreeSet::new();
    for id in ids {
        let k = key(id);
        assert!(!k.is_empty());
        assert!(
            k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{id} -> {k}"
        );
        assert_eq!(BASE64URL_NOPAD.decode(k.as_bytes()).unwrap(), id.as_bytes());
        assert!(seen.insert(k));
    }
    // 256-character ids (the longest accepted) make keys well within KV limits.
    assert_eq!(key(&"x".repeat(256)).len(), 342);
}

#[test]
fn keys_only_for_decoded_context_bound_events() {
    let a = account();
    let mut log = Log::default();
    assert_eq!(
        OAuthIndex::keys(&log.bind(&a, "github|1", "t")),
        vec![key("github|1")]
    );
    for body in [
        EventBody::Empty,
        EventBody::Other(serde_json::json!({"oauth_id": "github|1"})),
    ] {
        assert!(OAuthIndex::keys(&log.push_body(&a, EventType::ContextBound, body)).is_empty());
    }
    // A context body on another event type is not a binding.
    let body = EventBody::ContextBound(ContextBoundData {
        oauth_id: "github|1".into(),
        bound_context: context(&a, "t"),
        ..ContextBoundData::default()
    });
    for ty in [
        EventType::NatsterInitialized,
        EventType::CatalogShared,
        EventType::CatalogUnshared,
        EventType::CatalogImported,
    ] {
        assert!(OAuthIndex::keys(&log.push_body(&a, ty, body.clone())).is_empty());
    }
}

#[test]
fn binding_creates_the_record_with_the_token_as_carried() {
    let a = account();
    let mut log = Log::default();
    log.bind(&a, "github|1", "xkey-sealed:abc123==");
    let (records, delta) = folded(&log.0);
    assert!(delta.is_zero());
    assert_eq!(records.len(), 1);
    let record = &records[&key("github|1")];
    assert_eq!(
        record,
        &OAuthRecord {
            oauth_id: "github|1".into(),
            account_key: a.clone(),
            context: context(&a, "xkey-sealed:abc123=="),
            applied_seq: 1,
        }
    );
    assert_eq!(record.context.access_token, "xkey-sealed:abc123==");
    assert_eq!(OAuthIndex::applied_seq(record), 1);
}

#[test]
fn the_last_binding_of_an_id_wins() {
    let (log, k) = mixed_log();
    let (records, delta) = folded(&log.0);
    assert!(delta.is_zero());
    assert_eq!(records.len(), 3);
    let github = &records[&key("github|1")];
    assert_eq!(github.account_key, k[2]);
    assert_eq!(github.context, context(&k[2], "tok-c"));
    assert_eq!(github.applied_seq, 5);
    let google = &records[&key("google-oauth2|2")];
    assert_eq!(google.account_key, k[1]);
    assert_eq!(google.context.access_token, "tok-b2");
    assert_eq!(google.applied_seq, 7);
    let email = &records[&key("email|a@b.c")];
    assert_eq!(email.account_key, k[0]);
    assert_eq!(email.oauth_id, "email|a@b.c");
    assert_eq!(email.applied_seq, 8);
}

#[test]
fn apply_ignores_bodies_that_are_not_bindings() {
    let a = account();
    let mut log = Log::default();
    let bound = log.bind(&a, "github|1", "t");
    let record = OAuthIndex::apply(&key("github|1"), None, &bound);
    let other = log.push_body(&a, EventType::ContextBound, EventBody::Empty);
    assert_eq!(
        OAuthIndex::apply(&key("github|1"), record.clone(), &other),
        record
    );
    assert_eq!(OAuthIndex::apply(&key("github|1"), None, &other), None);
}

#[test]
fn replays_change_nothing() {
    let (log, _) = mixed_log();
    let (mut records, _) = folded(&log.0);
    let snapshot = records.clone();
    assert!(fold::<OAuthIndex>(&mut records, &log.0).is_zero());
    // An old binding redelivered alone must not take the id back.
    fold::<OAuthIndex>(&mut records, &log.0[1..2]);
    assert_eq!(records, snapshot);
}

#[test]
fn batch_splits_do_not_matter() {
    let (log, _) = mixed_log();
    let (whole, _) = folded(&log.0);
    let n = log.0.len();
    for i in 0..=n {
        for j in i..=n {
            let mut records = BTreeMap::new();
            for batch in [&log.0[..i], &log.0[i..j], &log.0[j..]] {
                assert!(fold::<OAuthIndex>(&mut records, batch).is_zero());
            }
            assert_eq!(records, whole, "split at {i}, {j}");
        }
    }
}

#[test]
fn applied_seq_is_the_last_touch() {
    let (log, _) = mixed_log();
    for end in 0..=log.0.len() {
        let events = &log.0[..end];
        let (records, _) = folded(events);
        for (k, record) in &records {
            assert_eq!(&key(&record.oauth_id), k);
            let last = events
                .iter()
                .filter(|e| OAuthIndex::keys(e).contains(k))
                .map(|e| e.seq)
                .max();
            assert_eq!(Some(record.applied_seq), last, "prefix {end}");
        }
    }
}

#[test]
fn an_empty_oauth_id_from_an_adopted_log_touches_nothing() {
    let account = nkeys::KeyPair::new_account().public_key();
    let event = Event {
        seq: 1,
        time: 1,
        subject: crate::model::EventSubject::new(&account, "none", "none", EventType::ContextBound),
        body: EventBody::ContextBound(crate::model::ContextBoundData::default()),
    };
    assert!(OAuthIndex::keys(&event).is_empty());
}

/// For any sequence of bindings `decide` accepts, the OAuth index and the account records
/// agree with the decision state: an OAuth id resolves to the account bound to it now, or to
/// nothing, and an account shows the one id it is bound to now.
#[test]
fn rebinding_unbinds_in_both_projections_on_decided_logs() {
    use crate::model::testing::{append_decided, xorshift};
    use crate::model::{Command, DecisionState, InitData};
    use crate::projections::accounts::Accounts;
    let accounts: Vec<String> = (0..4).map(|_| account()).collect();
    let ids = ["u1", "u2", "u3", "u4", "u5"];
    let mut state = DecisionState::default();
    let mut events: Vec<Event> = Vec::new();
    let mut next = xorshift(0x9E37_79B9_7F4A_7C15);
    let inits = accounts.iter().map(|a| Command::Initialize {
        caller: a.clone(),
        data: InitData {
            account_key: a.clone(),
            ..InitData::default()
        },
    });
    let binds: Vec<Command> = (0..400)
        .map(|_| {
            let a = accounts[next(accounts.len())].clone();
            Command::BindContext {
                account: a.clone(),
                data: ContextBoundData {
                    oauth_id: ids[next(ids.len())].into(),
                    bound_context: context(&a, "sealed"),
                    ..ContextBoundData::default()
                },
            }
        })
        .collect();
    for command in inits.chain(binds) {
        assert!(
            append_decided(&mut state, &mut events, &command),
            "{command:?}"
        );
    }
    let (by_id, _) = folded(&events);
    let mut by_account = BTreeMap::new();
    fold::<Accounts>(&mut by_account, &events);
    for id in ids {
        assert_eq!(
            by_id.get(&key(id)).map(|r| r.account_key.as_str()),
            state.bindings.account_of(id),
            "{id}"
        );
    }
    let moves = |pick: fn(&ContextBoundData) -> bool| {
        events
            .iter()
            .filter(|e| matches!(&e.body, EventBody::ContextBound(d) if pick(d)))
            .count()
    };
    assert!(moves(|d| d.previous_oauth_id.is_some()) > 10);
    assert!(moves(|d| d.previous_account.is_some()) > 10);
    for a in &accounts {
        assert_eq!(
            by_account[a].oauth_id.as_deref(),
            state.bindings.oauth_id_of(a),
            "{a}"
        );
    }
}
