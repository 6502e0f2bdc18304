//! Telemetry: Prometheus metrics, liveness and readiness, the operator's HTTP endpoints, and
//! logging set-up. It knows nothing of the service's parts: the service installs a
//! [`ReadinessProbe`] once it has started.
//!
//! One [`Telemetry`] lives as long as the process. It is created before the NATS connection
//! (so `/healthz` answers and `/readyz` explains while the service connects and ensures its
//! resources), handed to the service when it starts, and told when the service stops.

pub mod exposition;
pub mod http;
pub mod logging;
pub mod metrics;
mod readiness;

pub use metrics::Metrics;
pub use readiness::{ProjectionLag, Readiness, ReadinessProbe};

use prometheus_client::registry::Registry;
use std::sync::{Mutex, OnceLock};

/// Where the service is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Connecting to NATS or ensuring streams and buckets.
    Starting,
    /// Taking requests.
    Serving,
    /// SIGTERM received: no new requests, finishing in-flight ones.
    Stopping,
}

/// Metrics, readiness state and the probe of the running service.
pub struct Telemetry {
    pub metrics: Metrics,
    registry: Registry,
    phase: Mutex<Phase>,
    probe: OnceLock<Box<dyn ReadinessProbe>>,
    /// `/readyz` fails while a projection lags more than this many events.
    pub max_ready_lag: u64,
}

impl Telemetry {
    /// Fresh metrics (with series for `projections`), in phase [`Phase::Starting`].
    pub fn new(max_ready_lag: u64, projections: &[&'static str]) -> Telemetry {
        let (metrics, registry) = Metrics::new(projections);
        Telemetry {
            metrics,
            registry,
            phase: Mutex::new(Phase::Starting),
            probe: OnceLock::new(),
            max_ready_lag,
        }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.phase.lock().expect("phase lock")
    }

    /// Moves to `phase`; once [`Phase::Stopping`], the service never becomes ready again.
    pub fn set_phase(&self, phase: Phase) {
        let mut current = self.phase.lock().expect("phase lock");
        if *current != Phase::Stopping {
            *current = phase;
        }
        if phase == Phase::Stopping {
            self.metrics.ready.set(0);
        }
    }

    /// Installs the probe of the started service (the first one wins).
    pub fn install_probe(&self, probe: Box<dyn ReadinessProbe>) {
        let _ = self.probe.set(probe);
    }

    /// Brings the scrape-time gauges up to date and tells whether the service is ready.
    pub async fn refresh(&self) -> Readiness {
        let readiness = match (self.phase(), self.probe.get()) {
            (Phase::Stopping, _) => Readiness::not_ready("shutting down"),
            (_, None) => Readiness::not_ready(
                "starting: connecting to NATS and ensuring streams and buckets",
            ),
            (phase, Some(probe)) => {
                let mut readiness = probe.refresh(&self.metrics, self.max_ready_lag).await;
                if phase == Phase::Starting && readiness.ready {
                    readiness = Readiness::not_ready("starting: subscribing the endpoints");
                }
                readiness
            }
        };
        self.metrics.ready.set(i64::from(readiness.ready));
        readiness
    }

    /// The metrics in the OpenMetrics text format (call [`Telemetry::refresh`] first).
    pub fn encode(&self) -> String {
        metrics::encode(&self.registry)
    }
}
