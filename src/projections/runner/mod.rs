//! The one projection runner: a projection's stream read in order from its checkpoint,
//! batches folded per key, one compare-and-set write per touched key, then the checkpoint.
//! Every projection runs in it: the three of the event log and the online projection of the
//! heartbeats (whose notices go out through an [`Announce`] hook).
//!
//! Only one instance applies a projection at a time: it holds the projection's lease
//! (`lease.<projection>` in `PROJ_STATS`, run by [`crate::store::lease::lead`]), and stops the
//! moment a renewal fails. Standby instances take the lease once it has expired
//! (`takeover_after`). The holder reads with the shared ordered reader starting after the
//! checkpoint, so messages are applied strictly in stream order even across crashes and
//! takeovers (a durable consumer would hand a new instance later messages while a dead
//! one's batch waits for redelivery). What a flush writes, and in which order, is in
//! [`flush::execute`].
//!
//! Reading and writing overlap: while one batch is being written, the next messages are read
//! and folded in memory, and all of them go into the next flush. Flushes run one at a time and
//! in order, so the revisions each expects are the ones the previous flush stored. Under a
//! backlog a flush covers many messages (fewer writes per message); caught up, each message
//! is flushed as soon as it arrives.
//!
//! A lost compare-and-set (a stale holder or a rebuild wrote first) throws the in-memory state
//! away and starts over from the stored checkpoint; the result is the same because folding is
//! idempotent, and a record never moves backwards.

mod flush;
mod fold;
pub mod partition;
mod passes;

use super::parking::RecordLimit;
use super::stored::lease_key;
use super::Projection;
use crate::store::lease::{holder_id, lead, Held, Lease};
use crate::store::log::shared::{Carries, SharedLog};
use crate::store::{StoreError, StoreErrorKind};
use async_nats::jetstream::kv;
use flush::{FlushPlan, Flushed, Target};
use fold::FoldState;
use futures::future::BoxFuture;
use prometheus_client::metrics::counter::Counter;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Fresh starts from the checkpoint after failed writes before the runner gives the lease up.
const BATCH_ATTEMPTS: usize = 8;
/// Pause before starting over after an unavailable store, times the attempt.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Tuning of a runner.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Most distinct records one flush writes. This bounds a batch's memory: folded messages
    /// are dropped at once, the records they touched are kept until written. Under a backlog
    /// a flush waits for this many touched records (or `max_linger`, or the record cache
    /// over its bound with what is not yet written), so every record is written once for as
    /// many messages as possible.
    pub max_batch_records: usize,
    /// Record reads and writes in flight at once.
    pub write_concurrency: usize,
    /// Under a backlog, the longest a folded message waits for its flush (caught up, a flush
    /// starts at once).
    pub max_linger: Duration,
    /// The same under a deep backlog (more than `deep_backlog` messages still to read, as
    /// when catching up from empty): nobody can read the end of the log before it is folded
    /// anyway, so a flush waits for `max_batch_records` touched records (or this long) and
    /// each record is written once for as many messages as the bound allows. Bounds the work
    /// a crash throws away.
    pub backlog_linger: Duration,
    /// Messages still to read beyond which a backlog is deep: far more than arrive while a
    /// flush of live traffic is written, so live readers never wait for `backlog_linger`.
    pub deep_backlog: u64,
    /// Lease time: a standby instance takes over at most this long after the holder stops.
    pub takeover_after: Duration,
    /// Bytes of records (as stored) the holder keeps in memory between flushes; past it, the
    /// records already written are dropped and read again when next touched. A bucket no
    /// larger than this is read whole when a holder starts.
    pub cache_bytes: usize,
    /// Bytes of records (by an upper bound on each one's stored size, within twice the truth)
    /// one pass of a catch-up in passes holds; 0 never catches up in passes. A runner that
    /// finds its bucket empty and more than `deep_backlog` messages to read folds the log in
    /// passes, one part of the keys at a time, each part small enough to hold until written:
    /// every record is written once, whatever the number of keys, in bounded memory
    /// ([`passes`]).
    pub pass_bytes: usize,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            max_batch_records: 262_144,
            write_concurrency: 64,
            max_linger: Duration::from_secs(1),
            backlog_linger: Duration::from_secs(30),
            deep_backlog: 10_000,
            takeover_after: Duration::from_secs(5),
            cache_bytes: 32 << 20,
            pass_bytes: 64 << 20,
        }
    }
}

/// Publishes what a projection announces; called once per flush, after the counters and before
/// the records are written. It returns once the server holds the notices; an error fails the
/// flush, which is tried again. Together: a crash or an outage can repeat a notice, never lose
/// one.
pub trait Announce<N>: Send + Sync {
    fn announce<'a>(&'a self, notices: &'a [N]) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// The hook of projections that announce nothing.
pub struct Silent;

impl Announce<std::convert::Infallible> for Silent {
    fn announce<'a>(
        &'a self,
        _: &'a [std::convert::Infallible],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }
}

/// How a runner's record cache does: lookups served from memory (or known absent), lookups
/// read from the bucket, and the bytes it holds.
#[derive(Clone, Default)]
pub struct CacheMetrics {
    pub hits: Counter,
    pub misses: Counter,
    pub bytes: prometheus_client::metrics::gauge::Gauge,
}

/// Where a runner reports how far it got: the last applied sequence (for read-your-writes
/// waits), whether it is catching up in passes (raised from the first pass until the run ends,
/// however it ends), the number of stream messages applied, of messages parked, of records
/// written and of catch-up passes written, and its cache (for metrics).
pub struct Progress {
    applied: watch::Sender<u64>,
    in_passes: watch::Sender<bool>,
    messages: Counter,
    parked: Counter,
    writes: Counter,
    passes: Counter,
    cache: CacheMetrics,
}

impl Progress {
    /// Reports applied sequences to `applied`, counting messages into `messages` and parked
    /// messages into `parked`.
    pub fn new(applied: watch::Sender<u64>, messages: Counter, parked: Counter) -> Progress {
        Progress {
            applied,
            in_passes: watch::Sender::new(false),
            messages,
            parked,
            writes: Counter::default(),
            passes: Counter::default(),
            cache: CacheMetrics::default(),
        }
    }

    /// Also counts the records written into `writes`.
    pub fn with_writes(self, writes: Counter) -> Progress {
        Progress { writes, ..self }
    }

    /// Also counts the passes of catch-ups from empty into `passes` (tests count them).
    #[cfg(any(test, feature = "test-util"))]
    pub fn with_passes(self, passes: Counter) -> Progress {
        Progress { passes, ..self }
    }

    /// Reads `true` while the runner catches up in passes, which write every record of its
    /// bucket (a follower of the bucket may [pause](crate::store::follow::Pause) meanwhile).
    pub fn in_passes(&self) -> watch::Receiver<bool> {
        self.in_passes.subscribe()
    }

    /// Also reports how the record cache does to `cache`.
    pub fn with_cache(self, cache: CacheMetrics) -> Progress {
        Progress { cache, ..self }
    }

    /// Finishes a flush in `fold` and reports it.
    fn finish<P: Projection>(&self, fold: &mut FoldState<P>, done: Flushed) {
        let before = fold.checkpoint.0;
        self.writes.inc_by(done.revisions.len() as u64);
        let seq = fold.finish(done);
        self.messages.inc_by(seq.saturating_sub(before));
        self.applied.send_replace(seq);
    }
}

/// Why a runner started over.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("a flush did not finish: {0}")]
    Flush(#[from] tokio::task::JoinError),
}

impl RunnerError {
    /// The store's kind of failure, when the store failed.
    pub fn kind(&self) -> Option<StoreErrorKind> {
        match self {
            RunnerError::Store(error) => Some(error.kind()),
            _ => None,
        }
    }
}

/// Projection `P` applied from the stream `log` reads to `records`, with its counters and
/// checkpoint in `stats` and the messages it cannot apply in `parked`. `log` hands out items
/// of type `S` that carry `P`'s inputs (by default, the inputs themselves).
pub struct ProjectionRunner<P: Projection, S = <P as Projection>::Input> {
    /// The read of the projection's stream, shared with the other readers of that stream.
    pub log: SharedLog<S>,
    pub records: kv::Store,
    /// A connection of the buckets' account, for batched reads of records.
    pub client: async_nats::Client,
    pub stats: kv::Store,
    pub parked: kv::Store,
    /// The largest record `records` takes (from the server's `max_payload`).
    pub limit: RecordLimit,
    pub config: RunnerConfig,
    pub progress: Progress,
    pub announce: Arc<dyn Announce<P::Notice>>,
}

/// A flush running in its own task.
type Flushing = tokio::task::JoinHandle<Result<Flushed, StoreError>>;

impl<P: Projection, S: Carries<P::Input>> ProjectionRunner<P, S> {
    /// Runs until `shutdown` is cancelled: waits for the lease, then applies the stream from
    /// the checkpoint on, batch by batch.
    ///
    /// Cancellation: the batch in hand is finished and its checkpoint written, then the lease
    /// is released so a standby instance takes over at once.
    pub async fn run(self, shutdown: CancellationToken) {
        let lease = Lease::new(
            self.stats.clone(),
            lease_key(P::NAME),
            holder_id(),
            self.config.takeover_after,
        );
        lead(lease, P::NAME, shutdown.clone(), |held| {
            self.lead(held, shutdown.clone())
        })
        .await;
    }

    /// Applies the stream while the lease is held. Returns `Ok` when the lease is lost or
    /// `shutdown` is cancelled. A failed write (a lost compare-and-set, an unavailable bucket)
    /// starts the pipeline over from the stored checkpoint with nothing cached, a few times,
    /// before the error goes up.
    async fn lead(&self, held: Held, shutdown: CancellationToken) -> Result<(), RunnerError> {
        let mut attempt = 0;
        loop {
            let mut flushing = None;
            let result = self.pipeline(&held, &shutdown, &mut flushing).await;
            // Never leave a write behind while starting over or handing the lease on.
            if let Some(flush) = flushing.take() {
                let _ = flush.await;
            }
            match result {
                Ok(()) => return Ok(()),
                Err(error) => {
                    attempt += 1;
                    if attempt >= BATCH_ATTEMPTS || !held.is_held() {
                        return Err(error);
                    }
                    match error.kind() {
                        // Another writer moved a record: the stored state is newer, start from it.
                        Some(StoreErrorKind::Conflict) => {}
                        Some(StoreErrorKind::Permanent) => {
                            tracing::error!(projection = P::NAME, %error, "the server refuses a write of this projection; retrying cannot fix it");
                        }
                        // The server may be back shortly: do not hammer it.
                        _ => tokio::time::sleep(RETRY_PAUSE * attempt as u32).await,
                    }
                    tracing::debug!(projection = P::NAME, %error, "starting over from the checkpoint");
                }
            }
        }
    }

    fn target(&self) -> Target<P::Notice> {
        Target {
            projection: P::NAME,
            records: self.records.clone(),
            stats: self.stats.clone(),
            announce: self.announce.clone(),
            parked: self.parked.clone(),
            parked_total: self.progress.parked.clone(),
            concurrency: self.config.write_concurrency,
        }
    }

    /// The pipeline: the stream is read and folded into memory while the previous batch is
    /// being written, so reading, folding and writing overlap, and every message that arrives
    /// during a flush joins the next one (the busier the stream, the more messages each write
    /// covers).
    async fn pipeline(
        &self,
        held: &Held,
        shutdown: &CancellationToken,
        flushing: &mut Option<Flushing>,
    ) -> Result<(), RunnerError> {
        if let passes::Passes::Stopped = self.catch_up_in_passes(held, shutdown).await? {
            return Ok(());
        }
        let config = &self.config;
        let max_batch_records = config.max_batch_records.min(P::MAX_BATCH_RECORDS);
        let cache = (config.cache_bytes, self.progress.cache.clone());
        let mut fold = FoldState::<P>::load(&self.stats, self.limit, cache).await?;
        fold.preload(&self.records).await?;
        let mut chunks = self.log.subscribe(fold.checkpoint.0 + 1);
        // Messages still to read after the last one read; while there are some, a flush
        // waits for more messages (up to `max_batch_records` touched records or the linger)
        // so that each write covers more of them.
        let mut backlog = 0;
        let mut pending_since = tokio::time::Instant::now();
        loop {
            let linger = match backlog > config.deep_backlog {
                true => config.backlog_linger,
                false => config.max_linger,
            };
            let due = backlog == 0
                || fold.dirty.len() >= max_batch_records
                || fold.over_bound()
                || pending_since.elapsed() >= linger;
            if flushing.is_none() && fold.has_pending() && due {
                if !held.is_held() {
                    // Too late to trust the lease (a pause, a slow renewal): let the next
                    // holder start from the checkpoint.
                    return Ok(());
                }
                let plan = fold.take_plan(held.owner());
                *flushing = Some(tokio::spawn(flush::execute(self.target(), plan)));
            }
            let accepting = fold.dirty.len() < max_batch_records;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return self.finish_in_hand(&mut fold, held, flushing).await,
                done = async { flushing.as_mut().expect("guarded").await }, if flushing.is_some() => {
                    *flushing = None;
                    self.progress.finish(&mut fold, done??);
                }
                _ = tokio::time::sleep_until(pending_since + linger),
                    if flushing.is_none() && fold.has_pending() => {}
                _ = held.lost() => return Ok(()),
                chunk = chunks.next(), if accepting => {
                    backlog = chunk.pending;
                    if !fold.has_pending() {
                        pending_since = tokio::time::Instant::now();
                    }
                    let inputs: Vec<&P::Input> = chunk.items.iter().filter_map(S::input).collect();
                    fold.ensure_loaded(&self.records, &self.client, &inputs, config.write_concurrency).await?;
                    fold.fold(&inputs, chunk.last_seq);
                }
            }
        }
    }

    /// At shutdown: the flush in flight, then what is folded.
    async fn finish_in_hand(
        &self,
        fold: &mut FoldState<P>,
        held: &Held,
        flushing: &mut Option<Flushing>,
    ) -> Result<(), RunnerError> {
        if let Some(flush) = flushing.take() {
            let done = flush.await??;
            self.progress.finish(fold, done);
        }
        if fold.has_pending() && held.is_held() {
            let plan: FlushPlan<P::Notice, P::Record> = fold.take_plan(held.owner());
            let done = flush::execute(self.target(), plan).await?;
            self.progress.finish(fold, done);
        }
        Ok(())
    }
}

/// Applies `inputs` (one batch, stream order, ending at `last_seq`) to the records of `P`,
/// its counters and checkpoint, in the order [`flush::execute`] gives, reading everything
/// from the bucket first: what a stale writer does.
#[cfg(any(test, feature = "test-util"))]
pub async fn apply_batch<P: Projection<Notice = std::convert::Infallible>>(
    client: &async_nats::Client,
    records: &kv::Store,
    stats: &kv::Store,
    parked: &kv::Store,
    inputs: &[P::Input],
    last_seq: u64,
    owner: &str,
) -> Result<(), StoreError> {
    let cache = (usize::MAX, CacheMetrics::default());
    let mut fold = FoldState::<P>::load(stats, RecordLimit::default(), cache).await?;
    fold.ensure_loaded(records, client, inputs, 64).await?;
    fold.fold(inputs, last_seq);
    let plan = fold.take_plan(owner);
    let target = Target {
        projection: P::NAME,
        records: records.clone(),
        stats: stats.clone(),
        announce: Arc::new(Silent),
        parked: parked.clone(),
        parked_total: Counter::default(),
        concurrency: 64,
    };
    flush::execute(target, plan).await?;
    Ok(())
}
