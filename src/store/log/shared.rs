//! One ordered read of a stream shared by several readers: the event log's projections read it
//! once per instance instead of once each (on two cores, four concurrent ordered reads of a
//! log take 2.9× as long as one).
//!
//! A [`SharedLog`] runs one [`LogReader`] in a task of its own and hands every chunk to each
//! [`Subscription`] that wants it, as one shared allocation. A subscription starts at a
//! sequence of its own: when it starts behind the read, the read starts over from there and
//! the others skip what they already have; when it starts ahead, it skips until the read
//! reaches it. Either way each subscription sees every message from its start once, in
//! stream order, exactly as its own reader would show them.
//!
//! The read goes at the pace of the slowest subscription (each has a bounded queue). One that
//! takes nothing for [`SharedConfig::detach_after`] (a projection whose bucket is down) is
//! detached and goes on with a reader of its own, so it never holds the others up for long.

use super::{Chunk, Decoder, LogReader};
use async_nats::jetstream::stream;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

/// Pause before a stream that cannot be read is tried again.
const UNREADABLE_PAUSE: Duration = Duration::from_millis(250);

/// The stream sequence of a decoded message.
pub type SeqOf<T> = fn(&T) -> u64;

/// Tuning of a shared read.
#[derive(Debug, Clone, Copy)]
pub struct SharedConfig {
    /// Most messages handed over at once.
    pub max_chunk: usize,
    /// Chunks queued per subscription before the read waits for it.
    pub read_ahead: usize,
    /// How long the read waits for a subscription that takes nothing before detaching it.
    pub detach_after: Duration,
}

impl Default for SharedConfig {
    fn default() -> Self {
        SharedConfig {
            max_chunk: 1024,
            read_ahead: 32,
            detach_after: Duration::from_secs(15),
        }
    }
}

/// An item of a shared read, from which a reader takes the input it wants: the item itself,
/// or part of it (the event log's projections take the events out of the messages the
/// decision state folds whole).
pub trait Carries<I>: Clone + Send + Sync + 'static {
    /// The reader's input in this item; `None`: nothing for it (it still moves the position).
    fn input(&self) -> Option<&I>;
}

impl<I: Clone + Send + Sync + 'static> Carries<I> for I {
    fn input(&self) -> Option<&I> {
        Some(self)
    }
}

/// What a subscription is handed: chunks shared with the other subscriptions.
pub type SharedChunk<T> = Arc<Chunk<T>>;

/// A subscription asking to join the read.
struct Joining<T> {
    start: u64,
    chunks: mpsc::Sender<SharedChunk<T>>,
}

/// How a shared read is made (kept so a detached subscription can make its own).
#[derive(Clone)]
struct Source<T> {
    stream: stream::Stream,
    decode: Decoder<T>,
    seq_of: SeqOf<T>,
    config: SharedConfig,
}

/// One ordered read of a stream, for any number of subscriptions. Cheap to clone; the read
/// ends when the last clone is dropped.
#[derive(Clone)]
pub struct SharedLog<T> {
    joins: mpsc::UnboundedSender<Joining<T>>,
    source: Source<T>,
    _task: Arc<AbortOnDropHandle<()>>,
}

impl<T: Clone + Send + Sync + 'static> SharedLog<T> {
    /// A shared read of `stream`, decoding with `decode`; `seq_of` tells a decoded message's
    /// sequence. Nothing is read until someone subscribes.
    pub fn spawn(
        stream: stream::Stream,
        decode: Decoder<T>,
        seq_of: SeqOf<T>,
        config: SharedConfig,
    ) -> SharedLog<T> {
        Self::from_source(Source {
            stream,
            decode,
            seq_of,
            config,
        })
    }

    fn from_source(source: Source<T>) -> SharedLog<T> {
        let (joins, waiting) = mpsc::unbounded_channel();
        let task = tokio::spawn(fan_out(waiting, source.clone()));
        SharedLog {
            joins,
            source,
            _task: Arc::new(AbortOnDropHandle::new(task)),
        }
    }

    /// Every message from sequence `start` on (1: the whole stream). Dropping the
    /// subscription leaves the read.
    pub fn subscribe(&self, start: u64) -> Subscription<T> {
        let start = start.max(1);
        Subscription {
            chunks: self.join(start),
            next_seq: start,
            source: self.source.clone(),
            own: None,
        }
    }

    /// The stream read.
    pub fn stream(&self) -> &stream::Stream {
        &self.source.stream
    }

    /// The stream's last sequence now (a round trip to the server).
    pub async fn last_seq(&self) -> Result<u64, crate::store::StoreError> {
        super::end(&self.source.stream).await
    }

    fn join(&self, start: u64) -> mpsc::Receiver<SharedChunk<T>> {
        let (tx, rx) = mpsc::channel(self.source.config.read_ahead.max(1));
        // The read task outlives every handle; a send fails only while it is being dropped,
        // and then the receiver ends, which the subscription treats as a detach.
        let _ = self.joins.send(Joining { start, chunks: tx });
        rx
    }
}

/// One reader's view of a [`SharedLog`].
pub struct Subscription<T> {
    chunks: mpsc::Receiver<SharedChunk<T>>,
    /// The next sequence this subscription wants.
    next_seq: u64,
    source: Source<T>,
    /// The read of its own, once detached from the shared one.
    own: Option<SharedLog<T>>,
}

impl<T: Clone + Send + Sync + 'static> Subscription<T> {
    /// The next chunk: messages after the last one handed out, in stream order, none twice.
    /// Cancellation-safe: a dropped call loses no message.
    pub async fn next(&mut self) -> SharedChunk<T> {
        loop {
            if let Some(chunk) = self.chunks.recv().await {
                self.next_seq = chunk.last_seq + 1;
                return chunk;
            }
            tracing::debug!(
                stream = %self.source.stream.cached_info().config.name,
                next_seq = self.next_seq,
                "detached from the shared read; reading on its own"
            );
            let own = SharedLog::from_source(self.source.clone());
            self.chunks = own.join(self.next_seq);
            self.own = Some(own);
        }
    }

    /// Whether this subscription reads on its own (it was detached from the shared read).
    #[cfg(test)]
    pub fn is_detached(&self) -> bool {
        self.own.is_some()
    }
}

/// A subscription as the read task sees it.
struct Subscriber<T> {
    next_seq: u64,
    chunks: mpsc::Sender<SharedChunk<T>>,
}

/// The read task: reads from the earliest sequence any subscriber wants and hands each
/// chunk to every subscriber, in order, until every handle is dropped.
async fn fan_out<T: Clone + Send + Sync + 'static>(
    mut joins: mpsc::UnboundedReceiver<Joining<T>>,
    source: Source<T>,
) {
    let mut subscribers: Vec<Subscriber<T>> = Vec::new();
    let mut reader: Option<LogReader<T>> = None;
    loop {
        subscribers.retain(|s| !s.chunks.is_closed());
        if subscribers.is_empty() {
            // Nobody reads: drop the consumer until someone joins.
            reader = None;
            match joins.recv().await {
                Some(joining) => subscribers.push(joining.into()),
                None => return,
            }
        }
        while let Ok(joining) = joins.try_recv() {
            subscribers.push(joining.into());
        }
        let from = subscribers.iter().map(|s| s.next_seq).min().unwrap_or(1);
        let reader = match &mut reader {
            Some(reader) if reader.position() < from => reader,
            _ => reader.insert(LogReader::new(
                source.stream.clone(),
                from,
                source.decode,
                source.config.max_chunk,
            )),
        };
        let chunk = tokio::select! {
            joining = joins.recv() => match joining {
                Some(joining) => {
                    subscribers.push(joining.into());
                    continue;
                }
                None => return,
            },
            chunk = reader.next_chunk() => chunk,
        };
        match chunk {
            Ok(chunk) => deliver(&mut subscribers, chunk, &source).await,
            Err(error) => {
                tracing::warn!(stream = %source.stream.cached_info().config.name, %error, "cannot read the stream; retrying");
                tokio::time::sleep(UNREADABLE_PAUSE).await;
            }
        }
    }
}

impl<T> From<Joining<T>> for Subscriber<T> {
    fn from(joining: Joining<T>) -> Self {
        Subscriber {
            next_seq: joining.start,
            chunks: joining.chunks,
        }
    }
}

/// Hands `chunk` to every subscriber that wants part of it; drops the ones that left and
/// detaches the ones that take nothing for `detach_after`. A subscriber with room takes it at
/// once; the read waits only for full ones, all at the same time.
async fn deliver<T: Clone>(
    subscribers: &mut Vec<Subscriber<T>>,
    chunk: Chunk<T>,
    source: &Source<T>,
) {
    use mpsc::error::TrySendError;
    let chunk = Arc::new(chunk);
    let mut kept = vec![true; subscribers.len()];
    let mut full = Vec::new();
    for (index, subscriber) in subscribers.iter().enumerate() {
        let Some(part) = part_for(&chunk, subscriber.next_seq, source.seq_of) else {
            continue;
        };
        match subscriber.chunks.try_send(part) {
            Ok(()) => {}
            Err(TrySendError::Closed(_)) => kept[index] = false,
            Err(TrySendError::Full(part)) => full.push((index, part)),
        }
    }
    if !full.is_empty() {
        let waits = full.into_iter().map(|(index, part)| {
            let chunks = &subscribers[index].chunks;
            async move {
                let sent =
                    tokio::time::timeout(source.config.detach_after, chunks.send(part)).await;
                (index, matches!(sent, Ok(Ok(()))))
            }
        });
        for (index, sent) in futures::future::join_all(waits).await {
            kept[index] = sent;
        }
    }
    let mut kept = kept.into_iter();
    subscribers.retain_mut(|subscriber| {
        let keep = kept.next().unwrap_or(false);
        subscriber.next_seq = subscriber.next_seq.max(chunk.last_seq + 1);
        keep
    });
}

/// The part of `chunk` from sequence `next_seq` on: the chunk itself when it holds nothing
/// earlier, `None` when it holds nothing that late.
fn part_for<T: Clone>(
    chunk: &SharedChunk<T>,
    next_seq: u64,
    seq_of: SeqOf<T>,
) -> Option<SharedChunk<T>> {
    if chunk.last_seq < next_seq {
        return None;
    }
    if chunk
        .items
        .first()
        .is_none_or(|first| seq_of(first) >= next_seq)
    {
        return Some(chunk.clone());
    }
    let items: Vec<T> = chunk
        .items
        .iter()
        .filter(|item| seq_of(item) >= next_seq)
        .cloned()
        .collect();
    Some(Arc::new(Chunk {
        items,
        last_seq: chunk.last_seq,
        read: (chunk.last_seq + 1 - next_seq).min(chunk.read as u64) as usize,
        caught_up: chunk.caught_up,
        pending: chunk.pending,
    }))
}

#[cfg(test)]
mod tests;
