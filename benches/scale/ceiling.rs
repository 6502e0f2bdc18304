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

/// What the ceiling is priced from.
#[derive(Debug, Clone, Copy)]
pub struct Ceiling {
    pub read: Cost,
    pub writes: Cost,
    pub records: usize,
    pub record_bytes: usize,
    /// CPUs this process may use, the server may use, and both together.
    pub cpus: (usize, usize, usize),
}

impl Ceiling {
    /// Writes `records` values of `record_bytes` bytes to a scratch bucket, each under a key of
    /// its own ([`put_grouped`]), and prices the ceiling from that and `read`.
    pub async fn measure(
        js: &async_nats::jetstream::Context,
        server_pid: &str,
        read: Cost,
        records: usize,
        record_bytes: usize,
    ) -> Result<Ceiling> {
        js.create_key_value(async_nats::jetstream::kv::Config {
            bucket: SCRATCH.into(),
            history: 1,
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await?;
        let value = bytes::Bytes::from(vec![b'x'; record_bytes]);
        let ((), writes) = costed(server_pid, put_grouped(js, records, value)).await?;
        let stored = js
            .get_stream(format!("KV_{SCRATCH}"))
            .await?
            .info()
            .await?
            .state
            .messages;
        anyhow::ensure!(
            stored == records as u64,
            "{stored} of {records} raw puts stored"
        );
        js.delete_key_value(SCRATCH).await?;
        Ok(Ceiling {
            read,
            writes,
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

/// How many CPUs process `here` may use, process `server` may use, and either may.
fn cpus_of(here: &str, server: &str) -> Result<(usize, usize, usize)> {
    let (here, server) = (cpu_list(here)?, cpu_list(server)?);
    Ok((here.len(), server.len(), here.union(&server).count()))
}
