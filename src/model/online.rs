//! Catalog-online tracking: heartbeats recorded in `NATSTER_ONLINE`, projected into
//! `PROJ_ONLINE` (one record per owner and catalog), with one notice per transition.
//!
//! The stream keeps the latest message per `natster.online.<owner>.<catalog>` subject. Each
//! heartbeat carries `Nats-TTL` (the online TTL); when heartbeats stop, the server removes the
//! last one exactly one TTL later and writes an empty marker on the subject
//! (`Nats-Marker-Reason: MaxAge`), which the projector reads like any message. A catalog server
//! that shuts down says so at once with an offline message (`Natster-Offline: true`).
//!
//! [`apply`] is the pure rule; `crate::projections::online` feeds it the stream.

use serde::{Deserialize, Serialize};

/// Subject prefix of the online stream.
pub const ONLINE_SUBJECT_PREFIX: &str = "natster.online";
/// Header marking a catalog server's own offline announcement.
pub const OFFLINE_HEADER: &str = "Natster-Offline";

/// Subject of one owner's catalog in `NATSTER_ONLINE`.
pub fn online_subject(owner: &str, catalog: &str) -> String {
    format!("{ONLINE_SUBJECT_PREFIX}.{owner}.{catalog}")
}

/// Key of one owner's catalog in `PROJ_ONLINE`.
pub fn online_key(owner: &str, catalog: &str) -> String {
    format!("{owner}.{catalog}")
}

/// The online record of one owner's catalog (`PROJ_ONLINE` value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnlineRecord {
    pub catalog: String,
    /// The owner.
    pub account_key: String,
    /// Last revision heartbeated; kept after the catalog goes offline.
    pub revision: i64,
    pub online: bool,
    /// When `online` last changed (Unix seconds, stream time of the message that changed it).
    pub changed_at: i64,
    /// Last `NATSTER_ONLINE` sequence applied to this record.
    pub applied_seq: u64,
}

/// What one `NATSTER_ONLINE` message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnlineFact {
    /// The catalog server is up at `revision`.
    Heartbeat { revision: i64 },
    /// The catalog server said it stops, or its heartbeats expired.
    Offline,
}

/// One decoded `NATSTER_ONLINE` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnlineMessage {
    pub seq: u64,
    /// Stream time, Unix seconds.
    pub time: i64,
    pub owner: String,
    pub catalog: String,
    pub fact: OnlineFact,
}

/// A transition to announce (`catalog_online` / `catalog_offline` feed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub online: bool,
    pub catalog: String,
    pub owner: String,
    pub revision: i64,
    /// Unix seconds.
    pub at: i64,
}

/// Applies `message` to the record of its catalog. Returns the new record (`record` itself
/// when nothing changes, as for a steady heartbeat) and the transition to announce, if the
/// online state changed. Pure; a message at or below the record's `applied_seq` changes
/// nothing (replays are harmless).
pub fn apply(
    record: Option<OnlineRecord>,
    message: &OnlineMessage,
) -> (Option<OnlineRecord>, Option<Transition>) {
    if record
        .as_ref()
        .is_some_and(|r| r.applied_seq >= message.seq)
    {
        return (record, None);
    }
    let record_ref = record.as_ref();
    let was_online = record_ref.is_some_and(|r| r.online);
    let (online, revision) = match message.fact {
        OnlineFact::Heartbeat { revision } => (true, revision),
        // An offline message for a catalog never seen online records nothing.
        OnlineFact::Offline if record_ref.is_none() => return (None, None),
        OnlineFact::Offline => (false, record_ref.map_or(0, |r| r.revision)),
    };
    let changed = online != was_online;
    if !changed && record_ref.is_some_and(|r| r.revision == revision) {
        // Nothing to record: the steady heartbeat of an online catalog writes nothing. Every
        // message that changes the record moves `applied_seq`, so skipping is replay-safe.
        return (record, None);
    }
    let updated = OnlineRecord {
        catalog: message.catalog.clone(),
        account_key: message.owner.clone(),
        revision,
        online,
        changed_at: if changed {
            message.time
        } else {
            record_ref.map_or(message.time, |r| r.changed_at)
        },
        applied_seq: message.seq,
    };
    let transition = changed.then(|| Transition {
        online,
        catalog: message.catalog.clone(),
        owner: message.owner.clone(),
        revision,
        at: message.time,
    });
    (Some(updated), transition)
}

/// Decodes a `NATSTER_ONLINE` message from its parts: a heartbeat (payload
/// `{"revision": N, ...}`), or, with `offline` (the `Natster-Offline` header or a server
/// marker, `Nats-Marker-Reason`), the catalog going offline. `None` for a subject outside the
/// layout.
pub fn decode_parts(
    seq: u64,
    time: i64,
    subject: &str,
    payload: &[u8],
    offline: bool,
) -> Option<OnlineMessage> {
    let rest = subject
        .strip_prefix(ONLINE_SUBJECT_PREFIX)?
        .strip_prefix('.')?;
    let (owner, catalog) = rest.split_once('.')?;
    if catalog.contains('.') {
        return None;
    }
    let fact = if offline {
        OnlineFact::Offline
    } else {
        #[derive(Deserialize)]
        struct Revision {
            #[serde(default)]
            revision: i64,
        }
        let revision = serde_json::from_slice::<Revision>(payload).map_or(0, |r| r.revision);
        OnlineFact::Heartbeat { revision }
    };
    Some(OnlineMessage {
        seq,
        time,
        owner: owner.to_string(),
        catalog: catalog.to_string(),
        fact,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: u64, fact: OnlineFact) -> OnlineMessage {
        OnlineMessage {
            seq,
            time: 1_000 + seq as i64,
            owner: "AOWNER".into(),
            catalog: "films".into(),
            fact,
        }
    }

    #[test]
    fn the_first_heartbeat_goes_online_once() {
        let (record, transition) = apply(None, &message(1, OnlineFact::Heartbeat { revision: 3 }));
        let record = record.expect("a record");
        assert!(record.online);
        assert_eq!(
            (record.revision, record.changed_at, record.applied_seq),
            (3, 1001, 1)
        );
        let transition = transition.expect("a transition");
        assert!(transition.online, "catalog_online");
        let (again, none) = apply(
            Some(record.clone()),
            &message(2, OnlineFact::Heartbeat { revision: 4 }),
        );
        assert_eq!(none, None, "a second heartbeat announces nothing");
        let again = again.expect("a record");
        assert_eq!((again.revision, again.changed_at), (4, 1001));
    }

    #[test]
    fn offline_keeps_the_revision_and_announces_once() {
        let (online, _) = apply(None, &message(1, OnlineFact::Heartbeat { revision: 7 }));
        let (offline, transition) = apply(online, &message(2, OnlineFact::Offline));
        let offline = offline.expect("a record");
        assert!(!offline.online);
        assert_eq!(offline.revision, 7);
        assert_eq!(transition.map(|t| t.online), Some(false), "catalog_offline");
        let (_, twice) = apply(Some(offline.clone()), &message(3, OnlineFact::Offline));
        assert_eq!(
            twice, None,
            "an expiry marker after an announced offline says nothing"
        );
        let (back, transition) = apply(
            Some(offline),
            &message(4, OnlineFact::Heartbeat { revision: 8 }),
        );
        assert!(back.expect("a record").online);
        assert_eq!(transition.map(|t| t.online), Some(true), "catalog_online");
    }

    #[test]
    fn replays_and_unknown_offlines_change_nothing() {
        let (record, _) = apply(None, &message(5, OnlineFact::Heartbeat { revision: 1 }));
        let (same, transition) = apply(record.clone(), &message(5, OnlineFact::Offline));
        assert_eq!((same, transition), (record, None));
        assert_eq!(apply(None, &message(1, OnlineFact::Offline)), (None, None));
    }

    #[test]
    fn messages_decode_from_the_layout_only() {
        let hb = decode_parts(
            9,
            50,
            "natster.online.AOWNER.films",
            br#"{"revision":12}"#,
            false,
        )
        .expect("a heartbeat");
        assert_eq!(hb.fact, OnlineFact::Heartbeat { revision: 12 });
        assert_eq!(
            (hb.owner.as_str(), hb.catalog.as_str()),
            ("AOWNER", "films")
        );
        let marker =
            decode_parts(10, 51, "natster.online.AOWNER.films", b"", true).expect("a marker");
        assert_eq!(marker.fact, OnlineFact::Offline);
        assert_eq!(
            decode_parts(1, 1, "natster.online.AOWNER", b"", false),
            None
        );
        assert_eq!(decode_parts(1, 1, "natster.online.A.b.c", b"", false), None);
        assert_eq!(decode_parts(1, 1, "other.online.A.b", b"", false), None);
    }
}
