//! OAuth index: OAuth id → bound account and context (`PROJ_OAUTH`), so `context.get` is one
//! read instead of a log scan. The context's access token stays sealed.

use super::Projection;
use crate::model::{Event, EventBody, EventType, OAuthRecord};
use crate::store::PROJ_OAUTH_BUCKET;
use data_encoding::BASE64URL_NOPAD;

/// KV key of an OAuth id: OAuth ids hold characters (`|`, `@`, …) that keys cannot.
pub fn key(oauth_id: &str) -> String {
    BASE64URL_NOPAD.encode(oauth_id.as_bytes())
}

/// The OAuth index projection. The last binding of an OAuth id wins, and a binding removes
/// the record of the OAuth id its account leaves (if that record still names the account).
pub struct OAuthIndex;

impl Projection for OAuthIndex {
    const NAME: &'static str = "oauth";
    const BUCKET: &'static str = PROJ_OAUTH_BUCKET;
    type Record = OAuthRecord;
    reads_the_event_log!();

    fn keys(event: &Event) -> Vec<String> {
        match (&event.subject.event_type, &event.body) {
            (EventType::ContextBound, EventBody::ContextBound(data))
                if !data.oauth_id.is_empty() =>
            {
                let mut keys = vec![key(&data.oauth_id)];
                if let Some(left) = data.previous_oauth_id.as_deref() {
                    if !left.is_empty() && left != data.oauth_id {
                        keys.push(key(left));
                    }
                }
                keys
            }
            _ => vec![],
        }
    }

    fn apply(at: &str, record: Option<OAuthRecord>, event: &Event) -> Option<OAuthRecord> {
        match &event.body {
            // The OAuth id the account leaves: gone, unless another account holds it by now.
            EventBody::ContextBound(data) if at != key(&data.oauth_id) => {
                record.filter(|r| r.account_key != event.subject.origin)
            }
            EventBody::ContextBound(data) => Some(OAuthRecord {
                oauth_id: data.oauth_id.clone(),
                account_key: event.subject.origin.clone(),
                context: data.bound_context.clone(),
                applied_seq: event.seq,
            }),
            _ => record,
        }
    }

    fn applied_seq(record: &OAuthRecord) -> u64 {
        record.applied_seq
    }
}

#[cfg(test)]
mod tests;
