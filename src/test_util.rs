//! Seams for the test kit, the integration tests and the benchmarks (feature `test-util`,
//! which only `natster-testkit` turns on): internal mechanisms they drive directly. Never part
//! of the product build.

pub use crate::projections::parking::{list as parked_events, ParkedEvent, RecordLimit};
pub use crate::projections::rebuild::{rebuild, RebuildReport, RebuildTarget};
pub use crate::projections::runner::{
    apply_batch, CacheMetrics, Progress, ProjectionRunner, RunnerConfig, Silent,
};
pub use crate::projections::status::status;
pub use crate::projections::stored::{
    checkpoint, checkpoint_key, counters_key, lease_key, Counters,
};
pub use crate::projections::{
    accounts::Accounts, catalogs::Catalogs, fold, oauth::OAuthIndex, online::Online, CountDelta,
    Projection,
};
pub use crate::reactions::share_notices::{
    Mark as ShareFeedMark, CONSUMER as SHARE_FEED_CONSUMER, MARK_KEY as SHARE_FEED_MARK_KEY,
};
pub use crate::store::kv::create_all;
pub use crate::store::lease::Lease;
/// The counter type of the runner's metrics.
pub type Counter = prometheus_client::metrics::counter::Counter;
pub use crate::store::log::shared::{SharedConfig, SharedLog};
pub use crate::store::log::LogReader;
pub use crate::store::roundtrip::sync;
pub use crate::store::{
    online_stream_config, with_patience, Store, StoreConfig, StoreError, StoreErrorKind,
    EVENTS_STREAM, PROJ_PARKED_BUCKET, PROJ_STATS_BUCKET,
};
pub use crate::telemetry::{http, Phase, Telemetry};
