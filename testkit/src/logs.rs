//! Event logs for tests and benchmarks: building, publishing, projecting from empty, dumping.

use anyhow::{Context as _, Result};
use natster_global::service::RunnerConfig;
use natster_global::test_util;
use std::time::Duration;

/// Last sequence of the event stream.
pub async fn events_last_seq(js: &async_nats::jetstream::Context) -> Result<u64> {
    stream_last_seq(js, test_util::EVENTS_STREAM).await
}

/// Last sequence of stream `name` (for a KV bucket's stream `KV_<bucket>`: writes so far).
pub async fn stream_last_seq(js: &async_nats::jetstream::Context, name: &str) -> Result<u64> {
    Ok(js.get_stream(name).await?.info().await?.state.last_sequence)
}

/// What [`project_from_empty`] measured.
pub struct ProjectedBacklog {
    /// From the runner's start until it had applied the requested sequence.
    pub elapsed: Duration,
    /// Each applied sequence the runner reported, with when (one entry per flush).
    pub timeline: Vec<(Duration, u64)>,
    /// Writes to the projection's bucket.
    pub record_writes: u64,
    /// Writes to `PROJ_STATS` (counters, checkpoint, lease).
    pub stats_writes: u64,
    /// Records read from the bucket because they were not in memory.
    pub cache_misses: u64,
    /// Passes of a catch-up from empty written.
    pub passes: u64,
    /// The runner's `in_passes` signal read `true` at some point of the run.
    pub in_passes_raised: bool,
    /// The signal once the runner stopped.
    pub in_passes_at_end: bool,
}

/// Empties the bucket of projection `P` and `PROJ_STATS`, runs `P`'s runner over the log with
/// `config` until it has applied sequence `upto` (at most two minutes), stops it, and reports
/// what it took.
pub async fn project_from_empty<P: test_util::Projection<Notice = std::convert::Infallible>>(
    js: &async_nats::jetstream::Context,
    upto: u64,
    config: RunnerConfig,
) -> Result<ProjectedBacklog> {
    for bucket in [P::BUCKET, test_util::PROJ_STATS_BUCKET] {
        if js.get_key_value(bucket).await.is_ok() {
            js.delete_key_value(bucket).await?;
        }
    }
    let store = test_util::Store::ensure(js.clone(), &Default::default()).await?;
    let (records_stream, stats_stream) = (
        format!("KV_{}", P::BUCKET),
        format!("KV_{}", test_util::PROJ_STATS_BUCKET),
    );
    let records_before = stream_last_seq(js, &records_stream).await?;
    let stats_before = stream_last_seq(js, &stats_stream).await?;
    let records = js.get_key_value(P::BUCKET).await?;
    let (tx, mut applied) = tokio::sync::watch::channel(0u64);
    let cache = test_util::CacheMetrics::default();
    let passes = test_util::Counter::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let runner = test_util::ProjectionRunner::<P> {
        log: test_util::SharedLog::spawn(
            store.events.clone(),
            P::decode,
            P::seq,
            Default::default(),
        ),
        records,
        client: js.client(),
        stats: store.stats.clone(),
        parked: store.parked.clone(),
        limit: Default::default(),
        config,
        progress: test_util::Progress::new(tx, Default::default(), Default::default())
            .with_cache(cache.clone())
            .with_passes(passes.clone()),
        announce: std::sync::Arc::new(test_util::Silent),
    };
    let (mut in_passes, runner_in_passes) =
        (runner.progress.in_passes(), runner.progress.in_passes());
    let raised = tokio::spawn(async move { in_passes.wait_for(|raised| *raised).await.is_ok() });
    let task = tokio::spawn(runner.run(stop.clone()));
    let started = std::time::Instant::now();
    let mut timeline = Vec::new();
    let waited: std::result::Result<Result<()>, _> =
        tokio::time::timeout(Duration::from_secs(120), async {
            loop {
                let seq = *applied.borrow_and_update();
                timeline.push((started.elapsed(), seq));
                if seq >= upto {
                    return Ok(());
                }
                applied.changed().await?;
            }
        })
        .await;
    let elapsed = started.elapsed();
    stop.cancel();
    waited.context("the backlog was not projected within two minutes")??;
    task.await?;
    let in_passes_at_end = *runner_in_passes.borrow();
    raised.abort();
    let in_passes_raised = matches!(raised.await, Ok(true));
    Ok(ProjectedBacklog {
        elapsed,
        timeline,
        record_writes: stream_last_seq(js, &records_stream).await? - records_before,
        stats_writes: stream_last_seq(js, &stats_stream).await? - stats_before,
        cache_misses: cache.misses.get(),
        passes: passes.get(),
        in_passes_raised,
        in_passes_at_end,
    })
}

/// A realistic event log in the original layout: every one of `accounts` new accounts
/// initialises, then shares (70 %), unshares (20 %) and imports (10 %) over `catalogs` names,
/// up to `events` events. Returns (subject, body) pairs in append order.
pub fn mixed_event_log(accounts: usize, catalogs: usize, events: usize) -> Vec<(String, Vec<u8>)> {
    use natster_global::model::{EventSubject, EventType};
    let keys: Vec<String> = (0..accounts)
        .map(|_| nkeys::KeyPair::new_account().public_key())
        .collect();
    let mut log = init_log(&keys);
    log.reserve(events.saturating_sub(log.len()));
    let mut i = 0usize;
    while log.len() < events {
        let owner = &keys[i % keys.len()];
        let target = &keys[(i * 7 + 3) % keys.len()];
        let kind = match i % 10 {
            0..=6 => EventType::CatalogShared,
            7 | 8 => EventType::CatalogUnshared,
            _ => EventType::CatalogImported,
        };
        let catalog = format!("cat{}", i % catalogs.max(1));
        log.push((
            EventSubject::new(owner, target, &catalog, kind).to_subject(),
            Vec::new(),
        ));
        i += 1;
    }
    log
}

/// The `natster_initialized` event of every account in `keys`, in order, as (subject, body).
pub fn init_log(keys: &[String]) -> Vec<(String, Vec<u8>)> {
    use natster_global::model::{EventSubject, EventType, InitData};
    keys.iter()
        .map(|key| {
            let data = InitData {
                account_id: "id".into(),
                account_name: "test".into(),
                account_key: key.clone(),
            };
            (
                EventSubject::new(key, "none", "none", EventType::NatsterInitialized).to_subject(),
                serde_json::to_vec(&data).expect("init data serializes"),
            )
        })
        .collect()
}

/// Publishes `log` to JetStream in chunks (the context bounds the acks in flight) and waits
/// for every ack.
pub async fn publish_log(
    js: &async_nats::jetstream::Context,
    log: &[(String, Vec<u8>)],
) -> Result<()> {
    for chunk in log.chunks(1_000) {
        let mut acks = Vec::with_capacity(chunk.len());
        for (subject, body) in chunk {
            acks.push(js.publish(subject.clone(), body.clone().into()).await?);
        }
        for ack in acks {
            ack.await?;
        }
    }
    Ok(())
}

/// Every key and current value of a bucket.
pub async fn dump_bucket(
    kv: &async_nats::jetstream::kv::Store,
) -> Result<std::collections::BTreeMap<String, Vec<u8>>> {
    use futures::StreamExt;
    let mut keys = kv.keys().await?;
    let mut out = std::collections::BTreeMap::new();
    while let Some(key) = keys.next().await {
        let key = key?;
        if let Some(value) = kv.get(&key).await? {
            out.insert(key, value.to_vec());
        }
    }
    Ok(out)
}

/// Rebuilds projection `P` in the service account's buckets, as `projections rebuild` does on
/// a server with `max_payload`.
pub async fn rebuild_projection<P: test_util::Projection>(
    js: &async_nats::jetstream::Context,
    max_payload: usize,
    progress: impl FnMut(u64, u64),
) -> Result<test_util::RebuildReport> {
    let events = js.get_stream(test_util::EVENTS_STREAM).await?;
    let records = js.get_key_value(P::BUCKET).await?;
    let stats = js.get_key_value(test_util::PROJ_STATS_BUCKET).await?;
    let parked = js.get_key_value(test_util::PROJ_PARKED_BUCKET).await?;
    let target = test_util::RebuildTarget {
        events: &events,
        records: &records,
        stats: &stats,
        parked: &parked,
        limit: test_util::RecordLimit::for_max_payload(max_payload),
    };
    test_util::rebuild::<P>(target, progress)
        .await
        .map_err(anyhow::Error::msg)
}

/// The event stream as stored, every message decoded as the projections decode it (read one
/// by one through the stream leader: a test's reference, not a fast path).
pub async fn read_events(
    js: &async_nats::jetstream::Context,
) -> Result<Vec<natster_global::model::Event>> {
    use natster_global::model::{Event, EventBody, EventSubject};
    let stream = js.get_stream(test_util::EVENTS_STREAM).await?;
    let last = events_last_seq(js).await?;
    let mut events = Vec::with_capacity(usize::try_from(last)?);
    for seq in 1..=last {
        let raw = stream.get_raw_message(seq).await?;
        let subject = EventSubject::parse(&raw.subject).context("event subject")?;
        events.push(Event {
            seq,
            time: raw.time.unix_timestamp(),
            body: EventBody::decode(subject.event_type, &raw.payload),
            subject,
        });
    }
    Ok(events)
}

/// What a clean rebuild of projection `P` from `events` stores: every record as JSON by key,
/// and the counters it moves.
pub fn expected_records<P: test_util::Projection<Input = natster_global::model::Event>>(
    events: &[natster_global::model::Event],
) -> (
    std::collections::BTreeMap<String, Vec<u8>>,
    test_util::CountDelta,
) {
    let mut records = std::collections::BTreeMap::new();
    let counts = test_util::fold::<P>(&mut records, events);
    let bytes = records
        .into_iter()
        .map(|(k, r)| (k, serde_json::to_vec(&r).expect("a record encodes as JSON")))
        .collect();
    (bytes, counts)
}
