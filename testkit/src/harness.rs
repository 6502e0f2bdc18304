//! The service in-process on a test world, and the calls tests make to it.

use crate::world::TestWorld;
use anyhow::{Context as _, Result};
use natster_global::contract::{Envelope, MIN_SEQ_HEADER};
use natster_global::service::{GlobalService, RunnerConfig, Sealer, ServiceConfig};
use natster_global::test_util::{self, sync};
use natster_global::tooling::bootstrap;
use std::time::Duration;

/// A test world with the service running in-process: `WEB` is the web account, the world's
/// xkey seals tokens, and projections hand over quickly between instances.
pub struct Harness {
    pub tw: TestWorld,
    pub services: Vec<natster_global::service::GlobalService>,
}

impl Harness {
    /// A world with `users` and one service instance.
    pub async fn start(users: &[&str]) -> Result<Harness> {
        let mut harness = Harness::without_instances(users).await?;
        harness.add_instance(|_| {}).await?;
        Ok(harness)
    }

    /// A world with `users` and no service instance yet (see [`Harness::add_instance`]).
    pub async fn without_instances(users: &[&str]) -> Result<Harness> {
        let tw = TestWorld::start_with(users, |_| Ok(())).await?;
        Ok(Harness {
            tw,
            services: vec![],
        })
    }

    /// The service configuration tests use, adjusted by `adjust`.
    pub fn config(&self, adjust: impl FnOnce(&mut ServiceConfig)) -> Result<ServiceConfig> {
        let mut config = ServiceConfig {
            web_accounts: vec![self.tw.key(bootstrap::WEB)],
            sealer: Some(std::sync::Arc::new(Sealer::from_file(
                &self.tw.world.xkey_path(),
            )?)),
            runner: RunnerConfig {
                takeover_after: Duration::from_secs(2),
                ..Default::default()
            },
            ..Default::default()
        };
        adjust(&mut config);
        Ok(config)
    }

    /// Starts one more service instance.
    pub async fn add_instance(&mut self, adjust: impl FnOnce(&mut ServiceConfig)) -> Result<()> {
        let config = self.config(adjust)?;
        let client = self.tw.connect(bootstrap::NATSTER).await?;
        self.services
            .push(GlobalService::start(client, config).await?);
        Ok(())
    }

    /// Connects as account `name`.
    pub async fn connect(&self, name: &str) -> Result<async_nats::Client> {
        self.tw.connect(name).await
    }

    /// The key of account `name`.
    pub fn key(&self, name: &str) -> String {
        self.tw.key(name)
    }

    /// A JetStream context in the service account.
    pub async fn service_js(&self) -> Result<async_nats::jetstream::Context> {
        Ok(async_nats::jetstream::new(
            self.tw.connect(bootstrap::NATSTER).await?,
        ))
    }

    /// Stops every instance.
    pub async fn stop(self) -> Result<()> {
        for service in self.services {
            service.stop().await?;
        }
        Ok(())
    }
}

/// Sends `payload` to `natster.global.<op>` and decodes the envelope; with `min_seq`, sets
/// `Natster-Min-Seq`.
pub async fn call(
    client: &async_nats::Client,
    op: &str,
    payload: impl Into<bytes::Bytes>,
    min_seq: Option<u64>,
) -> Result<Envelope> {
    let mut headers = async_nats::HeaderMap::new();
    if let Some(seq) = min_seq {
        headers.insert(MIN_SEQ_HEADER, seq.to_string().as_str());
    }
    let reply = client
        .request_with_headers(format!("natster.global.{op}"), headers, payload.into())
        .await
        .with_context(|| format!("request {op}"))?;
    serde_json::from_slice(&reply.payload)
        .with_context(|| format!("{op} reply is not an envelope: {:?}", reply.payload))
}

/// `events.put` as natster clients send it; returns the envelope.
pub async fn put_event(
    client: &async_nats::Client,
    event_type: &str,
    catalog: &str,
    target: &str,
    data: serde_json::Value,
) -> Result<Envelope> {
    let body = serde_json::json!({
        "catalog": catalog, "target": target, "event_type": event_type, "data": data,
    });
    call(client, "events.put", serde_json::to_vec(&body)?, None).await
}

/// The `natster_initialized` data an account sends for itself.
pub fn init_data(key: &str) -> serde_json::Value {
    serde_json::json!({"account_id": format!("id-{}", &key[..8]), "account_name": "test", "account_key": key})
}

/// The sequence in a successful `events.put` reply.
pub fn seq_of(envelope: &Envelope) -> Result<u64> {
    anyhow::ensure!(envelope.code == 200, "expected success, got {envelope:?}");
    envelope.data["seq"]
        .as_u64()
        .context("events.put reply has a seq")
}

/// An account's feed (its import `natster.global-events.>`), live once opened.
pub struct FeedReader {
    sub: async_nats::Subscriber,
}

impl FeedReader {
    /// Subscribes and makes sure the server has the subscription before returning.
    pub async fn open(client: &async_nats::Client) -> Result<FeedReader> {
        let sub = client.subscribe("natster.global-events.>").await?;
        sync(client).await?;
        Ok(FeedReader { sub })
    }

    /// The next message as (kind, payload); fails after `within`.
    pub async fn next(&mut self, within: Duration) -> Result<(String, serde_json::Value)> {
        use futures::StreamExt;
        let message = tokio::time::timeout(within, self.sub.next())
            .await
            .context("no feed message in time")?
            .context("feed closed")?;
        let kind = message
            .subject
            .strip_prefix("natster.global-events.")
            .context("feed subject")?
            .to_string();
        Ok((kind, serde_json::from_slice(&message.payload)?))
    }

    /// The next message that is not a `heartbeat`.
    pub async fn next_notice(&mut self, within: Duration) -> Result<(String, serde_json::Value)> {
        self.next_where(within, |kind| kind != "heartbeat").await
    }

    /// The payload of the next forwarded `heartbeat` (notices skipped).
    pub async fn next_heartbeat(&mut self, within: Duration) -> Result<serde_json::Value> {
        let (_, payload) = self.next_where(within, |kind| kind == "heartbeat").await?;
        Ok(payload)
    }

    /// The next message whose kind `wanted` accepts, others skipped; fails after `within`.
    async fn next_where(
        &mut self,
        within: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<(String, serde_json::Value)> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let (kind, payload) = self.next(left).await?;
            if wanted(&kind) {
                return Ok((kind, payload));
            }
        }
    }
}

impl Harness {
    /// Serves the HTTP endpoints of instance `index` on a free loopback port.
    pub async fn serve_http(&self, index: usize) -> Result<std::net::SocketAddr> {
        let telemetry = self.services[index].telemetry().clone();
        let server =
            test_util::http::serve("127.0.0.1:0", telemetry, std::future::pending::<()>()).await?;
        Ok(server.addr)
    }
}
