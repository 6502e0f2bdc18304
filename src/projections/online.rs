//! The online projection: `NATSTER_ONLINE` applied to `PROJ_ONLINE` (one record per owner and
//! catalog) by the shared runner, with the running-catalogs counter (`counters.online`) and a
//! notice for each transition (announced through the runner's hook before the records are
//! written, so a crash can repeat a notice but never lose one). The rule is
//! [`crate::model::online::apply`].

use super::{CountDelta, Projection};
use crate::model::online::{self, OnlineMessage, OnlineRecord, Transition, OFFLINE_HEADER};
use crate::store::PROJ_ONLINE_BUCKET;

/// The online projection.
pub struct Online;

impl Projection for Online {
    const NAME: &'static str = "online";
    const BUCKET: &'static str = PROJ_ONLINE_BUCKET;
    type Input = OnlineMessage;
    type Record = OnlineRecord;
    type Notice = Transition;
    /// Notices go out with their flush, so batches stay small: a burst of heartbeats is
    /// announced (and held in memory) a thousand transitions at a time, not tens of thousands.
    const MAX_BATCH_RECORDS: usize = 1024;
    const CATCH_UP_IN_PASSES: bool = false;

    /// A heartbeat (payload `{"revision": N, ...}`), an offline announcement (the
    /// `Natster-Offline` header) or a server marker (`Nats-Marker-Reason`).
    fn decode(
        seq: u64,
        time: i64,
        message: &async_nats::jetstream::Message,
    ) -> Option<OnlineMessage> {
        let headers = message.headers.as_ref();
        let marker = headers.is_some_and(|h| h.get("Nats-Marker-Reason").is_some());
        let offline = headers.is_some_and(|h| h.get(OFFLINE_HEADER).is_some());
        online::decode_parts(
            seq,
            time,
            &message.subject,
            &message.payload,
            marker || offline,
        )
    }

    fn seq(message: &OnlineMessage) -> u64 {
        message.seq
    }

    fn subject(message: &OnlineMessage) -> String {
        online::online_subject(&message.owner, &message.catalog)
    }

    fn keys(message: &OnlineMessage) -> Vec<String> {
        vec![online::online_key(&message.owner, &message.catalog)]
    }

    fn apply(
        key: &str,
        record: Option<OnlineRecord>,
        message: &OnlineMessage,
    ) -> Option<OnlineRecord> {
        Self::apply_announcing(key, record, message).0
    }

    fn apply_announcing(
        _key: &str,
        record: Option<OnlineRecord>,
        message: &OnlineMessage,
    ) -> (Option<OnlineRecord>, Option<Transition>) {
        online::apply(record, message)
    }

    fn applied_seq(record: &OnlineRecord) -> u64 {
        record.applied_seq
    }

    fn tally(record: Option<&OnlineRecord>) -> CountDelta {
        CountDelta {
            running_catalogs: record.is_some_and(|r| r.online) as i64,
            ..CountDelta::default()
        }
    }
}
