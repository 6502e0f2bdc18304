//! The running service: JetStream resources, one micro-service endpoint per op, and a
//! graceful stop.
//!
//! [`run`] is the testable entry point (as in mini-redis): give it a connected client, a
//! config, and a future that completes when the service should stop.

mod background;
mod endpoint;

use crate::api::{ApiContext, Op};
use crate::config::ServiceConfig;
use crate::credentials::{CredentialsProvider, NoCredentials};
use crate::decider::Decider;
use crate::projections::{
    accounts::Accounts, catalogs::Catalogs, oauth::OAuthIndex, view::StatsView, Projection,
};
use crate::store::{Store, StoreError};
use crate::telemetry::probe::ProbedProjection;
use crate::telemetry::{Phase, Probe, Telemetry};
use async_nats::service::ServiceExt;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Name under which the service registers for `$SRV` discovery.
pub const SERVICE_NAME: &str = "natster-global";

/// Why the service stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot register the micro service: {0}")]
    Service(String),
    #[error("draining the NATS connection failed: {0}")]
    Drain(String),
    #[error("starting: {0}")]
    Start(String),
    #[error("shutdown did not finish within {0:?}")]
    Timeout(std::time::Duration),
}

/// Runs the service on `client` until `shutdown` completes, then stops it gracefully
/// (see [`GlobalService::stop`]).
pub async fn run(
    client: async_nats::Client,
    config: ServiceConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let service = GlobalService::start(client, config).await?;
    shutdown.await;
    service.stop().await
}

/// The whole `serve` command: HTTP endpoints on `http_addr` first (live at once, ready once
/// serving), then the connection made by `connect`, then the service, until `shutdown`
/// completes; then a graceful stop (the HTTP endpoints answer until the very end).
/// `on_serving` is called once the service takes requests.
pub async fn run_with_http<C, CF>(
    http_addr: std::net::SocketAddr,
    config: ServiceConfig,
    extras: Extras,
    connect: C,
    on_serving: impl FnOnce(),
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError>
where
    C: FnOnce() -> CF,
    CF: Future<Output = Result<async_nats::Client, crate::config::ConnectError>>,
{
    let telemetry = extras
        .telemetry
        .clone()
        .unwrap_or_else(|| Arc::new(Telemetry::new(config.ready_max_lag)));
    let http_stop = CancellationToken::new();
    let http = crate::telemetry::http::serve(
        &http_addr.to_string(),
        telemetry.clone(),
        http_stop.clone().cancelled_owned(),
    )
    .await
    .map_err(|e| ServeError::Start(e.to_string()))?;
    let result = async {
        let client = connect()
            .await
            .map_err(|e| ServeError::Start(e.to_string()))?;
        let service = GlobalService::start_with(
            client,
            config,
            Extras {
                telemetry: Some(telemetry),
                ..extras
            },
        )
        .await?;
        on_serving();
        shutdown.await;
        service.stop().await
    }
    .await;
    http_stop.cancel();
    let _ = http.task.await;
    result
}

/// A started service instance.
pub struct GlobalService {
    client: async_nats::Client,
    config: Arc<ServiceConfig>,
    micro: async_nats::service::Service,
    endpoint_loops: Vec<tokio::task::JoinHandle<()>>,
    tracker: TaskTracker,
    background: Vec<tokio::task::JoinHandle<()>>,
    stop_background: CancellationToken,
    context: Arc<ApiContext>,
    progress: Vec<(&'static str, watch::Receiver<u64>)>,
    telemetry: Arc<Telemetry>,
}

/// Optional parts of a service start.
#[derive(Default)]
pub struct Extras {
    /// Serves `context.get` credentials (default: [`NoCredentials`]).
    pub credentials: Option<Arc<dyn CredentialsProvider>>,
    /// Metrics and readiness shared with HTTP endpoints started earlier (default: fresh).
    pub telemetry: Option<Arc<Telemetry>>,
}

impl GlobalService {
    /// Ensures JetStream resources (idempotent, never destructive), subscribes every op in the
    /// shared queue group, and returns once the server has registered those subscriptions, so
    /// a request sent after this returns reaches the service.
    pub async fn start(
        client: async_nats::Client,
        config: ServiceConfig,
    ) -> Result<GlobalService, ServeError> {
        Self::start_with(client, config, Extras::default()).await
    }

    /// [`GlobalService::start`] with a credentials provider for `context.get` and telemetry
    /// made before the connection (so its HTTP endpoints could answer during start-up).
    pub async fn start_with(
        client: async_nats::Client,
        config: ServiceConfig,
        extras: Extras,
    ) -> Result<GlobalService, ServeError> {
        let credentials = extras
            .credentials
            .unwrap_or_else(|| Arc::new(NoCredentials));
        let telemetry = extras
            .telemetry
            .unwrap_or_else(|| Arc::new(Telemetry::new(config.ready_max_lag)));
        let metrics = telemetry.metrics.clone();
        let js = async_nats::jetstream::new(client.clone());
        let store = Store::ensure(js.clone(), &config.store).await?;
        let stop_background = CancellationToken::new();
        let decider = Decider::start(
            js.clone(),
            &store.events,
            store.names.clone(),
            metrics.clone(),
            stop_background.clone(),
        )
        .await
        .map_err(|e| ServeError::Start(e.to_string()))?;
        let view = StatsView::start(store.stats.clone(), stop_background.clone())
            .await
            .map_err(ServeError::Start)?;
        let feeds = crate::feeds::Feeds::new(
            client.clone(),
            decider.clone(),
            metrics.feed_messages_sent.clone(),
        );
        let background::Started {
            tasks: background,
            progress,
        } = background::spawn_all(
            &store,
            &decider,
            &feeds,
            &config,
            &metrics,
            &stop_background,
        );
        let config = Arc::new(config);
        let store_codes = store.codes.clone();
        let probe = probe_of(&client, &view, &store);
        telemetry.install_probe(probe);
        let context = Arc::new(ApiContext {
            feeds,
            store,
            decider,
            view,
            sealer: config.sealer.clone(),
            config: config.clone(),
            credentials,
            rate_limiter: rate_limiter(&config),
            metrics: metrics.clone(),
            codes: crate::api::otc_expiry::CodeExpiry::start(
                store_codes,
                config.store.code_ttl,
                metrics.codes_expired.clone(),
                stop_background.clone(),
            ),
        });
        let micro = client
            .service_builder()
            .description("Natster global service")
            .queue_group(&config.queue_group)
            .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
            .await
            .map_err(|e| ServeError::Service(e.to_string()))?;
        let tracker = TaskTracker::new();
        let endpoint_loops = serve_endpoints(&micro, &context, &config, &tracker, &client).await?;
        crate::roundtrip::sync(&client)
            .await
            .map_err(|e| ServeError::Service(e.to_string()))?;
        telemetry.set_phase(Phase::Serving);
        tracing::info!(ops = Op::ALL.len(), "serving");
        Ok(GlobalService {
            client,
            config,
            micro,
            endpoint_loops,
            tracker,
            background,
            stop_background,
            context,
            progress,
            telemetry,
        })
    }

    /// Stops gracefully, within `shutdown_timeout` in all: readiness turns off, the endpoints
    /// unsubscribe (no new requests reach this instance; requests already delivered to it are
    /// still answered), in-flight requests finish, the projection runners finish and
    /// checkpoint the batch in hand and hand their leases on, and the connection is drained
    /// (every reply is flushed to the server). Past the bound, what is left is abandoned and
    /// [`ServeError::Timeout`] returned; nothing acknowledged is lost either way (unacked log
    /// messages are applied again by the next holder).
    pub async fn stop(self) -> Result<(), ServeError> {
        tracing::info!("stopping: no new requests, finishing in-flight ones");
        self.telemetry.set_phase(Phase::Stopping);
        let bound = self.config.shutdown_timeout;
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
        self.micro
            .stop()
            .await
            .map_err(|e| ServeError::Service(e.to_string()))?;
        for handle in self.endpoint_loops {
            let _ = handle.await;
        }
        // The endpoints' unsubscribes went out on this connection; a round trip proves the
        // server has them, so no new request is routed to this instance from here on.
        if let Err(error) = crate::roundtrip::sync(&self.client).await {
            tracing::warn!(%error, "could not confirm the endpoints were unsubscribed");
        }
        self.tracker.close();
        self.tracker.wait().await;
        self.stop_background.cancel();
        for task in self.background {
            let _ = task.await;
        }
        self.client
            .drain()
            .await
            .map_err(|e| ServeError::Drain(e.to_string()))?;
        tracing::info!("stopped");
        Ok(())
    }
}

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
        let _ = crate::roundtrip::sync(&self.client).await;
        let _ = self.client.drain().await;
    }

    /// Metrics and readiness of this instance.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// The handlers' shared context (store, decider, view).
    pub fn context(&self) -> &ApiContext {
        &self.context
    }

    /// Waits until every projection run by this instance has applied `seq`.
    pub async fn wait_projected(&self, seq: u64, within: std::time::Duration) -> bool {
        let names: Vec<&'static str> = self.progress.iter().map(|(n, _)| *n).collect();
        self.context
            .view
            .wait_applied(&names, seq, within)
            .await
            .is_ok()
    }
}

/// What `/readyz` and the projection gauges look at: the three log projections and the online
/// projection, each with the stream it applies.
fn probe_of(client: &async_nats::Client, view: &StatsView, store: &Store) -> Probe {
    Probe {
        client: client.clone(),
        view: view.clone(),
        projections: [Accounts::NAME, Catalogs::NAME, OAuthIndex::NAME]
            .into_iter()
            .map(|name| ProbedProjection {
                name,
                stream: store.events.clone(),
            })
            .chain(std::iter::once(ProbedProjection {
                name: crate::online::projector::NAME,
                stream: store.online.clone(),
            }))
            .collect(),
    }
}

/// One token bucket per caller account: `rate_per_second`, bursts up to `rate_burst`.
fn rate_limiter(config: &ServiceConfig) -> Arc<crate::api::RateLimiter> {
    Arc::new(governor::RateLimiter::keyed(
        governor::Quota::per_second(
            std::num::NonZeroU32::new(config.rate_per_second.max(1)).expect("non-zero"),
        )
        .allow_burst(std::num::NonZeroU32::new(config.rate_burst.max(1)).expect("non-zero")),
    ))
}

/// Adds one endpoint per op to `micro` (all in the service's queue group) and spawns the loop
/// that serves each; at most `max_in_flight` requests are handled at once across all of them.
async fn serve_endpoints(
    micro: &async_nats::service::Service,
    context: &Arc<ApiContext>,
    config: &ServiceConfig,
    tracker: &TaskTracker,
    client: &async_nats::Client,
) -> Result<Vec<tokio::task::JoinHandle<()>>, ServeError> {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(config.max_in_flight.max(1)));
    let mut loops = Vec::new();
    for &op in Op::ALL {
        let endpoint = micro
            .endpoint_builder()
            .name(op.name().replace('.', "_"))
            .add(op.service_subject())
            .await
            .map_err(|e| ServeError::Service(e.to_string()))?;
        loops.push(tokio::spawn(endpoint::serve_endpoint(
            op,
            endpoint,
            context.clone(),
            config.max_request_bytes,
            tracker.clone(),
            in_flight.clone(),
            client.clone(),
        )));
    }
    Ok(loops)
}
