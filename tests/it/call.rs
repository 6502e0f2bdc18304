//! `natster-global call` as a person at a terminal uses it: creds or a nats CLI context, JSON
//! or tables, exit codes that tell success, refusal, failure and no connection apart, and
//! `call watch` following the feed.

use anyhow::{Context, Result};
use natster_testkit::{init_data, Harness};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn natster_global(config_home: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_natster-global"));
    for variable in natster_testkit::CONNECTION_ENV {
        command.env_remove(variable);
    }
    command.env("XDG_CONFIG_HOME", config_home);
    command
}

struct Caller<'a> {
    url: String,
    creds: String,
    home: &'a Path,
}

impl Caller<'_> {
    async fn run(&self, args: &[&str]) -> Result<Output> {
        let mut all = vec!["call"];
        all.extend_from_slice(args);
        all.extend(["--nats-url", &self.url, "--creds", &self.creds]);
        Ok(natster_global(self.home).args(all).output().await?)
    }

    async fn json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let output = self.run(args).await?;
        anyhow::ensure!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(serde_json::from_slice(&output.stdout)?)
    }
}

#[tokio::test]
async fn a_session_with_call() -> Result<()> {
    let h = Harness::start(&["alice", "bob"]).await?;
    let home = tempfile::tempdir()?;
    let creds = |name: &str| h.tw.world.creds_path(name).display().to_string();
    let alice = Caller {
        url: h.tw.server.url(),
        creds: creds("alice"),
        home: home.path(),
    };
    let (a, b) = (h.key("alice"), h.key("bob"));

    let before = alice.run(&["whoami"]).await?;
    assert_eq!(
        before.status.code(),
        Some(3),
        "404 is a client error: {}",
        String::from_utf8_lossy(&before.stderr)
    );
    assert!(String::from_utf8_lossy(&before.stderr).contains("404"));

    let init = serde_json::json!({"catalog":"none","target":"none","event_type":"natster_initialized","data":init_data(&a)});
    let seq = alice.json(&["events.put", &init.to_string()]).await?["seq"]
        .as_u64()
        .context("seq")?;
    let who = alice
        .json(&["whoami", "--min-seq", &seq.to_string()])
        .await?;
    assert_eq!(who["account_key"], a.as_str());
    let bob_init = serde_json::json!({"catalog":"none","target":"none","event_type":"natster_initialized","data":init_data(&b)});
    let bob = Caller {
        creds: creds("bob"),
        ..Caller {
            url: alice.url.clone(),
            creds: String::new(),
            home: home.path(),
        }
    };
    bob.json(&["events.put", &bob_init.to_string()]).await?;
    let share = serde_json::json!({"catalog":"films","target":b,"event_type":"catalog_shared"});
    let shared = alice.json(&["events.put", &share.to_string()]).await?["seq"]
        .as_u64()
        .context("seq")?;

    let table = alice
        .run(&[
            "my.shares",
            "--output",
            "table",
            "--min-seq",
            &shared.to_string(),
        ])
        .await?;
    assert!(table.status.success());
    let text = String::from_utf8(table.stdout)?;
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("CATALOG") && lines[0].contains("REVISION"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("films") && lines[1].contains(&b) && lines[1].contains("offline"),
        "{text}"
    );
    let stats = alice
        .run(&[
            "stats",
            "--output",
            "table",
            "--min-seq",
            &shared.to_string(),
        ])
        .await?;
    let text = String::from_utf8(stats.stdout)?;
    assert!(
        text.starts_with("STATISTIC") && text.lines().next().is_some_and(|l| l.ends_with("VALUE")),
        "{text}"
    );
    assert!(
        text.contains("active shares") && text.contains("initialized accounts"),
        "{text}"
    );
    let valid = alice.json(&["catalogs.validatename", "music"]).await?;
    assert_eq!(valid["valid"], true);

    // Refused, failed, unusable, unreachable.
    let refused = alice
        .run(&["otc.claim", r#"{"code":"x","oauth_id":"y"}"#])
        .await?;
    assert_eq!(refused.status.code(), Some(3));
    let failed = alice.run(&["whoami", "--min-seq", "999999999"]).await?;
    assert_eq!(failed.status.code(), Some(4), "503 is a server error");
    let unusable = alice.run(&["events.put", "{not json"]).await?;
    assert_eq!(unusable.status.code(), Some(2));
    let unknown = alice.run(&["frobnicate"]).await?;
    assert_eq!(unknown.status.code(), Some(2));
    let unreachable = natster_global(home.path())
        .args([
            "call",
            "stats",
            "--nats-url",
            "nats://127.0.0.1:1",
            "--creds",
            &alice.creds,
        ])
        .output()
        .await?;
    assert_eq!(unreachable.status.code(), Some(5));

    // The nats CLI's selected context is used when nothing else names a server.
    let contexts = home.path().join("nats").join("context");
    std::fs::create_dir_all(&contexts)?;
    std::fs::write(
        contexts.join("bob.json"),
        serde_json::json!({"description":"","url":alice.url,"creds":bob.creds}).to_string(),
    )?;
    std::fs::write(home.path().join("nats").join("context.txt"), "bob")?;
    let output = natster_global(home.path())
        .args(["call", "whoami"])
        .output()
        .await?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let who: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(who["account_key"], b.as_str());
    // Named explicitly, by flag or by NATS_CONTEXT, a context beats the selected one.
    std::fs::write(
        contexts.join("alice.json"),
        serde_json::json!({"url":alice.url,"creds":alice.creds}).to_string(),
    )?;
    for named in [
        natster_global(home.path())
            .args(["call", "whoami", "--context", "alice"])
            .output()
            .await?,
        natster_global(home.path())
            .args(["call", "whoami"])
            .env("NATS_CONTEXT", "alice")
            .output()
            .await?,
    ] {
        assert!(
            named.status.success(),
            "{}",
            String::from_utf8_lossy(&named.stderr)
        );
        let who: serde_json::Value = serde_json::from_slice(&named.stdout)?;
        assert_eq!(who["account_key"], a.as_str());
    }
    h.stop().await
}

#[tokio::test]
async fn call_watch_follows_the_feed_until_ctrl_c() -> Result<()> {
    let h = Harness::start(&["alice", "bob"]).await?;
    let home = tempfile::tempdir()?;
    let (a, b) = (h.key("alice"), h.key("bob"));
    let mut watch = std::process::Command::new(env!("CARGO_BIN_EXE_natster-global"))
        .env("XDG_CONFIG_HOME", home.path())
        .args(["call", "watch", "--nats-url", &h.tw.server.url(), "--creds"])
        .arg(h.tw.world.creds_path("bob"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = watch.stderr.take().context("stderr")?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("watching") {
                let _ = ready_tx.send(());
            }
        }
    });
    let stdout = watch.stdout.take().context("stdout")?;
    let (line_tx, line_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(30))
        .context("call watch never started")?;

    let alice = h.connect("alice").await?;
    let bob = h.connect("bob").await?;
    natster_testkit::seq_of(
        &natster_testkit::put_event(&alice, "natster_initialized", "none", "none", init_data(&a))
            .await?,
    )?;
    natster_testkit::seq_of(
        &natster_testkit::put_event(&bob, "natster_initialized", "none", "none", init_data(&b))
            .await?,
    )?;
    natster_testkit::seq_of(
        &natster_testkit::put_event(
            &alice,
            "catalog_shared",
            "films",
            &b,
            serde_json::Value::Null,
        )
        .await?,
    )?;
    let line = tokio::task::spawn_blocking(move || line_rx.recv_timeout(Duration::from_secs(10)))
        .await?
        .context("a feed line")?;
    let message: serde_json::Value = serde_json::from_str(&line)?;
    assert_eq!(message["kind"], "catalog_shared");
    assert_eq!(message["message"]["from_account"], a.as_str());

    let status = Command::new("kill")
        .args(["-INT", &watch.id().to_string()])
        .status()?;
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || watch.wait()).await??;
    assert!(exit.success(), "exit 0 on Ctrl-C: {exit}");
    h.stop().await
}
