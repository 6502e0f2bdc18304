//! Request intake: one loop per micro-service endpoint, which answers what it can at once and
//! gives a request that must wait a task of its own (bounded), the reply envelope, and the
//! request's span and metrics.

use super::request::caller_token;
use super::slots::{AccountSlots, Admission, Slot};
use super::throttle::{Refusal, Throttle};
use super::{dispatch, over_budget, ApiContext, ApiError, ApiRequest, Caller};
use crate::contract::{Envelope, Op, SERVICE_ERROR_CODE_HEADER, SERVICE_ERROR_HEADER};
use bytes::Bytes;
use futures::future::{FutureExt, Shared};
use futures::StreamExt;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::Poll;
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

/// The end of one caller's previous `events.put`: resolves when its task drops the sender.
type Turn = Shared<oneshot::Receiver<()>>;

/// Per caller, the last `events.put` taken and whether its task still runs.
#[derive(Default)]
struct CallerOrder {
    last: HashMap<String, (Turn, Weak<()>)>,
}

impl CallerOrder {
    /// Takes the next turn of the caller of `subject`: the turn to wait for (the caller's
    /// previous request, if still running) and this request's own turn, ended by dropping
    /// the returned sender and `Arc`.
    fn take(&mut self, subject: &str) -> (Option<Turn>, oneshot::Sender<()>, Arc<()>) {
        if self.last.len() >= 4096 {
            self.last
                .retain(|_, (_, running)| running.strong_count() > 0);
        }
        let caller = caller_token(subject).to_string();
        let (done, finished) = oneshot::channel();
        let running = Arc::new(());
        let previous = self
            .last
            .insert(caller, (finished.shared(), Arc::downgrade(&running)))
            .filter(|(_, running)| running.strong_count() > 0)
            .map(|(turn, _)| turn);
        (previous, done, running)
    }
}

/// What every endpoint loop shares.
#[derive(Clone)]
pub struct Intake {
    pub context: Arc<ApiContext>,
    pub max_request_bytes: usize,
    pub tracker: TaskTracker,
    /// Requests handled at once, all ops and accounts together.
    pub in_flight: Arc<tokio::sync::Semaphore>,
    /// Each account's fair share of `in_flight`.
    pub slots: Arc<AccountSlots>,
    pub client: async_nats::Client,
    /// Sends refusals (429) late.
    pub throttle: Throttle,
}

/// Takes requests of one op until the endpoint is stopped; each is answered in the loop when
/// it need not wait and otherwise in a task of its own (see [`answer_inline_or_spawn`]), at
/// most `in_flight`'s permits at once across all ops (beyond that, requests wait in the
/// subscription, so a flood cannot grow memory without bound), and at most the account's
/// share of them per caller account (beyond that, 429, so one account cannot take the slots
/// everybody else needs). A request past its account's write or heartbeat budget is refused
/// before it takes a slot or a task.
///
/// Every request runs in a `request` span (op, caller account, reply code), is counted in the
/// Prometheus metrics, and in the `$SRV.STATS` of its endpoint (errors included).
///
/// Ordering: one caller's `events.put` requests are decided in the order they arrived (each
/// waits for the caller's previous one), as the original service handled them; the original
/// clients publish events without waiting for a reply, so an init and the share that follows
/// it must not overtake each other. Different callers never wait for each other.
pub async fn serve_endpoint(
    op: Op,
    mut endpoint: async_nats::service::endpoint::Endpoint,
    intake: Intake,
) {
    let Intake {
        context,
        max_request_bytes,
        tracker,
        in_flight,
        slots,
        client,
        throttle,
    } = intake;
    let mut order = CallerOrder::default();
    while let Some(request) = endpoint.next().await {
        let received = std::time::Instant::now();
        let account = caller_token(&request.message.subject);
        if let Some(refusal) = over_budget(&context, op, account, request.message.reply.is_some()) {
            send_refusal(&context, &client, &throttle, request, op, refusal, received).await;
            continue;
        }
        let admission = slots.admit(account);
        let turn = |order: &mut CallerOrder| {
            (op == Op::EventsPut).then(|| order.take(&request.message.subject))
        };
        match admission {
            Admission::Now(slot) => {
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    return;
                };
                let turn = turn(&mut order);
                let run = Box::pin(run_request(RequestRun {
                    op,
                    request,
                    context: context.clone(),
                    client: client.clone(),
                    throttle: throttle.clone(),
                    max_request_bytes,
                    turn,
                    received,
                    held: (slot, Some(permit)),
                }));
                answer_inline_or_spawn(run, &tracker).await;
            }
            // Past its account's share: waits for the account's slot in its own task, and
            // only then for the shared permit; the loop goes on with other accounts.
            Admission::Wait(waiting) => {
                let turn = turn(&mut order);
                let (in_flight, context, client, throttle) = (
                    in_flight.clone(),
                    context.clone(),
                    client.clone(),
                    throttle.clone(),
                );
                tracker.spawn(async move {
                    let slot = waiting.acquired().await;
                    let Ok(permit) = in_flight.acquire_owned().await else {
                        return;
                    };
                    run_request(RequestRun {
                        op,
                        request,
                        context,
                        client,
                        throttle,
                        max_request_bytes,
                        turn,
                        received,
                        held: (slot, Some(permit)),
                    })
                    .await;
                });
            }
            Admission::Refused => {
                refuse(&context, &client, &throttle, request, op, &slots, received).await
            }
        }
    }
}

/// Polls a request's run once in the endpoint loop, and gives it a task of its own only if it
/// has to wait (for the log, the store, a caller's earlier request).
///
/// Most reads are answered from memory without waiting. Answered here, their replies queue up
/// on the connection while the loop takes the next request and go out together, as a plain
/// responder's do; each in a task of its own, they cost the process about twice the CPU and
/// the server a third more (measured in `benches/whoami.rs`). The first poll does no more than
/// a task's first poll would have, and a panic in it ends that request only, as it would in a
/// task: the loop goes on.
async fn answer_inline_or_spawn(
    mut run: Pin<Box<impl Future<Output = ()> + Send + 'static>>,
    tracker: &TaskTracker,
) {
    let first = futures::poll!(AssertUnwindSafe(run.as_mut()).catch_unwind());
    match first {
        Poll::Pending => {
            tracker.spawn(run);
        }
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(_)) => tracing::error!("a request's handler panicked; it is not answered"),
    }
}

/// One request taken by the intake, with the slots it holds.
struct RequestRun {
    op: Op,
    request: async_nats::service::Request,
    context: Arc<ApiContext>,
    client: async_nats::Client,
    throttle: Throttle,
    max_request_bytes: usize,
    /// The caller's `events.put` turn: the previous one to wait for, and this one's end.
    turn: Option<(Option<Turn>, oneshot::Sender<()>, Arc<()>)>,
    received: std::time::Instant,
    /// The account's slot and the shared permit, given back when the request is answered.
    held: (Slot, Option<tokio::sync::OwnedSemaphorePermit>),
}

/// Handles and answers one request in a `request` span (op, caller account, reply code).
async fn run_request(run: RequestRun) {
    use tracing::Instrument;
    let RequestRun {
        op,
        request,
        context,
        client,
        throttle,
        max_request_bytes,
        turn,
        received,
        held,
    } = run;
    let span = tracing::info_span!(
        "request",
        op = op.name(),
        caller = tracing::field::Empty,
        code = tracing::field::Empty,
    );
    async move {
        let _held = held;
        let _turn = match turn {
            Some((previous, done, running)) => {
                if let Some(previous) = previous {
                    let _ = previous.await;
                }
                Some((done, running))
            }
            None => None,
        };
        let result = handle(&context, op, &request.message, max_request_bytes).await;
        let code = match &result {
            Ok(_) => 200,
            Err(error) => error.code,
        };
        tracing::Span::current().record("code", code);
        answer(&client, &throttle, request, op, result).await;
        context
            .metrics
            .observe_request(op.name(), code, received.elapsed());
    }
    .instrument(span)
    .await
}

/// Refuses a request of an account that holds its share of the slots and has as many
/// waiting: 429, or for a heartbeat without reply subject, dropped and counted.
async fn refuse(
    context: &ApiContext,
    client: &async_nats::Client,
    throttle: &Throttle,
    request: async_nats::service::Request,
    op: Op,
    slots: &AccountSlots,
    received: std::time::Instant,
) {
    if request.message.reply.is_none() && op == Op::HeartbeatsPut {
        context.metrics.heartbeats_received.inc();
        context.metrics.heartbeat_dropped("in_flight");
    }
    let error = ApiError::too_many_in_flight(slots.per_account());
    send_refusal(context, client, throttle, request, op, error, received).await;
}

/// Answers a refused request (429, through the throttle) in its `request` span, and counts it.
async fn send_refusal(
    context: &ApiContext,
    client: &async_nats::Client,
    throttle: &Throttle,
    request: async_nats::service::Request,
    op: Op,
    error: ApiError,
    received: std::time::Instant,
) {
    use tracing::Instrument;
    let caller = caller_token(&request.message.subject).to_string();
    let code = error.code;
    let span = tracing::info_span!("request", op = op.name(), caller, code);
    answer(client, throttle, request, op, Err(error))
        .instrument(span)
        .await;
    context
        .metrics
        .observe_request(op.name(), code, received.elapsed());
}

/// Subject for the empty error reply the micro-service library sends when it counts an error
/// (nobody subscribes to it; see [`answer`]).
const DISCARDED_REPLY: &str = "_natster.discarded-reply";

/// Sends the envelope (when the request has a reply subject); an error to answer late (a
/// refusal, a read beyond the log) goes through the [`Throttle`], which sends it late and
/// paced.
///
/// An error other than a refusal is also recorded in the endpoint's `$SRV.STATS`
/// (`num_errors`, `last_error`): the library counts an error only when it sends the reply
/// itself, and then with an empty body, so the envelope goes out first and the library's empty
/// reply is sent where nobody listens.
async fn answer(
    client: &async_nats::Client,
    throttle: &Throttle,
    mut request: async_nats::service::Request,
    op: Op,
    result: Result<Bytes, ApiError>,
) {
    let Some(reply) = request.message.reply.clone() else {
        return;
    };
    match result {
        Ok(envelope) => {
            tracing::debug!("answered");
            if let Err(error) = request.respond(Ok(envelope)).await {
                tracing::warn!(op = op.name(), %error, "reply could not be sent");
            }
        }
        Err(error) => {
            // A flooding account is refused thousands of times a second: a late answer (a
            // refusal, a read beyond the log) is logged at debug, so the log is not its
            // amplifier (the metrics count every one), and not counted as an endpoint error in
            // `$SRV.STATS` (a message more each, and the caller's doing, not the service's).
            if error.late {
                tracing::debug!(reason = %error.message, "request refused");
                // Its turn first: a refusal past the account's bound is never built.
                let Some(turn) = throttle.turn(caller_token(&request.message.subject)) else {
                    return;
                };
                let (headers, envelope) = error_reply(&error);
                let refusal = Refusal {
                    reply,
                    headers,
                    envelope,
                };
                throttle.send(turn, refusal).await;
                return;
            }
            tracing::info!(reason = %error.message, "request rejected");
            let (headers, envelope) = error_reply(&error);
            let sent = client.publish_with_headers(reply, headers, envelope).await;
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

/// The headers and envelope of an error reply.
fn error_reply(error: &ApiError) -> (async_nats::HeaderMap, Bytes) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(SERVICE_ERROR_HEADER, error.message.as_str());
    headers.insert(SERVICE_ERROR_CODE_HEADER, error.code.to_string().as_str());
    let envelope =
        Envelope::<serde_json::Value>::failure(error.code, error.message.clone()).to_bytes();
    (headers, envelope)
}

async fn handle(
    context: &ApiContext,
    op: Op,
    message: &async_nats::Message,
    max_request_bytes: usize,
) -> Result<Bytes, ApiError> {
    let caller = Caller::from_subject(&message.subject)?;
    tracing::Span::current().record("caller", caller.account.as_str());
    if message.payload.len() > max_request_bytes {
        return Err(ApiError::too_large(max_request_bytes));
    }
    dispatch(
        context,
        op,
        ApiRequest {
            caller,
            payload: &message.payload,
            headers: message.headers.as_ref(),
            replies: message.reply.is_some(),
        },
    )
    .await
}

#[cfg(test)]
mod tests;
