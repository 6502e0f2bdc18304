//! The decision-state snapshot, as bytes: what lets an instance start from a recent state and
//! fold only the log after it, instead of the whole history.
//!
//! Layout: an 8-byte magic, the format version (u32, little endian), the SHA-256 of the body,
//! then the body (postcard): which log it was folded from ([`LogIdentity`]), the
//! [`DecisionState`] up to its `last_seq`, and the requests remembered under idempotency keys
//! at that point. The magic and version come before the checksum, so a snapshot of another
//! format is told apart from a damaged one.
//!
//! [`decode`] accepts a snapshot only when it is intact, of this format, of this very log, and
//! not ahead of it; anything else is [`Unusable`], and the caller folds the whole log instead.
//! A restored state plus the log after it equals the state folded from the whole log (the
//! property test in `write/snapshot/tests.rs`).

use super::retries::Remembered;
use crate::model::DecisionState;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The format this version writes and reads.
pub const FORMAT: u32 = 2;
const MAGIC: &[u8; 8] = b"NATSTRDS";
const HEADER: usize = MAGIC.len() + 4 + 32;

/// Which log a snapshot was folded from: the stream's name and its creation time (a stream
/// deleted and made again under the same name is another log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogIdentity {
    pub stream: String,
    /// Unix nanoseconds.
    pub created: i128,
}

/// Why a stored snapshot is not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    /// Damaged or not a snapshot at all.
    #[error("corrupt ({0})")]
    Corrupt(String),
    /// Written in a format this version does not read.
    #[error("stale (format {found}; this version reads format {FORMAT})")]
    Stale { found: u32 },
    /// Folded from another log, or from further than this log reaches.
    #[error("foreign ({0})")]
    Foreign(String),
}

impl Unusable {
    /// A short, fixed label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Unusable::Corrupt(_) => "corrupt",
            Unusable::Stale { .. } => "stale",
            Unusable::Foreign(_) => "foreign",
        }
    }
}

#[derive(Serialize)]
struct BodyRef<'a> {
    log: &'a LogIdentity,
    state: &'a DecisionState,
    recent: &'a [Remembered],
}

#[derive(Deserialize)]
struct Body {
    log: LogIdentity,
    state: DecisionState,
    recent: Vec<Remembered>,
}

/// A snapshot read back: the state (without limits: they are settings) and the remembered
/// requests, oldest first.
#[derive(Debug)]
pub struct Restored {
    pub state: DecisionState,
    pub recent: Vec<Remembered>,
}

/// The bytes of a snapshot of `state` and `recent` (oldest first), folded from `log`.
///
/// Measured first and written once into a buffer of exactly that size: a growing buffer would
/// hold up to twice the snapshot at once, on top of the state itself.
pub fn encode(log: &LogIdentity, state: &DecisionState, recent: &[Remembered]) -> Vec<u8> {
    let body = BodyRef { log, state, recent };
    let size =
        postcard::experimental::serialized_size(&body).expect("the decision state serialises");
    let mut bytes = Vec::with_capacity(HEADER + size);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&FORMAT.to_le_bytes());
    bytes.extend_from_slice(&[0; 32]);
    let mut bytes = postcard::to_extend(&body, bytes).expect("the decision state serialises");
    let checksum = Sha256::digest(&bytes[HEADER..]);
    bytes[HEADER - 32..HEADER].copy_from_slice(&checksum);
    bytes
}

/// Reads a snapshot, accepting it only if it is intact, of [`FORMAT`], folded from `log`, and
/// no further than `log_last_seq`, the last sequence that log holds now.
pub fn decode(bytes: &[u8], log: &LogIdentity, log_last_seq: u64) -> Result<Restored, Unusable> {
    if bytes.len() < HEADER || &bytes[..MAGIC.len()] != MAGIC {
        return Err(Unusable::Corrupt("not a decision-state snapshot".into()));
    }
    let (version, rest) = bytes[MAGIC.len()..].split_at(4);
    let found = u32::from_le_bytes(version.try_into().expect("four bytes"));
    if found != FORMAT {
        return Err(Unusable::Stale { found });
    }
    let (checksum, body) = rest.split_at(32);
    if Sha256::digest(body).as_slice() != checksum {
        return Err(Unusable::Corrupt("checksum mismatch".into()));
    }
    let body: Body = postcard::from_bytes(body)
        .map_err(|error| Unusable::Corrupt(format!("undecodable body: {error}")))?;
    if body.log != *log {
        return Err(Unusable::Foreign(format!(
            "folded from stream {} created at {} ns, not {} created at {} ns",
            body.log.stream, body.log.created, log.stream, log.created
        )));
    }
    if body.state.last_seq > log_last_seq {
        return Err(Unusable::Foreign(format!(
            "it reaches sequence {}, the log ends at {log_last_seq}",
            body.state.last_seq
        )));
    }
    Ok(Restored {
        state: body.state,
        recent: body.recent,
    })
}

#[cfg(test)]
mod tests;
