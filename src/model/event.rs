//! Events of the log: `natster.events.<origin>.<target>.<catalog>.<event_type>` in stream
//! `NATSTER_EVENTS`, the same layout as the original service so its logs can be adopted.

use serde::{Deserialize, Serialize};

/// Token used where a subject position does not apply.
pub const NONE: &str = "none";
/// Prefix of every event subject.
pub const EVENT_SUBJECT_PREFIX: &str = "natster.events";

/// The kinds of event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    NatsterInitialized,
    CatalogShared,
    CatalogUnshared,
    CatalogImported,
    ContextBound,
}

impl EventType {
    /// Every event type.
    pub const ALL: [EventType; 5] = [
        EventType::NatsterInitialized,
        EventType::CatalogShared,
        EventType::CatalogUnshared,
        EventType::CatalogImported,
        EventType::ContextBound,
    ];

    /// The wire name (last subject token).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::NatsterInitialized => "natster_initialized",
            EventType::CatalogShared => "catalog_shared",
            EventType::CatalogUnshared => "catalog_unshared",
            EventType::CatalogImported => "catalog_imported",
            EventType::ContextBound => "context_bound",
        }
    }

    /// Parses a wire name.
    pub fn parse(name: &str) -> Option<EventType> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The four variable tokens of an event subject.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventSubject {
    /// The account that caused the event (the caller; the hub for auto-shares).
    pub origin: String,
    /// The other account, or `none`.
    pub target: String,
    /// The catalog name, or `none`.
    pub catalog: String,
    pub event_type: EventType,
}

/// A subject that is not an event subject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an event subject: {0}")]
pub struct SubjectError(pub String);

impl EventSubject {
    /// Builds a subject; `target`/`catalog` are `none` where they do not apply.
    pub fn new(origin: &str, target: &str, catalog: &str, event_type: EventType) -> Self {
        EventSubject {
            origin: origin.into(),
            target: target.into(),
            catalog: catalog.into(),
            event_type,
        }
    }

    /// Parses `natster.events.<origin>.<target>.<catalog>.<event_type>`.
    pub fn parse(subject: &str) -> Result<EventSubject, SubjectError> {
        let tokens: Vec<&str> = subject.split('.').collect();
        match tokens.as_slice() {
            ["natster", "events", origin, target, catalog, kind] => Ok(EventSubject {
                origin: origin.to_string(),
                target: target.to_string(),
                catalog: catalog.to_string(),
                event_type: EventType::parse(kind)
                    .ok_or_else(|| SubjectError(subject.to_string()))?,
            }),
            _ => Err(SubjectError(subject.to_string())),
        }
    }

    /// The full subject.
    pub fn to_subject(&self) -> String {
        format!(
            "{EVENT_SUBJECT_PREFIX}.{}.{}.{}.{}",
            self.origin, self.target, self.catalog, self.event_type
        )
    }

    /// Wildcard subject of every event of catalog `name` across accounts.
    pub fn catalog_aggregate(name: &str) -> String {
        format!("{EVENT_SUBJECT_PREFIX}.*.*.{name}.*")
    }

    /// Subject filter of one (origin, target, catalog) pair: its share, unshare or import
    /// events. Only the last token is a wildcard, which the server resolves cheaply (a filter
    /// with leading wildcards makes it scan every subject: ~200 appends/s at 10 000 accounts).
    pub fn pair_aggregate(&self) -> String {
        format!(
            "{EVENT_SUBJECT_PREFIX}.{}.{}.{}.*",
            self.origin, self.target, self.catalog
        )
    }

    /// Key of the pair in decision state (`origin.target.catalog`).
    pub fn pair_key(&self) -> String {
        format!("{}.{}.{}", self.origin, self.target, self.catalog)
    }
}

/// Payload of `natster_initialized`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct InitData {
    #[serde(default)]
    pub account_id: String,
    #[serde(default)]
    pub account_name: String,
    #[serde(default)]
    pub account_key: String,
}

/// A natster CLI context, as `otc.generate` receives it. `access_token` is sealed with the
/// service's xkey before it is stored anywhere, and emptied before it is returned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NatsterContext {
    #[serde(default)]
    pub team_id: String,
    #[serde(default)]
    pub system_id: String,
    #[serde(default)]
    pub account_id: String,
    #[serde(default)]
    pub account_name: String,
    #[serde(default)]
    pub account_public_key: String,
    #[serde(default)]
    pub access_token: String,
    #[serde(default)]
    pub user_id: String,
    #[serde(default)]
    pub creds: String,
}

impl NatsterContext {
    /// The same context without its access token (what replies carry).
    pub fn without_token(&self) -> NatsterContext {
        NatsterContext {
            access_token: String::new(),
            ..self.clone()
        }
    }
}

/// Payload of `context_bound`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ContextBoundData {
    pub oauth_id: String,
    pub bound_context: NatsterContext,
    /// The OAuth id the account was bound to until this binding, when it was another one:
    /// this binding unbinds it. Decided by the service (absent in events of the original
    /// service, whose rebindings leave the old id bound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_oauth_id: Option<String>,
    /// The account the OAuth id was bound to until this binding, when it was another one: the
    /// binding moves the OAuth id away from it. Decided by the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_account: Option<String>,
}

/// The decoded body of an event. Historical logs hold empty or `null` bodies for share
/// events; both decode as `Empty`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventBody {
    Empty,
    Initialized(InitData),
    ContextBound(ContextBoundData),
    /// A body this version does not interpret (kept so replays never fail on it).
    Other(serde_json::Value),
}

impl EventBody {
    /// Decodes a stored body for an event of type `event_type`. Never fails: a body that does
    /// not decode as its type's payload is kept as `Other`.
    pub fn decode(event_type: EventType, bytes: &[u8]) -> EventBody {
        let value: serde_json::Value = match serde_json::from_slice(bytes) {
            Ok(value) => value,
            Err(_) if bytes.iter().all(u8::is_ascii_whitespace) => return EventBody::Empty,
            Err(_) => {
                return EventBody::Other(serde_json::Value::String(
                    String::from_utf8_lossy(bytes).into_owned(),
                ))
            }
        };
        if value.is_null() {
            return EventBody::Empty;
        }
        match event_type {
            EventType::NatsterInitialized => serde_json::from_value(value.clone())
                .map(EventBody::Initialized)
                .unwrap_or(EventBody::Other(value)),
            EventType::ContextBound => serde_json::from_value(value.clone())
                .map(EventBody::ContextBound)
                .unwrap_or(EventBody::Other(value)),
            _ => EventBody::Other(value),
        }
    }

    /// The bytes to store for this body (`Empty` is an empty payload).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            EventBody::Empty => Vec::new(),
            EventBody::Initialized(data) => serde_json::to_vec(data).unwrap_or_default(),
            EventBody::ContextBound(data) => serde_json::to_vec(data).unwrap_or_default(),
            EventBody::Other(value) => serde_json::to_vec(value).unwrap_or_default(),
        }
    }
}

/// One event as read from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Stream sequence.
    pub seq: u64,
    /// Stream timestamp, Unix seconds (never the wall clock of a projector).
    pub time: i64,
    pub subject: EventSubject,
    pub body: EventBody,
}

/// What a stored message of the event log is, as far as the event model goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Event(Box<Event>),
    /// The event layout with a type this version does not know (adopted logs): only its
    /// tokens matter, for the aggregates' sequences.
    Unknown {
        seq: u64,
        origin: String,
        target: String,
        catalog: String,
    },
    /// Not an event subject at all.
    Foreign {
        seq: u64,
    },
}

impl Decoded {
    /// Decodes a stored message from its parts: stream sequence and timestamp (the stream's,
    /// never a local clock), subject and payload. Never fails.
    pub fn from_parts(seq: u64, time: i64, subject: &str, payload: &[u8]) -> Decoded {
        match EventSubject::parse(subject) {
            Ok(subject) => Decoded::Event(Box::new(Event {
                seq,
                time,
                body: EventBody::decode(subject.event_type, payload),
                subject,
            })),
            Err(_) => match subject.split('.').collect::<Vec<_>>().as_slice() {
                ["natster", "events", origin, target, catalog, _] => Decoded::Unknown {
                    seq,
                    origin: origin.to_string(),
                    target: target.to_string(),
                    catalog: catalog.to_string(),
                },
                _ => Decoded::Foreign { seq },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_round_trip() {
        let s = EventSubject::new("AAA", "BBB", "movies", EventType::CatalogShared);
        assert_eq!(
            s.to_subject(),
            "natster.events.AAA.BBB.movies.catalog_shared"
        );
        assert_eq!(EventSubject::parse(&s.to_subject()), Ok(s));
        assert!(EventSubject::parse("natster.events.A.B.c").is_err());
        assert!(EventSubject::parse("natster.events.A.B.c.unknown").is_err());
        assert!(EventSubject::parse("other.events.A.B.c.catalog_shared").is_err());
    }

    #[test]
    fn historical_bodies_decode() {
        assert_eq!(
            EventBody::decode(EventType::CatalogShared, b""),
            EventBody::Empty
        );
        assert_eq!(
            EventBody::decode(EventType::CatalogShared, b"null"),
            EventBody::Empty
        );
        let init = EventBody::decode(
            EventType::NatsterInitialized,
            br#"{"account_id":"i","account_name":"n","account_key":"AK"}"#,
        );
        assert_eq!(
            init,
            EventBody::Initialized(InitData {
                account_id: "i".into(),
                account_name: "n".into(),
                account_key: "AK".into()
            })
        );
        assert!(matches!(
            EventBody::decode(EventType::NatsterInitialized, b"[1]"),
            EventBody::Other(_)
        ));
    }
}
