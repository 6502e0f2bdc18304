use super::*;
use crate::model::testing::{random_command, xorshift};
use crate::model::{decide, Decoded, Event, EventBody, EventSubject, EventType, NONE};
use crate::write::retries::RecentRequests;

/// Stream time of the duplicate window in these tests (log times are `seq / 4`).
const WINDOW: i64 = 30;

fn this_log() -> LogIdentity {
    LogIdentity {
        stream: "NATSTER_EVENTS".into(),
        created: 1_700_000_000_123_456_789,
    }
}

fn account() -> String {
    nkeys::KeyPair::new_account().public_key()
}

/// A message of a random log: what the tail folds (the log message and, if it was appended
/// under an idempotency key, that key and fingerprint).
struct Message {
    decoded: Decoded,
    request: Option<(String, String)>,
}

/// A log of `len` messages made by `decide` from random commands, with what adopted logs and
/// foreign publishers add mixed in: shares by non-owners and to `none`, types this version
/// does not know, messages that are not events.
fn random_log(seed: u64, len: usize) -> Vec<Message> {
    let keys: Vec<String> = (0..8).map(|_| account()).collect();
    let names = ["movies", "music", "Books", "x1"];
    let mut next = xorshift(seed);
    let mut state = DecisionState::default();
    let mut log = Vec::new();
    while log.len() < len {
        let seq = log.len() as u64 + 1;
        let pick = |next: &mut dyn FnMut(usize) -> usize| keys[next(keys.len())].clone();
        let decoded = match next(12) {
            0 => Decoded::Foreign { seq },
            1 => Decoded::Unknown {
                seq,
                origin: pick(&mut next),
                target: pick(&mut next),
                catalog: names[next(names.len())].into(),
            },
            2 => {
                let target = if next(2) == 0 {
                    NONE.into()
                } else {
                    pick(&mut next)
                };
                let subject = EventSubject::new(
                    &pick(&mut next),
                    &target,
                    names[next(names.len())],
                    EventType::CatalogShared,
                );
                Decoded::Event(Box::new(event(seq, subject, EventBody::Empty)))
            }
            _ => match decide(&state, &random_command(&mut next, &keys, &names)) {
                Ok(decision) => {
                    Decoded::Event(Box::new(event(seq, decision.subject, decision.body)))
                }
                Err(_) => continue,
            },
        };
        state.apply_decoded(&decoded);
        let request =
            (next(3) == 0).then(|| (format!("key-{}", next(40)), format!("f{}", next(3))));
        log.push(Message { decoded, request });
    }
    log
}

fn event(seq: u64, subject: EventSubject, body: EventBody) -> Event {
    Event {
        seq,
        time: seq as i64 / 4,
        subject,
        body,
    }
}

/// Folds `messages` as the tail does.
fn fold(state: &mut DecisionState, recent: &mut RecentRequests, messages: &[Message]) {
    for (message, seq) in messages.iter().zip(state.last_seq + 1..) {
        if let Some((key, fingerprint)) = &message.request {
            recent.record(key, fingerprint, seq, seq as i64 / 4);
        }
        state.apply_decoded(&message.decoded);
    }
}

/// A state restored from a snapshot taken anywhere in the log, then folded on to the end,
/// equals the state folded from the whole log, and decides every command the same way.
#[test]
fn a_snapshot_taken_mid_log_plus_the_tail_equals_a_full_replay() {
    for seed in [0x9E37_79B9_7F4A_7C15, 0x2545_F491_4F6C_DD1D, 7] {
        let log = random_log(seed, 1_500);
        let (mut full, mut full_recent) = (DecisionState::default(), RecentRequests::new(WINDOW));
        fold(&mut full, &mut full_recent, &log);
        assert!(full.sizes().2 > 10, "the log shares catalogs");
        for split in [0, 1, log.len() / 3, log.len() / 2, log.len() - 1, log.len()] {
            let (mut state, mut recent) = (DecisionState::default(), RecentRequests::new(WINDOW));
            fold(&mut state, &mut recent, &log[..split]);
            let bytes = encode(&this_log(), &state, &recent.remembered());
            let restored = decode(&bytes, &this_log(), log.len() as u64).expect("usable");
            let mut state = restored.state;
            assert_eq!(state.last_seq, split as u64);
            let mut recent = RecentRequests::restore(WINDOW, &restored.recent);
            fold(&mut state, &mut recent, &log[split..]);
            assert_eq!(state, full, "seed {seed:x}, snapshot at {split}");
            assert_eq!(recent.remembered(), full_recent.remembered(), "at {split}");
            let keys: Vec<String> = full
                .catalogs()
                .map(|c| c.owner)
                .filter(|o| !o.is_empty())
                .collect();
            let mut next = xorshift(seed ^ split as u64);
            for _ in 0..300 {
                let command =
                    random_command(&mut next, &keys, &["movies", "music", "Books", "new"]);
                assert_eq!(
                    decide(&state, &command),
                    decide(&full, &command),
                    "{command:?}"
                );
            }
        }
    }
}

/// The snapshot of a random log of `len` messages folded whole.
fn snapshot_of(seed: u64, len: usize) -> Vec<u8> {
    let (mut state, mut recent) = (DecisionState::default(), RecentRequests::new(WINDOW));
    fold(&mut state, &mut recent, &random_log(seed, len));
    encode(&this_log(), &state, &recent.remembered())
}

#[test]
fn damaged_snapshots_are_corrupt() {
    let bytes = snapshot_of(3, 200);
    let end = 200;
    let corrupt = |bytes: &[u8]| match decode(bytes, &this_log(), end) {
        Err(Unusable::Corrupt(why)) => why,
        other => panic!("not corrupt: {other:?}"),
    };
    assert_eq!(corrupt(&bytes[..20]), "not a decision-state snapshot");
    assert_eq!(
        corrupt(b"{\"json\": true}"),
        "not a decision-state snapshot"
    );
    let mut flipped = bytes.clone();
    *flipped.last_mut().unwrap() ^= 1;
    assert_eq!(corrupt(&flipped), "checksum mismatch");
    assert_eq!(corrupt(&bytes[..bytes.len() - 1]), "checksum mismatch");
    // Intact by its checksum, but not a state.
    let garbage = [0xFF_u8; 16];
    let mut forged = bytes[..12].to_vec();
    forged.extend_from_slice(&Sha256::digest(garbage));
    forged.extend_from_slice(&garbage);
    assert!(corrupt(&forged).starts_with("undecodable body"));
    assert!(decode(&bytes, &this_log(), end).is_ok());
}

#[test]
fn snapshots_of_another_format_or_log_are_stale_or_foreign() {
    let bytes = snapshot_of(5, 100);
    let mut other_format = bytes.clone();
    other_format[8..12].copy_from_slice(&(FORMAT + 1).to_le_bytes());
    let stale = decode(&other_format, &this_log(), 100).unwrap_err();
    assert_eq!(stale, Unusable::Stale { found: FORMAT + 1 });
    assert_eq!(stale.reason(), "stale");
    let recreated = LogIdentity {
        created: this_log().created + 1,
        ..this_log()
    };
    let foreign = decode(&bytes, &recreated, 100).unwrap_err();
    assert_eq!(foreign.reason(), "foreign");
    // A log shorter than the snapshot is another log (or one restored from an older backup).
    let ahead = decode(&bytes, &this_log(), 99).unwrap_err();
    assert_eq!(
        ahead,
        Unusable::Foreign("it reaches sequence 100, the log ends at 99".into())
    );
}
