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

/// The OAuth index projection. The last binding of an OAuth id wins.
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
                vec![key(&data.oauth_id)]
            }
            _ => vec![],
        }
    }

    fn apply(_key: &str, record: Option<OAuthRecord>, event: &Event) -> Option<OAuthRecord> {
        match &event.body {
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
