//! Accounts: one record per account key (`PROJ_ACCOUNT`), what `whoami`, `my.shares` and an
//! account's own-record read return. No access token is ever stored here.

use super::{CountDelta, Projection};
use crate::contract::PROJ_ACCOUNT_BUCKET;
use crate::model::compact::reserve_one;
use crate::model::{AccountRecord, Event, EventBody, EventSubject, EventType, ShareRef, NONE};

/// The account projection.
pub struct Accounts;

/// One share entry's field names and punctuation.
const SHARE_OBJECT_FRAME: usize = r#"{"catalog":,"account":}"#.len();

/// A share entry's framing and the comma before it: what a share adds to a list besides its
/// strings.
const SHARE_ENTRY_FRAME: usize = SHARE_OBJECT_FRAME + 1;

/// `,"oauth_id":` (an unbound record has no such field).
const OAUTH_ID_FRAME: usize = r#","oauth_id":"#.len();

/// An account record's field names and punctuation, its lists' brackets and its OAuth id's
/// field aside.
const RECORD_FRAME: usize =
    r#"{"account_key":,"initialized_at":,"out_shares":,"in_shares":,"applied_seq":}"#.len();

impl Projection for Accounts {
    const NAME: &'static str = "accounts";
    const BUCKET: &'static str = PROJ_ACCOUNT_BUCKET;
    type Record = AccountRecord;
    reads_the_event_log!();

    fn keys(event: &Event) -> Vec<String> {
        let s = &event.subject;
        match s.event_type {
            EventType::NatsterInitialized => vec![s.origin.clone()],
            EventType::ContextBound => {
                let mut keys = vec![s.origin.clone()];
                if let EventBody::ContextBound(data) = &event.body {
                    if let Some(left) = data.previous_account.as_deref() {
                        if !left.is_empty() && left != s.origin {
                            keys.push(left.to_string());
                        }
                    }
                }
                keys
            }
            EventType::CatalogShared | EventType::CatalogUnshared
                if s.target != NONE && s.target != s.origin && s.catalog != NONE =>
            {
                vec![s.origin.clone(), s.target.clone()]
            }
            _ => vec![],
        }
    }

    fn apply(key: &str, record: Option<AccountRecord>, event: &Event) -> Option<AccountRecord> {
        let s = &event.subject;
        if s.event_type == EventType::CatalogUnshared && record.is_none() {
            return None;
        }
        if s.event_type == EventType::ContextBound && key != s.origin {
            return unbind_moved(record, event);
        }
        let mut record = record.unwrap_or_else(|| AccountRecord {
            account_key: key.to_string(),
            initialized_at: 0,
            out_shares: vec![],
            in_shares: vec![],
            oauth_id: None,
            applied_seq: 0,
        });
        match s.event_type {
            EventType::NatsterInitialized => {
                if record.initialized_at == 0 {
                    record.initialized_at = event.time;
                }
            }
            EventType::ContextBound => {
                if let EventBody::ContextBound(data) = &event.body {
                    record.oauth_id = Some(data.oauth_id.clone());
                }
            }
            EventType::CatalogShared => {
                let (list, other) = share_side(&mut record, key, s);
                // Compared in place: a share already listed costs no copies.
                if !list.iter().any(|r| names(r, &s.catalog, other)) {
                    reserve_one(list);
                    list.push(ShareRef {
                        catalog: s.catalog.clone(),
                        account: other.clone(),
                    });
                }
            }
            EventType::CatalogUnshared => {
                let (list, other) = share_side(&mut record, key, s);
                list.retain(|r| !names(r, &s.catalog, other));
            }
            EventType::CatalogImported => {}
        }
        record.applied_seq = event.seq;
        Some(record)
    }

    fn applied_seq(record: &AccountRecord) -> u64 {
        record.applied_seq
    }

    /// A record copies in at most the subject's tokens (its own key, a share's catalog and
    /// account) and a binding's OAuth id.
    fn growth_bound(event: &Event) -> Option<usize> {
        let s = &event.subject;
        let oauth_id = match &event.body {
            EventBody::ContextBound(data) => data.oauth_id.as_str(),
            _ => "",
        };
        Some(super::json_growth_bound([
            s.origin.as_str(),
            s.target.as_str(),
            s.catalog.as_str(),
            oauth_id,
        ]))
    }

    /// An existing record gains at most one share entry (its catalog, the other account and
    /// [`SHARE_ENTRY_FRAME`]), an OAuth id ([`OAUTH_ID_FRAME`] and the id) or an initialisation
    /// time, besides its applied sequence; an unshare only removes.
    fn existing_growth_bound(event: &Event) -> Option<usize> {
        use super::{json_string_len, NUMBER_GROWTH_BYTES};
        let s = &event.subject;
        let added = match (s.event_type, &event.body) {
            (EventType::CatalogShared, _) => {
                let other = json_string_len(&s.origin).max(json_string_len(&s.target));
                SHARE_ENTRY_FRAME + json_string_len(&s.catalog) + other
            }
            (EventType::ContextBound, EventBody::ContextBound(data)) => {
                OAUTH_ID_FRAME + json_string_len(&data.oauth_id)
            }
            (EventType::NatsterInitialized, _) => NUMBER_GROWTH_BYTES,
            _ => 0,
        };
        Some(added + NUMBER_GROWTH_BYTES)
    }

    fn encoded_len(record: &AccountRecord) -> usize {
        use super::{json_array_len, json_i64_len, json_string_len, json_u64_len};
        let share = |share: &ShareRef| {
            SHARE_OBJECT_FRAME + json_string_len(&share.catalog) + json_string_len(&share.account)
        };
        let oauth_id = record
            .oauth_id
            .as_deref()
            .map_or(0, |id| OAUTH_ID_FRAME + json_string_len(id));
        RECORD_FRAME
            + json_string_len(&record.account_key)
            + json_i64_len(record.initialized_at)
            + json_array_len(&record.out_shares, share)
            + json_array_len(&record.in_shares, share)
            + oauth_id
            + json_u64_len(record.applied_seq)
    }

    fn tally(record: Option<&AccountRecord>) -> CountDelta {
        CountDelta {
            total_initialized: record.is_some_and(|r| r.initialized_at > 0) as i64,
            ..CountDelta::default()
        }
    }
}

/// The list of `key`'s record a share between the subject's two accounts belongs in (the
/// owner's out-shares, the target's in-shares), and the other account of the share.
fn share_side<'a>(
    record: &'a mut AccountRecord,
    key: &str,
    s: &'a EventSubject,
) -> (&'a mut Vec<ShareRef>, &'a String) {
    if key == s.origin {
        (&mut record.out_shares, &s.target)
    } else {
        (&mut record.in_shares, &s.origin)
    }
}

/// Whether `share` is of `catalog` with `account`.
fn names(share: &ShareRef, catalog: &str, account: &str) -> bool {
    share.catalog == catalog && share.account == account
}

/// The record of the account an OAuth id moves away from: its `oauth_id` goes, unless it is
/// bound to another one by now.
fn unbind_moved(record: Option<AccountRecord>, event: &Event) -> Option<AccountRecord> {
    let EventBody::ContextBound(data) = &event.body else {
        return record;
    };
    let mut record = record?;
    if record.oauth_id.as_deref() == Some(data.oauth_id.as_str()) {
        record.oauth_id = None;
        record.applied_seq = event.seq;
    }
    Some(record)
}

#[cfg(test)]
mod tests;
