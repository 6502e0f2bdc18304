//! Catching up from empty in passes: when a runner finds its bucket empty and a deep backlog,
//! it reads the backlog once per part of the keys, each pass holding only its part's records
//! ([`partition`]) until it writes them, once each. One pass over a log whose records outgrow
//! what a flush may hold writes the same records again flush after flush, or holds them all;
//! `k` passes cost `k` reads of the log instead (reading an event costs a quarter of writing a
//! record) and hold a `k`th of the records.
//!
//! Progress is kept in `passes.<projection>` ([`PassProgress`]) so that a crash or a lost
//! lease costs at most the pass in hand. The order of a pass's writes makes every crash safe:
//! 1. the progress names the part as being written, its counter changes added to `delta`
//!    (written once per part, so never counted twice);
//! 2. the part's records, each created ("never written" asserted by the server, in
//!    acknowledged groups: [`kv::create_all`]; a part written again after a crash reads the
//!    revisions of its records first and replaces them, as does a group that was refused);
//! 3. the messages the pass parked (each recorded once);
//! 4. the progress names the part as done.
//!
//! A part is written before the next one is read, so one part is in memory at a time
//! (reading the next part while writing showed no gain on two cores, where both are bound by
//! the same CPU, and held two parts).
//!
//! When no part is left: the counters (the stored ones plus `delta`, `counted_seq` moved to
//! the run's end), the checkpoint, and the progress is deleted. The runner then goes on from
//! the checkpoint as usual. Until then its applied sequence stays where the run started:
//! readers waiting for `Natster-Min-Seq` and `/readyz` wait for the whole run.
//!
//! While a run goes on, the runner's `in_passes` signal is raised
//! ([`super::Progress::in_passes`]): the instance's account cache stands its watch of the
//! bucket down meanwhile rather than be delivered every record written.
//!
//! The first pass checks that passes are exact for this log: records that messages touching
//! several keys might make too large are pinned (held by every pass) and the first pass is
//! read again; more than [`partition::MAX_PINNED`] of them ([`partition::MayPark`]) and
//! nothing is written: the runner folds the log in one pass.

use super::flush::{self, Target};
use super::partition::{self, Part, PartFold, PartRecord};
use super::ProjectionRunner;
use crate::projections::parking::RecordLimit;
use crate::projections::stored::{
    checkpoint_key, counters_key, passes_key, Checkpoint, Counters, PassProgress,
};
use crate::projections::{CountDelta, Projection};
use crate::store::kv::{self, Versioned};
use crate::store::lease::Held;
use crate::store::log::shared::Carries;
use crate::store::StoreError;
use bytes::Bytes;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// How a catch-up in passes ended.
pub(super) enum Passes {
    /// Not taken (the bucket was not empty, the backlog not deep, or passes would not be
    /// exact for this log): fold as usual.
    NotTaken,
    /// Every part is written and the checkpoint moved to the run's end.
    Done,
    /// Shut down or the lease lost mid-run; the progress is kept for the next holder.
    Stopped,
}

/// How the read of one pass ended.
enum Read<P: Projection> {
    /// Its part is folded, to be written.
    Folded(Box<Folded<P>>),
    /// The first pass found that passes cannot be exact for this log.
    Inexact,
    /// Shut down or the lease lost.
    Stopped,
}

/// A part folded and not yet written.
struct Folded<P: Projection> {
    fold: PartFold<P>,
    /// The part was being written when the run was taken over: written again whole, its
    /// counter changes already in the progress.
    rewriting: bool,
    read_for: std::time::Duration,
}

/// What a pass reads: the run's range, its record limit, whether it is the first, and the
/// keys every pass holds.
struct Reading<'a> {
    from: u64,
    to: u64,
    limit: RecordLimit,
    first: bool,
    pinned: &'a [String],
}

/// A run's progress with its revision in `PROJ_STATS`.
struct Run {
    progress: PassProgress,
    revision: Option<u64>,
}

/// Raises a runner's `in_passes` signal for as long as it lives: lowered however the run
/// ends (done, stopped, failed, abandoned as inexact, or the task dropped).
struct Raised<'a>(&'a tokio::sync::watch::Sender<bool>);

impl<'a> Raised<'a> {
    fn over(signal: &'a tokio::sync::watch::Sender<bool>) -> Raised<'a> {
        signal.send_replace(true);
        Raised(signal)
    }
}

impl Drop for Raised<'_> {
    fn drop(&mut self) {
        self.0.send_replace(false);
    }
}

impl<P: Projection, S: Carries<P::Input>> ProjectionRunner<P, S> {
    /// Catches the projection up in passes when its bucket is empty and the backlog deep, or
    /// goes on with a run a previous holder left. Called with the lease held, before the
    /// usual fold loads anything.
    pub(super) async fn catch_up_in_passes(
        &self,
        held: &Held,
        shutdown: &CancellationToken,
    ) -> Result<Passes, StoreError> {
        if !P::CATCH_UP_IN_PASSES || self.config.pass_bytes == 0 {
            return Ok(Passes::NotTaken);
        }
        let Some(mut run) = self.run_to_go_on_with().await? else {
            return Ok(Passes::NotTaken);
        };
        let started = Instant::now();
        let _raised = Raised::over(&self.progress.in_passes);
        let mut passes = 0;
        tracing::info!(
            projection = P::NAME,
            from = run.progress.from,
            to = run.progress.to,
            parts_done = run.progress.done.len(),
            rewriting = run.progress.writing.is_some(),
            "catching up from empty in passes"
        );
        while let Some((part, rewriting)) = self.next_part(&run) {
            let reading = Reading {
                from: run.progress.from,
                to: run.progress.to,
                limit: RecordLimit {
                    max_bytes: run.progress.max_bytes,
                },
                first: run.progress.done.is_empty() && run.progress.writing.is_none(),
                pinned: &run.progress.pinned,
            };
            let folded = match self
                .read_part(reading, part, rewriting, held, shutdown)
                .await
            {
                Read::Folded(folded) => folded,
                Read::Inexact => return Ok(Passes::NotTaken),
                Read::Stopped => return Ok(Passes::Stopped),
            };
            if !held.is_held() {
                return Ok(Passes::Stopped);
            }
            let to_pin = folded.fold.to_pin();
            if !to_pin.is_empty() {
                // Only the first pass finds some: nothing is stored yet, it is read again.
                tracing::info!(
                    projection = P::NAME,
                    keys = to_pin.len(),
                    "pinning records that may outgrow the record limit: every pass holds them"
                );
                run.progress.pinned.extend(to_pin.iter().cloned());
                continue;
            }
            let (part, held_bytes) = (folded.fold.part(), folded.fold.held_bytes());
            run.progress.total_bytes = Some(partition::estimate_total(held_bytes, part));
            if !rewriting {
                run.progress.delta += folded.fold.delta();
                run.progress.writing = Some(part);
                self.store_progress(&mut run).await?;
            }
            self.write_folded(&mut run, folded).await?;
            self.progress.passes.inc();
            passes += 1;
        }
        if !held.is_held() {
            return Ok(Passes::Stopped);
        }
        self.finish_run(&run, held.owner()).await?;
        tracing::info!(
            projection = P::NAME,
            passes,
            to = run.progress.to,
            seconds = started.elapsed().as_secs_f64(),
            "caught up in passes"
        );
        Ok(Passes::Done)
    }

    /// The run a previous holder left when it starts where the checkpoint is, else a new run
    /// when the bucket is empty, the counters not ahead of the checkpoint and more than
    /// `deep_backlog` messages are to be read; else none.
    async fn run_to_go_on_with(&self) -> Result<Option<Run>, StoreError> {
        let stats = &self.stats;
        let checkpoint = kv::load::<Checkpoint>(stats, &checkpoint_key(P::NAME)).await?;
        let from = checkpoint.value.map_or(0, |c| c.applied_seq) + 1;
        let Versioned {
            value,
            mut revision,
        } = kv::load::<PassProgress>(stats, &passes_key(P::NAME)).await?;
        match value {
            Some(progress) if progress.from == from => return Ok(Some(Run { progress, revision })),
            Some(_) => {
                // A rebuild moved the checkpoint since: that run is over.
                kv::delete(stats, &passes_key(P::NAME)).await?;
                revision = kv::load::<PassProgress>(stats, &passes_key(P::NAME))
                    .await?
                    .revision;
            }
            None => {}
        }
        let counters = kv::load::<Counters>(stats, &counters_key(P::NAME)).await?;
        if counters.value.is_some_and(|c| c.counted_seq >= from) {
            return Ok(None);
        }
        let to = self.log.last_seq().await?;
        if to < from || to - from < self.config.deep_backlog {
            return Ok(None);
        }
        let status = self.records.status().await.map_err(|error| {
            StoreError::unavailable(format!("read the status of {}", self.records.name), error)
        })?;
        if status.values() > 0 {
            return Ok(None);
        }
        let progress = PassProgress {
            from,
            to,
            max_bytes: self.limit.max_bytes,
            done: Vec::new(),
            writing: None,
            delta: CountDelta::default(),
            total_bytes: None,
            pinned: Vec::new(),
        };
        Ok(Some(Run { progress, revision }))
    }

    /// The part to read next, with whether it is written again: the part a previous holder
    /// was writing first, then one sized by the records found so far.
    fn next_part(&self, run: &Run) -> Option<(Part, bool)> {
        let progress = &run.progress;
        if let Some(part) = progress.writing {
            return Some((part, true));
        }
        let budget = self.config.pass_bytes;
        partition::next_part(&progress.done, progress.total_bytes, budget).map(|part| (part, false))
    }

    /// Reads the run's range of the log into the records of `part` (a part written again is
    /// never halved).
    async fn read_part(
        &self,
        reading: Reading<'_>,
        part: Part,
        rewriting: bool,
        held: &Held,
        shutdown: &CancellationToken,
    ) -> Read<P> {
        let budget = match rewriting {
            true => usize::MAX,
            false => self.config.pass_bytes,
        };
        let mut fold =
            PartFold::<P>::new(part, budget, reading.limit, reading.first, reading.pinned);
        let mut chunks = self.log.subscribe(reading.from);
        let read_from = Instant::now();
        loop {
            let chunk = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Read::Stopped,
                _ = held.lost() => return Read::Stopped,
                chunk = chunks.next() => chunk,
            };
            let inputs = chunk.items.iter().filter_map(S::input);
            for input in inputs.take_while(|i| P::seq(i) <= reading.to) {
                if let Err(may_park) = fold.fold(input) {
                    tracing::warn!(projection = P::NAME, %may_park, "cannot catch up in passes: folding the log in one pass");
                    return Read::Inexact;
                }
            }
            if chunk.last_seq >= reading.to {
                break;
            }
        }
        Read::Folded(Box::new(Folded {
            fold,
            rewriting,
            read_for: read_from.elapsed(),
        }))
    }

    /// Writes a folded part (the progress names it as being written): its records, the
    /// messages it parked, then the progress names it as done.
    async fn write_folded(&self, run: &mut Run, folded: Box<Folded<P>>) -> Result<(), StoreError> {
        let (part, held_bytes) = (folded.fold.part(), folded.fold.held_bytes());
        let (parked, records) = folded.fold.finish();
        let count = records.len();
        let written_from = Instant::now();
        let written_bytes = self.write_part(records, folded.rewriting).await?;
        crate::crashpoint::reached(crate::crashpoint::PASS_WRITTEN).await;
        flush::record_parked(&self.target(), &parked).await?;
        run.progress.done.push(part);
        run.progress.writing = None;
        self.store_progress(run).await?;
        tracing::info!(
            projection = P::NAME,
            part_first = format!("{:016x}", part.first),
            part_share = part.share(),
            records = count,
            held_mib = held_bytes as f64 / f64::from(1 << 20),
            written_mib = written_bytes as f64 / f64::from(1 << 20),
            read_seconds = folded.read_for.as_secs_f64(),
            write_seconds = written_from.elapsed().as_secs_f64(),
            "a pass is written"
        );
        Ok(())
    }

    /// Creates every record of a part, in acknowledged groups ([`kv::create_all`]); when the
    /// part is written again after a crash, or what the groups could not prove written (a
    /// refused group and the rest, or all of a replicated bucket), reads the revisions of
    /// those records and replaces them. Returns the bytes of the records as stored (what
    /// their size bounds, `held_mib` in the log, overestimate up to twofold).
    async fn write_part(
        &self,
        records: Vec<PartRecord<P::Record>>,
        rewriting: bool,
    ) -> Result<u64, StoreError> {
        let count = records.len() as u64;
        let mut bytes = 0;
        let encoded = records.into_iter().map(|(key, record)| {
            let value = kv::encode(&*record);
            bytes += value.len() as u64;
            (key.to_string(), value)
        });
        let to_replace: Vec<(String, Bytes)> = if rewriting {
            encoded.collect()
        } else {
            let left = kv::create_all(&self.client, &self.records, encoded).await?;
            if !left.is_empty() {
                tracing::info!(
                    projection = P::NAME,
                    records = left.len(),
                    of = count,
                    "records not created in groups; writing them with compare-and-set"
                );
            }
            left
        };
        let concurrency = self.config.write_concurrency;
        kv::replace_all(&self.client, &self.records, to_replace, concurrency).await?;
        self.progress.writes.inc_by(count);
        Ok(bytes)
    }

    async fn store_progress(&self, run: &mut Run) -> Result<(), StoreError> {
        let key = passes_key(P::NAME);
        run.revision = kv::write(&self.stats, &key, Some(&run.progress), run.revision).await?;
        Ok(())
    }

    /// Every part is written: the counters, the checkpoint, then the progress is deleted.
    async fn finish_run(&self, run: &Run, owner: &str) -> Result<(), StoreError> {
        let PassProgress {
            from, to, delta, ..
        } = run.progress;
        let stats = &self.stats;
        let counters = kv::load::<Counters>(stats, &counters_key(P::NAME)).await?;
        let stored = counters.value.clone().unwrap_or_default();
        if stored.counted_seq < to {
            let advanced = stored.advanced(delta, to);
            kv::write(
                stats,
                &counters_key(P::NAME),
                Some(&advanced),
                counters.revision,
            )
            .await?;
        }
        let checkpoint = kv::load::<Checkpoint>(stats, &checkpoint_key(P::NAME)).await?;
        let at = (
            checkpoint.value.map_or(0, |c| c.applied_seq),
            checkpoint.revision,
        );
        let target: Target<P::Notice> = self.target();
        flush::write_checkpoint(&target, at, to, owner.to_string()).await?;
        kv::delete(stats, &passes_key(P::NAME)).await?;
        self.progress.messages.inc_by(to + 1 - from);
        self.progress.applied.send_replace(to);
        Ok(())
    }
}
