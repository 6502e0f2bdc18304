//! Decentralized auth with real JWT accounts on a real nats-server: identity is the account
//! key the server puts in the first subject token; imports cannot be forged; feeds reach only
//! their account; revocation works; no secret crosses the wire.

use anyhow::{Context, Result};
use data_encoding::BASE64URL_NOPAD;
use futures::StreamExt;
use natster_global::tooling::bootstrap::{Role, NATSTER, SYS};
use natster_global::tooling::jwt::{self as auth, ExportType, Import};
use natster_testkit::{sync, TestWorld};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(10);

async fn next<T>(stream: &mut (impl futures::Stream<Item = T> + Unpin)) -> Result<T> {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .context("timed out waiting for a message")?
        .context("stream ended")
}

#[tokio::test]
async fn a_request_reaches_the_service_under_the_callers_proven_key() -> Result<()> {
    let tw = TestWorld::start().await?;
    let service = tw.connect(NATSTER).await?;
    let mut requests = service.subscribe("*.natster.global.>").await?;
    sync(&service).await?;
    let alice = tw.connect("alice").await?;
    let alice_key = tw.key("alice");

    let responder = tokio::spawn(async move {
        let request = next(&mut requests).await?;
        let caller = request
            .subject
            .split('.')
            .next()
            .unwrap_or_default()
            .to_string();
        service
            .publish(
                request
                    .reply
                    .clone()
                    .context("request has a reply subject")?,
                serde_json::to_vec(&serde_json::json!({ "account_key": caller }))?.into(),
            )
            .await?;
        service.flush().await?;
        Ok::<_, anyhow::Error>(request.subject.to_string())
    });
    let reply = alice.request("natster.global.whoami", "".into()).await?;
    let seen_subject = responder.await??;

    assert_eq!(seen_subject, format!("{alice_key}.natster.global.whoami"));
    let body: serde_json::Value = serde_json::from_slice(&reply.payload)?;
    assert_eq!(body["account_key"], alice_key.as_str());
    Ok(())
}

#[tokio::test]
async fn an_import_under_another_accounts_key_gets_no_responders() -> Result<()> {
    let tw = TestWorld::start_with(&["alice", "bob"], |world| {
        let service_key = world.key(NATSTER)?;
        let bob_key = world.key("bob")?;
        let mallory = nkeys::KeyPair::new_account();
        let mut claims = auth::AccountClaims::new("mallory", &mallory.public_key());
        claims.nats.imports.push(Import::new(
            ExportType::Service,
            "natster-global",
            &service_key,
            &format!("{bob_key}.natster.global.>"),
            "natster.global.>",
        ));
        world.add_account("mallory", Role::Custom, mallory, claims)?;
        Ok(())
    })
    .await?;
    let service = tw.connect(NATSTER).await?;
    let mut requests = service.subscribe("*.natster.global.>").await?;
    sync(&service).await?;

    let mallory = tw.connect("mallory").await?;
    let forged = mallory.request("natster.global.whoami", "".into()).await;
    let error = forged.expect_err("a forged import must not reach the service");
    assert_eq!(
        error.kind(),
        async_nats::RequestErrorKind::NoResponders,
        "{error}"
    );

    // Requests on one connection arrive in order: if mallory's had reached the service it
    // would come before this one.
    let alice = tw.connect("alice").await?;
    alice
        .publish("natster.global.whoami", "after".into())
        .await?;
    alice.flush().await?;
    let first = next(&mut requests).await?;
    assert_eq!(
        first.subject.as_str(),
        format!("{}.natster.global.whoami", tw.key("alice"))
    );
    assert_eq!(&first.payload[..], b"after");
    Ok(())
}

#[tokio::test]
async fn a_feed_message_reaches_only_its_account() -> Result<()> {
    let tw = TestWorld::start().await?;
    let alice = tw.connect("alice").await?;
    let bob = tw.connect("bob").await?;
    let mut alice_feed = alice.subscribe("natster.global-events.>").await?;
    let mut bob_feed = bob.subscribe("natster.global-events.>").await?;
    sync(&alice).await?;
    sync(&bob).await?;

    let service = tw.connect(NATSTER).await?;
    let (alice_key, bob_key) = (tw.key("alice"), tw.key("bob"));
    for (key, body) in [
        (&bob_key, "for-bob"),
        (&alice_key, "for-alice"),
        (&bob_key, "bob-2"),
        (&alice_key, "end"),
    ] {
        service
            .publish(format!("{key}.natster.global-events.test"), body.into())
            .await?;
    }
    service.flush().await?;

    let mut alice_got = Vec::new();
    while alice_got.last().map(String::as_str) != Some("end") {
        let message = next(&mut alice_feed).await?;
        assert_eq!(message.subject.as_str(), "natster.global-events.test");
        alice_got.push(String::from_utf8(message.payload.to_vec())?);
    }
    assert_eq!(alice_got, ["for-alice", "end"]);
    let mut bob_got = Vec::new();
    while bob_got.len() < 2 {
        bob_got.push(String::from_utf8(
            next(&mut bob_feed).await?.payload.to_vec(),
        )?);
    }
    assert_eq!(bob_got, ["for-bob", "bob-2"]);
    Ok(())
}

#[tokio::test]
async fn a_revoked_user_cannot_connect() -> Result<()> {
    let mut tw = TestWorld::start().await?;
    // Before: alice's user connects.
    tw.connect("alice").await?.flush().await?;

    let user_key = tw.world.account("alice")?.user.public_key();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    tw.world
        .accounts
        .get_mut("alice")
        .context("alice")?
        .claims
        .revoke(&user_key, now);
    let jwt = tw.world.resign("alice")?.jwt.clone();

    let system = tw.connect(SYS).await?;
    let reply = system
        .request(
            format!("$SYS.REQ.ACCOUNT.{}.CLAIMS.UPDATE", tw.key("alice")),
            jwt.into(),
        )
        .await?;
    let body: serde_json::Value = serde_json::from_slice(&reply.payload)?;
    assert_eq!(body["data"]["code"], 200, "{body}");

    let refused = tw.connect("alice").await;
    let error = format!(
        "{:#}",
        refused.err().context("a revoked user must not connect")?
    );
    assert!(error.contains("authorization violation"), "{error}");
    // Other accounts are unaffected.
    tw.connect("bob").await?.flush().await?;
    Ok(())
}

#[tokio::test]
async fn connect_carries_the_jwt_and_a_nonce_signature_but_no_seed() -> Result<()> {
    let tw = TestWorld::start().await?;
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let proxy_port = proxy.local_addr()?.port();
    let server_port = tw.server.port();
    let from_server: Arc<Mutex<Vec<u8>>> = Arc::default();
    let from_client: Arc<Mutex<Vec<u8>>> = Arc::default();
    let (s_log, c_log) = (from_server.clone(), from_client.clone());
    tokio::spawn(async move {
        let (client, _) = proxy.accept().await?;
        let server = tokio::net::TcpStream::connect(("127.0.0.1", server_port)).await?;
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        let downstream = tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = server_read.read(&mut buf).await {
                s_log.lock().unwrap().extend_from_slice(&buf[..n]);
                if client_write.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = client_read.read(&mut buf).await {
            c_log.lock().unwrap().extend_from_slice(&buf[..n]);
            if server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        downstream.abort();
        Ok::<_, std::io::Error>(())
    });

    let creds_path = tw.world.creds_path("alice");
    let creds = auth::parse_creds(&std::fs::read_to_string(&creds_path)?).context("creds")?;
    let client = natster_testkit::connect_creds(
        &format!("nats://127.0.0.1:{proxy_port}"),
        &creds_path,
        "alice-via-proxy",
    )
    .await?;
    sync(&client).await?;

    let server_bytes = String::from_utf8(from_server.lock().unwrap().clone())?;
    let client_bytes = String::from_utf8(from_client.lock().unwrap().clone())?;
    let info: serde_json::Value = serde_json::from_str(
        server_bytes
            .lines()
            .find_map(|l| l.strip_prefix("INFO "))
            .context("INFO line")?,
    )?;
    let connect: serde_json::Value = serde_json::from_str(
        client_bytes
            .lines()
            .find_map(|l| l.strip_prefix("CONNECT "))
            .context("CONNECT line")?,
    )?;
    let nonce = info["nonce"].as_str().context("nonce in INFO")?;
    assert_eq!(connect["jwt"].as_str(), Some(creds.jwt.as_str()));
    let signature = BASE64URL_NOPAD.decode(connect["sig"].as_str().context("sig")?.as_bytes())?;
    let user = nkeys::KeyPair::from_public_key(&tw.world.account("alice")?.user.public_key())?;
    user.verify(nonce.as_bytes(), &signature)
        .context("sig is the user key's signature of the server nonce")?;
    assert!(
        !client_bytes.contains(&creds.seed),
        "the seed never crosses the wire"
    );
    assert!(!client_bytes.contains(&creds.seed[..12]));
    assert!(connect.get("pass").is_none_or(|p| p.is_null()));
    Ok(())
}
