//! `natster-global serve` as an operator runs it: settings from flags, environment and a
//! config file; logs without secrets; SIGTERM under load.

use anyhow::{Context, Result};
use natster_global::tooling::bootstrap::{NATSTER, WEB};
use natster_testkit::{call, http_get, init_data, put_event, TestWorld};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A `serve` process whose stderr is collected line by line.
struct Serve {
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Serve {
    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Result<Serve> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_natster-global"));
        let settings = [
            "NATSTER_HTTP_ADDR",
            "NATSTER_CONFIG",
            "NATSTER_MAX_IN_FLIGHT",
        ];
        for variable in natster_testkit::CONNECTION_ENV.iter().chain(&settings) {
            command.env_remove(variable);
        }
        let mut child = command
            .arg("serve")
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().context("stderr")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("lines").push(line);
            }
        });
        Ok(Serve {
            child: Some(child),
            lines,
            reader: Some(reader),
        })
    }

    /// Waits until every line the exited process wrote has been collected (its stderr closed).
    async fn all_lines_read(&mut self) {
        if let Some(reader) = self.reader.take() {
            let _ = tokio::task::spawn_blocking(move || reader.join()).await;
        }
    }

    fn text(&self) -> String {
        self.lines.lock().expect("lines").join("\n")
    }

    /// Waits for a log line containing `needle` and returns it.
    async fn wait_for_line(&self, needle: &str) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(line) = self
                .lines
                .lock()
                .expect("lines")
                .iter()
                .find(|l| l.contains(needle))
            {
                return Ok(line.clone());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "no log line with {needle:?}:\n{}",
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The HTTP address from the log line `http listening`.
    async fn http_addr(&self) -> Result<std::net::SocketAddr> {
        let line = self.wait_for_line("http listening").await?;
        let at = line.find("127.0.0.1:").context("address in the line")?;
        let addr: String = line[at..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
            .collect();
        Ok(addr.parse()?)
    }

    fn signal(&self, name: &str) -> Result<()> {
        let pid = self.child.as_ref().context("running")?.id();
        let status = Command::new("kill")
            .args([format!("-{name}"), pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -{name} failed");
        Ok(())
    }

    async fn wait_exit(&mut self, within: Duration) -> Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("running")?;
        let waited = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + within;
            loop {
                if let Some(status) = child.try_wait()? {
                    return Ok::<_, std::io::Error>(Some(status));
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Ok(None);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
        .await??;
        waited.with_context(|| format!("did not exit within {within:?}:\n{}", self.text()))
    }

    /// Runs to completion (for invalid settings) and returns exit code and stderr.
    async fn finish(mut self) -> Result<(Option<i32>, String)> {
        let status = self.wait_exit(Duration::from_secs(20)).await?;
        self.all_lines_read().await;
        Ok((status.code(), self.text()))
    }
}

/// Environment variables of a run.
type Env<'a> = Vec<(&'a str, &'a str)>;
/// Arguments, environment variables, and what the outcome must show.
type Run<'a, T> = (Vec<&'a str>, Env<'a>, T);

fn service_args(tw: &TestWorld) -> Vec<String> {
    vec![
        "--nats-url".into(),
        tw.server.url(),
        "--creds".into(),
        tw.world.creds_path(NATSTER).display().to_string(),
        "--http-addr".into(),
        "127.0.0.1:0".into(),
        "--xkey-seed-file".into(),
        tw.world.xkey_path().display().to_string(),
        "--web-account".into(),
        tw.key(WEB),
    ]
}

#[tokio::test]
async fn invalid_settings_are_named_on_the_first_line_and_exit_2() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cases: Vec<(Vec<String>, Env, &str)> = vec![
        (vec!["--replicas".into(), "9".into()], vec![], "--replicas"),
        (
            vec![],
            vec![("NATSTER_MAX_IN_FLIGHT", "many")],
            "--max-in-flight",
        ),
        (
            vec!["--web-account".into(), "not-a-key".into()],
            vec![],
            "--web-account",
        ),
        (
            vec!["--config".into(), {
                let path = dir.path().join("typo.toml");
                std::fs::write(&path, "max-in-fligth = 3\n")?;
                path.display().to_string()
            }],
            vec![],
            "unknown setting \"max-in-fligth\"",
        ),
        (
            vec!["--config".into(), {
                let path = dir.path().join("bad.toml");
                std::fs::write(&path, "online-ttl = \"500ms\"\n")?;
                path.display().to_string()
            }],
            vec![],
            "--online-ttl",
        ),
    ];
    for (args, env, named) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, stderr) = Serve::spawn(&args, &env)?.finish().await?;
        assert_eq!(code, Some(2), "{args:?} {env:?}: {stderr}");
        // clap's own messages go on with a hint and usage; the first line says what is wrong.
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("error: ") && first.contains(named),
            "{named}: {stderr}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn flags_beat_environment_beats_config_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ports: Vec<u16> = (0..3)
        .map(|_| natster_testkit::port())
        .collect::<Result<_>>()?;
    let file = dir.path().join("natster.toml");
    std::fs::write(
        &file,
        format!(
            "http-addr = \"127.0.0.1:{}\"\nnats-url = \"nats://127.0.0.1:1\"\n",
            ports[0]
        ),
    )?;
    let config = file.display().to_string();
    let env_addr = format!("127.0.0.1:{}", ports[1]);
    let flag_addr = format!("127.0.0.1:{}", ports[2]);
    let runs: [Run<u16>; 3] = [
        (vec!["--config", &config], vec![], ports[0]),
        (
            vec!["--config", &config],
            vec![("NATSTER_HTTP_ADDR", env_addr.as_str())],
            ports[1],
        ),
        (
            vec!["--config", &config, "--http-addr", &flag_addr],
            vec![("NATSTER_HTTP_ADDR", env_addr.as_str())],
            ports[2],
        ),
    ];
    for (args, env, expected) in runs {
        let serve = Serve::spawn(&args, &env)?;
        let addr = serve.http_addr().await?;
        assert_eq!(addr.port(), expected, "{args:?} {env:?}");
        // Alive while it cannot reach NATS (the file's URL has nothing listening), not ready.
        assert_eq!(http_get(addr, "/healthz").await?.0, 200);
        let (status, body) = http_get(addr, "/readyz").await?;
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("starting"), "{body}");
    }
    Ok(())
}

#[tokio::test]
async fn logs_hold_no_secrets_and_one_span_per_request() -> Result<()> {
    let tw = TestWorld::start().await?;
    let args = service_args(&tw);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend(["--log-format", "json"]);
    let mut serve = Serve::spawn(&args, &[("RUST_LOG", "debug")])?;
    serve.wait_for_line("\"serving\"").await?;

    let (alice, web) = (tw.connect("alice").await?, tw.connect(WEB).await?);
    let a = tw.key("alice");
    let token = "gho_SECRET_access_token_4f1c2a9d";
    let init = put_event(&alice, "natster_initialized", "none", "none", init_data(&a)).await?;
    assert_eq!(init.code, 200, "{init:?}");
    let context = json!({
        "team_id": "t", "system_id": "s", "account_id": "acc-id", "account_name": "alice",
        "account_public_key": a, "access_token": token, "user_id": "u", "creds": "/x.creds"
    });
    let generated = call(&alice, "otc.generate", serde_json::to_vec(&context)?, None).await?;
    assert_eq!(generated.code, 200, "{generated:?}");
    let code = generated.data["code"].as_str().context("code")?.to_string();
    let claimed = call(
        &web,
        "otc.claim",
        serde_json::to_vec(&json!({"code": code, "oauth_id": "github|42"}))?,
        None,
    )
    .await?;
    assert_eq!(claimed.code, 200, "{claimed:?}");
    let again = call(
        &web,
        "otc.claim",
        serde_json::to_vec(&json!({"code": code, "oauth_id": "github|42"}))?,
        None,
    )
    .await?;
    assert_eq!(again.code, 404);
    serve.signal("TERM")?;
    assert!(serve.wait_exit(Duration::from_secs(15)).await?.success());
    serve.all_lines_read().await;

    let logs = serve.text();
    let creds = std::fs::read_to_string(tw.world.creds_path(NATSTER))?;
    let user_seed = creds
        .lines()
        .find(|l| l.starts_with("SU"))
        .context("a user seed in the creds")?;
    let xkey_seed = std::fs::read_to_string(tw.world.xkey_path())?;
    for (what, secret) in [
        ("access token", token),
        ("one-time code", code.as_str()),
        ("user seed", user_seed.trim()),
        ("xkey seed", xkey_seed.trim()),
    ] {
        assert!(!logs.contains(secret), "the {what} appears in the logs");
    }
    // Every line is JSON; each request has its span with op, caller and outcome.
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("JSON log lines")?;
    let rejected = lines
        .iter()
        .find(|l| l["fields"]["message"] == "request rejected")
        .context("the second claim is logged as rejected")?;
    assert_eq!(rejected["span"]["op"], "otc.claim");
    assert_eq!(rejected["span"]["code"], 404);
    assert_eq!(rejected["span"]["caller"], tw.key(WEB).as_str());
    assert!(rejected["fields"]["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("unknown, expired or already used"));
    let answered: Vec<&str> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "answered")
        .filter_map(|l| l["span"]["op"].as_str())
        .collect();
    assert_eq!(answered, ["events.put", "otc.generate", "otc.claim"]);
    Ok(())
}

#[tokio::test]
async fn sigterm_under_load_answers_every_request_it_took_and_exits_0() -> Result<()> {
    let tw = TestWorld::start().await?;
    let args = service_args(&tw);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend(["--log-format", "json", "--shutdown-timeout", "10s"]);
    let mut serve = Serve::spawn(&args, &[("RUST_LOG", "natster_global=debug")])?;
    serve.wait_for_line("\"serving\"").await?;

    let alice = tw.connect("alice").await?;
    let replies = Arc::new(AtomicU64::new(0));
    let no_responders = Arc::new(AtomicU64::new(0));
    let unanswered = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut load = Vec::new();
    for worker in 0..16 {
        let (alice, stop) = (alice.clone(), stop.clone());
        let (replies, no_responders, unanswered) =
            (replies.clone(), no_responders.clone(), unanswered.clone());
        load.push(tokio::spawn(async move {
            let op = if worker % 2 == 0 { "stats" } else { "whoami" };
            while !stop.is_cancelled() {
                let request = alice.request(format!("natster.global.{op}"), "".into());
                match tokio::time::timeout(Duration::from_secs(3), request).await {
                    Ok(Ok(_)) => replies.fetch_add(1, Ordering::Relaxed),
                    Ok(Err(error))
                        if error.kind() == async_nats::RequestErrorKind::NoResponders =>
                    {
                        no_responders.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => unanswered.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while replies.load(Ordering::Relaxed) < 500 {
        anyhow::ensure!(Instant::now() < deadline, "the load never got going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let signalled = Instant::now();
    serve.signal("TERM")?;
    let status = serve.wait_exit(Duration::from_secs(20)).await?;
    let took = signalled.elapsed();
    // Requests sent after the exit find no responders.
    let after_exit = no_responders.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(10);
    while no_responders.load(Ordering::Relaxed) < after_exit + 16 {
        anyhow::ensure!(Instant::now() < deadline, "no answers after the exit");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    for worker in load {
        worker.await?;
    }
    serve.all_lines_read().await;

    eprintln!(
        "replies {} no-responders {} unanswered {} stopped in {took:?}",
        replies.load(Ordering::Relaxed),
        no_responders.load(Ordering::Relaxed),
        unanswered.load(Ordering::Relaxed)
    );
    assert!(status.success(), "exit status {status}:\n{}", serve.text());
    assert!(took < Duration::from_secs(10), "stopped in {took:?}");
    let logs = serve.text();
    let handled = logs
        .lines()
        .filter(|l| {
            l.contains(r#""message":"answered""#)
                || l.contains(r#""message":"request rejected""#)
                || l.contains(r#""message":"request refused""#)
        })
        .count() as u64;
    let (replies, unanswered) = (
        replies.load(Ordering::Relaxed),
        unanswered.load(Ordering::Relaxed),
    );
    // Every request the service took was answered and the answer arrived.
    assert_eq!(handled, replies, "{unanswered} requests went unanswered");
    // Requests the client library had in transit while the endpoints unsubscribed are the
    // only ones that can go unanswered (async-nats drops messages for a subscription it has
    // removed); they never reached a handler, so they are not counted above.
    assert!(unanswered <= 16, "{unanswered} requests unanswered");
    assert!(logs.contains("\"stopped\""), "{logs}");
    Ok(())
}

#[tokio::test]
async fn share_limits_whose_records_exceed_max_payload_are_refused_at_start_with_exit_2(
) -> Result<()> {
    let tw = TestWorld::start().await?;
    let mut args = service_args(&tw);
    args.extend(["--max-in-shares".into(), "20000".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stderr) = Serve::spawn(&args, &[("RUST_LOG", "warn")])?
        .finish()
        .await?;
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.starts_with("error: ")
            && stderr.contains("--max-in-shares")
            && stderr.contains("max_payload of 1048576 bytes"),
        "{stderr}"
    );
    // The defaults start on the same server.
    let args = service_args(&tw);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let serve = Serve::spawn(&args, &[])?;
    serve.wait_for_line("serving").await?;
    Ok(())
}

#[tokio::test]
async fn text_logs_to_a_pipe_carry_no_colour_codes() -> Result<()> {
    let tw = TestWorld::start().await?;
    let args = service_args(&tw);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend(["--log-format", "text"]);
    let mut serve = Serve::spawn(&args, &[("RUST_LOG", "info")])?;
    serve.wait_for_line("serving").await?;
    serve.signal("TERM")?;
    assert!(serve.wait_exit(Duration::from_secs(15)).await?.success());
    serve.all_lines_read().await;
    let logs = serve.text();
    assert!(logs.contains(" INFO "), "levels are plain words: {logs}");
    assert!(!logs.contains('\u{1b}'), "no ANSI escape codes: {logs:?}");
    Ok(())
}

#[tokio::test]
async fn serve_without_an_xkey_warns_that_code_and_context_ops_will_fail() -> Result<()> {
    let tw = TestWorld::start().await?;
    let with_key = service_args(&tw);
    // The same service, without `--xkey-seed-file` and its value.
    let at = with_key
        .iter()
        .position(|a| a == "--xkey-seed-file")
        .context("flag")?;
    let args: Vec<&str> = with_key
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != at && *i != at + 1)
        .map(|(_, a)| a.as_str())
        .collect();
    let mut serve = Serve::spawn(&args, &[])?;
    let warning = serve.wait_for_line("no --xkey-seed-file").await?;
    assert!(
        warning.contains("WARN") && warning.contains("otc.generate") && warning.contains("503"),
        "{warning}"
    );
    serve.wait_for_line("serving").await?;
    serve.signal("TERM")?;
    assert!(serve.wait_exit(Duration::from_secs(15)).await?.success());

    // With the key, no such warning.
    let args: Vec<&str> = with_key.iter().map(String::as_str).collect();
    let mut serve = Serve::spawn(&args, &[])?;
    serve.wait_for_line("serving").await?;
    serve.signal("TERM")?;
    assert!(serve.wait_exit(Duration::from_secs(15)).await?.success());
    serve.all_lines_read().await;
    assert!(
        !serve.text().contains("no --xkey-seed-file"),
        "{}",
        serve.text()
    );
    Ok(())
}

/// A `serve` pointed at a port nothing listens on: it waits for NATS (retrying for ever) with
/// its HTTP listener up.
async fn serve_waiting_for_nats(tw: &TestWorld) -> Result<Serve> {
    let nowhere = format!("nats://127.0.0.1:{}", natster_testkit::port()?);
    let creds = tw.world.creds_path(NATSTER).display().to_string();
    let args = [
        "--nats-url",
        &nowhere,
        "--creds",
        &creds,
        "--http-addr",
        "127.0.0.1:0",
    ];
    let serve = Serve::spawn(&args, &[("RUST_LOG", "info")])?;
    serve.wait_for_line("http listening").await?;
    Ok(serve)
}

#[tokio::test]
async fn sigterm_while_waiting_for_nats_exits_0() -> Result<()> {
    let tw = TestWorld::start().await?;
    let mut serve = serve_waiting_for_nats(&tw).await?;
    serve.signal("TERM")?;
    let status = serve.wait_exit(Duration::from_secs(10)).await?;
    assert!(status.success(), "exit status {status}: {}", serve.text());
    serve.all_lines_read().await;
    assert!(
        serve.text().contains("stopped before serving"),
        "{}",
        serve.text()
    );
    Ok(())
}

#[tokio::test]
async fn serve_runs_without_transparent_huge_pages() -> Result<()> {
    let tw = TestWorld::start().await?;
    let mut serve = serve_waiting_for_nats(&tw).await?;
    let pid = serve.child.as_ref().context("running")?.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let thp = status
        .lines()
        .find_map(|line| line.strip_prefix("THP_enabled:"))
        .context("the kernel reports THP_enabled")?;
    assert_eq!(thp.trim(), "0", "{status}");
    serve.signal("TERM")?;
    let exit = serve.wait_exit(Duration::from_secs(10)).await?;
    assert!(exit.success(), "exit status {exit}: {}", serve.text());
    Ok(())
}
