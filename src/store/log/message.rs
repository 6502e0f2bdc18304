//! The event log's messages as the instance's readers share them: the decision state folds
//! every message, with the request it was appended for; the log projections take the events.

use super::shared::Carries;
use crate::contract::{MSG_ID_HEADER, REQUEST_FINGERPRINT_HEADER};
use crate::model::{Decoded, Event};
use async_nats::jetstream;

/// The idempotency key and request fingerprint a message was appended under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestKey {
    pub key: String,
    pub fingerprint: String,
}

/// A stored message of the event log, decoded.
#[derive(Debug, Clone)]
pub struct LogMessage {
    pub seq: u64,
    /// Stream timestamp, Unix seconds.
    pub time: i64,
    pub decoded: Decoded,
    /// The request it was appended for, when its caller gave an idempotency key.
    pub request: Option<RequestKey>,
}

impl LogMessage {
    /// Decodes any stored message of the log (never `None`: the decision state folds every
    /// sequence).
    pub fn decode(seq: u64, time: i64, message: &jetstream::Message) -> Option<LogMessage> {
        let request = message.headers.as_ref().and_then(|headers| {
            Some(RequestKey {
                key: headers.get(MSG_ID_HEADER)?.as_str().to_string(),
                fingerprint: headers
                    .get(REQUEST_FINGERPRINT_HEADER)?
                    .as_str()
                    .to_string(),
            })
        });
        Some(LogMessage {
            seq,
            time,
            decoded: Decoded::from_parts(seq, time, &message.subject, &message.payload),
            request,
        })
    }

    /// Its stream sequence.
    pub fn seq(message: &LogMessage) -> u64 {
        message.seq
    }
}

/// The log projections' input: the event, when the message is one.
impl Carries<Event> for LogMessage {
    fn input(&self) -> Option<&Event> {
        match &self.decoded {
            Decoded::Event(event) => Some(event),
            Decoded::Unknown { .. } | Decoded::Foreign { .. } => None,
        }
    }
}
