//! The fastest a catch-up from empty could be on this machine, priced from raw operations of
//! the same run: every catch-up reads the whole log once and writes every record it leaves at
//! least once, so it can beat neither the raw ordered read of the log plus a plain KV put of
//! each record the service's runners wrote (grouped as the service's creates are, a
//! thousand to an acknowledgement), nor the CPU those take on the CPUs they may use.
//!
//! Two bounds, both generous to the service (its records are created with an expectation each,
//! the account bucket republishes each; the raw writes do neither):
//! - **overlapped**: the read's own wall time, or the CPU of the read and the writes spread
//!   over the CPUs the server and this process may use (together, and each on its own when
//!   they are pinned apart), whichever is longest;
//! - **one pass**: the read, then the writes: a fold cannot write a record before it has read
//!   the last event that touches it, so one pass over the log takes at least both wall times.
//!
//! And a third, not generous: **one pass with the service's writes**, the read then the same
//! records written as the service writes them (`store::kv::create_all`: chained by message id,
//! each key asserted never written) into scratch buckets configured as the projection buckets
//! are (the account records republished), all buckets at once as the runners write them. What
//! the service's writes cost beyond raw puts is the price of exactness and of the contract's
//! update feed, which no fold can avoid; this bound says what one pass can reach with them.
//! Beside it, the raw read and the service's writes **run at once**: what a catch-up that wrote
//! each record as soon as the read had passed the last event touching it could reach (the
//! writes are bound by the server, the read by this process).

use anyhow::Result;
use natster_testkit::{costed, cpu_list, Cost};
use std::time::Duration;

/// Raw writes to an acknowledgement, as the service's grouped creates (`store::kv::grouped`):
/// the cheapest way it found to store many records.
const GROUP: usize = 1024;
/// Groups sent before the oldest one's acknowledgement is awaited (the service's number too).
const GROUPS_IN_FLIGHT: usize = 2;
/// The scratch bucket the raw writes go to (deleted after).
const SCRATCH: &str = "SCALE_RAW_WRITES";
/// The scratch buckets the service's writes go to, one per projection bucket (deleted after).
const EXACT_SCRATCH: &str = "SCALE_EXACT_WRITES";

/// What a catch-up wrote to one projection bucket.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    pub records: usize,
    /// Mean stored size of a record.
    pub record_bytes: usize,
    /// The bucket republishes every write (the account bucket: the own-record update feed).
    pub republished: bool,
}

/// What the ceiling is priced from.
#[derive(Debug, Clone, Copy)]
pub struct Ceiling {
    pub read: Cost,
    pub writes: Cost,
    /// The same records written the service's way ([`create_exact`]).
    pub exact_writes: Cost,
    /// The raw read of the log and the service's writes at the same time.
    pub read_with_exact_writes: Cost,
    pub records: usize,
    pub record_bytes: usize,
    /// CPUs this process may use, the server may use, and both together.
    pub cpus: (usize, usize, usize),
}

impl Ceiling {
    /// Writes the records of `written` (every bucket's at their overall mean size) to a scratch
    /// bucket, each under a key of its own ([`put_grouped`]), then the service's way
    /// ([`create_exact`]), and prices the ceiling from those and `read`.
    pub async fn measure(
        js: &async_nats::jetstream::Context,
        server_pid: &str,
        (events, read): (usize, Cost),
        written: &[Written],
    ) -> Result<Ceiling> {
        let records: usize = written.iter().map(|w| w.records).sum();
        let bytes: usize = written.iter().map(|w| w.records * w.record_bytes).sum();
        let record_bytes = bytes / records.max(1);
        js.create_key_value(async_nats::jetstream::kv::Config {
            bucket: SCRATCH.into(),
            history: 1,
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await?;
        let value = bytes::Bytes::from(vec![b'x'; record_bytes]);
        let ((), writes) = costed(server_pid, put_grouped(js, records, value)).await?;
        all_stored_then_deleted(js, SCRATCH, records).await?;
        let ((), exact_writes) = costed(server_pid, create_exact(js, written)).await?;
        let both = futures::future::try_join(
            natster_testkit::raw_ordered_read(js, events),
            create_exact(js, written),
        );
        let (_, read_with_exact_writes) = costed(server_pid, both).await?;
        Ok(Ceiling {
            read,
            writes,
            exact_writes,
            read_with_exact_writes,
            records,
            record_bytes,
            cpus: cpus_of("self", server_pid)?,
        })
    }

    /// The overlapped bound: the least time any catch-up could take.
    pub fn overlapped(&self) -> Duration {
        let here = self.read.cpu.here + self.writes.cpu.here;
        let server = self.read.cpu.server + self.writes.cpu.server;
        let (cpus_here, cpus_server, cpus) = self.cpus;
        let least = [
            self.read.took.as_secs_f64(),
            (here + server) / cpus as f64,
            here / cpus_here as f64,
            server / cpus_server as f64,
        ]
        .into_iter()
        .fold(0.0, f64::max);
        Duration::from_secs_f64(least)
    }

    /// The one-pass bound: the read, then the writes.
    pub fn one_pass(&self) -> Duration {
        self.read.took + self.writes.took
    }

    /// The one-pass bound with the service's writes: the read, then those.
    pub fn one_pass_exact(&self) -> Duration {
        self.read.took + self.exact_writes.took
    }

    /// The read and the service's writes at once: a catch-up that overlapped them.
    pub fn overlapped_exact(&self) -> Duration {
        self.read_with_exact_writes.took
    }

    /// A catch-up taking `least` at most reaches this fraction of the raw read's rate.
    pub fn ratio(&self, least: Duration) -> f64 {
        self.read.took.as_secs_f64() / least.as_secs_f64()
    }
}

/// Puts `records` keys of `value` into [`SCRATCH`], [`GROUP`] to an acknowledgement: every
/// message of a group but its last is published without a reply subject, and the server takes
/// one connection's messages in order, so the last one's acknowledgement comes after the others
/// are stored. [`GROUPS_IN_FLIGHT`] groups are sent before the oldest one's is awaited.
async fn put_grouped(
    js: &async_nats::jetstream::Context,
    records: usize,
    value: bytes::Bytes,
) -> Result<()> {
    use futures::{StreamExt, TryStreamExt};
    let client = js.client();
    let groups = (0..records).step_by(GROUP).map(|first| {
        let (client, value) = (client.clone(), value.clone());
        let last = (first + GROUP).min(records) - 1;
        async move {
            for i in first..last {
                client
                    .publish(format!("$KV.{SCRATCH}.k{i}"), value.clone())
                    .await?;
            }
            let ack = js.publish(format!("$KV.{SCRATCH}.k{last}"), value).await?;
            ack.await?;
            anyhow::Ok(())
        }
    });
    futures::stream::iter(groups)
        .buffered(GROUPS_IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Creates the records of `written` the service's way, each bucket's in a scratch bucket of
/// the same configuration, all at once through one connection (as the runners share one):
/// keys as long as account keys, values of the bucket's mean size. Checks that every record
/// was created by the chained groups (none handed back to compare-and-set) and stored.
async fn create_exact(js: &async_nats::jetstream::Context, written: &[Written]) -> Result<()> {
    use async_nats::jetstream::{kv, stream};
    let client = js.client();
    let mut buckets = Vec::new();
    for (i, w) in written.iter().enumerate().filter(|(_, w)| w.records > 0) {
        let name = format!("{EXACT_SCRATCH}_{i}");
        let republish = w.republished.then(|| stream::Republish {
            source: format!("$KV.{name}.>"),
            destination: format!("scale.exact.updates.{i}.>"),
            headers_only: false,
        });
        let bucket = js
            .create_key_value(kv::Config {
                bucket: name.clone(),
                history: 1,
                storage: stream::StorageType::File,
                republish,
                ..Default::default()
            })
            .await?;
        buckets.push((bucket, *w));
    }
    let writes = buckets.iter().map(|(bucket, w)| {
        let value = bytes::Bytes::from(vec![b'x'; w.record_bytes]);
        let entries = (0..w.records).map(move |k| (format!("K{k:055}"), value.clone()));
        natster_global::test_util::create_all(&client, bucket, entries)
    });
    for left in futures::future::try_join_all(writes).await? {
        anyhow::ensure!(
            left.is_empty(),
            "{} records not created in groups",
            left.len()
        );
    }
    for (bucket, w) in &buckets {
        all_stored_then_deleted(js, &bucket.name, w.records).await?;
    }
    Ok(())
}

/// Checks that scratch bucket `name` stores `records` messages, then deletes it.
async fn all_stored_then_deleted(
    js: &async_nats::jetstream::Context,
    name: &str,
    records: usize,
) -> Result<()> {
    let stream = format!("KV_{name}");
    let stored = js.get_stream(&stream).await?.info().await?.state.messages;
    anyhow::ensure!(
        stored == records as u64,
        "{stored} of {records} records stored in {name}"
    );
    js.delete_key_value(name).await?;
    Ok(())
}

/// How many CPUs process `here` may use, process `server` may use, and either may.
fn cpus_of(here: &str, server: &str) -> Result<(usize, usize, usize)> {
    let (here, server) = (cpu_list(here)?, cpu_list(server)?);
    Ok((here.len(), server.len(), here.union(&server).count()))
}
