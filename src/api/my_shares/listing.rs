//! `my.shares`' reply encoded ahead of the request. An account's shares are held as the JSON of
//! their summaries up to each one's online state, beside each share's online key, so a request
//! looks up the online states and copies bytes: no summary is built and no string escaped per
//! request.
//!
//! Contract: [`ShareListing::reply`] is byte for byte the success envelope that
//! `Envelope::success(Vec<ShareSummary>)` encodes for the same shares and online states (the
//! tests compare them), so the reply is what the contract and its schema say.

use crate::model::online::online_key;
use crate::model::AccountRecord;
use crate::projections::online_view::OnlineEntry;
use bytes::{BufMut, Bytes, BytesMut};

const ENVELOPE_START: &[u8] = br#"{"code":200,"data":["#;
const ENVELOPE_END: &[u8] = b"]}";
/// The longest a share's tail can be: `false,"revision":` (17), an `i64` (20), `}` and `,`.
const TAIL_MAX: usize = 40;

/// An account's outgoing then incoming shares, encoded ahead; immutable once built.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShareListing {
    /// Each share's summary up to and including `"catalog_online":`, back to back.
    json: Box<[u8]>,
    /// Each share's online key (`<owner>.<catalog>`), back to back.
    keys: Box<str>,
    /// Where each share's summary ends in `json` and its key in `keys`.
    ends: Box<[(usize, usize)]>,
}

impl ShareListing {
    /// The listing of `record`'s shares (the record's own key is the account they are from or
    /// to), outgoing first, each in the record's order.
    pub fn new(record: &AccountRecord) -> ShareListing {
        let me = record.account_key.as_str();
        let outgoing = (record.out_shares.iter()).map(|s| (me, s.account.as_str(), &s.catalog));
        let incoming = (record.in_shares.iter()).map(|s| (s.account.as_str(), me, &s.catalog));
        let mut json = Vec::new();
        let mut keys = String::new();
        let mut ends = Vec::with_capacity(record.out_shares.len() + record.in_shares.len());
        for (from, to, catalog) in outgoing.chain(incoming) {
            json.extend_from_slice(br#"{"from_account":"#);
            push_json_str(&mut json, from);
            json.extend_from_slice(br#","to_account":"#);
            push_json_str(&mut json, to);
            json.extend_from_slice(br#","catalog":"#);
            push_json_str(&mut json, catalog);
            json.extend_from_slice(br#","catalog_online":"#);
            keys.push_str(&online_key(from, catalog));
            ends.push((json.len(), keys.len()));
        }
        ShareListing {
            json: json.into(),
            keys: keys.into(),
            ends: ends.into(),
        }
    }

    /// Each share's online key, in the listing's order.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.ends.len()).map(|index| {
            let start = index.checked_sub(1).map_or(0, |before| self.ends[before].1);
            &self.keys[start..self.ends[index].1]
        })
    }

    /// Bytes it holds in memory.
    pub fn size(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.json.len()
            + self.keys.len()
            + std::mem::size_of_val(&*self.ends)
    }

    /// The success envelope of `my.shares`, each share with the online entry `online` yields
    /// for it in the listing's order (`None`, or nothing left: offline at revision 0).
    pub fn reply(&self, online: impl IntoIterator<Item = Option<OnlineEntry>>) -> Bytes {
        let capacity = ENVELOPE_START.len()
            + self.json.len()
            + self.ends.len() * TAIL_MAX
            + ENVELOPE_END.len();
        let mut reply = BytesMut::with_capacity(capacity);
        reply.put_slice(ENVELOPE_START);
        let mut online = online.into_iter();
        let mut start = 0;
        for (index, &(end, _)) in self.ends.iter().enumerate() {
            if index > 0 {
                reply.put_u8(b',');
            }
            reply.put_slice(&self.json[start..end]);
            start = end;
            let entry = online.next().flatten();
            let (state, revision) = entry.map_or((false, 0), |e| (e.online, e.revision));
            reply.put_slice(if state { b"true" } else { b"false" });
            reply.put_slice(br#","revision":"#);
            reply.put_slice(itoa::Buffer::new().format(revision).as_bytes());
            reply.put_u8(b'}');
        }
        reply.put_slice(ENVELOPE_END);
        reply.freeze()
    }
}

/// Appends `value` as a JSON string, escaped exactly as `serde_json` escapes it.
fn push_json_str(json: &mut Vec<u8>, value: &str) {
    serde_json::to_writer(json, value).expect("a string always encodes");
}

#[cfg(test)]
mod tests;
