//! The service's Prometheus metrics, named by Prometheus rules: `natster_` prefix, base units
//! (seconds), `_total` on counters (added by the encoder), and labels from small fixed sets
//! (op, code, event type, reason, projection, feed kind) — never account keys, catalog names
//! or codes.
//!
//! Handles are cheap clones of the same series: a module that counts something keeps its own
//! handle (a `Counter` or a `Family`) and increments it without locking anything else.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

/// Request latency buckets, in seconds: from 50 µs (a cached read) to 5 s (a contended append
/// that waits for its state to catch up).
pub const REQUEST_DURATION_BUCKETS: [f64; 15] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    5.0,
];

/// `op` and reply `code` of a request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub op: &'static str,
    pub code: u16,
}

/// An event type (`natster_initialized`, …), as label `type`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventTypeLabels {
    pub r#type: &'static str,
}

/// Why a command was refused, by event type.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectionLabels {
    pub r#type: &'static str,
    pub reason: &'static str,
}

/// Why something was dropped or failed, from a small fixed set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// Why an auto-share did not happen: a rejection's reason, or `unavailable`.
pub const AUTOSHARE_FAILURE_REASONS: [&str; 5] = [
    "bad_request",
    "forbidden",
    "not_found",
    "conflict",
    "unavailable",
];

/// Why a heartbeat without a reply subject was dropped.
pub const HEARTBEAT_DROP_REASONS: [&str; 4] = ["rate", "online_catalogs", "in_flight", "record"];

/// A read model.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProjectionLabels {
    pub projection: &'static str,
}

/// A projection's record lookups, by whether the record was in memory (`hit`) or read from
/// the bucket (`miss`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLookupLabels {
    pub projection: &'static str,
    pub result: &'static str,
}

/// A feed message kind (`heartbeat`, `catalog_online`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FeedLabels {
    pub kind: &'static str,
}

/// The build, as `natster_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    service: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Every series the service exports.
#[derive(Clone)]
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<RequestLabels, Histogram, fn() -> Histogram>,
    pub events_appended: Family<EventTypeLabels, Counter>,
    pub rejections: Family<RejectionLabels, Counter>,
    pub append_conflicts: Family<EventTypeLabels, Counter>,
    pub projection_events_applied: Family<ProjectionLabels, Counter>,
    pub projection_parked_events: Family<ProjectionLabels, Counter>,
    pub projection_record_writes: Family<ProjectionLabels, Counter>,
    pub projection_cache_lookups: Family<CacheLookupLabels, Counter>,
    pub projection_cache_size_bytes: Family<ProjectionLabels, Gauge>,
    pub projection_applied_sequence: Family<ProjectionLabels, Gauge>,
    pub projection_lag_events: Family<ProjectionLabels, Gauge>,
    pub projection_lag_seconds: Family<ProjectionLabels, FloatGauge>,
    pub projection_rebuild_in_progress: Family<ProjectionLabels, Gauge>,
    pub projection_rebuild_progress_ratio: Family<ProjectionLabels, FloatGauge>,
    pub catalogs_online: Gauge,
    pub accounts_initialized: Gauge,
    pub shares_active: Gauge,
    pub codes_issued: Counter,
    pub codes_claimed: Counter,
    pub codes_expired: Counter,
    pub heartbeats_received: Counter,
    pub heartbeats_dropped: Family<ReasonLabels, Counter>,
    pub refusals_dropped: Counter,
    pub autoshare_failures: Family<ReasonLabels, Counter>,
    pub feed_messages_sent: Family<FeedLabels, Counter>,
    pub nats_connected: Gauge,
    pub nats_reconnects: Counter,
    pub ready: Gauge,
    pub decision_state_sequence: Gauge,
    pub decision_state_entries: Family<EntryLabels, Gauge>,
    pub decision_snapshots_written: Counter,
    pub decision_snapshots_unusable: Family<ReasonLabels, Counter>,
    pub decision_snapshot_sequence: Gauge,
    pub decision_snapshot_size_bytes: Gauge,
    pub decision_snapshot_write_duration: Histogram,
    pub online_view_entries: Gauge,
    pub online_view_bytes: Gauge,
    pub online_view_rebuilds: Counter,
    pub account_cache_lookups: Family<ResultLabels, Counter>,
    pub account_cache_bytes: Gauge,
    pub account_cache_rebuilds: Counter,
}

/// What the decision state holds, as label `kind` (`accounts`, `catalogs`, `pairs`,
/// `requests`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EntryLabels {
    pub kind: &'static str,
}

/// Snapshot write durations, in seconds: from 1 ms (a small state) to a minute.
const SNAPSHOT_WRITE_BUCKETS: [f64; 10] =
    [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 60.0];

fn request_histogram() -> Histogram {
    Histogram::new(REQUEST_DURATION_BUCKETS)
}

impl Metrics {
    /// Creates every series and registers it in a new registry (prefix `natster`); the
    /// per-projection series of `projections` start at zero.
    pub fn new(projections: &[&'static str]) -> (Metrics, Registry) {
        let mut registry = Registry::with_prefix("natster");
        let metrics = Metrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(request_histogram),
            events_appended: Family::default(),
            rejections: Family::default(),
            append_conflicts: Family::default(),
            projection_events_applied: Family::default(),
            projection_parked_events: Family::default(),
            projection_record_writes: Family::default(),
            projection_cache_lookups: Family::default(),
            projection_cache_size_bytes: Family::default(),
            projection_applied_sequence: Family::default(),
            projection_lag_events: Family::default(),
            projection_lag_seconds: Family::default(),
            projection_rebuild_in_progress: Family::default(),
            projection_rebuild_progress_ratio: Family::default(),
            catalogs_online: Gauge::default(),
            accounts_initialized: Gauge::default(),
            shares_active: Gauge::default(),
            codes_issued: Counter::default(),
            codes_claimed: Counter::default(),
            codes_expired: Counter::default(),
            heartbeats_received: Counter::default(),
            heartbeats_dropped: Family::default(),
            refusals_dropped: Counter::default(),
            autoshare_failures: Family::default(),
            feed_messages_sent: Family::default(),
            nats_connected: Gauge::default(),
            nats_reconnects: Counter::default(),
            ready: Gauge::default(),
            decision_state_sequence: Gauge::default(),
            decision_state_entries: Family::default(),
            decision_snapshots_written: Counter::default(),
            decision_snapshots_unusable: Family::default(),
            decision_snapshot_sequence: Gauge::default(),
            decision_snapshot_size_bytes: Gauge::default(),
            decision_snapshot_write_duration: Histogram::new(SNAPSHOT_WRITE_BUCKETS),
            online_view_entries: Gauge::default(),
            online_view_bytes: Gauge::default(),
            online_view_rebuilds: Counter::default(),
            account_cache_lookups: Family::default(),
            account_cache_bytes: Gauge::default(),
            account_cache_rebuilds: Counter::default(),
        };
        registry.register(
            "build",
            "The running build (value 1)",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                service: crate::contract::SERVICE_NAME,
            }),
        );
        metrics.register_requests(&mut registry);
        metrics.register_projections(&mut registry);
        metrics.register_state(&mut registry);
        metrics.register_decisions(&mut registry);
        metrics.register_read_views(&mut registry);
        metrics.start_series_at_zero(projections);
        (metrics, registry)
    }

    /// Requests, appends and refusals.
    fn register_requests(&self, registry: &mut Registry) {
        let m = self.clone();
        registry.register(
            "requests",
            "Requests answered, by op and reply code",
            m.requests,
        );
        registry.register_with_unit(
            "request_duration",
            "Time from receiving a request to sending its reply, by op and reply code",
            Unit::Seconds,
            m.request_duration,
        );
        registry.register(
            "events_appended",
            "Events appended to the log, by event type (retries recognised as duplicates excluded)",
            m.events_appended,
        );
        registry.register(
            "rejections",
            "Commands refused by a rule, by event type and reason",
            m.rejections,
        );
        registry.register(
            "append_conflicts",
            "Appends refused because another append won the race (the decision was re-run), by event type",
            m.append_conflicts,
        );
    }

    /// How far each projection is.
    fn register_projections(&self, registry: &mut Registry) {
        let m = self.clone();
        registry.register(
            "projection_events_applied",
            "Log messages applied by this instance, by projection",
            m.projection_events_applied,
        );
        registry.register(
            "projection_parked_events",
            "Log messages a projection parked because it can never apply them (see \
             `natster-global projections parked`), by projection",
            m.projection_parked_events,
        );
        registry.register(
            "projection_record_writes",
            "Records a projection runner wrote (created, changed or deleted), by projection: \
             against the records a backlog touched, how often each was written again",
            m.projection_record_writes,
        );
        registry.register(
            "projection_cache_lookups",
            "Records a projection runner needed to fold a message, by projection and result (hit: \
             held in memory or known absent; miss: read from the bucket)",
            m.projection_cache_lookups,
        );
        registry.register_with_unit(
            "projection_cache_size",
            "Bytes of records (as stored) the projection runner of this instance holds in memory, by projection",
            Unit::Bytes,
            m.projection_cache_size_bytes,
        );
        registry.register(
            "projection_applied_sequence",
            "Last stream sequence applied, by projection (from its checkpoint)",
            m.projection_applied_sequence,
        );
        registry.register(
            "projection_lag_events",
            "Stream sequences not yet applied, by projection",
            m.projection_lag_events,
        );
        registry.register_with_unit(
            "projection_lag",
            "Age of the oldest message not yet applied (0 when caught up), by projection",
            Unit::Seconds,
            m.projection_lag_seconds,
        );
        registry.register(
            "projection_rebuild_in_progress",
            "1 while `projections rebuild` replays the projection",
            m.projection_rebuild_in_progress,
        );
        registry.register(
            "projection_rebuild_progress_ratio",
            "Share of the log replayed by the running or last rebuild (0 to 1)",
            m.projection_rebuild_progress_ratio,
        );
    }

    /// The read ops' in-memory views: catalogs online, account records.
    fn register_read_views(&self, registry: &mut Registry) {
        let m = self.clone();
        registry.register(
            "online_view_entries",
            "Catalogs this instance's in-memory view of PROJ_ONLINE holds (0 while it is rebuilt)",
            m.online_view_entries,
        );
        registry.register(
            "online_view_bytes",
            "Approximate memory this instance's view of PROJ_ONLINE takes (map slots and keys)",
            m.online_view_bytes,
        );
        registry.register(
            "account_cache_lookups",
            "Account records the read ops looked up in this instance's cache, by result (hit, miss: read from the bucket)",
            m.account_cache_lookups,
        );
        registry.register(
            "account_cache_bytes",
            "Bytes of account records (as stored, plus their shares encoded for my.shares) this instance's read cache holds (bounded by --account-cache-mib)",
            m.account_cache_bytes,
        );
        registry.register(
            "account_cache_rebuilds",
            "Times this instance emptied its account record cache (watch failed or ended, client reconnected, paused while this instance caught the account projection up in passes)",
            m.account_cache_rebuilds,
        );
        registry.register(
            "online_view_rebuilds",
            "Times this instance threw its view of PROJ_ONLINE away and read it again (watch failed or ended, client reconnected)",
            m.online_view_rebuilds,
        );
    }

    /// The decision state and its snapshot.
    fn register_decisions(&self, registry: &mut Registry) {
        let m = self.clone();
        registry.register(
            "decision_state_sequence",
            "Last log sequence folded into this instance's decision state",
            m.decision_state_sequence,
        );
        registry.register(
            "decision_state_entries",
            "Entries this instance's decision state holds, by kind (accounts, catalogs, pairs, requests)",
            m.decision_state_entries,
        );
        registry.register(
            "decision_snapshots_written",
            "Decision-state snapshots written by this instance",
            m.decision_snapshots_written,
        );
        registry.register(
            "decision_snapshots_unusable",
            "Stored decision-state snapshots ignored at start, by reason (corrupt, stale, foreign); \
             the instance folded the whole log instead",
            m.decision_snapshots_unusable,
        );
        registry.register(
            "decision_snapshot_sequence",
            "Log sequence of the last decision-state snapshot this instance wrote or started from",
            m.decision_snapshot_sequence,
        );
        registry.register_with_unit(
            "decision_snapshot_size",
            "Size of the last decision-state snapshot this instance wrote",
            Unit::Bytes,
            m.decision_snapshot_size_bytes,
        );
        registry.register_with_unit(
            "decision_snapshot_write_duration",
            "Time to encode and store a decision-state snapshot",
            Unit::Seconds,
            m.decision_snapshot_write_duration,
        );
    }

    /// The read models' totals, codes, heartbeats, feeds and the connection.
    fn register_state(&self, registry: &mut Registry) {
        let m = self.clone();
        registry.register("catalogs_online", "Catalogs online now", m.catalogs_online);
        registry.register(
            "accounts_initialized",
            "Accounts that initialised Natster",
            m.accounts_initialized,
        );
        registry.register("shares_active", "Catalog shares in force", m.shares_active);
        registry.register(
            "codes_issued",
            "One-time codes issued by this instance",
            m.codes_issued,
        );
        registry.register(
            "codes_claimed",
            "One-time codes claimed through this instance",
            m.codes_claimed,
        );
        registry.register(
            "codes_expired",
            "One-time codes issued by this instance that expired unclaimed",
            m.codes_expired,
        );
        registry.register(
            "heartbeats_received",
            "Catalog heartbeats received (with or without a reply subject)",
            m.heartbeats_received,
        );
        registry.register(
            "heartbeats_dropped",
            "Heartbeats without a reply subject dropped unrecorded, by reason (rate: past the \
             account's heartbeat budget; online_catalogs: past its cap on catalogs online; in_flight: past its share of \
             the in-flight slots and as many waiting)",
            m.heartbeats_dropped,
        );
        registry.register(
            "refusals_dropped",
            "Requests refused (429, or 503 for a sequence the log has not reached) whose reply was \
             never sent, because their account already had the most refusals waiting their turn; \
             the client's request times out",
            m.refusals_dropped,
        );
        registry.register(
            "autoshare_failures",
            "Auto-shares of the hub catalog that did not happen, by reason (a refusal is final \
             for that account; unavailable is retried)",
            m.autoshare_failures,
        );
        registry.register(
            "feed_messages_sent",
            "Feed messages published, one per recipient, by kind",
            m.feed_messages_sent,
        );
        registry.register(
            "nats_connected",
            "1 while the connection to NATS is up",
            m.nats_connected,
        );
        registry.register(
            "nats_reconnects",
            "Reconnections to NATS since start",
            m.nats_reconnects,
        );
        registry.register("ready", "1 while /readyz answers 200", m.ready);
    }

    /// Creates every series whose labels are known in advance, at zero: a series that exists
    /// from the start makes `rate()` and alert rules work before the first event of its kind.
    fn start_series_at_zero(&self, projections: &[&'static str]) {
        use crate::model::EventType as Kind;
        for kind in Kind::ALL {
            let r#type = kind.as_str();
            let labels = EventTypeLabels { r#type };
            let _ = self.events_appended.get_or_create(&labels);
            let _ = self.append_conflicts.get_or_create(&labels);
            for reason in ["bad_request", "forbidden", "not_found", "conflict"] {
                let _ = self
                    .rejections
                    .get_or_create(&RejectionLabels { r#type, reason });
            }
        }
        for reason in HEARTBEAT_DROP_REASONS {
            let _ = self
                .heartbeats_dropped
                .get_or_create(&ReasonLabels { reason });
        }
        for reason in AUTOSHARE_FAILURE_REASONS {
            let _ = self
                .autoshare_failures
                .get_or_create(&ReasonLabels { reason });
        }
        for reason in ["corrupt", "stale", "foreign"] {
            let _ = self
                .decision_snapshots_unusable
                .get_or_create(&ReasonLabels { reason });
        }
        for &projection in projections {
            let labels = ProjectionLabels { projection };
            let _ = self.projection_events_applied.get_or_create(&labels);
            let _ = self.projection_parked_events.get_or_create(&labels);
            let _ = self.projection_record_writes.get_or_create(&labels);
            let _ = self.projection_cache_size_bytes.get_or_create(&labels);
            for result in ["hit", "miss"] {
                let _ = self
                    .projection_cache_lookups
                    .get_or_create(&CacheLookupLabels { projection, result });
            }
            let _ = self.projection_applied_sequence.get_or_create(&labels);
            let _ = self.projection_lag_events.get_or_create(&labels);
            let _ = self.projection_lag_seconds.get_or_create(&labels);
            let _ = self.projection_rebuild_in_progress.get_or_create(&labels);
            let _ = self
                .projection_rebuild_progress_ratio
                .get_or_create(&labels);
        }
        for kind in crate::contract::FeedKind::ALL {
            let kind = kind.as_str();
            let _ = self.feed_messages_sent.get_or_create(&FeedLabels { kind });
        }
        for op in crate::contract::Op::ALL {
            let labels = RequestLabels {
                op: op.name(),
                code: 200,
            };
            let _ = self.requests.get_or_create(&labels);
            let _ = self.request_duration.get_or_create(&labels);
        }
    }

    /// Counts one answered request and its duration.
    pub fn observe_request(&self, op: &'static str, code: u16, elapsed: std::time::Duration) {
        let labels = RequestLabels { op, code };
        self.requests.get_or_create(&labels).inc();
        self.request_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Counts an auto-share that did not happen.
    pub fn autoshare_failed(&self, reason: &'static str) {
        self.autoshare_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts a heartbeat dropped unrecorded.
    pub fn heartbeat_dropped(&self, reason: &'static str) {
        self.heartbeats_dropped
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// The parked-events counter of `projection`.
    pub fn projection_parked(&self, projection: &'static str) -> Counter {
        self.projection_parked_events
            .get_or_create(&ProjectionLabels { projection })
            .clone()
    }

    /// The record-writes counter of `projection`.
    pub fn projection_record_writes(&self, projection: &'static str) -> Counter {
        self.projection_record_writes
            .get_or_create(&ProjectionLabels { projection })
            .clone()
    }

    /// The record-cache lookups of `projection` with `result` (`hit` or `miss`).
    pub fn projection_cache_lookups(
        &self,
        projection: &'static str,
        result: &'static str,
    ) -> Counter {
        let labels = CacheLookupLabels { projection, result };
        self.projection_cache_lookups.get_or_create(&labels).clone()
    }

    /// The record-cache size gauge of `projection`.
    pub fn projection_cache_size(&self, projection: &'static str) -> Gauge {
        let labels = ProjectionLabels { projection };
        self.projection_cache_size_bytes
            .get_or_create(&labels)
            .clone()
    }

    /// The applied-events counter of `projection`.
    pub fn projection_applied(&self, projection: &'static str) -> Counter {
        self.projection_events_applied
            .get_or_create(&ProjectionLabels { projection })
            .clone()
    }
}

/// Renders `registry` in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)
        .expect("writing to a String cannot fail");
    text
}

#[cfg(test)]
mod tests;
