//! An instance's background work: every projection of the registry in the shared runner, the
//! share notices and, when configured, the auto-share reactor, each holding a lease or a pinned
//! consumer, so with several instances running each piece of work is done by one of them at a
//! time; and the instance's own view of catalogs online. All of it ends when the stop token is
//! cancelled.

use super::ServiceConfig;
use crate::api::PreparedAccount;
use crate::projections::online_view::{OnlineView, ViewMetrics};
use crate::projections::parking::RecordLimit;
use crate::projections::record_cache::{RecordCache, RecordCacheMetrics};
use crate::projections::registry::{ProjectionName, SourceStream};
use crate::projections::runner::{Announce, CacheMetrics, Progress, ProjectionRunner, Silent};
use crate::projections::Projection;
use crate::projections::{
    accounts::Accounts, catalogs::Catalogs, oauth::OAuthIndex, online::Online,
};
use crate::reactions::{autoshare, share_notices, Feeds};
use crate::store::lease::{holder_id, lead, Lease};
use crate::store::log::message::LogMessage;
use crate::store::log::shared::{Carries, SharedConfig, SharedLog};
use crate::store::pause::Pause;
use crate::store::{Store, StoreError};
use crate::telemetry::metrics::ResultLabels;
use crate::telemetry::Metrics;
use crate::write::{log_identity, snapshotter, Decider, Snapshots};
use std::future::Future;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The spawned tasks, each event-log projection's applied sequence (for waits on a sequence
/// of the event log), and the view of catalogs online.
pub(super) struct Started {
    pub tasks: Vec<JoinHandle<()>>,
    pub progress: Vec<(&'static str, watch::Receiver<u64>)>,
    pub online_view: OnlineView,
    pub account_cache: RecordCache<PreparedAccount>,
}

/// What background work needs of the instance.
pub(super) struct Parts<'a> {
    pub store: &'a Store,
    /// The instance's one read of the event log, shared by its projections and the decision
    /// state's catch-up.
    pub events_log: &'a SharedLog<LogMessage>,
    pub decider: &'a Decider,
    pub feeds: &'a Feeds,
    pub config: &'a ServiceConfig,
    pub metrics: &'a Metrics,
    /// The largest record the server takes.
    pub record_limit: RecordLimit,
    /// Where the decision-state snapshot is written.
    pub snapshots: &'a Snapshots,
    pub stop: &'a CancellationToken,
}

/// The instance's view of catalogs online, reporting to its metrics.
fn start_online_view(parts: &Parts<'_>) -> OnlineView {
    let metrics = ViewMetrics {
        entries: parts.metrics.online_view_entries.clone(),
        bytes: parts.metrics.online_view_bytes.clone(),
        rebuilds: parts.metrics.online_view_rebuilds.clone(),
    };
    let store = parts.store;
    OnlineView::start(
        store.js.client(),
        store.online_records.clone(),
        metrics,
        parts.stop.clone(),
    )
}

/// The read ops' cache of account records, reporting to its metrics, without its watch while
/// `pause` asks (this instance's account runner catching up in passes).
fn start_account_cache(parts: &Parts<'_>, pause: Pause) -> RecordCache<PreparedAccount> {
    let lookups = |result| {
        let labels = ResultLabels { result };
        parts
            .metrics
            .account_cache_lookups
            .get_or_create(&labels)
            .clone()
    };
    let metrics = RecordCacheMetrics {
        hits: lookups("hit"),
        misses: lookups("miss"),
        bytes: parts.metrics.account_cache_bytes.clone(),
        rebuilds: parts.metrics.account_cache_rebuilds.clone(),
    };
    let store = parts.store;
    RecordCache::start(
        store.js.client(),
        store.accounts.clone(),
        parts.config.account_cache_bytes,
        metrics,
        pause,
        parts.stop.clone(),
    )
}

/// The instance's one read of the event log: its projections read from it, and so does the
/// decision state while it catches up.
pub(super) fn share_event_log(store: &Store) -> SharedLog<LogMessage> {
    SharedLog::spawn(
        store.events.clone(),
        LogMessage::decode,
        LogMessage::seq,
        SharedConfig::default(),
    )
}

/// Spawns all background work of one instance.
pub(super) fn spawn_all(parts: &Parts<'_>) -> Started {
    let store = parts.store;
    let (mut tasks, mut progress) = (Vec::new(), Vec::new());
    let mut account_cache_pause = Pause::never();
    let mut log_catch_ups = Vec::new();
    let events = parts.events_log;
    for name in ProjectionName::ALL {
        let tasks = &mut tasks;
        let signals = match name {
            ProjectionName::Accounts => {
                spawn_runner::<Accounts, _>(parts, events, &store.accounts, Arc::new(Silent), tasks)
            }
            ProjectionName::Catalogs => {
                spawn_runner::<Catalogs, _>(parts, events, &store.catalogs, Arc::new(Silent), tasks)
            }
            ProjectionName::OAuth => {
                spawn_runner::<OAuthIndex, _>(parts, events, &store.oauth, Arc::new(Silent), tasks)
            }
            ProjectionName::Online => {
                let feeds = Arc::new(parts.feeds.clone());
                let online = SharedLog::spawn(
                    store.online.clone(),
                    Online::decode,
                    Online::seq,
                    SharedConfig::default(),
                );
                spawn_runner::<Online, _>(parts, &online, &store.online_records, feeds, tasks)
            }
        };
        if name.source() == SourceStream::Events {
            progress.push((name.as_str(), signals.applied));
            log_catch_ups.push(signals.in_passes.clone());
        }
        if name == ProjectionName::Accounts {
            account_cache_pause = Pause::while_any_raised([signals.in_passes]);
        }
    }
    let mut started = Started {
        tasks,
        progress,
        online_view: start_online_view(parts),
        account_cache: start_account_cache(parts, account_cache_pause),
    };
    let takeover = parts.config.runner.takeover_after;
    let events = parts.store.events.clone();
    if let Some(hub) = parts.config.hub.clone() {
        let (events, decider, stop) = (events.clone(), parts.decider.clone(), parts.stop.clone());
        let metrics = parts.metrics.clone();
        started.tasks.push(spawn_restarting(
            "auto-share reactor",
            parts.stop.clone(),
            takeover / 4,
            move || {
                let (events, decider, hub, metrics, stop) = (
                    events.clone(),
                    decider.clone(),
                    hub.clone(),
                    metrics.clone(),
                    stop.clone(),
                );
                async move { autoshare::run(&events, decider, hub, takeover, metrics, stop).await }
            },
        ));
    }
    let snapshot_pause = Pause::while_any_raised(log_catch_ups);
    started
        .tasks
        .push(spawn_snapshot_writer(parts, snapshot_pause));
    let (feeds, stop) = (parts.feeds.clone(), parts.stop.clone());
    let stats = parts.store.stats.clone();
    started.tasks.push(spawn_restarting(
        "share notices",
        parts.stop.clone(),
        takeover / 4,
        move || {
            let (events, stats, feeds) = (events.clone(), stats.clone(), feeds.clone());
            let stop = stop.clone();
            async move { share_notices::run(&events, &stats, feeds, takeover, stop).await }
        },
    ));
    started
}

/// Lease key of the decision-state snapshot writer (in `PROJ_STATS`, beside the projections').
pub(super) const SNAPSHOT_LEASE: &str = "lease.decision-snapshot";

/// Spawns the writer of the decision-state snapshot: one instance at a time, under a lease,
/// never while `pause` is asked for (the event log's runners catching up in passes).
fn spawn_snapshot_writer(parts: &Parts<'_>, pause: Pause) -> JoinHandle<()> {
    let lease = Lease::new(
        parts.store.stats.clone(),
        SNAPSHOT_LEASE.into(),
        holder_id(),
        parts.config.runner.takeover_after,
    );
    let (decider, bucket) = (parts.decider.clone(), parts.snapshots.bucket.clone());
    let (interval, stop) = (parts.snapshots.interval, parts.stop.clone());
    let log = log_identity(&parts.store.events);
    tokio::spawn(lead(
        lease,
        "decision snapshot",
        stop.clone(),
        move |held| {
            let (decider, bucket, log) = (decider.clone(), bucket.clone(), log.clone());
            let pause = pause.clone();
            snapshotter::keep_written(decider, bucket, log, interval, held, pause, stop.clone())
        },
    ))
}

/// Runs `task` until `stop` is cancelled, starting it over `pause` after each failure (a broken
/// consumer stream; unacked events are redelivered to the next run).
fn spawn_restarting<F, Fut>(
    what: &'static str,
    stop: CancellationToken,
    pause: std::time::Duration,
    mut task: F,
) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), StoreError>> + Send,
{
    tokio::spawn(async move {
        while let Err(error) = task().await {
            tracing::warn!(%error, "{what} restarting");
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    })
}

/// What a spawned runner reports as it goes.
struct RunnerSignals {
    /// Its applied sequence.
    applied: watch::Receiver<u64>,
    /// Raised while it catches up in passes.
    in_passes: watch::Receiver<bool>,
}

/// Spawns the runner of `P` over what `log` reads into `records`.
fn spawn_runner<P: Projection, S: Carries<P::Input>>(
    parts: &Parts<'_>,
    log: &SharedLog<S>,
    records: &async_nats::jetstream::kv::Store,
    announce: Arc<dyn Announce<P::Notice>>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> RunnerSignals {
    let (tx, applied) = watch::channel(0);
    let runner = ProjectionRunner::<P, S> {
        log: log.clone(),
        records: records.clone(),
        client: parts.store.js.client(),
        stats: parts.store.stats.clone(),
        parked: parts.store.parked.clone(),
        limit: parts.record_limit,
        config: parts.config.runner.clone(),
        progress: Progress::new(
            tx,
            parts.metrics.projection_applied(P::NAME),
            parts.metrics.projection_parked(P::NAME),
        )
        .with_writes(parts.metrics.projection_record_writes(P::NAME))
        .with_cache(CacheMetrics {
            hits: parts.metrics.projection_cache_lookups(P::NAME, "hit"),
            misses: parts.metrics.projection_cache_lookups(P::NAME, "miss"),
            bytes: parts.metrics.projection_cache_size(P::NAME),
        }),
        announce,
    };
    let in_passes = runner.progress.in_passes();
    tasks.push(tokio::spawn(runner.run(parts.stop.clone())));
    RunnerSignals { applied, in_passes }
}
