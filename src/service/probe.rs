//! What `/metrics` and `/readyz` ask the running service: connection state, how far each
//! projection has got, the read-model counters and rebuild progress.
//!
//! Gauges that mirror shared state (checkpoints, counters in `PROJ_STATS`, stream positions)
//! are read when scraped rather than pushed, so every instance reports the same values and
//! none goes stale while another instance applies the projections.

use crate::projections::view::{StatsSnapshot, StatsView};
use crate::projections::{accounts::Accounts, catalogs::Catalogs, online::Online, Projection};
use crate::telemetry::metrics::{EntryLabels, Metrics, ProjectionLabels};
use crate::telemetry::{ProjectionLag, Readiness, ReadinessProbe};
use crate::write::Decider;
use async_nats::jetstream::stream;
use futures::future::BoxFuture;
use std::time::Duration;

/// How long a probe waits for JetStream before it calls the service not ready.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A projection and the stream it applies.
#[derive(Clone)]
pub struct ProbedProjection {
    pub name: &'static str,
    pub stream: stream::Stream,
}

/// The running service, as the HTTP endpoints see it.
pub struct Probe {
    pub client: async_nats::Client,
    pub view: StatsView,
    /// The decision state (an instance that has not folded the log as it was at start cannot
    /// decide yet).
    pub decider: Decider,
    pub projections: Vec<ProbedProjection>,
}

impl ReadinessProbe for Probe {
    fn refresh<'a>(&'a self, metrics: &'a Metrics, max_lag: u64) -> BoxFuture<'a, Readiness> {
        Box::pin(self.judge(metrics, max_lag))
    }
}

impl Probe {
    /// Updates the scrape-time gauges and judges readiness: connected, and every projection
    /// within `max_lag` events of its stream.
    async fn judge(&self, metrics: &Metrics, max_lag: u64) -> Readiness {
        let connected = self.connection_gauges(metrics);
        let snapshot = self.view.snapshot();
        self.shared_state_gauges(metrics, &snapshot);
        if !connected {
            return Readiness::not_ready("not connected to NATS");
        }
        if let Err((folded, target)) = self.decision_gauges(metrics) {
            return Readiness::not_ready(format!(
                "the decision state is at sequence {folded} of {target}, the log's end at start"
            ));
        }
        let mut lags = Vec::with_capacity(self.projections.len());
        for projection in &self.projections {
            match self
                .lag(metrics, projection, snapshot.applied(projection.name))
                .await
            {
                Ok(lag) => lags.push(lag),
                Err(not_ready) => return not_ready,
            }
        }
        let reason = lags
            .iter()
            .find(|l| l.lag_events > max_lag)
            .map(|l| {
                format!(
                    "projection {} lags {} events (bound {max_lag})",
                    l.projection, l.lag_events
                )
            })
            .or_else(|| self.decision_lag(&lags, max_lag));
        Readiness {
            ready: reason.is_none(),
            reason,
            projections: lags,
        }
    }

    /// The decision state's gauges; whether it has folded the log as it was at start (if not,
    /// how far it is and where it must get).
    fn decision_gauges(&self, metrics: &Metrics) -> Result<(), (u64, u64)> {
        let sizes = self.decider.sizes();
        metrics
            .decision_state_sequence
            .set(self.decider.folded() as i64);
        for (kind, size) in [
            ("accounts", sizes.accounts),
            ("catalogs", sizes.catalogs),
            ("pairs", sizes.pairs),
            ("requests", sizes.requests),
        ] {
            let labels = EntryLabels { kind };
            metrics
                .decision_state_entries
                .get_or_create(&labels)
                .set(size as i64);
        }
        self.decider.started()
    }

    /// Why this instance cannot write, if its decision state lags the log's end (read with
    /// the accounts projection's lag) by more than `max_lag` events: every write waits for the
    /// state to reach the log first.
    fn decision_lag(&self, lags: &[ProjectionLag], max_lag: u64) -> Option<String> {
        let last = lags
            .iter()
            .find(|l| l.projection == Accounts::NAME)?
            .last_seq;
        let folded = self.decider.folded();
        (last.saturating_sub(folded) > max_lag).then(|| {
            format!("the decision state has read the log to {folded} of {last}; writes wait for it")
        })
    }

    /// The connection's gauges; whether it is up.
    fn connection_gauges(&self, metrics: &Metrics) -> bool {
        let connected = self.client.connection_state() == async_nats::connection::State::Connected;
        metrics.nats_connected.set(i64::from(connected));
        let connects = self
            .client
            .statistics()
            .connects
            .load(std::sync::atomic::Ordering::Relaxed);
        let reconnects = connects.saturating_sub(1);
        let counted = metrics.nats_reconnects.get();
        if reconnects > counted {
            metrics.nats_reconnects.inc_by(reconnects - counted);
        }
        connected
    }

    /// The gauges that mirror shared state: the read models' counters and rebuild progress.
    fn shared_state_gauges(&self, metrics: &Metrics, snapshot: &StatsSnapshot) {
        metrics
            .accounts_initialized
            .set(snapshot.counters(Accounts::NAME).total_initialized);
        metrics
            .shares_active
            .set(snapshot.counters(Catalogs::NAME).share_count);
        metrics
            .catalogs_online
            .set(snapshot.counters(Online::NAME).running_catalogs);
        for (name, rebuild) in &snapshot.rebuilds {
            let Some(projection) = self.projections.iter().find(|p| p.name == name) else {
                continue;
            };
            let labels = ProjectionLabels {
                projection: projection.name,
            };
            metrics
                .projection_rebuild_in_progress
                .get_or_create(&labels)
                .set(i64::from(rebuild.is_running()));
            metrics
                .projection_rebuild_progress_ratio
                .get_or_create(&labels)
                .set(rebuild.ratio());
        }
    }

    /// How far `projection` is behind its stream (and its gauges), or why that cannot be told.
    async fn lag(
        &self,
        metrics: &Metrics,
        projection: &ProbedProjection,
        applied: u64,
    ) -> Result<ProjectionLag, Readiness> {
        let (last, lag_events, lag_seconds) =
            match tokio::time::timeout(PROBE_TIMEOUT, lag_of(&projection.stream, applied)).await {
                Ok(Ok(lag)) => lag,
                Ok(Err(error)) => {
                    return Err(Readiness::not_ready(format!(
                        "cannot read the state of the stream behind projection {}: {error}",
                        projection.name
                    )))
                }
                Err(_) => {
                    return Err(Readiness::not_ready(format!(
                        "JetStream did not answer within {PROBE_TIMEOUT:?} about the stream behind projection {} (writes and reads that wait for a sequence cannot proceed either)",
                        projection.name
                    )))
                }
            };
        let labels = ProjectionLabels {
            projection: projection.name,
        };
        metrics
            .projection_applied_sequence
            .get_or_create(&labels)
            .set(applied as i64);
        metrics
            .projection_lag_events
            .get_or_create(&labels)
            .set(lag_events as i64);
        metrics
            .projection_lag_seconds
            .get_or_create(&labels)
            .set(lag_seconds);
        Ok(ProjectionLag {
            projection: projection.name,
            applied_seq: applied,
            last_seq: last,
            lag_events,
            lag_seconds,
        })
    }
}

/// The stream's last sequence, the sequences after `applied`, and the age of the oldest
/// message not yet applied (0 when caught up or when it is already gone).
async fn lag_of(
    stream: &stream::Stream,
    applied: u64,
) -> Result<(u64, u64, f64), async_nats::jetstream::stream::InfoError> {
    let mut stream = stream.clone();
    let last = stream.info().await?.state.last_sequence;
    let lag = last.saturating_sub(applied);
    if lag == 0 {
        return Ok((last, 0, 0.0));
    }
    let oldest = stream
        .raw_message_builder()
        .sequence(applied + 1)
        .next_by_subject(">")
        .send()
        .await;
    let seconds = match oldest {
        Ok(message) => {
            let age = time::OffsetDateTime::now_utc() - message.time;
            age.as_seconds_f64().max(0.0)
        }
        Err(_) => 0.0,
    };
    Ok((last, lag, seconds))
}
