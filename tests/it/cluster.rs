//! Smoke test of the 3-node cluster helper that fault tests build on: an operator-mode
//! cluster from a world, the service with R3 resources, and a caller reaching it through
//! another node. Every stream and bucket it creates has three replicas.

use anyhow::Result;
use async_nats::jetstream;
use futures::StreamExt;
use natster_global::contract::Envelope;
use natster_global::service::GlobalService;
use natster_global::service::ServiceConfig;
use natster_global::service::StoreConfig;
use natster_global::test_util::EVENTS_STREAM;
use natster_global::tooling::bootstrap::{World, NATSTER};
use natster_testkit::{connect_creds, Cluster};

#[tokio::test]
async fn three_node_cluster_serves_the_world_with_replicated_resources() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let world = World::generate(dir.path(), &["alice".to_string()])?;
    world.write(false)?;
    let cluster = Cluster::start(Some(&world)).await?;
    let urls = cluster.urls().join(",");

    let service_client = connect_creds(&urls, &world.creds_path(NATSTER), "svc").await?;
    let config = ServiceConfig {
        store: StoreConfig {
            replicas: 3,
            ..Default::default()
        },
        ..Default::default()
    };
    let service = GlobalService::start(service_client.clone(), config).await?;

    // Every stream and bucket the service made has three replicas.
    let js = jetstream::new(service_client.clone());
    let mut streams = js.streams();
    let mut seen = Vec::new();
    while let Some(info) = streams.next().await {
        let info = info?;
        assert_eq!(
            info.config.num_replicas, 3,
            "{} has {} replicas",
            info.config.name, info.config.num_replicas
        );
        seen.push(info.config.name);
    }
    seen.sort();
    let expected = [
        "KV_NATSTER_CODES",
        "KV_NATSTER_NAMES",
        "KV_PROJ_ACCOUNT",
        "KV_PROJ_CATALOG",
        "KV_PROJ_OAUTH",
        "KV_PROJ_ONLINE",
        "KV_PROJ_PARKED",
        "KV_PROJ_STATS",
        "NATSTER_EVENTS",
        "NATSTER_ONLINE",
        "OBJ_NATSTER_SNAPSHOTS",
    ];
    assert_eq!(seen, expected);

    let info = jetstream::new(service_client)
        .get_stream(EVENTS_STREAM)
        .await?
        .info()
        .await?
        .clone();
    assert_eq!(info.config.num_replicas, 3);
    let cluster_info = info.cluster.expect("cluster info");
    assert_eq!(cluster_info.replicas.len(), 2, "a leader and two replicas");

    // alice talks to the last node; the service may be connected anywhere.
    let alice = connect_creds(&cluster.nodes[2].url(), &world.creds_path("alice"), "alice").await?;
    // The service's subscriptions reach the other nodes over the routes a moment after it
    // started: until then a request finds no responders.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let reply = loop {
        match alice.request("natster.global.whoami", "".into()).await {
            Ok(reply) => break reply,
            Err(error) if std::time::Instant::now() < deadline => {
                eprintln!("whoami through n2: {error}; again");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(error) => return Err(error.into()),
        }
    };
    let envelope: Envelope = serde_json::from_slice(&reply.payload)?;
    assert_eq!(envelope.code, 404);
    service.stop().await?;
    Ok(())
}
