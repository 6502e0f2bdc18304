//! An instance's background work: the three log projections, the online projector, the share
//! feed and, when configured, the auto-share reactor. Each holds a lease or a pinned consumer,
//! so with several instances running each piece of work is done by one of them at a time; all
//! of them end when the stop token is cancelled.

use crate::config::ServiceConfig;
use crate::decider::Decider;
use crate::feeds::Feeds;
use crate::projections::{
    accounts::Accounts, catalogs::Catalogs, oauth::OAuthIndex, runner, Projection,
};
use crate::store::Store;
use crate::telemetry::Metrics;
use std::future::Future;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The spawned tasks, and each log projection's applied sequence (for read-your-writes waits).
pub(super) struct Started {
    pub tasks: Vec<JoinHandle<()>>,
    pub progress: Vec<(&'static str, watch::Receiver<u64>)>,
}

/// Spawns all background work of one instance.
pub(super) fn spawn_all(
    store: &Store,
    decider: &Decider,
    feeds: &Feeds,
    config: &ServiceConfig,
    metrics: &Metrics,
    stop: &CancellationToken,
) -> Started {
    let mut tasks = Vec::new();
    let progress = vec![
        spawn_runner::<Accounts>(
            store,
            store.accounts.clone(),
            config,
            metrics,
            stop,
            &mut tasks,
        ),
        spawn_runner::<Catalogs>(
            store,
            store.catalogs.clone(),
            config,
            metrics,
            stop,
            &mut tasks,
        ),
        spawn_runner::<OAuthIndex>(
            store,
            store.oauth.clone(),
            config,
            metrics,
            stop,
            &mut tasks,
        ),
    ];
    let takeover = config.runner.takeover_after;
    if let Some(hub) = config.hub.clone() {
        let (events, decider) = (store.events.clone(), decider.clone());
        let stop = stop.clone();
        tasks.push(spawn_restarting(
            "auto-share reactor",
            stop.clone(),
            takeover / 4,
            move || {
                let (events, decider, hub, stop) =
                    (events.clone(), decider.clone(), hub.clone(), stop.clone());
                async move { crate::reactor::run(&events, decider, hub, takeover, stop).await }
            },
        ));
    }
    tasks.push(tokio::spawn(
        crate::online::projector::OnlineProjector {
            online: store.online.clone(),
            records: store.online_records.clone(),
            stats: store.stats.clone(),
            feeds: feeds.clone(),
            takeover_after: takeover,
            applied: metrics.projection_applied(crate::online::projector::NAME),
        }
        .run(stop.clone()),
    ));
    {
        let (events, feeds) = (store.events.clone(), feeds.clone());
        let stop = stop.clone();
        tasks.push(spawn_restarting(
            "share feed",
            stop.clone(),
            takeover / 4,
            move || {
                let (events, feeds, stop) = (events.clone(), feeds.clone(), stop.clone());
                async move { crate::share_feed::run(&events, feeds, takeover, stop).await }
            },
        ));
    }
    Started { tasks, progress }
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
    Fut: Future<Output = Result<(), String>> + Send,
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

fn spawn_runner<P: Projection>(
    store: &Store,
    records: async_nats::jetstream::kv::Store,
    config: &ServiceConfig,
    metrics: &Metrics,
    stop: &CancellationToken,
    tasks: &mut Vec<JoinHandle<()>>,
) -> (&'static str, watch::Receiver<u64>) {
    let (tx, rx) = watch::channel(0);
    let progress = runner::Progress::new(tx).counting(metrics.projection_applied(P::NAME));
    let events = store.events.clone();
    let stats = store.stats.clone();
    let runner_config = config.runner.clone();
    let stop = stop.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(error) =
            runner::run::<P>(&events, records, stats, runner_config, progress, stop).await
        {
            tracing::error!(%error, "projection runner stopped");
        }
    }));
    (P::NAME, rx)
}
