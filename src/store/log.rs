//! The one ordered reader of a stream: every message from a sequence on, in stream order,
//! each exactly once, decoded, in chunks. The decision state, every projection (the online
//! one included) and rebuilds read the log through it.
//!
//! It reads with an ephemeral pull consumer of its own (no acks, one replica, in memory) and
//! checks the order itself, as an ordered consumer would: a message out of the consumer's
//! sequence, an error, a pull that ends or two missed idle heartbeats drop the consumer, and a
//! new one starts after the last message handed out, so callers never see a gap or a repeat.
//! Unlike the client's ordered consumer it never waits on the old consumer (deleting it, on a
//! node that may be gone, took the client up to half a minute when a node was killed): the
//! server removes a consumer nobody pulls from after [`INACTIVE_THRESHOLD`]. Sequences and
//! times come from each message's metadata, never the local clock.
pub mod message;
pub mod shared;

use super::error::StoreError;
use async_nats::jetstream::{self, consumer, stream};
use futures::stream::Fuse;
use futures::{FutureExt, Stream, StreamExt};

/// Pause before a read that broke is resumed.
const RESUME_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Idle heartbeat asked of the server on every pull. Two missed in a row mean the consumer
/// was lost (an R1 consumer lives on one node), so a reader whose node was killed notices
/// within about 2 s (the client's default heartbeat is 15 s, noticed after 30).
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(1);

/// Longest a pull waits on the server (the heartbeat must be at most half of it).
const PULL_EXPIRES: std::time::Duration = std::time::Duration::from_secs(2);

/// Messages asked for by one pull.
const PULL_BATCH: usize = 500;

/// Longest a new consumer may take to be created and pulled from: a consumer placed on a node
/// that is gone is given up, and the next one is placed again.
const OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The server removes a consumer of the reader this long after its last pull.
const INACTIVE_THRESHOLD: std::time::Duration = std::time::Duration::from_secs(10);

/// What `stream` holds now (a round trip to the server).
pub async fn state(stream: &stream::Stream) -> Result<stream::State, StoreError> {
    Ok(stream
        .clone()
        .info()
        .await
        .map_err(|e| {
            let name = &stream.cached_info().config.name;
            StoreError::unavailable(format!("read the state of {name}"), e)
        })?
        .state
        .clone())
}

/// The last sequence `stream` holds now (a round trip to the server).
pub async fn end(stream: &stream::Stream) -> Result<u64, StoreError> {
    Ok(state(stream).await?.last_sequence)
}

/// Decodes one stored message, given its stream sequence and timestamp (Unix seconds);
/// `None` for a message that means nothing to the reader (it still moves the position).
pub type Decoder<T> = fn(seq: u64, time: i64, message: &jetstream::Message) -> Option<T>;

/// Messages read together.
#[derive(Debug)]
pub struct Chunk<T> {
    /// Decoded messages, in stream order.
    pub items: Vec<T>,
    /// The last stream sequence read (messages that decoded to nothing included).
    pub last_seq: u64,
    /// Messages read (decoded or not).
    pub read: usize,
    /// The last message read was the stream's last when it was delivered.
    pub caught_up: bool,
    /// Messages in the stream after the last one read, when it was delivered (the backlog
    /// still to read).
    pub pending: u64,
}

/// An ordered read of one stream.
pub struct LogReader<T> {
    stream: stream::Stream,
    decode: Decoder<T>,
    /// The next sequence to hand out; everything before it was handed out already.
    next_seq: u64,
    /// The last sequence to hand out, for a bounded read.
    end: Option<u64>,
    max_chunk: usize,
    consumer: Option<OpenRead>,
}

/// The consumer a reader pulls from, and the consumer sequence of the last message it took.
struct OpenRead {
    messages: Fuse<consumer::pull::Stream>,
    delivered: u64,
}

impl<T> LogReader<T> {
    /// A reader of `stream` from sequence `start` (1: the whole stream), decoding with
    /// `decode`, handing out at most `max_chunk` messages at a time. Nothing is read yet.
    pub fn new(stream: stream::Stream, start: u64, decode: Decoder<T>, max_chunk: usize) -> Self {
        LogReader {
            stream,
            decode,
            next_seq: start.max(1),
            end: None,
            max_chunk: max_chunk.max(1),
            consumer: None,
        }
    }

    /// The same reader, handing out nothing after sequence `end` (a replay of the stream as it
    /// was at some moment).
    pub fn up_to(mut self, end: u64) -> Self {
        self.end = Some(end);
        self
    }

    /// The last sequence handed out (0 before the first).
    pub fn position(&self) -> u64 {
        self.next_seq - 1
    }

    /// Drops the consumer: the next read starts a new one after the last message handed out
    /// (for a caller that knows the log has moved on while this reader has not).
    pub fn restart(&mut self) {
        self.consumer = None;
    }

    /// Waits for the next message and returns it with every message already delivered after
    /// it (up to the chunk size).
    ///
    /// A broken read is resumed after the last message handed out; an error means no reader
    /// could be created (the stream is unavailable) and the next call tries again.
    /// Cancellation-safe: a dropped call loses no message.
    pub async fn next_chunk(&mut self) -> Result<Chunk<T>, StoreError> {
        loop {
            let read = match &mut self.consumer {
                Some(read) => read,
                None => {
                    let messages = open(&self.stream, self.next_seq).await?;
                    self.consumer.insert(OpenRead {
                        messages,
                        delivered: 0,
                    })
                }
            };
            let Some(delivered) = ready_chunk(&mut read.messages, self.max_chunk).await else {
                tracing::debug!(stream = %self.stream_name(), "read ended; resuming");
                self.consumer = None;
                tokio::time::sleep(RESUME_PAUSE).await;
                continue;
            };
            if let Some(chunk) = self.take(delivered) {
                return Ok(chunk);
            }
            if self.consumer.is_none() {
                // The read broke before handing anything out: do not spin on a server that
                // keeps breaking it.
                tokio::time::sleep(RESUME_PAUSE).await;
            }
        }
    }

    /// Decodes what was delivered; `None` when it held nothing new (the read broke first, or
    /// every message was handed out already). A message out of the consumer's order, or an
    /// error, ends the consumer after what came before it.
    fn take(
        &mut self,
        delivered: Vec<Result<jetstream::Message, consumer::pull::MessagesError>>,
    ) -> Option<Chunk<T>> {
        let mut items = Vec::with_capacity(delivered.len());
        let mut pending = 0;
        let mut last_seq = None;
        let mut read = 0;
        for message in delivered {
            let Some(open) = self.consumer.as_mut() else {
                break;
            };
            let message = match message {
                Ok(message) => message,
                Err(error) => {
                    tracing::debug!(stream = %self.stream_name(), %error, "read broke; resuming");
                    self.consumer = None;
                    break;
                }
            };
            let Ok(info) = message.info() else { continue };
            let expected = open.delivered + 1;
            if info.consumer_sequence != expected {
                tracing::debug!(
                    stream = %self.stream_name(),
                    expected,
                    got = info.consumer_sequence,
                    "read out of order; resuming"
                );
                self.consumer = None;
                break;
            }
            open.delivered = expected;
            let seq = info.stream_sequence;
            if seq < self.next_seq {
                continue;
            }
            if self.end.is_some_and(|end| seq > end) {
                break;
            }
            pending = info.pending;
            if let Some(item) = (self.decode)(seq, info.published.unix_timestamp(), &message) {
                items.push(item);
            }
            self.next_seq = seq + 1;
            last_seq = Some(seq);
            read += 1;
        }
        Some(Chunk {
            items,
            last_seq: last_seq?,
            read,
            caught_up: pending == 0,
            pending,
        })
    }

    fn stream_name(&self) -> &str {
        &self.stream.cached_info().config.name
    }
}

/// A new consumer of `stream` from `next_seq`.
async fn open(
    stream: &stream::Stream,
    next_seq: u64,
) -> Result<Fuse<consumer::pull::Stream>, StoreError> {
    let from = consumer::DeliverPolicy::ByStartSequence {
        start_sequence: next_seq,
    };
    let messages = open_pull(stream, from, String::new(), PULL_BATCH)
        .await
        .map_err(|detail| {
            let name = &stream.cached_info().config.name;
            StoreError::unavailable(format!("read {name} from sequence {next_seq}"), detail)
        })?;
    Ok(messages.fuse())
}

/// What `messages` has ready: at least one item (waiting for it) and at most `max`; `None`
/// once it ended. Unlike `ready_chunks`, which reserves room for `max` items for every chunk,
/// the vector grows with what is ready: a caught-up reader gets chunks of one message, and
/// reserving a full chunk (hundreds of kilobytes) for each cost an allocation of fresh pages,
/// zeroed by the kernel, per message. Cancellation-safe: nothing is taken before the one
/// await completes, and nothing is awaited after it.
async fn ready_chunk<S: Stream + Unpin>(messages: &mut S, max: usize) -> Option<Vec<S::Item>> {
    let first = messages.next().await?;
    let mut chunk = vec![first];
    while chunk.len() < max {
        match messages.next().now_or_never() {
            Some(Some(item)) => chunk.push(item),
            // Nothing ready; or the end, which the next call sees (the stream is fused).
            _ => break,
        }
    }
    Some(chunk)
}

/// The messages of a new ephemeral pull consumer of `stream` (no acks, one replica, in
/// memory, removed by the server [`INACTIVE_THRESHOLD`] after its last pull) delivering by
/// `deliver_policy` what matches `filter` (empty: everything), `batch` at a time, with idle
/// heartbeats every [`HEARTBEAT`] (two missed end the stream with an error). Gives up after
/// [`OPEN_TIMEOUT`]: a consumer placed on a node that is gone is not waited for. Shared by the
/// log's reader and the buckets' watches (`store::follow`).
pub(crate) async fn open_pull(
    stream: &stream::Stream,
    deliver_policy: consumer::DeliverPolicy,
    filter: String,
    batch: usize,
) -> Result<consumer::pull::Stream, OpenError> {
    let opening = async {
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                deliver_policy,
                filter_subject: filter,
                ack_policy: consumer::AckPolicy::None,
                num_replicas: 1,
                memory_storage: true,
                inactive_threshold: INACTIVE_THRESHOLD,
                ..Default::default()
            })
            .await
            .map_err(|e| OpenError::Create(e.to_string()))?;
        consumer
            .stream()
            .max_messages_per_batch(batch)
            .expires(PULL_EXPIRES)
            .heartbeat(HEARTBEAT)
            .messages()
            .await
            .map_err(|e| OpenError::Pull(e.to_string()))
    };
    tokio::time::timeout(OPEN_TIMEOUT, opening)
        .await
        .map_err(|_| OpenError::Timeout)?
}

/// Why a pull consumer could not be opened (each retried by its caller).
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    #[error("creating the consumer: {0}")]
    Create(String),
    #[error("pulling from the consumer: {0}")]
    Pull(String),
    #[error("no consumer within {OPEN_TIMEOUT:?}")]
    Timeout,
}

#[cfg(test)]
mod tests;
