//! The share feed: each `catalog_shared` / `catalog_unshared` appended to the log is announced
//! to the share's target and to the owner, once, whatever the number of instances.
//!
//! A durable consumer (filtered to share events, pinned to one instance at a time like the
//! auto-share reactor) delivers each event; the notices of the events delivered at once (at
//! most [`NOTICE_BATCH`]) are published, the server is seen to hold them (one round trip),
//! then the events acked; an unacked event comes again after the consumer's ack wait. A crash
//! between publishing and acking repeats notices; nothing is lost.
//!
//! Where the feed goes on from is also kept outside the consumer, as a mark in `PROJ_STATS`
//! ([`MARK_KEY`]: the consumer's ack floor, every share up to it announced), written at most
//! once per [`MARK_INTERVAL`] while notices go out and when the reactor stops. A consumer
//! that is missing (deleted by an operator, or lost) is created again from the mark: the
//! shares appended while it was missing are announced, and those since the last mark once
//! more. Only a feed that never ran, with no mark and no consumer, starts at the log's end
//! (an adopted log's history is not announced), and the service creates its consumer before
//! it first answers ([`consumer`], called by the service's start), so every share appended
//! through the service is announced.

use super::Feeds;
use crate::contract::{FeedKind, ShareNotice};
use crate::model::{Decoded, EventType, NONE};
use crate::store::kv as store_kv;
use crate::store::pinned::PinnedConsumer;
use crate::store::{StoreError, StoreErrorKind};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::{self, consumer, kv, stream};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Durable consumer of the share feed.
pub const CONSUMER: &str = "feed-shares";
/// Key of the feed's mark in `PROJ_STATS`.
pub const MARK_KEY: &str = "feed.shares";
/// Share events announced under one confirmation at most (those delivered already when the
/// first is taken).
const NOTICE_BATCH: usize = 64;
/// Most often the mark is written while notices go out.
pub const MARK_INTERVAL: Duration = Duration::from_secs(1);

/// The feed's mark: every share event up to this stream sequence was announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub announced_seq: u64,
}

/// The share feed's consumer: share events after the feed's mark, pinned to one instance at
/// a time (takeover after `takeover_after`). Writes the mark first when there is none: the
/// existing consumer's ack floor, or else the log's end. Every instance gets the same spec
/// (the first mark written wins), and an existing consumer keeps its position.
pub async fn consumer(
    events: &stream::Stream,
    stats: &kv::Store,
    takeover_after: Duration,
) -> Result<PinnedConsumer, StoreError> {
    Ok(consumer_after(mark(events, stats).await?, takeover_after))
}

fn consumer_after(mark: Mark, takeover_after: Duration) -> PinnedConsumer {
    PinnedConsumer {
        name: CONSUMER,
        description: "natster share notices to owners and targets",
        filter_subjects: [EventType::CatalogShared, EventType::CatalogUnshared]
            .iter()
            .map(|kind| format!("natster.events.*.*.*.{kind}"))
            .collect(),
        deliver_policy: consumer::DeliverPolicy::ByStartSequence {
            start_sequence: mark.announced_seq + 1,
        },
        group: "feeds",
        takeover_after,
    }
}

/// The stored mark, written first when there is none (the first of racing writers wins) or
/// when the stored one does not decode (retrying could not fix it).
async fn mark(events: &stream::Stream, stats: &kv::Store) -> Result<Mark, StoreError> {
    let undecodable = match store_kv::load::<Mark>(stats, MARK_KEY).await {
        Ok(stored) => match stored.value {
            Some(mark) => return Ok(mark),
            None => false,
        },
        Err(error) if error.kind() == StoreErrorKind::Permanent => {
            tracing::warn!(%error, "the share feed's mark does not decode; it is written again");
            true
        }
        Err(error) => return Err(error),
    };
    let mark = Mark {
        announced_seq: match ack_floor(events).await? {
            Some(floor) => floor,
            None => crate::store::log::end(events).await?,
        },
    };
    let encoded = store_kv::encode(&mark);
    let written = match undecodable {
        true => store_kv::put(stats, MARK_KEY, encoded).await,
        false => store_kv::create(stats, MARK_KEY, encoded).await,
    };
    match written {
        Ok(_) => Ok(mark),
        Err(error) if error.kind() == StoreErrorKind::Conflict => {
            let stored = store_kv::load::<Mark>(stats, MARK_KEY).await?.value;
            stored.ok_or(error)
        }
        Err(error) => Err(error),
    }
}

/// The consumer's ack floor (the stream sequence up to which every share it delivered was
/// acked), or `None` when the consumer does not exist.
async fn ack_floor(events: &stream::Stream) -> Result<Option<u64>, StoreError> {
    match events.consumer_info(CONSUMER).await {
        Ok(info) => Ok(Some(info.ack_floor.stream_sequence)),
        Err(error) if error.kind() == ConsumerInfoErrorKind::NotFound => Ok(None),
        Err(error) => Err(StoreError::unavailable(
            format!("consumer {CONSUMER}"),
            error,
        )),
    }
}

/// Moves the mark to the consumer's ack floor when it is further. Racing instances (a
/// takeover) may move it back a little: that repeats notices after a loss, never skips one.
async fn advance_mark(
    events: &stream::Stream,
    stats: &kv::Store,
    marked: &mut u64,
) -> Result<(), StoreError> {
    let Some(floor) = ack_floor(events).await? else {
        return Ok(());
    };
    if floor > *marked {
        let mark = Mark {
            announced_seq: floor,
        };
        store_kv::put(stats, MARK_KEY, store_kv::encode(&mark)).await?;
        *marked = floor;
    }
    Ok(())
}

/// Runs until `shutdown` is cancelled, keeping the mark (in `stats`) as notices go out: while
/// the mark is behind what this instance acked, it is moved to the consumer's ack floor every
/// [`MARK_INTERVAL`] (the server takes acks in its own time, so the floor may lag them).
pub async fn run(
    events: &stream::Stream,
    stats: &kv::Store,
    feeds: Feeds,
    takeover_after: Duration,
    shutdown: CancellationToken,
) -> Result<(), StoreError> {
    let mark = mark(events, stats).await?;
    let mut messages = consumer_after(mark, takeover_after)
        .messages(events)
        .await?;
    let (mut marked, mut acked) = (mark.announced_seq, mark.announced_seq);
    let mut marking = tokio::time::interval(MARK_INTERVAL);
    marking.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            batch = messages.next_batch(NOTICE_BATCH, &shutdown) => match batch? {
                Some(batch) => {
                    if let Some(seq) = announce(&batch, &feeds).await {
                        acked = acked.max(seq);
                    }
                }
                None => break,
            },
            _ = marking.tick(), if marked < acked => {
                if let Err(error) = advance_mark(events, stats, &mut marked).await {
                    tracing::warn!(%error, "share feed mark not written; it is tried again");
                }
            }
        }
    }
    if marked < acked {
        advance_mark(events, stats, &mut marked).await?;
    }
    Ok(())
}

/// Announces the share events in `messages` (nothing for other events), then acks every
/// message once the server holds all their notices (one confirmation for the batch); when that
/// is not confirmed, none is acked and all come again. Returns the last stream sequence acked.
async fn announce(messages: &[jetstream::Message], feeds: &Feeds) -> Option<u64> {
    let mut notices = 0;
    let seqs: Vec<Option<u64>> = messages
        .iter()
        .map(|message| message.info().ok().map(|info| info.stream_sequence))
        .collect();
    for (message, seq) in messages.iter().zip(&seqs) {
        let seq = seq.unwrap_or(0);
        let Decoded::Event(event) = Decoded::from_parts(seq, 0, &message.subject, &message.payload)
        else {
            continue;
        };
        let s = &event.subject;
        if s.target == NONE || s.catalog == NONE {
            continue;
        }
        let notice = ShareNotice {
            catalog: s.catalog.clone(),
            from_account: s.origin.clone(),
            to_account: s.target.clone(),
            seq: event.seq,
        };
        let mut recipients = vec![s.target.clone()];
        if s.origin != s.target {
            recipients.push(s.origin.clone());
        }
        let kind = match s.event_type {
            EventType::CatalogShared => FeedKind::CatalogShared,
            _ => FeedKind::CatalogUnshared,
        };
        crate::crashpoint::reached(crate::crashpoint::BEFORE_SHARE_NOTICE).await;
        feeds.publish(&recipients, kind, &notice).await;
        notices += 1;
    }
    // The acks are what move the consumer on: only once the server has the notices.
    if notices > 0 {
        if let Err(error) = feeds.confirm().await {
            tracing::warn!(%error, "share notices not confirmed; they come again");
            return None;
        }
    }
    let mut acked = None;
    for (message, seq) in messages.iter().zip(seqs) {
        match message.ack().await {
            Ok(()) => acked = seq.max(acked),
            Err(error) => tracing::warn!(%error, "share feed ack failed; the notice may repeat"),
        }
    }
    acked
}
