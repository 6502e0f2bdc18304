//! Helpers of the benchmarks: rates at a number of requests in flight, acknowledged
//! publishes, requests that must succeed, the CPU a process has used, the raw ordered read of
//! the event log.

use anyhow::{Context, Result};

/// Runs `op(i)` for every `i` in `0..n`, `in_flight` at a time, and returns operations per
/// second. The first error ends the run and is returned.
pub async fn rate_at_in_flight<F, Fut>(n: usize, in_flight: usize, op: F) -> Result<f64>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    use futures::{StreamExt, TryStreamExt};
    let started = std::time::Instant::now();
    futures::stream::iter(0..n)
        .map(op)
        .buffer_unordered(in_flight.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// As [`rate_at_in_flight`], also timing each operation: operations per second, and every
/// operation's latency (unordered).
pub async fn timed_at_in_flight<F, Fut>(
    n: usize,
    in_flight: usize,
    mut op: F,
) -> Result<(f64, Vec<std::time::Duration>)>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    use futures::{StreamExt, TryStreamExt};
    let started = std::time::Instant::now();
    let latencies = futures::stream::iter(0..n)
        .map(|i| {
            let operation = op(i);
            async move {
                let sent = std::time::Instant::now();
                operation.await?;
                Ok::<_, anyhow::Error>(sent.elapsed())
            }
        })
        .buffer_unordered(in_flight.max(1))
        .try_collect::<Vec<_>>()
        .await?;
    Ok((n as f64 / started.elapsed().as_secs_f64(), latencies))
}

/// The `p` quantile (0 to 1) of `latencies` (sorts them).
pub fn percentile(latencies: &mut [std::time::Duration], p: f64) -> std::time::Duration {
    latencies.sort();
    latencies[((latencies.len() - 1) as f64 * p) as usize]
}

/// Publishes to JetStream and waits for the stream's acknowledgement.
pub async fn publish_acked(
    js: &async_nats::jetstream::Context,
    subject: String,
    headers: async_nats::HeaderMap,
    payload: Vec<u8>,
) -> Result<()> {
    js.publish_with_headers(subject, headers, payload.into())
        .await?
        .await?;
    Ok(())
}

/// Sends a request to the service and fails unless the reply is a success envelope.
pub async fn request_ok(
    client: &async_nats::Client,
    subject: String,
    payload: Vec<u8>,
) -> Result<()> {
    let reply = client.request(subject, payload.into()).await?;
    anyhow::ensure!(
        reply.payload.starts_with(b"{\"code\":200"),
        "{}",
        String::from_utf8_lossy(&reply.payload)
    );
    Ok(())
}

/// CPU time (user + system) a process has used, from `/proc/<pid>/stat` ("self" for this one).
pub fn cpu_seconds(pid: &str) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').context("stat")? + 2..]
        .split(' ')
        .collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

/// CPU seconds of this process (the bench, and the service where it runs in the process) and
/// of the server.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    pub here: f64,
    pub server: f64,
}

impl Cpu {
    fn now(server_pid: &str) -> Result<Cpu> {
        Ok(Cpu {
            here: cpu_seconds("self")?,
            server: cpu_seconds(server_pid)?,
        })
    }

    fn since(self, server_pid: &str) -> Result<Cpu> {
        let now = Cpu::now(server_pid)?;
        Ok(Cpu {
            here: now.here - self.here,
            server: now.server - self.server,
        })
    }

    /// Per operation of `n`, in microseconds.
    pub fn micros_per(self, n: usize) -> Cpu {
        let per = |seconds: f64| seconds * 1e6 / n.max(1) as f64;
        Cpu {
            here: per(self.here),
            server: per(self.server),
        }
    }
}

/// A piece of work's wall time and the CPU spent meanwhile.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cost {
    pub took: std::time::Duration,
    pub cpu: Cpu,
}

/// Runs `work`, timing it and the CPU this process and the server (`server_pid`) spend
/// meanwhile.
pub async fn costed<T>(
    server_pid: &str,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<(T, Cost)> {
    let (started, cpu) = (std::time::Instant::now(), Cpu::now(server_pid)?);
    let result = work.await?;
    let cost = Cost {
        took: started.elapsed(),
        cpu: cpu.since(server_pid)?,
    };
    Ok((result, cost))
}

/// Reads the first `n` messages of `NATSTER_EVENTS` with an ordered consumer and decodes each
/// as the service's log reader does; messages per second. What every reader of the log in the
/// service pays before its own work: the baseline a projector is measured against.
pub async fn raw_ordered_read(js: &async_nats::jetstream::Context, n: usize) -> Result<f64> {
    use futures::StreamExt;
    let stream = js.get_stream("NATSTER_EVENTS").await?;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await?;
    let started = std::time::Instant::now();
    let mut messages = consumer.messages().await?.take(n);
    let mut decoded = 0;
    while let Some(message) = messages.next().await {
        let message = message.map_err(anyhow::Error::msg)?;
        let info = message.info().map_err(anyhow::Error::msg)?;
        let _ = natster_global::model::Decoded::from_parts(
            info.stream_sequence,
            info.published.unix_timestamp(),
            &message.subject,
            &message.payload,
        );
        decoded += 1;
    }
    anyhow::ensure!(decoded == n, "{decoded} of {n} messages read");
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// The `events.put` requests of one load: inits of `n / 2` new accounts, then one share each
/// on a catalog of its own. Built before anything is measured: making an account key costs
/// more CPU than some requests do.
pub struct EventsPutLoad {
    /// (caller account, request body), inits first.
    requests: Vec<(String, serde_json::Value)>,
    accounts: usize,
}

impl EventsPutLoad {
    pub fn new(n: usize) -> EventsPutLoad {
        let keys: Vec<String> = (0..n / 2)
            .map(|_| nkeys::KeyPair::new_account().public_key())
            .collect();
        let mut requests = Vec::with_capacity(n);
        for key in &keys {
            requests.push((key.clone(), serde_json::json!({"catalog":"none","target":"none","event_type":"natster_initialized","data":{"account_id":"i","account_name":"n","account_key":key}})));
        }
        for (i, key) in keys.iter().enumerate() {
            let target = &keys[(i + 1) % keys.len()];
            // Named after the new account, so a later load on the same log claims new names too.
            let catalog = format!("bench{}", key[1..13].to_lowercase());
            requests.push((key.clone(), serde_json::json!({"catalog":catalog,"target":target,"event_type":"catalog_shared","data":null})));
        }
        EventsPutLoad {
            requests,
            accounts: keys.len(),
        }
    }

    /// Sends the requests through a service answering on `client`'s connection (subjects
    /// `<account>.natster.global.events.put`, as a plain server routes them), `in_flight` at a
    /// time per phase (shares need initialised accounts). Returns the rate and every request's
    /// latency.
    pub async fn run(
        &self,
        client: &async_nats::Client,
        in_flight: usize,
    ) -> Result<(f64, Vec<std::time::Duration>)> {
        let started = std::time::Instant::now();
        let mut latencies = Vec::with_capacity(self.requests.len());
        for phase in self.requests.chunks(self.accounts.max(1)) {
            let (_, timed) = timed_at_in_flight(phase.len(), in_flight, |i| {
                let (key, body) = &phase[i];
                request_ok(
                    client,
                    format!("{key}.natster.global.events.put"),
                    serde_json::to_vec(body).expect("json"),
                )
            })
            .await?;
            latencies.extend(timed);
        }
        Ok((
            self.requests.len() as f64 / started.elapsed().as_secs_f64(),
            latencies,
        ))
    }

    /// Waits until the service answering on `client`'s connection has applied, in its decision
    /// state and its account and catalog projections, everything the event log holds now (a
    /// `stats` request under `Natster-Min-Seq`, asked again while it answers 503), and has
    /// announced every share (the share feed's consumer has nothing pending or unacked):
    /// measured with [`EventsPutLoad::run`], the work the requests set off is counted with
    /// them.
    pub async fn until_projected(&self, client: &async_nats::Client) -> Result<()> {
        self.until_applied(client).await?;
        let js = async_nats::jetstream::new(client.clone());
        let events = js
            .get_stream(natster_global::test_util::EVENTS_STREAM)
            .await?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let feed = events
                .consumer_info(natster_global::test_util::SHARE_FEED_CONSUMER)
                .await?;
            if feed.num_pending == 0 && feed.num_ack_pending == 0 {
                return Ok(());
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "share notices still pending: {} to deliver, {} unacked",
                feed.num_pending,
                feed.num_ack_pending
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    async fn until_applied(&self, client: &async_nats::Client) -> Result<()> {
        let js = async_nats::jetstream::new(client.clone());
        let events = js
            .get_stream(natster_global::test_util::EVENTS_STREAM)
            .await?;
        let last = events.get_info().await?.state.last_sequence;
        let caller = &self.requests.first().context("an empty load")?.0;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            natster_global::contract::MIN_SEQ_HEADER,
            last.to_string().as_str(),
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let reply = client
                .request_with_headers(
                    format!("{caller}.natster.global.stats"),
                    headers.clone(),
                    "".into(),
                )
                .await?;
            if reply.payload.starts_with(b"{\"code\":200") {
                return Ok(());
            }
            anyhow::ensure!(
                reply.payload.starts_with(b"{\"code\":503") && std::time::Instant::now() < deadline,
                "the service did not apply sequence {last}: {}",
                String::from_utf8_lossy(&reply.payload)
            );
        }
    }
}

/// The CPUs process `pid` ("self" for this one) may run on, from `Cpus_allowed_list` in
/// `/proc/<pid>/status`.
pub fn cpu_list(pid: &str) -> Result<std::collections::BTreeSet<usize>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .context("Cpus_allowed_list")?;
    parse_cpu_list(list)
}

/// The CPUs of a kernel CPU list (`0-1`, `0,2-3`, `5`).
fn parse_cpu_list(list: &str) -> Result<std::collections::BTreeSet<usize>> {
    let mut cpus = std::collections::BTreeSet::new();
    for range in list.trim().split(',') {
        let (first, last) = range.split_once('-').unwrap_or((range, range));
        cpus.extend(first.parse::<usize>()?..=last.parse::<usize>()?);
    }
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    use super::parse_cpu_list;

    #[test]
    fn a_cpu_list_names_single_cpus_and_ranges() {
        let cpus = |list| {
            parse_cpu_list(list)
                .unwrap()
                .into_iter()
                .collect::<Vec<_>>()
        };
        assert_eq!(cpus("0-1\n"), [0, 1]);
        assert_eq!(cpus("\t0,2-3"), [0, 2, 3]);
        assert_eq!(cpus("5"), [5]);
        assert!(parse_cpu_list("x").is_err());
    }
}
