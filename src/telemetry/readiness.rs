//! What `/readyz` answers, and the probe the running service installs to answer it.

use super::Metrics;
use futures::future::BoxFuture;
use serde::Serialize;

/// Asks the running service how it is: brings the scrape-time gauges up to date and judges
/// readiness (installed by the service once it has started; see `crate::service`).
pub trait ReadinessProbe: Send + Sync {
    /// Updates the gauges in `metrics`; ready when connected and every projection lags at most
    /// `max_lag` events.
    fn refresh<'a>(&'a self, metrics: &'a Metrics, max_lag: u64) -> BoxFuture<'a, Readiness>;
}

/// The answer of `/readyz`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Readiness {
    pub ready: bool,
    /// Why the service is not ready (absent when it is).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Per projection: applied sequence and lag (empty before the service started).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub projections: Vec<ProjectionLag>,
}

/// How far one projection is behind its stream.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProjectionLag {
    pub projection: &'static str,
    pub applied_seq: u64,
    pub last_seq: u64,
    pub lag_events: u64,
    pub lag_seconds: f64,
}

impl Readiness {
    /// Not ready, for `reason`.
    pub fn not_ready(reason: impl Into<String>) -> Readiness {
        Readiness {
            ready: false,
            reason: Some(reason.into()),
            projections: vec![],
        }
    }
}
