//! The write side: the shell around `decide`. An in-memory decision state kept current by
//! tailing the event log ([`tail`]), and appends guarded by each decision's expectation
//! ([`append`]).
//!
//! A decision is made against that state and appended with `Nats-Expected-Last-Subject-
//! Sequence` (and its `-Subject` companion for wildcard aggregates), so a decision made on
//! stale state fails at the server; the decider then waits until its state has folded the
//! newer events and decides again.
//!
//! Retries are exact: a request under a caller's idempotency key (`Nats-Msg-Id`) is appended
//! with its fingerprint, and the tail remembers both for the stream's duplicate window
//! ([`retries`]), so a retry gets the first append's sequence even if the state has changed
//! since, and a different request under the same key is refused; neither appends.

mod append;
mod progress;
mod retries;
mod snapshot;
pub mod snapshotter;
mod tail;

pub use append::Appended;

use crate::model::{decide, Command, DecisionState, Rejection, ShareLimits};
use crate::store::log::message::LogMessage;
use crate::store::log::shared::SharedLog;
use crate::store::{StoreError, StoreErrorKind};
use crate::telemetry::metrics::{EventTypeLabels, Metrics, RejectionLabels};
use async_nats::jetstream::{self, stream};
use retries::RecentRequests;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Attempts before a contended or failing decision gives up.
const MAX_ATTEMPTS: usize = 16;
/// How long a decision waits for the state to catch up after a conflict.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request waits for a starting instance's state to fold the log as it was at
/// start, before it is answered 503.
const START_WAIT: Duration = Duration::from_secs(5);

/// Why a command was not appended.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    /// The command breaks a rule; nothing was appended.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The idempotency key was already used, within the duplicate window, for a different
    /// request (appended at `seq`); nothing was appended.
    #[error("this Nats-Msg-Id was already used for a different request (appended at sequence {seq}); use a new id")]
    KeyReused { seq: u64 },
    /// The decision state did not fold the log up to this sequence in time; safe to retry.
    #[error("the decision state did not reach sequence {0}")]
    Behind(u64),
    /// The instance is still folding the log as it was when it started; safe to retry.
    #[error("this instance is still reading the event log (at sequence {folded} of {target}); retry shortly")]
    Starting { folded: u64, target: u64 },
    /// The decision state's tail has stopped (the service is stopping).
    #[error("the decision state tail stopped")]
    Stopped,
    /// The event log or the names bucket failed (see the error's kind).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A catalog-name claim one call created.
struct Claimed {
    name: String,
    owner: String,
    revision: u64,
}

/// Decides and appends commands; cheap to clone.
#[derive(Clone)]
pub struct Decider {
    js: jetstream::Context,
    events: stream::Stream,
    names: jetstream::kv::Store,
    state: Arc<RwLock<DecisionState>>,
    recent: Arc<Mutex<RecentRequests>>,
    folded: Arc<progress::Progress>,
    /// The log's last sequence when this instance started: decisions wait until the state
    /// has folded it.
    start_target: u64,
    metrics: Metrics,
}

/// Entries of the decision state: account tokens, catalog names, share pairs, and requests
/// remembered under idempotency keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateSizes {
    pub accounts: usize,
    pub catalogs: usize,
    pub pairs: usize,
    pub requests: usize,
}

/// Where a decider keeps its snapshot.
#[derive(Clone)]
pub struct Snapshots {
    pub bucket: async_nats::jetstream::object_store::ObjectStore,
    /// How often the instance holding the snapshot lease writes it.
    pub interval: Duration,
}

impl Decider {
    /// Restores the state from its snapshot when a usable one is stored (else starts empty),
    /// starts tailing the event log after it, and returns at once: decisions wait (at most
    /// [`START_WAIT`]) until the state has folded everything the log held at start. It
    /// catches up from `log`, the instance's shared read, and then reads on its own (see
    /// `write::tail`). Decisions enforce `limits`. The tail ends when `stop` is cancelled.
    pub async fn start(
        js: jetstream::Context,
        log: &SharedLog<LogMessage>,
        names: jetstream::kv::Store,
        snapshots: &Snapshots,
        limits: ShareLimits,
        metrics: Metrics,
        stop: CancellationToken,
    ) -> Result<Decider, ExecuteError> {
        let events = log.stream();
        let info = events.cached_info();
        let window = i64::try_from(info.config.duplicate_window.as_secs()).unwrap_or(i64::MAX);
        let identity = log_identity(events);
        let start_target = log_end(events).await?;
        let mut state = DecisionState::with_limits(limits);
        let mut recent = RecentRequests::new(window);
        // Boxed: the object store's read is a large future, and this one is awaited inside
        // the service's start.
        let load = Box::pin(snapshotter::load(
            &snapshots.bucket,
            &identity,
            start_target,
            &metrics,
        ));
        if let Some(restored) = load.await {
            state = restored.state;
            state.limits = limits;
            recent = RecentRequests::restore(window, &restored.recent);
        }
        let folded = Arc::new(progress::Progress::default());
        folded.advance(state.last_seq);
        let decider = Decider {
            js,
            events: events.clone(),
            names,
            state: Arc::new(RwLock::new(state)),
            recent: Arc::new(Mutex::new(recent)),
            folded,
            start_target,
            metrics,
        };
        tail::spawn(
            log.clone(),
            start_target,
            decider.state.clone(),
            decider.recent.clone(),
            decider.folded.clone(),
            stop,
        );
        Ok(decider)
    }

    /// Waits (at most [`START_WAIT`]) until the state has folded what the log held when this
    /// instance started.
    pub async fn wait_started(&self) -> Result<(), ExecuteError> {
        match self.catch_up_to(self.start_target, START_WAIT).await {
            Err(ExecuteError::Behind(target)) => Err(ExecuteError::Starting {
                folded: self.folded(),
                target,
            }),
            other => other,
        }
    }

    /// Whether the state has folded what the log held when this instance started; if not,
    /// how far it is and where it must get.
    pub fn started(&self) -> Result<(), (u64, u64)> {
        let folded = self.folded();
        if folded >= self.start_target {
            Ok(())
        } else {
            Err((folded, self.start_target))
        }
    }

    /// How many entries the state holds, by kind.
    pub fn sizes(&self) -> StateSizes {
        let (accounts, catalogs, pairs) = self.read(DecisionState::sizes);
        let requests = self.recent.lock().expect("recent requests lock").len();
        StateSizes {
            accounts,
            catalogs,
            pairs,
            requests,
        }
    }

    /// The state once started (see [`Decider::wait_started`]).
    pub async fn read_started<T>(
        &self,
        f: impl FnOnce(&DecisionState) -> T,
    ) -> Result<T, ExecuteError> {
        self.wait_started().await?;
        Ok(self.read(f))
    }

    /// Waits until the state has folded sequence `seq`.
    pub async fn wait_folded(&self, seq: u64, within: Duration) -> Result<(), ExecuteError> {
        self.folded
            .wait_for(seq, within)
            .await
            .map_err(|error| match error {
                progress::WaitError::Timeout => ExecuteError::Behind(seq),
                progress::WaitError::Closed => ExecuteError::Stopped,
            })
    }

    /// Waits until the state has folded sequence `seq`, which the log is known to hold (an
    /// acknowledged append, the stream's end, an event read from it): a tail that stays short
    /// of a sequence the log holds is stuck, and starts a new read (see `tail`).
    pub async fn catch_up_to(&self, seq: u64, within: Duration) -> Result<(), ExecuteError> {
        self.folded.logged(seq);
        self.wait_folded(seq, within).await
    }

    /// The last log sequence the state has folded.
    pub fn folded(&self) -> u64 {
        self.folded.reached()
    }

    /// Reads the current decision state.
    pub fn read<T>(&self, f: impl FnOnce(&DecisionState) -> T) -> T {
        f(&self.state.read().expect("decision state lock"))
    }

    /// Whether `check` holds for the state. A "no" is confirmed first against everything the
    /// log holds now, as a refusal of [`Decider::execute`] is: a caller's own append that was
    /// just acknowledged may not have reached this instance's tail yet.
    pub async fn holds(
        &self,
        check: impl Fn(&DecisionState) -> bool,
    ) -> Result<bool, ExecuteError> {
        if self.read(&check) {
            return Ok(true);
        }
        self.catch_up_to(self.log_end().await?, CATCH_UP_TIMEOUT)
            .await?;
        Ok(self.read(&check))
    }

    /// Decides `command` and appends its event.
    ///
    /// `msg_id` is the caller's idempotency key: within the stream's duplicate window, the
    /// same key with the same command (by [`Command::fingerprint`]) returns the first append's
    /// sequence whatever the state is now, the same key with another command is a conflict,
    /// and neither appends; this holds across instances and restarts. Without a key, an id is
    /// derived from the decided event and the aggregate version it was decided on, so
    /// identical requests racing on the same state append once.
    pub async fn execute(
        &self,
        command: &Command,
        msg_id: Option<&str>,
    ) -> Result<Appended, ExecuteError> {
        let labels = EventTypeLabels {
            r#type: command.event_type().as_str(),
        };
        let result = self.decide_and_append(command, msg_id, &labels).await;
        match &result {
            Ok(appended) if !appended.duplicate => {
                self.metrics.events_appended.get_or_create(&labels).inc();
            }
            Err(ExecuteError::Rejected(rejection)) => {
                self.metrics
                    .rejections
                    .get_or_create(&RejectionLabels {
                        r#type: labels.r#type,
                        reason: rejection.reason(),
                    })
                    .inc();
            }
            _ => {}
        }
        result
    }

    async fn decide_and_append(
        &self,
        command: &Command,
        msg_id: Option<&str>,
        labels: &EventTypeLabels,
    ) -> Result<Appended, ExecuteError> {
        // A name claim this call created, released if the call ends without an append.
        let mut claimed: Option<Claimed> = None;
        let result = self.attempts(command, msg_id, labels, &mut claimed).await;
        if let (Err(_), Some(claim)) = (&result, claimed) {
            self.release_claim(claim).await;
        }
        result
    }

    /// Releases a name claim whose append did not happen, so that no claim outlives a failed
    /// append: unless the log shows the claimant owning the name after all (an append whose
    /// acknowledgement was lost), the claim is deleted at the revision it was created with.
    async fn release_claim(&self, claim: Claimed) {
        let owns = match self.log_end().await {
            Ok(end) => {
                let _ = self.catch_up_to(end, CATCH_UP_TIMEOUT).await;
                self.read(|state| state.owner_of(&claim.name) == Some(claim.owner.as_str()))
            }
            Err(_) => false,
        };
        if owns {
            return;
        }
        if let Err(error) = self
            .names
            .delete_expect_revision(&claim.name, Some(claim.revision))
            .await
        {
            tracing::warn!(%error, "a name claim of a failed append could not be released");
        }
    }

    /// Decides and appends until an append succeeds, a rule refuses, or the attempts run
    /// out; records in `claimed` a name claim it created.
    async fn attempts(
        &self,
        command: &Command,
        msg_id: Option<&str>,
        labels: &EventTypeLabels,
        claimed: &mut Option<Claimed>,
    ) -> Result<Appended, ExecuteError> {
        let request = msg_id.map(|key| (key, command.fingerprint()));
        let request = request.as_ref().map(|(key, print)| (*key, print.as_str()));
        let mut last_error = None;
        let mut confirmed = false;
        self.wait_started().await?;
        if command.reads_unguarded_state() {
            self.catch_up_to(self.log_end().await?, CATCH_UP_TIMEOUT)
                .await?;
            confirmed = true;
        }
        for _ in 0..MAX_ATTEMPTS {
            if let Some(answer) = request.and_then(|(key, print)| self.earlier(key, print)) {
                return answer;
            }
            let decision = match self.read(|state| decide(state, command)) {
                Ok(decision) => decision,
                // Malformed input is refused at once: no state can make it valid.
                Err(rejection @ Rejection::BadRequest(_)) => return Err(rejection.into()),
                // A refusal is not guarded by the server as an append is: before refusing,
                // make sure the state holds every event acknowledged so far (a caller's own
                // previous append may not have reached this instance's tail yet).
                Err(_) if !confirmed => {
                    confirmed = true;
                    self.catch_up_to(self.log_end().await?, CATCH_UP_TIMEOUT)
                        .await?;
                    continue;
                }
                Err(rejection) => return Err(rejection.into()),
            };
            if let Some(name) = &decision.claim {
                if let Some(revision) =
                    append::claim(&self.names, name, &decision.subject.origin).await?
                {
                    *claimed = Some(Claimed {
                        name: name.clone(),
                        owner: decision.subject.origin.clone(),
                        revision,
                    });
                }
            }
            match append::append(&self.js, &decision, request).await {
                // The server took it for a retry of an append under the same key: answer as
                // that append's request decides, once the tail has folded it.
                Ok(appended) if appended.duplicate => {
                    let Some((key, print)) = request else {
                        return Ok(appended);
                    };
                    self.catch_up_to(appended.seq, CATCH_UP_TIMEOUT).await?;
                    return self.earlier(key, print).unwrap_or(Ok(appended));
                }
                Ok(appended) => return Ok(appended),
                Err(error) if error.is_conflict() => {
                    self.metrics.append_conflicts.get_or_create(labels).inc();
                    let actual = error.actual_last_seq().unwrap_or(0);
                    self.catch_up_to(actual, CATCH_UP_TIMEOUT).await?;
                }
                Err(error) if error.kind() == StoreErrorKind::Permanent => return Err(error.into()),
                Err(error) => {
                    last_error = Some(error);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        Err(match last_error {
            Some(error) => error.into(),
            // Every attempt lost to a concurrent append.
            None => ExecuteError::Behind(self.log_end().await?),
        })
    }

    /// The answer to a request under idempotency `key` with `fingerprint`, if one was
    /// appended under that key within the duplicate window.
    fn earlier(&self, key: &str, fingerprint: &str) -> Option<Result<Appended, ExecuteError>> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let recent = self.recent.lock().expect("recent requests lock");
        let earlier = recent.get(key, now)?;
        Some(if earlier.fingerprint == fingerprint {
            Ok(Appended {
                seq: earlier.seq,
                duplicate: true,
            })
        } else {
            Err(ExecuteError::KeyReused { seq: earlier.seq })
        })
    }

    /// The last sequence the log holds now.
    async fn log_end(&self) -> Result<u64, StoreError> {
        log_end(&self.events).await
    }
}

/// The last sequence `events` holds now.
async fn log_end(events: &stream::Stream) -> Result<u64, StoreError> {
    crate::store::log::end(events).await
}

/// Which log `events` is, as snapshots record it.
pub fn log_identity(events: &stream::Stream) -> snapshot::LogIdentity {
    let info = events.cached_info();
    snapshot::LogIdentity {
        stream: info.config.name.clone(),
        created: info.created.unix_timestamp_nanos(),
    }
}
