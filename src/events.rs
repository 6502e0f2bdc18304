//! Reading events from JetStream messages.

use crate::model::{Event, EventBody, EventSubject};

/// What a stored message is, as far as the event model goes.
pub enum Decoded {
    Event(Box<Event>),
    /// The event layout with an unknown type: only its catalog token matters.
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

/// Decodes a message delivered by a JetStream consumer (sequence and timestamp from its
/// metadata, never the local clock).
pub fn decode(message: &async_nats::jetstream::Message) -> Option<Decoded> {
    let info = message.info().ok()?;
    let seq = info.stream_sequence;
    let time = info.published.unix_timestamp();
    Some(decode_parts(seq, time, &message.subject, &message.payload))
}

/// Decodes a stored message given its parts.
pub fn decode_parts(seq: u64, time: i64, subject: &str, payload: &[u8]) -> Decoded {
    match EventSubject::parse(subject) {
        Ok(subject) => Decoded::Event(Box::new(Event {
            seq,
            time,
            body: EventBody::decode(subject.event_type, payload),
            subject,
        })),
        Err(_) => {
            let tokens: Vec<&str> = subject.split('.').collect();
            match tokens.as_slice() {
                ["natster", "events", origin, target, catalog, _] => Decoded::Unknown {
                    seq,
                    origin: origin.to_string(),
                    target: target.to_string(),
                    catalog: catalog.to_string(),
                },
                _ => Decoded::Foreign { seq },
            }
        }
    }
}
