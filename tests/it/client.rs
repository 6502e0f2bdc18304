//! The typed client against a real server with real accounts: every op, every error kind,
//! feed, own record, read-your-writes.

use anyhow::{Context, Result};
use futures::StreamExt;
use natster_global::client::{ClientErrorKind, FeedMessage, GlobalClient};
use natster_global::contract::HeartbeatRequest;
use natster_global::model::{InitData, NatsterContext};
use natster_global::tooling::bootstrap::WEB;
use natster_testkit::Harness;
use std::time::Duration;

fn init(key: &str, name: &str) -> InitData {
    InitData {
        account_id: format!("id-{name}"),
        account_name: name.into(),
        account_key: key.into(),
    }
}

#[tokio::test]
async fn every_op_typed_with_read_your_writes() -> Result<()> {
    let h = Harness::start(&["alice", "bob"]).await?;
    let alice = GlobalClient::new(h.connect("alice").await?);
    let bob = GlobalClient::new(h.connect("bob").await?);
    let web = GlobalClient::new(h.connect(WEB).await?);
    let (a, b) = (h.key("alice"), h.key("bob"));

    assert_eq!(
        alice.whoami().await.err().context("not yet")?.kind,
        ClientErrorKind::NotFound
    );
    assert!(alice.own_record().await?.is_none());
    let mut updates = Box::pin(alice.watch_own_record().await?);
    let mut bob_feed = Box::pin(bob.feed().await?);

    let initialized = alice.initialize(&init(&a, "alice")).await?;
    let who = alice.at_least(initialized).whoami().await?;
    assert_eq!(who.account_key, a);
    assert_eq!(
        bob.at_least(initialized)
            .whoami()
            .await
            .err()
            .context("bob has not initialised")?
            .kind,
        ClientErrorKind::NotFound
    );
    let conflict = alice
        .initialize(&init(&a, "alice"))
        .await
        .err()
        .context("twice")?;
    assert_eq!(
        (conflict.kind, conflict.code),
        (ClientErrorKind::Conflict, Some(409))
    );
    bob.initialize(&init(&b, "bob")).await?;
    let shared = alice.share("films", &b).await?;
    let bad = alice.share("no.dots", &b).await.err().context("bad name")?;
    assert_eq!(bad.kind, ClientErrorKind::BadRequest);

    let (record, seq) = alice
        .at_least(shared)
        .own_record()
        .await?
        .context("record")?;
    assert_eq!(record.out_shares.len(), 1);
    assert!(seq > 0);
    let update = tokio::time::timeout(Duration::from_secs(5), updates.next())
        .await?
        .context("an update")??;
    assert_eq!(update.account_key, a);

    let shares = bob.at_least(shared).my_shares().await?;
    assert_eq!(shares.len(), 1);
    assert_eq!(
        (shares[0].catalog.as_str(), shares[0].from_account.as_str()),
        ("films", a.as_str())
    );
    alice
        .heartbeat(&HeartbeatRequest {
            catalog: "films".into(),
            account_key: a.clone(),
            revision: 9,
            offline: false,
        })
        .await?;
    let stats = alice.at_least(shared).stats().await?;
    assert_eq!((stats.total_initialized, stats.share_count), (2, 1));
    let name = bob.validate_name("films").await?;
    assert!(!name.valid, "{name:?}");

    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        let message = tokio::time::timeout(Duration::from_secs(10), bob_feed.next())
            .await?
            .context("feed")??;
        match &message {
            FeedMessage::CatalogShared(notice) => assert_eq!(notice.seq, shared),
            FeedMessage::CatalogOnline(notice) => assert_eq!(notice.revision, 9),
            FeedMessage::Heartbeat(heartbeat) => assert_eq!(heartbeat.catalog, "films"),
            other => anyhow::bail!("unexpected {other:?}"),
        }
        kinds.push(message.kind().to_string());
    }
    kinds.sort();
    assert_eq!(kinds, ["catalog_online", "catalog_shared", "heartbeat"]);

    let context = NatsterContext {
        account_name: "alice".into(),
        account_public_key: a.clone(),
        access_token: "token".into(),
        ..Default::default()
    };
    let code = alice.otc_generate(&context).await?;
    let forbidden = alice
        .otc_claim(&code.code, "github|1")
        .await
        .err()
        .context("web only")?;
    assert_eq!(forbidden.kind, ClientErrorKind::Forbidden);
    let bound = web.otc_claim(&code.code, "github|1").await?;
    assert_eq!(
        (
            bound.account_public_key.as_str(),
            bound.access_token.as_str()
        ),
        (a.as_str(), "")
    );
    let gotten = web.context_get("github|1").await?;
    assert_eq!(gotten.context.account_public_key, a);

    let too_far = alice
        .at_least(u64::MAX)
        .whoami()
        .await
        .err()
        .context("503")?;
    assert_eq!(
        (too_far.kind, too_far.code),
        (ClientErrorKind::Unavailable, Some(503))
    );
    h.stop().await
}

#[tokio::test]
async fn rate_limits_and_a_missing_service_are_typed() -> Result<()> {
    let mut h = Harness::without_instances(&["alice"]).await?;
    h.add_instance(|config| {
        config.rate_per_second = 1;
        config.rate_burst = 1;
    })
    .await?;
    let alice = GlobalClient::new(h.connect("alice").await?);
    let a = h.key("alice");
    let mut limited = None;
    for _ in 0..5 {
        if let Err(error) = alice.initialize(&init(&a, "alice")).await {
            if error.kind == ClientErrorKind::RateLimited {
                limited = Some(error);
                break;
            }
        }
    }
    assert_eq!(limited.context("a 429")?.code, Some(429));
    h.stop().await?;
    let alone = Harness::without_instances(&["alice"]).await?;
    let nobody = GlobalClient::new(alone.connect("alice").await?)
        .with_timeout(Duration::from_secs(2))
        .stats()
        .await
        .err()
        .context("no service")?;
    assert_eq!(
        (nobody.kind, nobody.code),
        (ClientErrorKind::Unavailable, None)
    );
    Ok(())
}
