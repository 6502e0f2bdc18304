//! The running service: JetStream resources, one micro-service endpoint per op, and a
//! graceful stop.
//!
//! [`run`] is the testable entry point (as in mini-redis): give it a connected client, a
//! config, and a future that completes when the service should stop.

use crate::api::{self, envelope, ApiContext, ApiError, ApiRequest, Caller, Envelope, Op};
use crate::config::ServiceConfig;
use crate::store::{Store, StoreError};
use async_nats::service::ServiceExt;
use futures::StreamExt;
use std::future::Future;
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

/// A started service instance.
pub struct GlobalService {
    client: async_nats::Client,
    config: ServiceConfig,
    micro: async_nats::service::Service,
    endpoint_loops: Vec<tokio::task::JoinHandle<()>>,
    tracker: TaskTracker,
}

impl GlobalService {
    /// Ensures JetStream resources (idempotent, never destructive), subscribes every op in the
    /// shared queue group, and returns once the server has registered those subscriptions, so
    /// a request sent after this returns reaches the service.
    pub async fn start(
        client: async_nats::Client,
        config: ServiceConfig,
    ) -> Result<GlobalService, ServeError> {
        let js = async_nats::jetstream::new(client.clone());
        let store = Store::ensure(js, &config.store).await?;
        let context = ApiContext { store };
        let micro = client
            .service_builder()
            .description("Natster global service")
            .queue_group(&config.queue_group)
            .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
            .await
            .map_err(|e| ServeError::Service(e.to_string()))?;
        let tracker = TaskTracker::new();
        let mut endpoint_loops = Vec::new();
        for &op in Op::ALL {
            let endpoint = micro
                .endpoint_builder()
                .name(op.name().replace('.', "_"))
                .add(op.service_subject())
                .await
                .map_err(|e| ServeError::Service(e.to_string()))?;
            endpoint_loops.push(tokio::spawn(serve_endpoint(
                op,
                endpoint,
                context.clone(),
                config.max_request_bytes,
                tracker.clone(),
            )));
        }
        crate::roundtrip::sync(&client)
            .await
            .map_err(|e| ServeError::Service(e.to_string()))?;
        tracing::info!(ops = Op::ALL.len(), "serving");
        Ok(GlobalService {
            client,
            config,
            micro,
            endpoint_loops,
            tracker,
        })
    }

    /// Stops gracefully: the endpoints unsubscribe (no new requests reach this instance;
    /// requests already delivered to it are still answered), in-flight requests finish within
    /// `shutdown_timeout`, and the connection is drained. Returns once all of that is done.
    pub async fn stop(self) -> Result<(), ServeError> {
        tracing::info!("stopping: no new requests, finishing in-flight ones");
        self.micro
            .stop()
            .await
            .map_err(|e| ServeError::Service(e.to_string()))?;
        for handle in self.endpoint_loops {
            let _ = handle.await;
        }
        self.tracker.close();
        if tokio::time::timeout(self.config.shutdown_timeout, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(timeout = ?self.config.shutdown_timeout, "in-flight requests did not finish in time");
        }
        self.client
            .drain()
            .await
            .map_err(|e| ServeError::Drain(e.to_string()))?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Takes requests of one op until the endpoint is stopped; each is handled in its own task.
async fn serve_endpoint(
    op: Op,
    mut endpoint: async_nats::service::endpoint::Endpoint,
    context: ApiContext,
    max_request_bytes: usize,
    tracker: TaskTracker,
) {
    while let Some(request) = endpoint.next().await {
        let context = context.clone();
        tracker.spawn(async move {
            let result = handle(&context, op, &request.message, max_request_bytes).await;
            let (envelope, headers) = match result {
                Ok(data) => (Envelope::success(data), async_nats::HeaderMap::new()),
                Err(error) => {
                    tracing::info!(op = op.name(), code = error.code, reason = %error.message, "request rejected");
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert(envelope::SERVICE_ERROR_HEADER, error.message.as_str());
                    headers.insert(
                        envelope::SERVICE_ERROR_CODE_HEADER,
                        error.code.to_string().as_str(),
                    );
                    (Envelope::failure(&error), headers)
                }
            };
            if request.message.reply.is_some() {
                if let Err(error) = request
                    .respond_with_headers(Ok(envelope.to_bytes()), headers)
                    .await
                {
                    tracing::warn!(op = op.name(), %error, "reply could not be sent");
                }
            }
        });
    }
}

async fn handle(
    context: &ApiContext,
    op: Op,
    message: &async_nats::Message,
    max_request_bytes: usize,
) -> Result<serde_json::Value, ApiError> {
    let caller = Caller::from_subject(&message.subject)?;
    if message.payload.len() > max_request_bytes {
        return Err(ApiError::too_large(max_request_bytes));
    }
    api::dispatch(
        context,
        op,
        ApiRequest {
            caller,
            payload: &message.payload,
            headers: message.headers.as_ref(),
        },
    )
    .await
}
