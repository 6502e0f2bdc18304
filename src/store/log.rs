//! The one ordered reader of a stream: every message from a sequence on, in stream order,
//! each exactly once, decoded, in chunks. The decision state, every projection (the online
//! one included) and rebuilds read the log through it.
//!
//! It reads with an ordered consumer (no acks, no server-side state to clean up). A broken
//! read (a missed heartbeat, a reconnect, a consumer lost with its server) is resumed by a
//! new consumer that starts after the last message handed out, so callers never see a gap or
//! a repeat. Sequences and times come from each message's metadata, never the local clock.

pub mod shared;

use super::error::StoreError;
use async_nats::jetstream::{self, consumer, stream};
use futures::stream::ReadyChunks;
use futures::StreamExt;

/// Pause before a read that broke is resumed.
const RESUME_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

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
    messages: Option<ReadyChunks<consumer::pull::Ordered>>,
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
            messages: None,
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

    /// Waits for the next message and returns it with every message already delivered after
    /// it (up to the chunk size).
    ///
    /// A broken read is resumed after the last message handed out; an error means no reader
    /// could be created (the stream is unavailable) and the next call tries again.
    /// Cancellation-safe: a dropped call loses no message.
    pub async fn next_chunk(&mut self) -> Result<Chunk<T>, StoreError> {
        loop {
            let messages = match &mut self.messages {
                Some(messages) => messages,
                None => {
                    let opened = open(&self.stream, self.next_seq, self.max_chunk).await?;
                    self.messages.insert(opened)
                }
            };
            let Some(delivered) = messages.next().await else {
                tracing::debug!(stream = %self.stream_name(), "ordered read ended; resuming");
                self.messages = None;
                tokio::time::sleep(RESUME_PAUSE).await;
                continue;
            };
            if let Some(chunk) = self.take(delivered) {
                return Ok(chunk);
            }
            if self.messages.is_none() {
                // The read broke before handing anything out: do not spin on a server that
                // keeps breaking it.
                tokio::time::sleep(RESUME_PAUSE).await;
            }
        }
    }

    /// Decodes what was delivered; `None` when it held nothing new (the read broke first, or
    /// every message was handed out already).
    fn take(
        &mut self,
        delivered: Vec<Result<jetstream::Message, consumer::pull::OrderedError>>,
    ) -> Option<Chunk<T>> {
        let mut items = Vec::with_capacity(delivered.len());
        let mut pending = 0;
        let mut last_seq = None;
        let mut read = 0;
        for message in delivered {
            let message = match message {
                Ok(message) => message,
                Err(error) => {
                    tracing::debug!(stream = %self.stream_name(), %error, "ordered read broke; resuming");
                    self.messages = None;
                    break;
                }
            };
            let Ok(info) = message.info() else { continue };
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

/// A new ordered consumer of `stream` from `next_seq`, its messages in chunks.
async fn open(
    stream: &stream::Stream,
    next_seq: u64,
    max_chunk: usize,
) -> Result<ReadyChunks<consumer::pull::Ordered>, StoreError> {
    let action = || {
        format!(
            "read {} from sequence {}",
            stream.cached_info().config.name,
            next_seq
        )
    };
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: next_seq,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| StoreError::unavailable(action(), e))?;
    let messages = consumer
        .messages()
        .await
        .map_err(|e| StoreError::unavailable(action(), e))?;
    Ok(messages.ready_chunks(max_chunk))
}

#[cfg(test)]
mod tests;
