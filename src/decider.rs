//! The shell around `decide`: an in-memory decision state kept current by tailing the event
//! log, and appends guarded by the decision's expectation.
//!
//! Every instance tails the whole log with an ordered consumer. A decision is made against
//! that state and appended with `Nats-Expected-Last-Subject-Sequence` (and its `-Subject`
//! companion for wildcard aggregates), so a decision made on stale state fails at the server
//! (JetStream error 10071); the decider then waits until its state has folded the newer
//! events and decides again. `Nats-Msg-Id` makes a retried request append once.

use crate::events::{decode, Decoded};
use crate::model::{decide, Command, Decision, DecisionState, Rejection};
use crate::telemetry::metrics::{EventType, Metrics, RejectionLabels};
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;

/// JetStream error code for a failed expected-last-sequence check.
const WRONG_LAST_SEQUENCE: u64 = 10071;
/// Attempts before a contended decision gives up with a transient error.
const MAX_ATTEMPTS: usize = 16;
/// How long a decision waits for the state to catch up after a conflict.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a command was not appended.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    /// The command breaks a rule; nothing was appended.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// JetStream could not take the append now; safe to retry.
    #[error("the event log is not available: {0}")]
    Unavailable(String),
}

/// An appended event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Stream sequence of the event.
    pub seq: u64,
    /// The append was recognised as a retry of an earlier one (same `Nats-Msg-Id`).
    pub duplicate: bool,
}

/// Decides and appends commands; cheap to clone.
#[derive(Clone)]
pub struct Decider {
    js: jetstream::Context,
    events: stream::Stream,
    names: jetstream::kv::Store,
    state: Arc<RwLock<DecisionState>>,
    folded: watch::Receiver<u64>,
    /// Counts conflicts (for metrics and tests).
    conflicts: Arc<std::sync::atomic::AtomicU64>,
    metrics: Metrics,
}

impl Decider {
    /// Starts tailing `events` from the beginning and returns once the state has folded
    /// everything the stream held at start. The tail task ends when `stop` is cancelled.
    pub async fn start(
        js: jetstream::Context,
        events: &stream::Stream,
        names: jetstream::kv::Store,
        metrics: Metrics,
        stop: tokio_util::sync::CancellationToken,
    ) -> Result<Decider, ExecuteError> {
        let unavailable = |e: &dyn std::fmt::Display| ExecuteError::Unavailable(e.to_string());
        let mut events = events.clone();
        let last_at_start = events
            .info()
            .await
            .map_err(|e| unavailable(&e))?
            .state
            .last_sequence;
        let state = Arc::new(RwLock::new(DecisionState::default()));
        let (folded_tx, folded) = watch::channel(0u64);
        let tail_state = state.clone();
        let tail_events = events.clone();
        tokio::spawn(async move {
            // The ordered reader re-creates itself on gaps; if it breaks for good, a new one
            // starts after the last folded event.
            loop {
                let from = tail_state.read().expect("decision state lock").last_seq + 1;
                let messages = match tail_events
                    .create_consumer(consumer::pull::OrderedConfig {
                        deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                            start_sequence: from,
                        },
                        ..Default::default()
                    })
                    .await
                {
                    Ok(consumer) => consumer.messages().await.ok(),
                    Err(error) => {
                        tracing::debug!(%error, "decision state tail: creating the reader");
                        None
                    }
                };
                if let Some(mut messages) = messages {
                    loop {
                        let next = tokio::select! {
                            _ = stop.cancelled() => return,
                            next = messages.next() => next,
                        };
                        let Some(Ok(message)) = next else {
                            tracing::warn!("decision state tail interrupted; resuming");
                            break;
                        };
                        let seq = {
                            let mut state = tail_state.write().expect("decision state lock");
                            match decode(&message) {
                                Some(Decoded::Event(event)) => state.apply(&event),
                                Some(Decoded::Unknown {
                                    seq,
                                    origin,
                                    target,
                                    catalog,
                                }) => state.apply_unknown(seq, &origin, &target, &catalog),
                                Some(Decoded::Foreign { seq }) => state.skip(seq),
                                None => {}
                            }
                            state.last_seq
                        };
                        folded_tx.send_replace(seq);
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
        });
        let decider = Decider {
            js,
            events: events.clone(),
            names,
            state,
            folded,
            conflicts: Arc::default(),
            metrics,
        };
        decider
            .wait_folded(last_at_start, Duration::from_secs(120))
            .await?;
        Ok(decider)
    }

    /// Waits until the state has folded sequence `seq`.
    pub async fn wait_folded(&self, seq: u64, within: Duration) -> Result<(), ExecuteError> {
        let mut folded = self.folded.clone();
        tokio::time::timeout(within, folded.wait_for(|s| *s >= seq))
            .await
            .map_err(|_| {
                ExecuteError::Unavailable(format!("decision state did not reach sequence {seq}"))
            })?
            .map_err(|_| ExecuteError::Unavailable("decision state tail stopped".into()))?;
        Ok(())
    }

    /// Reads the current decision state.
    pub fn read<T>(&self, f: impl FnOnce(&DecisionState) -> T) -> T {
        f(&self.state.read().expect("decision state lock"))
    }

    /// Conflicts seen so far (decisions re-run because another append won).
    pub fn conflicts(&self) -> u64 {
        self.conflicts.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Decides `command` and appends its event.
    ///
    /// `msg_id` scopes idempotency: the same id within the stream's duplicate window appends
    /// once and returns the first append's sequence. Without one, an id is derived from the
    /// decided event and the aggregate version it was decided on, so identical requests racing
    /// on the same state append once.
    pub async fn execute(
        &self,
        command: &Command,
        msg_id: Option<&str>,
    ) -> Result<Appended, ExecuteError> {
        let event_type = EventType {
            r#type: command.event_type().as_str(),
        };
        let result = self.execute_counted(command, msg_id, &event_type).await;
        match &result {
            Ok(appended) if !appended.duplicate => {
                self.metrics
                    .events_appended
                    .get_or_create(&event_type)
                    .inc();
            }
            Ok(_) => {}
            Err(ExecuteError::Rejected(rejection)) => {
                self.metrics
                    .rejections
                    .get_or_create(&RejectionLabels {
                        r#type: event_type.r#type,
                        reason: rejection.reason(),
                    })
                    .inc();
            }
            Err(ExecuteError::Unavailable(_)) => {}
        }
        result
    }

    async fn execute_counted(
        &self,
        command: &Command,
        msg_id: Option<&str>,
        event_type: &EventType,
    ) -> Result<Appended, ExecuteError> {
        let mut last_error = String::new();
        let mut confirmed = false;
        for _ in 0..MAX_ATTEMPTS {
            let decision = match self.read(|state| decide(state, command)) {
                Ok(decision) => decision,
                // A refusal is not guarded by the server as an append is: before refusing,
                // make sure the state holds every event acknowledged so far (a caller's own
                // previous append may not have reached this instance's tail yet).
                Err(_) if !confirmed => {
                    confirmed = true;
                    self.catch_up_to_log_end().await?;
                    continue;
                }
                Err(rejection) => return Err(rejection.into()),
            };
            if let Some(name) = &decision.claim {
                self.claim(name, &decision.subject.origin).await?;
            }
            match self.append(&decision, msg_id).await {
                Ok(appended) => return Ok(appended),
                Err(AppendError::Conflict { actual_last_seq }) => {
                    self.conflicts
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.metrics
                        .append_conflicts
                        .get_or_create(event_type)
                        .inc();
                    self.wait_folded(actual_last_seq, CATCH_UP_TIMEOUT).await?;
                }
                Err(AppendError::Other(error)) => {
                    last_error = error;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        Err(ExecuteError::Unavailable(format!(
            "gave up after {MAX_ATTEMPTS} attempts: {last_error}"
        )))
    }

    /// Waits until the state has folded everything the log holds now.
    async fn catch_up_to_log_end(&self) -> Result<(), ExecuteError> {
        let last = self
            .events
            .clone()
            .info()
            .await
            .map_err(|e| ExecuteError::Unavailable(e.to_string()))?
            .state
            .last_sequence;
        self.wait_folded(last, CATCH_UP_TIMEOUT).await
    }

    /// Claims catalog `name` for `owner`: an atomic create, so of two accounts racing for an
    /// unowned name exactly one succeeds. A claim already held by `owner` (a retry, or a crash
    /// between claim and append) counts as made.
    async fn claim(&self, name: &str, owner: &str) -> Result<(), ExecuteError> {
        use jetstream::kv::CreateErrorKind;
        match self.names.create(name, owner.to_string().into()).await {
            Ok(_) => Ok(()),
            Err(error) if error.kind() == CreateErrorKind::AlreadyExists => {
                let holder = self
                    .names
                    .get(name)
                    .await
                    .map_err(|e| ExecuteError::Unavailable(e.to_string()))?;
                if holder.as_deref() == Some(owner.as_bytes()) {
                    Ok(())
                } else {
                    Err(ExecuteError::Rejected(Rejection::Conflict(
                        "this catalog name is owned by another account".into(),
                    )))
                }
            }
            Err(error) => Err(ExecuteError::Unavailable(error.to_string())),
        }
    }

    async fn append(
        &self,
        decision: &Decision,
        msg_id: Option<&str>,
    ) -> Result<Appended, AppendError> {
        let subject = decision.subject.to_subject();
        let body = decision.body.encode();
        let mut headers = async_nats::HeaderMap::new();
        let id = match msg_id {
            Some(id) => id.to_string(),
            None => derived_msg_id(&subject, &body, decision.expectation.last_seq),
        };
        headers.insert("Nats-Msg-Id", id.as_str());
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            decision.expectation.last_seq.to_string().as_str(),
        );
        if let Some(filter) = &decision.expectation.filter {
            headers.insert(
                "Nats-Expected-Last-Subject-Sequence-Subject",
                filter.as_str(),
            );
        }
        let ack = self
            .js
            .publish_with_headers(subject, headers, body.into())
            .await
            .map_err(|e| AppendError::Other(e.to_string()))?;
        match ack.await {
            Ok(ack) => Ok(Appended {
                seq: ack.sequence,
                duplicate: ack.duplicate,
            }),
            Err(error) => Err(classify(&error)),
        }
    }
}

enum AppendError {
    Conflict { actual_last_seq: u64 },
    Other(String),
}

fn classify(error: &jetstream::context::PublishError) -> AppendError {
    use jetstream::context::PublishErrorKind;
    if let PublishErrorKind::WrongLastSequence = error.kind() {
        return AppendError::Conflict {
            actual_last_seq: last_number(&error.to_string()),
        };
    }
    let text = error.to_string();
    if text.contains(&WRONG_LAST_SEQUENCE.to_string()) || text.contains("wrong last sequence") {
        return AppendError::Conflict {
            actual_last_seq: last_number(&text),
        };
    }
    AppendError::Other(text)
}

/// The actual last sequence named by a conflict error ("wrong last sequence: 42 (code 400,
/// error code 10071)" → 42); 0 if the text does not name one.
fn last_number(text: &str) -> u64 {
    const MARKER: &str = "wrong last sequence: ";
    text.rfind(MARKER)
        .map(|at| &text[at + MARKER.len()..])
        .map(|rest| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|digits| digits.parse().ok())
        .unwrap_or(0)
}

fn derived_msg_id(subject: &str, body: &[u8], expected: u64) -> String {
    let mut hash = Sha256::new();
    hash.update(subject.as_bytes());
    hash.update([0]);
    hash.update(body);
    hash.update(expected.to_be_bytes());
    data_encoding::BASE64URL_NOPAD.encode(&hash.finalize()[..18])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_read_from_conflict_errors() {
        assert_eq!(last_number("wrong last sequence: 42"), 42);
        assert_eq!(
            last_number("wrong last sequence: wrong last sequence: 7 (code 400, error code 10071)"),
            7
        );
        assert_eq!(last_number("nothing 12"), 0);
    }

    #[test]
    fn derived_ids_depend_on_subject_body_and_version() {
        let a = derived_msg_id("s", b"x", 1);
        assert_eq!(a, derived_msg_id("s", b"x", 1));
        assert_ne!(a, derived_msg_id("s", b"x", 2));
        assert_ne!(a, derived_msg_id("s", b"y", 1));
        assert_ne!(a, derived_msg_id("t", b"x", 1));
    }
}
