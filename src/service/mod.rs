//! The running service: its parts wired together, one micro-service endpoint per op, and a
//! graceful stop.
//!
//! [`run`] is the whole `serve` command (the testable entry point, as in mini-redis: give it
//! the settings, a way to connect, and a future that completes when the service should stop);
//! [`GlobalService`] is one started instance, for tests and programs that embed the service.

mod background;
mod config;
mod memory;
mod probe;

pub use crate::api::throttle::{MAX_HELD_PER_ACCOUNT, REFUSALS_PER_SECOND};
pub use crate::otc::{Sealer, SeedFileError};
pub use crate::projections::runner::RunnerConfig;
pub use crate::reactions::HubShare;
pub use crate::store::StoreConfig;
pub use config::ServiceConfig;
pub use memory::without_transparent_huge_pages;

use crate::api::heartbeat_acks::HeartbeatAcks;
use crate::api::online_catalogs::OnlineCatalogs;
use crate::api::slots::AccountSlots;
use crate::api::throttle::Throttle;
use crate::api::{intake, ApiContext};
use crate::contract::{Op, SERVICE_NAME};
use crate::otc::{CodeExpiry, NoCredentials};
use crate::projections::parking::RecordLimit;
use crate::projections::registry::{ProjectionName, SourceStream};
use crate::projections::view::StatsView;
use crate::reactions::{share_notices, Feeds};
use crate::store::roundtrip::{self, RoundTripError};
use crate::store::with_patience;
use crate::store::{Store, StoreError};
use crate::telemetry::{http, Phase, Telemetry};
use crate::write::{Decider, ExecuteError, Snapshots};
use async_nats::service::ServiceExt;
use probe::{Probe, ProbedProjection};
use std::future::Future;
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why the service stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Http(#[from] http::HttpError),
    #[error(transparent)]
    Connect(Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("starting the decision state: {0}")]
    Decisions(#[from] ExecuteError),
    #[error("cannot register the micro service: {0}")]
    Service(async_nats::Error),
    #[error(transparent)]
    RoundTrip(#[from] RoundTripError),
    #[error("draining the NATS connection failed: {0}")]
    Drain(#[from] async_nats::client::DrainError),
    #[error("shutdown did not finish within {0:?}")]
    Timeout(std::time::Duration),
    /// The settings allow records the server could not store (exit code 2).
    #[error(transparent)]
    Limits(#[from] crate::model::limits::LimitsTooLarge),
}

/// The whole `serve` command: HTTP endpoints on `http_addr` first (live at once, ready once
/// serving), then the connection made by `connect`, then the service, until `shutdown`
/// completes; then a graceful stop (the HTTP endpoints answer until the very end). A
/// `shutdown` that completes before the service serves ends the start and returns `Ok`.
/// `on_serving` is called once the service takes requests, with the address the HTTP endpoints
/// listen on (port 0 in `http_addr` is replaced by the one chosen).
pub async fn run<C, CF, E>(
    http_addr: std::net::SocketAddr,
    config: ServiceConfig,
    connect: C,
    on_serving: impl FnOnce(std::net::SocketAddr),
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError>
where
    C: FnOnce() -> CF,
    CF: Future<Output = Result<async_nats::Client, E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    let telemetry = Arc::new(telemetry_for(&config));
    let http_stop = CancellationToken::new();
    let http = http::serve(
        &http_addr.to_string(),
        telemetry.clone(),
        http_stop.clone().cancelled_owned(),
    )
    .await?;
    // Listened to from the start: a stop asked for while the service still waits for NATS or
    // starts (a pod deleted early) ends it as gracefully as a stop while serving.
    tokio::pin!(shutdown);
    let result = async {
        let starting = async {
            let client = connect()
                .await
                .map_err(|e| ServeError::Connect(Box::new(e)))?;
            GlobalService::start_with(client, config, telemetry).await
        };
        let service = tokio::select! {
            service = starting => service?,
            () = &mut shutdown => {
                tracing::info!("stopped before serving");
                return Ok(());
            }
        };
        on_serving(http.addr);
        shutdown.await;
        service.stop().await
    }
    .await;
    http_stop.cancel();
    let _ = http.task.await;
    result
}

fn telemetry_for(config: &ServiceConfig) -> Telemetry {
    Telemetry::new(config.ready_max_lag, &ProjectionName::names())
}

/// A started service instance.
pub struct GlobalService {
    client: async_nats::Client,
    shutdown_timeout: std::time::Duration,
    micro: async_nats::service::Service,
    endpoint_loops: Vec<tokio::task::JoinHandle<()>>,
    tracker: TaskTracker,
    background: Vec<tokio::task::JoinHandle<()>>,
    stop_background: CancellationToken,
    view: StatsView,
    progress: Vec<(&'static str, watch::Receiver<u64>)>,
    telemetry: Arc<Telemetry>,
}

impl GlobalService {
    /// Ensures JetStream resources (idempotent, never destructive), subscribes every op in the
    /// shared queue group, and returns once the server has registered those subscriptions, so
    /// a request sent after this returns reaches the service.
    pub async fn start(
        client: async_nats::Client,
        config: ServiceConfig,
    ) -> Result<GlobalService, ServeError> {
        let telemetry = Arc::new(telemetry_for(&config));
        Self::start_with(client, config, telemetry).await
    }

    /// [`GlobalService::start`] with telemetry made before the connection (so its HTTP
    /// endpoints could answer during start-up).
    async fn start_with(
        client: async_nats::Client,
        config: ServiceConfig,
        telemetry: Arc<Telemetry>,
    ) -> Result<GlobalService, ServeError> {
        check_records_fit(&client, &config).await?;
        let metrics = telemetry.metrics.clone();
        let js = async_nats::jetstream::new(client.clone());
        // Boxed: creating every resource is a large future.
        let store = Box::pin(ensure_resources(&js, &config)).await?;
        let stop_background = CancellationToken::new();
        let snapshots = Snapshots {
            bucket: store.snapshots.clone(),
            interval: config.snapshot_interval,
        };
        let events_log = background::share_event_log(&store);
        let decider = Box::pin(Decider::start(
            js,
            &events_log,
            store.names.clone(),
            &snapshots,
            config.share_limits,
            metrics.clone(),
            stop_background.clone(),
        ))
        .await?;
        let view =
            StatsView::start(client.clone(), store.stats.clone(), stop_background.clone()).await?;
        let feeds = Feeds::new(
            client.clone(),
            decider.clone(),
            metrics.feed_messages_sent.clone(),
        );
        let started = background::spawn_all(&background::Parts {
            store: &store,
            events_log: &events_log,
            decider: &decider,
            feeds: &feeds,
            config: &config,
            metrics: &metrics,
            record_limit: RecordLimit::for_max_payload(client.server_info().max_payload),
            snapshots: &snapshots,
            stop: &stop_background,
        });
        telemetry.install_probe(Box::new(probe_of(&client, &view, &store, &decider)));
        let heartbeat_acks =
            HeartbeatAcks::start(&client, metrics.clone(), stop_background.clone()).await?;
        let context = Arc::new(ApiContext {
            codes: CodeExpiry::start(
                store.codes.clone(),
                config.store.code_ttl,
                metrics.codes_expired.clone(),
                stop_background.clone(),
            ),
            feeds,
            store,
            decider,
            view: view.clone(),
            online_view: started.online_view,
            account_cache: started.account_cache,
            settings: config.api_settings(),
            credentials: Arc::new(NoCredentials),
            rate_limiter: config.rate_limiter(),
            heartbeat_limiter: config.heartbeat_limiter(),
            online_catalogs: OnlineCatalogs::new(config.max_online_catalogs, config.online_ttl),
            heartbeat_acks,
            metrics,
        });
        let (micro, endpoint_loops, tracker) = serve_endpoints(&client, &context, &config).await?;
        roundtrip::sync(&client).await?;
        telemetry.set_phase(Phase::Serving);
        tracing::info!(ops = Op::ALL.len(), "serving");
        Ok(GlobalService {
            client,
            shutdown_timeout: config.shutdown_timeout,
            micro,
            endpoint_loops,
            tracker,
            background: started.tasks,
            stop_background,
            view,
            progress: started.progress,
            telemetry,
        })
    }

    /// Stops gracefully, within `shutdown_timeout` in all: readiness turns off, the endpoints
    /// unsubscribe (no new requests reach this instance; requests already delivered to it are
    /// still answered), in-flight requests finish, the projection runners finish and
    /// checkpoint the batch in hand and hand their leases on, and the connection is drained
    /// (every reply is flushed to the server). Past the bound, what is left is abandoned and
    /// [`ServeError::Timeout`] returned; nothing acknowledged is lost either way (unapplied log
    /// messages are applied by the next holder).
    pub async fn stop(self) -> Result<(), ServeError> {
        tracing::info!("stopping: no new requests, finishing in-flight ones");
        self.telemetry.set_phase(Phase::Stopping);
        let bound = self.shutdown_timeout;
        let background: Vec<_> = self.background.iter().map(|t| t.abort_handle()).collect();
        let client = self.client.clone();
        match tokio::time::timeout(bound, self.stop_in_order()).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(timeout = ?bound, "shutdown did not finish in time; abandoning the rest");
                for task in background {
                    task.abort();
                }
                let _ = client.drain().await;
                Err(ServeError::Timeout(bound))
            }
        }
    }

    async fn stop_in_order(self) -> Result<(), ServeError> {
        self.micro.stop().await.map_err(ServeError::Service)?;
        for handle in self.endpoint_loops {
            let _ = handle.await;
        }
        // The endpoints' unsubscribes went out on this connection; a round trip proves the
        // server has them, so no new request is routed to this instance from here on.
        if let Err(error) = roundtrip::sync(&self.client).await {
            tracing::warn!(%error, "could not confirm the endpoints were unsubscribed");
        }
        self.tracker.close();
        self.tracker.wait().await;
        self.stop_background.cancel();
        for task in self.background {
            let _ = task.await;
        }
        self.client.drain().await?;
        tracing::info!("stopped");
        Ok(())
    }

    /// Waits until every projection of the event log run by this instance has applied `seq`.
    pub async fn wait_projected(&self, seq: u64, within: std::time::Duration) -> bool {
        let names: Vec<&'static str> = self.progress.iter().map(|(n, _)| *n).collect();
        self.view.wait_applied(&names, seq, within).await.is_ok()
    }
}

#[cfg(feature = "test-util")]
impl GlobalService {
    /// Stops abruptly, as a crash would: every task is aborted mid-work, no lease is
    /// released, nothing is finished; the connection is closed (a crashed process's socket
    /// closes too). For fault tests.
    pub async fn kill(self) {
        for task in self.background.iter().chain(&self.endpoint_loops) {
            task.abort();
        }
        // The log tail and the stats watch end with the token (a dead process has neither).
        self.stop_background.cancel();
        // A dead process's socket closes and the server forgets its subscriptions at once;
        // make sure of the same here before returning.
        let _ = self.micro.stop().await;
        let _ = roundtrip::sync(&self.client).await;
        let _ = self.client.drain().await;
    }

    /// Metrics and readiness of this instance.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }
}

/// The service's streams, buckets and the share feed's consumer, each created when missing.
/// A share feed that never ran starts at the log's end, so its consumer must exist before the
/// first request is answered.
async fn ensure_resources(
    js: &async_nats::jetstream::Context,
    config: &ServiceConfig,
) -> Result<Store, StoreError> {
    let store = with_patience(|| Box::pin(Store::ensure(js.clone(), &config.store))).await?;
    let takeover_after = config.runner.takeover_after;
    with_patience(|| async {
        let share_feed = share_notices::consumer(&store.events, &store.stats, takeover_after);
        share_feed.await?.ensure(&store.events).await
    })
    .await?;
    Ok(store)
}

/// What `/readyz` and the projection gauges look at: every projection of the registry with
/// the stream it applies.
fn probe_of(
    client: &async_nats::Client,
    view: &StatsView,
    store: &Store,
    decider: &Decider,
) -> Probe {
    Probe {
        client: client.clone(),
        view: view.clone(),
        decider: decider.clone(),
        projections: ProjectionName::ALL
            .into_iter()
            .map(|name| ProbedProjection {
                name: name.as_str(),
                stream: match name.source() {
                    SourceStream::Events => store.events.clone(),
                    SourceStream::Online => store.online.clone(),
                },
            })
            .collect(),
    }
}

type Endpoints = (
    async_nats::service::Service,
    Vec<tokio::task::JoinHandle<()>>,
    TaskTracker,
);

/// Registers the micro service and one endpoint per op (all in the service's queue group)
/// and spawns the loop that serves each; at most `max_in_flight` requests are handled at once
/// across all of them.
async fn serve_endpoints(
    client: &async_nats::Client,
    context: &Arc<ApiContext>,
    config: &ServiceConfig,
) -> Result<Endpoints, ServeError> {
    let micro = client
        .service_builder()
        .description("Natster global service")
        .queue_group(&config.queue_group)
        .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(ServeError::Service)?;
    let tracker = TaskTracker::new();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(config.max_in_flight.max(1)));
    let slots = AccountSlots::new(config.max_in_flight_per_account, config.max_in_flight);
    let throttle = Throttle::new(
        client.clone(),
        config.refusal_delay,
        context.metrics.refusals_dropped.clone(),
    );
    let mut loops = Vec::new();
    for &op in Op::ALL {
        let endpoint = micro
            .endpoint_builder()
            .name(op.endpoint_name())
            .add(op.service_subject())
            .await
            .map_err(ServeError::Service)?;
        loops.push(tokio::spawn(intake::serve_endpoint(
            op,
            endpoint,
            intake::Intake {
                context: context.clone(),
                max_request_bytes: config.max_request_bytes,
                tracker: tracker.clone(),
                in_flight: in_flight.clone(),
                slots: slots.clone(),
                client: client.clone(),
                throttle: throttle.clone(),
            },
        )));
    }
    Ok((micro, loops, tracker))
}

/// Checks that the largest records `config`'s limits allow fit the server's `max_payload`
/// (known once a round trip has brought the server's INFO).
async fn check_records_fit(
    client: &async_nats::Client,
    config: &ServiceConfig,
) -> Result<(), ServeError> {
    roundtrip::sync(client).await?;
    config
        .share_limits
        .check_fit(client.server_info().max_payload)?;
    Ok(())
}
