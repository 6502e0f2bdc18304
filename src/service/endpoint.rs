//! Request intake: one loop per micro-service endpoint, a task per request (bounded), the
//! reply envelope, and the request's span and metrics.

use crate::api::{self, envelope, ApiContext, ApiError, ApiRequest, Caller, Envelope, Op};
use futures::StreamExt;
use std::sync::Arc;
use tokio_util::task::TaskTracker;

/// Takes requests of one op until the endpoint is stopped; each is handled in its own task,
/// at most `in_flight`'s permits at once across all ops (beyond that, requests wait in the
/// subscription, so a flood cannot grow memory without bound).
///
/// Every request runs in a `request` span (op, caller account, reply code), is counted in the
/// Prometheus metrics, and in the `$SRV.STATS` of its endpoint (errors included).
pub(super) async fn serve_endpoint(
    op: Op,
    mut endpoint: async_nats::service::endpoint::Endpoint,
    context: Arc<ApiContext>,
    max_request_bytes: usize,
    tracker: TaskTracker,
    in_flight: Arc<tokio::sync::Semaphore>,
    client: async_nats::Client,
) {
    use tracing::Instrument;
    while let Some(request) = endpoint.next().await {
        let received = std::time::Instant::now();
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let (context, client) = (context.clone(), client.clone());
        let span = tracing::info_span!(
            "request",
            op = op.name(),
            caller = tracing::field::Empty,
            code = tracing::field::Empty,
        );
        tracker.spawn(
            async move {
                let _permit = permit;
                let result = handle(&context, op, &request.message, max_request_bytes).await;
                let code = match &result {
                    Ok(_) => 200,
                    Err(error) => error.code,
                };
                tracing::Span::current().record("code", code);
                answer(&client, request, op, result).await;
                context
                    .metrics
                    .observe_request(op.name(), code, received.elapsed());
            }
            .instrument(span),
        );
    }
}

/// Subject for the empty error reply the micro-service library sends when it counts an error
/// (nobody subscribes to it; see [`answer`]).
const DISCARDED_REPLY: &str = "_natster.discarded-reply";

/// Sends the envelope (when the request has a reply subject).
///
/// An error is also recorded in the endpoint's `$SRV.STATS` (`num_errors`, `last_error`): the
/// library counts an error only when it sends the reply itself, and then with an empty body,
/// so the envelope goes out first and the library's empty reply is sent where nobody listens.
async fn answer(
    client: &async_nats::Client,
    mut request: async_nats::service::Request,
    op: Op,
    result: Result<serde_json::Value, ApiError>,
) {
    let Some(reply) = request.message.reply.clone() else {
        return;
    };
    match result {
        Ok(data) => {
            tracing::debug!("answered");
            if let Err(error) = request
                .respond(Ok(Envelope::success(data).to_bytes()))
                .await
            {
                tracing::warn!(op = op.name(), %error, "reply could not be sent");
            }
        }
        Err(error) => {
            tracing::info!(reason = %error.message, "request rejected");
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(envelope::SERVICE_ERROR_HEADER, error.message.as_str());
            headers.insert(
                envelope::SERVICE_ERROR_CODE_HEADER,
                error.code.to_string().as_str(),
            );
            let sent = client
                .publish_with_headers(reply, headers, Envelope::failure(&error).to_bytes())
                .await;
            if let Err(error) = sent {
                tracing::warn!(op = op.name(), %error, "reply could not be sent");
            }
            request.message.reply = Some(DISCARDED_REPLY.into());
            let _ = request
                .respond(Err(async_nats::service::error::Error {
                    status: error.message.clone(),
                    code: error.code.into(),
                }))
                .await;
        }
    }
}

async fn handle(
    context: &ApiContext,
    op: Op,
    message: &async_nats::Message,
    max_request_bytes: usize,
) -> Result<serde_json::Value, ApiError> {
    let caller = Caller::from_subject(&message.subject)?;
    tracing::Span::current().record("caller", caller.account.as_str());
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
            wants_reply: message.reply.is_some(),
        },
    )
    .await
}
