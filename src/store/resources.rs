//! JetStream resources of the service and their idempotent, never-destructive creation.
//!
//! `ensure` creates what is missing and adopts what exists: an existing stream or bucket is
//! used as it is (its data and configuration are never altered or deleted), so a restart, a
//! second instance, or an upgrade over an existing event log is always safe.

use super::error::{StoreError, StoreErrorKind};
use crate::contract::{ACCOUNT_UPDATES_PREFIX, PROJ_ACCOUNT_BUCKET};
use async_nats::jetstream::{self, kv, object_store, stream};
use std::time::Duration;

/// The event log.
pub const EVENTS_STREAM: &str = "NATSTER_EVENTS";
/// Subjects of the event log: `natster.events.<origin>.<target>.<catalog>.<event_type>`.
pub const EVENTS_SUBJECTS: &str = "natster.events.>";
/// Catalog projection bucket (key = catalog name).
pub const PROJ_CATALOG_BUCKET: &str = "PROJ_CATALOG";
/// OAuth index bucket (key = the OAuth id, base64url).
pub const PROJ_OAUTH_BUCKET: &str = "PROJ_OAUTH";

/// Counters and checkpoints of the projections (`counters.<projection>`,
/// `checkpoint.<projection>`).
pub const PROJ_STATS_BUCKET: &str = "PROJ_STATS";
/// Messages a projection parked (`<projection>.<seq>`): each log message at most once per
/// projection, so the bucket grows no faster than the log.
pub const PROJ_PARKED_BUCKET: &str = "PROJ_PARKED";
/// One-time codes, each expiring after the code TTL.
pub const CODES_BUCKET: &str = "NATSTER_CODES";
/// Heartbeats: the latest per `natster.online.<owner>.<catalog>`, each expiring after the
/// online TTL.
pub const ONLINE_STREAM: &str = "NATSTER_ONLINE";
/// Online projection bucket (key = `<owner>.<catalog>`).
pub const PROJ_ONLINE_BUCKET: &str = "PROJ_ONLINE";
/// How long the server keeps the marker it writes when a catalog's heartbeat expires, and the
/// longest any message stays in `NATSTER_ONLINE`: a projector down for longer than this misses
/// the expiry.
pub const ONLINE_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Object store of the decision-state snapshot (one object, rewritten in place).
pub const SNAPSHOTS_BUCKET: &str = "NATSTER_SNAPSHOTS";

/// Catalog name claims (name → owner), made atomically before a first share is appended.
pub const NAMES_BUCKET: &str = "NATSTER_NAMES";

/// How resources are created when missing.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Replicas of streams and buckets (1 on a single server, 3 in a cluster).
    pub replicas: usize,
    /// Window in which a repeated `Nats-Msg-Id` is appended only once.
    pub duplicate_window: Duration,
    /// How long a one-time code stays claimable.
    pub code_ttl: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            code_ttl: Duration::from_secs(300),
        }
    }
}

/// Handles on the service's JetStream resources.
#[derive(Clone)]
pub struct Store {
    pub js: jetstream::Context,
    pub events: stream::Stream,
    pub accounts: kv::Store,
    pub catalogs: kv::Store,
    pub oauth: kv::Store,
    pub stats: kv::Store,
    pub parked: kv::Store,
    pub codes: kv::Store,
    pub names: kv::Store,
    pub online: stream::Stream,
    pub online_records: kv::Store,
    pub snapshots: object_store::ObjectStore,
}

impl Store {
    /// Creates missing resources and opens all of them. Safe to call concurrently from
    /// several instances: a lost creation race falls back to opening the winner's resource.
    pub async fn ensure(js: jetstream::Context, config: &StoreConfig) -> Result<Store, StoreError> {
        let bucket = |name: &str, description: &str| kv::Config {
            bucket: name.into(),
            description: description.into(),
            history: 1,
            storage: jetstream::stream::StorageType::File,
            num_replicas: config.replicas,
            ..Default::default()
        };
        let accounts = kv::Config {
            republish: Some(stream::Republish {
                source: format!("$KV.{PROJ_ACCOUNT_BUCKET}.>"),
                destination: format!("{ACCOUNT_UPDATES_PREFIX}.>"),
                headers_only: false,
            }),
            ..bucket(
                PROJ_ACCOUNT_BUCKET,
                "natster account projection: one record per account key",
            )
        };
        let codes = kv::Config {
            max_age: config.code_ttl,
            ..bucket(CODES_BUCKET, "natster one-time codes (expiring)")
        };
        Ok(Store {
            events: ensure_stream(&js, events_stream_config(config)).await?,
            accounts: ensure_bucket(&js, accounts).await?,
            catalogs: ensure_bucket(&js, bucket(
                PROJ_CATALOG_BUCKET,
                "natster catalog projection: owner and active shares per catalog name",
            ))
            .await?,
            oauth: ensure_bucket(&js, bucket(
                PROJ_OAUTH_BUCKET,
                "natster OAuth index: OAuth id to bound account and sealed context",
            ))
            .await?,
            stats: ensure_bucket(&js, bucket(
                PROJ_STATS_BUCKET,
                "natster projection counters and checkpoints",
            ))
            .await?,
            parked: ensure_bucket(&js, bucket(
                PROJ_PARKED_BUCKET,
                "natster parked events: log messages a projection can never apply",
            ))
            .await?,
            codes: ensure_codes_bucket(&js, codes).await?,
            names: ensure_bucket(&js, bucket(
                NAMES_BUCKET,
                "natster catalog name claims: name to owning account",
            ))
            .await?,
            online: ensure_stream(&js, online_stream_config(config)).await?,
            online_records: ensure_bucket(&js, bucket(
                PROJ_ONLINE_BUCKET,
                "natster online projection: online state and last revision per owner and catalog",
            ))
            .await?,
            snapshots: ensure_object_store(&js, object_store::Config {
                bucket: SNAPSHOTS_BUCKET.into(),
                description: Some("natster decision-state snapshot (derived from the event log; safe to delete)".into()),
                storage: jetstream::stream::StorageType::File,
                num_replicas: config.replicas,
                ..Default::default()
            })
            .await?,
            js,
        })
    }
}

/// The configuration `ensure` gives a new event stream: file storage, nothing can delete or
/// purge it, a full stream refuses new events rather than dropping old ones.
pub fn events_stream_config(config: &StoreConfig) -> stream::Config {
    stream::Config {
        name: EVENTS_STREAM.into(),
        description: Some("natster event log (append-only)".into()),
        subjects: vec![EVENTS_SUBJECTS.into()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::New,
        deny_delete: true,
        deny_purge: true,
        duplicate_window: config.duplicate_window,
        num_replicas: config.replicas,
        ..Default::default()
    }
}

/// The configuration of `NATSTER_ONLINE`: the latest heartbeat per catalog, per-message TTL,
/// and a marker from the server when a heartbeat expires.
pub fn online_stream_config(config: &StoreConfig) -> stream::Config {
    stream::Config {
        name: ONLINE_STREAM.into(),
        description: Some("natster catalog heartbeats (latest per catalog, expiring)".into()),
        subjects: vec![format!("{}.>", crate::model::online::ONLINE_SUBJECT_PREFIX)],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        max_messages_per_subject: 1,
        max_age: ONLINE_RETENTION,
        allow_message_ttl: true,
        subject_delete_marker_ttl: Some(ONLINE_RETENTION),
        num_replicas: config.replicas,
        ..Default::default()
    }
}

async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Stream, StoreError> {
    if let Ok(existing) = js.get_stream(&config.name).await {
        tracing::info!(stream = %config.name, "adopting existing stream as it is");
        return Ok(existing);
    }
    match js.create_stream(config.clone()).await {
        Ok(created) => {
            tracing::info!(stream = %config.name, "created stream");
            Ok(created)
        }
        Err(create_error) => js.get_stream(&config.name).await.map_err(|_| {
            StoreError::unavailable(format!("create stream {}", config.name), create_error)
        }),
    }
}

/// The codes bucket, its max age raised to the code TTL if it is shorter (a bucket created
/// under a shorter TTL would drop codes before the time their replies announce; a longer max
/// age is harmless, since every code carries its own deadline).
async fn ensure_codes_bucket(
    js: &jetstream::Context,
    config: kv::Config,
) -> Result<kv::Store, StoreError> {
    let ttl = config.max_age;
    let bucket = ensure_bucket(js, config).await?;
    let stream_name = bucket.stream_name.clone();
    let mut stream = js
        .get_stream(&stream_name)
        .await
        .map_err(|e| StoreError::unavailable(format!("open stream {stream_name}"), e))?;
    let mut stream_config = stream
        .info()
        .await
        .map_err(|e| StoreError::unavailable(format!("read stream {stream_name}"), e))?
        .config
        .clone();
    if !stream_config.max_age.is_zero() && stream_config.max_age < ttl {
        let from = stream_config.max_age;
        stream_config.max_age = ttl;
        js.update_stream(stream_config)
            .await
            .map_err(|e| StoreError::unavailable(format!("update stream {stream_name}"), e))?;
        tracing::info!(bucket = %bucket.name, ?from, to = ?ttl, "raised the codes' max age to the code TTL");
    }
    Ok(bucket)
}

async fn ensure_object_store(
    js: &jetstream::Context,
    config: object_store::Config,
) -> Result<object_store::ObjectStore, StoreError> {
    let name = config.bucket.clone();
    let open = || js.get_object_store(&name);
    adopt_or_create("object store", &name, open, js.create_object_store(config)).await
}

async fn ensure_bucket(
    js: &jetstream::Context,
    config: kv::Config,
) -> Result<kv::Store, StoreError> {
    let name = config.bucket.clone();
    let open = || js.get_key_value(&name);
    adopt_or_create("bucket", &name, open, js.create_key_value(config)).await
}

/// The resource `open` finds, else the one `create` makes; when creating fails because
/// another instance won the race, the winner's (opened again). Unavailable when neither works.
async fn adopt_or_create<T, OE, CE, Open, OpenFut>(
    what: &str,
    name: &str,
    open: Open,
    create: impl std::future::Future<Output = Result<T, CE>>,
) -> Result<T, StoreError>
where
    Open: Fn() -> OpenFut,
    OpenFut: std::future::Future<Output = Result<T, OE>>,
    CE: std::fmt::Display,
{
    if let Ok(existing) = open().await {
        return Ok(existing);
    }
    match create.await {
        Ok(created) => {
            tracing::info!(%name, "created {what}");
            Ok(created)
        }
        Err(create_error) => open().await.map_err(|_| {
            StoreError::unavailable(format!("create {what} {name}"), create_error.to_string())
        }),
    }
}

/// How long [`with_patience`] (a starting instance) keeps trying to create or open its resources while JetStream
/// cannot place them (a cluster whose peers are still forming or catching up).
const ENSURE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(20);

/// `create` (of JetStream resources), tried again every half second for [`ENSURE_PATIENCE`]
/// while it fails for a reason that may pass (unavailable); any other failure, or the last
/// one, is returned.
pub async fn with_patience<T, F, Fut>(mut create: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let deadline = std::time::Instant::now() + ENSURE_PATIENCE;
    loop {
        match create().await {
            Err(error)
                if error.kind() == StoreErrorKind::Unavailable
                    && std::time::Instant::now() < deadline =>
            {
                tracing::warn!(%error, "JetStream resources not available yet; trying again");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            result => return result,
        }
    }
}
