//! Catalogs: owner and active shares per catalog name (`PROJ_CATALOG`). Unlike the original,
//! an unshare removes the account from `shared_with`.

use super::{CountDelta, Projection};
use crate::model::compact::reserve_one;
use crate::model::{CatalogRecord, Event, EventType, NONE};
use crate::store::PROJ_CATALOG_BUCKET;

/// The catalog projection.
pub struct Catalogs;

/// A catalog record's field names and punctuation, its list's brackets aside.
const RECORD_FRAME: usize = r#"{"catalog_name":,"owner":,"shared_with":,"applied_seq":}"#.len();

impl Projection for Catalogs {
    const NAME: &'static str = "catalogs";
    const BUCKET: &'static str = PROJ_CATALOG_BUCKET;
    type Record = CatalogRecord;
    reads_the_event_log!();

    fn keys(event: &Event) -> Vec<String> {
        let s = &event.subject;
        match s.event_type {
            EventType::CatalogShared | EventType::CatalogUnshared
                if s.catalog != NONE && s.target != NONE && s.target != s.origin =>
            {
                vec![s.catalog.clone()]
            }
            _ => vec![],
        }
    }

    /// The first account to share a name owns it; shares and unshares by anyone else (only
    /// possible in adopted historical logs) leave the record as it is.
    fn apply(key: &str, record: Option<CatalogRecord>, event: &Event) -> Option<CatalogRecord> {
        let s = &event.subject;
        let mut record = match (record, s.event_type) {
            (Some(record), _) => record,
            (None, EventType::CatalogShared) => CatalogRecord {
                catalog_name: key.to_string(),
                owner: s.origin.clone(),
                shared_with: vec![],
                applied_seq: 0,
            },
            (None, _) => return None,
        };
        if record.owner == s.origin {
            match s.event_type {
                EventType::CatalogShared if !record.shared_with.contains(&s.target) => {
                    reserve_one(&mut record.shared_with);
                    record.shared_with.push(s.target.clone());
                }
                EventType::CatalogUnshared => record.shared_with.retain(|a| a != &s.target),
                _ => {}
            }
        }
        record.applied_seq = event.seq;
        Some(record)
    }

    fn applied_seq(record: &CatalogRecord) -> u64 {
        record.applied_seq
    }

    /// A record copies in at most the subject's tokens (its name, owner and one account).
    fn growth_bound(event: &Event) -> Option<usize> {
        let s = &event.subject;
        Some(super::json_growth_bound([
            s.origin.as_str(),
            s.target.as_str(),
            s.catalog.as_str(),
        ]))
    }

    /// An existing record gains at most one account in `shared_with` (and its comma), besides
    /// its applied sequence.
    fn existing_growth_bound(event: &Event) -> Option<usize> {
        use super::{json_string_len, NUMBER_GROWTH_BYTES};
        let s = &event.subject;
        let added = match s.event_type {
            EventType::CatalogShared => json_string_len(&s.target) + 1,
            _ => 0,
        };
        Some(added + NUMBER_GROWTH_BYTES)
    }

    fn encoded_len(record: &CatalogRecord) -> usize {
        use super::{json_array_len, json_string_len, json_u64_len};
        RECORD_FRAME
            + json_string_len(&record.catalog_name)
            + json_string_len(&record.owner)
            + json_array_len(&record.shared_with, |account| json_string_len(account))
            + json_u64_len(record.applied_seq)
    }

    fn tally(record: Option<&CatalogRecord>) -> CountDelta {
        CountDelta {
            share_count: record.map_or(0, |r| r.shared_with.len() as i64),
            ..CountDelta::default()
        }
    }
}

#[cfg(test)]
mod tests;
