//! The listing's reply against the typed encoding of the same shares: byte for byte equal for
//! random records whose names need escaping, online states and revisions at their extremes.

use super::*;
use crate::contract::{Envelope, ShareSummary};
use crate::model::ShareRef;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What `my.shares` answered before the listing: summaries built per request, then encoded.
fn typed_reply(record: &AccountRecord, online: &[Option<OnlineEntry>]) -> Bytes {
    let me = &record.account_key;
    let outgoing = (record.out_shares.iter()).map(|s| (me, &s.account, &s.catalog));
    let incoming = (record.in_shares.iter()).map(|s| (&s.account, me, &s.catalog));
    let summaries: Vec<ShareSummary> = (outgoing.chain(incoming).zip(online))
        .map(|((from, to, catalog), entry)| ShareSummary {
            from_account: from.clone(),
            to_account: to.clone(),
            catalog: catalog.clone(),
            catalog_online: entry.is_some_and(|e| e.online),
            revision: entry.map_or(0, |e| e.revision),
        })
        .collect();
    Envelope::success(summaries).to_bytes()
}

/// A name of up to 11 pieces, some of which JSON must escape.
fn name(rng: &mut StdRng) -> String {
    const PIECES: &[&str] = &[
        "a", "Z", "9", "-", "_", ".", "\"", "\\", "/", "\n", "\u{1}", "\u{7f}", "é", "😀", " ",
    ];
    let len = rng.gen_range(0..12);
    (0..len)
        .map(|_| PIECES[rng.gen_range(0..PIECES.len())])
        .collect()
}

fn shares(rng: &mut StdRng) -> Vec<ShareRef> {
    let count = rng.gen_range(0..8);
    (0..count)
        .map(|_| ShareRef {
            account: name(rng),
            catalog: name(rng),
        })
        .collect()
}

fn entry(rng: &mut StdRng) -> Option<OnlineEntry> {
    const REVISIONS: &[i64] = &[0, 1, -1, 42, i64::MAX, i64::MIN];
    rng.gen_bool(0.7).then(|| OnlineEntry {
        online: rng.gen_bool(0.5),
        revision: if rng.gen_bool(0.5) {
            REVISIONS[rng.gen_range(0..REVISIONS.len())]
        } else {
            rng.gen()
        },
    })
}

fn record(account_key: &str, out_shares: Vec<ShareRef>, in_shares: Vec<ShareRef>) -> AccountRecord {
    AccountRecord {
        account_key: account_key.into(),
        initialized_at: 1,
        out_shares,
        in_shares,
        oauth_id: None,
        applied_seq: 9,
    }
}

fn share(account: &str, catalog: &str) -> ShareRef {
    ShareRef {
        account: account.into(),
        catalog: catalog.into(),
    }
}

#[test]
fn reply_is_the_typed_encoding_byte_for_byte() {
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..2_000 {
        let record = record(&name(&mut rng), shares(&mut rng), shares(&mut rng));
        let count = record.out_shares.len() + record.in_shares.len();
        let online: Vec<_> = (0..count).map(|_| entry(&mut rng)).collect();
        let reply = ShareListing::new(&record).reply(online.iter().copied());
        let expected = typed_reply(&record, &online);
        assert_eq!(
            reply,
            expected,
            "\n{}\n{}",
            String::from_utf8_lossy(&reply),
            String::from_utf8_lossy(&expected)
        );
        let decoded: Envelope<Vec<ShareSummary>> = serde_json::from_slice(&reply).expect("json");
        assert_eq!(decoded.data.len(), count);
    }
}

#[test]
fn keys_are_each_shares_online_key_in_order() {
    let record = record(
        "ME",
        vec![share("BOB", "films")],
        vec![share("CAROL", "music"), share("DAN", "films")],
    );
    let listing = ShareListing::new(&record);
    let keys: Vec<&str> = listing.keys().collect();
    assert_eq!(keys, ["ME.films", "CAROL.music", "DAN.films"]);
    assert!(listing.size() > listing.json.len() + listing.keys.len());
}

#[test]
fn no_shares_and_missing_online_entries() {
    let mut record = record("ME", vec![], vec![]);
    let empty = ShareListing::new(&record);
    assert_eq!(&empty.reply([])[..], br#"{"code":200,"data":[]}"#);
    assert_eq!(empty.keys().len(), 0);
    record.out_shares.push(share("BOB", "films"));
    // Fewer entries than shares: the rest are offline at revision 0.
    assert_eq!(
        ShareListing::new(&record).reply([]),
        typed_reply(&record, &[None])
    );
}
