//! The operator's HTTP endpoints: `/metrics` (OpenMetrics or the classic text format, by
//! `Accept`: see [`super::exposition`]), `/healthz` (the process is
//! alive: always 200) and `/readyz` (200 only when connected, resources ensured and every
//! projection within the lag bound; 503 with a JSON reason otherwise).

use super::exposition::{to_classic_text, Format};
use super::Telemetry;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

/// Why the HTTP endpoints could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for /metrics, /healthz and /readyz: {source}")]
pub struct HttpError {
    pub addr: String,
    #[source]
    pub source: std::io::Error,
}

/// A running HTTP listener.
pub struct HttpServer {
    /// The address actually bound (port 0 is replaced by the one chosen).
    pub addr: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
}

/// Binds `addr` and serves until `shutdown` completes.
pub async fn serve(
    addr: &str,
    telemetry: Arc<Telemetry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<HttpServer, HttpError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError {
            addr: addr.to_string(),
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| HttpError {
        addr: addr.to_string(),
        source,
    })?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(telemetry);
    tracing::info!(addr = %bound, "http listening (/metrics, /healthz, /readyz)");
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(%error, "http server failed");
        }
    });
    Ok(HttpServer { addr: bound, task })
}

async fn metrics(State(telemetry): State<Arc<Telemetry>>, headers: HeaderMap) -> impl IntoResponse {
    let format = Format::negotiate(
        headers
            .get(header::ACCEPT)
            .and_then(|accept| accept.to_str().ok()),
    );
    telemetry.refresh().await;
    let openmetrics = telemetry.encode();
    let body = match format {
        Format::OpenMetrics => openmetrics,
        Format::Text => to_classic_text(&openmetrics),
    };
    ([(header::CONTENT_TYPE, format.content_type())], body)
}

async fn healthz() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"alive":true}"#,
    )
}

async fn readyz(State(telemetry): State<Arc<Telemetry>>) -> impl IntoResponse {
    let readiness = telemetry.refresh().await;
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(&readiness).expect("readiness serializes"),
    )
}
