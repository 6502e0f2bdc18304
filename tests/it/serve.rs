//! The service on a real server with real accounts: whoami, the envelope and its error headers,
//! idempotent and non-destructive resources, bad input, and the `serve` binary's connection
//! options and graceful exit on signals.

use anyhow::{Context, Result};
use async_nats::jetstream;
use natster_global::contract::Envelope;
use natster_global::contract::PROJ_ACCOUNT_BUCKET;
use natster_global::model::AccountRecord;
use natster_global::service::GlobalService;
use natster_global::service::ServiceConfig;
use natster_global::test_util::EVENTS_STREAM;
use natster_global::tooling::bootstrap::NATSTER;
use natster_testkit::TestWorld;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

async fn start_service(tw: &TestWorld) -> Result<GlobalService> {
    Ok(GlobalService::start(tw.connect(NATSTER).await?, ServiceConfig::default()).await?)
}

async fn call(
    client: &async_nats::Client,
    op: &str,
    payload: &str,
) -> Result<(Envelope, async_nats::Message)> {
    let reply = client
        .request(format!("natster.global.{op}"), payload.to_string().into())
        .await?;
    Ok((serde_json::from_slice(&reply.payload)?, reply))
}

#[tokio::test]
async fn whoami_is_404_until_initialised_then_names_the_caller() -> Result<()> {
    let tw = TestWorld::start().await?;
    let service = start_service(&tw).await?;
    let alice = tw.connect("alice").await?;
    let bob = tw.connect("bob").await?;

    let (envelope, reply) = call(&alice, "whoami", "").await?;
    assert_eq!(envelope.code, 404);
    assert!(envelope
        .error
        .as_deref()
        .unwrap_or_default()
        .contains("not initialised"));
    assert_eq!(envelope.data, serde_json::Value::Null);
    let raw: serde_json::Value = serde_json::from_slice(&reply.payload)?;
    assert_eq!(
        raw.as_object().map(|o| o.len()),
        Some(3),
        "code, error, data: {raw}"
    );
    let headers = reply.headers.context("error headers")?;
    assert_eq!(
        headers.get("Nats-Service-Error-Code").map(|v| v.as_str()),
        Some("404")
    );
    assert!(headers.get("Nats-Service-Error").is_some());

    // The account projection says alice initialised (the projector comes with the event core).
    let js = jetstream::new(tw.connect(NATSTER).await?);
    let accounts = js.get_key_value(PROJ_ACCOUNT_BUCKET).await?;
    let record = AccountRecord {
        account_key: tw.key("alice"),
        initialized_at: 1_700_000_000,
        out_shares: vec![],
        in_shares: vec![],
        oauth_id: Some("github|42".into()),
        applied_seq: 1,
    };
    accounts
        .put(tw.key("alice"), serde_json::to_vec(&record)?.into())
        .await?;

    // `whoami` reads the instance's account cache, which holds alice's record as absent
    // since the call above until its watch of the bucket delivers the put.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let (envelope, reply) = loop {
        let (envelope, reply) = call(&alice, "whoami", "").await?;
        if envelope.code != 404 || tokio::time::Instant::now() >= deadline {
            break (envelope, reply);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(envelope.code, 200);
    assert!(reply
        .headers
        .is_none_or(|h| h.get("Nats-Service-Error").is_none()));
    assert_eq!(
        envelope.data,
        serde_json::json!({"account_key": tw.key("alice"), "oauth_id": "github|42", "initialized": 1_700_000_000})
    );
    let raw: serde_json::Value = serde_json::from_slice(&reply.payload)?;
    assert!(
        raw.get("error").is_none(),
        "success has no error key: {raw}"
    );
    // Bob's identity is his own, whatever alice did.
    assert_eq!(call(&bob, "whoami", "").await?.0.code, 404);

    service.stop().await?;
    Ok(())
}

#[tokio::test]
async fn bad_input_gets_an_envelope_and_unknown_ops_get_no_responders() -> Result<()> {
    let tw = TestWorld::start().await?;
    let service = start_service(&tw).await?;
    let alice = tw.connect("alice").await?;

    let too_big = "x".repeat(64 * 1024 + 1);
    let (envelope, _) = call(&alice, "whoami", &too_big).await?;
    assert_eq!(envelope.code, 413);

    let unknown = alice.request("natster.global.nope", "".into()).await;
    assert_eq!(
        unknown.expect_err("unknown op").kind(),
        async_nats::RequestErrorKind::NoResponders
    );

    // Inside the service account nothing rewrites token 1: a subject that does not start with
    // an account key is refused.
    let insider = tw.connect(NATSTER).await?;
    let reply = insider
        .request("not-a-key.natster.global.whoami", "".into())
        .await?;
    let envelope: Envelope = serde_json::from_slice(&reply.payload)?;
    assert_eq!(envelope.code, 400);

    // Still serving.
    assert_eq!(call(&alice, "whoami", "").await?.0.code, 404);
    service.stop().await?;
    Ok(())
}

#[tokio::test]
async fn resources_are_created_once_and_an_existing_log_is_adopted_untouched() -> Result<()> {
    let tw = TestWorld::start().await?;
    let js = jetstream::new(tw.connect(NATSTER).await?);
    // An event log from an earlier deployment, with other limits and data in it.
    js.create_stream(jetstream::stream::Config {
        name: EVENTS_STREAM.into(),
        subjects: vec!["natster.events.>".into()],
        max_messages: 1000,
        ..Default::default()
    })
    .await?;
    js.publish(
        "natster.events.A.none.none.natster_initialized",
        "{}".into(),
    )
    .await?
    .await?;

    // Two instances start at once; both come up.
    let (first, second) = tokio::join!(start_service(&tw), start_service(&tw));
    let (first, second) = (first?, second?);
    let mut stream = js.get_stream(EVENTS_STREAM).await?;
    let info = stream.info().await?;
    assert_eq!(
        info.config.max_messages, 1000,
        "existing config is not altered"
    );
    assert_eq!(info.state.messages, 1, "existing data is kept");
    assert!(js.get_key_value(PROJ_ACCOUNT_BUCKET).await.is_ok());
    first.stop().await?;
    second.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_new_event_log_is_append_only() -> Result<()> {
    let tw = TestWorld::start().await?;
    let service = start_service(&tw).await?;
    let js = jetstream::new(tw.connect(NATSTER).await?);
    let mut stream = js.get_stream(EVENTS_STREAM).await?;
    let config = stream.info().await?.config.clone();
    assert!(config.deny_delete && config.deny_purge);
    assert_eq!(config.discard, jetstream::stream::DiscardPolicy::New);
    assert_eq!(config.storage, jetstream::stream::StorageType::File);
    assert!(config.duplicate_window >= Duration::from_secs(60));
    js.publish(
        "natster.events.A.none.none.natster_initialized",
        "{}".into(),
    )
    .await?
    .await?;
    assert!(stream.purge().await.is_err(), "purge is denied");
    assert!(stream.delete_message(1).await.is_err(), "delete is denied");
    service.stop().await?;
    Ok(())
}

/// Starts the binary with `serve`, waits for its "serving" log line, and returns it with the
/// rest of its stderr being collected.
fn spawn_serve(
    tw: &TestWorld,
    configure: impl FnOnce(&mut Command),
) -> Result<std::process::Child> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_natster-global"));
    command
        .args([
            "serve",
            "--http-addr",
            "127.0.0.1:0",
            "--nats-url",
            &tw.server.url(),
        ])
        .env_remove("NATS_CREDS")
        .env_remove("USER_JWT")
        .env_remove("USER_SEED")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    configure(&mut command);
    let mut child = command.spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent && line.contains("serving") {
                sent = tx.send(()).is_ok();
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .context("the service did not log that it is serving")?;
    Ok(child)
}

fn signal(child: &std::process::Child, name: &str) -> Result<()> {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -{name} failed");
    Ok(())
}

async fn wait_exit(mut child: std::process::Child) -> Result<std::process::ExitStatus> {
    tokio::task::spawn_blocking(move || -> Result<_> {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                child.kill()?;
                anyhow::bail!("did not exit within 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await?
}

#[tokio::test]
async fn serve_with_a_creds_file_answers_and_exits_0_on_sigterm() -> Result<()> {
    let tw = TestWorld::start().await?;
    let creds = tw.world.creds_path(NATSTER);
    let child = spawn_serve(&tw, |c| {
        c.arg("--creds").arg(&creds);
    })?;
    let alice = tw.connect("alice").await?;
    assert_eq!(call(&alice, "whoami", "").await?.0.code, 404);

    signal(&child, "TERM")?;
    let status = wait_exit(child).await?;
    assert!(status.success(), "exit status {status}");
    let after = alice.request("natster.global.whoami", "".into()).await;
    assert_eq!(
        after.expect_err("stopped").kind(),
        async_nats::RequestErrorKind::NoResponders
    );
    Ok(())
}

#[tokio::test]
async fn serve_accepts_user_jwt_and_seed_from_the_environment_and_exits_0_on_sigint() -> Result<()>
{
    let tw = TestWorld::start().await?;
    let account = tw.world.account(NATSTER)?;
    let (jwt, seed) = (account.user_jwt.clone(), account.user.seed()?);
    let child = spawn_serve(&tw, |c| {
        c.env("USER_JWT", &jwt).env("USER_SEED", &seed);
    })?;
    let bob = tw.connect("bob").await?;
    assert_eq!(call(&bob, "whoami", "").await?.0.code, 404);
    signal(&child, "INT")?;
    assert!(wait_exit(child).await?.success());
    Ok(())
}

#[tokio::test]
async fn serve_refuses_a_creds_file_others_can_read() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tw = TestWorld::start().await?;
    let creds = tw.world.creds_path(NATSTER);
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o644))?;
    let output = Command::new(env!("CARGO_BIN_EXE_natster-global"))
        .args([
            "serve",
            "--http-addr",
            "127.0.0.1:0",
            "--nats-url",
            &tw.server.url(),
            "--creds",
        ])
        .arg(&creds)
        .env_remove("USER_JWT")
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("chmod 600"), "{stderr}");
    Ok(())
}
