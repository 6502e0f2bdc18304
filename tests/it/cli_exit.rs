//! Every subcommand's exit codes as README documents them (0 success, 1 failed while running,
//! 2 bad command line or setting, found before connecting, 3/4 a refused/failed `call`,
//! 5 no connection), clap's whole messages, and a closed stdout that ends a command quietly.

use anyhow::{Context, Result};
use natster_global::service::{GlobalService, ServiceConfig};
use natster_global::tooling::bootstrap::NATSTER;
use natster_testkit::TestWorld;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// The binary with none of the connection variables of the environment, and `home` as the
/// place to look for nats contexts.
fn natster_global(home: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_natster-global"));
    for variable in natster_testkit::CONNECTION_ENV {
        command.env_remove(variable);
    }
    command.env("XDG_CONFIG_HOME", home).env("HOME", home);
    command
}

fn run(home: &Path, args: &[&str]) -> Result<Output> {
    Ok(natster_global(home)
        .args(args)
        .stdin(Stdio::null())
        .output()?)
}

/// Runs `args` with a stdout whose reader is already gone.
fn run_into_closed_pipe(home: &Path, args: &[&str]) -> Result<Output> {
    let (reader, writer) = std::io::pipe()?;
    drop(reader);
    let child = natster_global(home)
        .args(args)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()?;
    Ok(child.wait_with_output()?)
}

/// A server with the service running in this process, and a home for nats contexts.
struct Running {
    tw: TestWorld,
    service: GlobalService,
    home: tempfile::TempDir,
}

impl Running {
    async fn start() -> Result<Running> {
        let tw = TestWorld::start().await?;
        let service =
            GlobalService::start(tw.connect(NATSTER).await?, ServiceConfig::default()).await?;
        Ok(Running {
            tw,
            service,
            home: tempfile::tempdir()?,
        })
    }

    fn creds(&self, account: &str) -> String {
        self.tw.world.creds_path(account).display().to_string()
    }

    async fn stop(self) -> Result<()> {
        self.service.stop().await?;
        Ok(())
    }
}

/// A port nothing listens on.
fn closed_port_url() -> Result<String> {
    let port = natster_testkit::port()?;
    Ok(format!("nats://127.0.0.1:{port}"))
}

// Multi-threaded: the commands run blocking while the service in this process answers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_exits_with_the_documented_code() -> Result<()> {
    let running = Running::start().await?;
    let (home, url, alice, natster) = (
        running.home.path(),
        running.tw.server.url(),
        running.creds("alice"),
        running.creds(NATSTER),
    );
    let open_creds = home.join("open.creds");
    std::fs::copy(&alice, &open_creds)?;
    std::fs::set_permissions(&open_creds, std::fs::Permissions::from_mode(0o644))?;
    let open_creds = open_creds.display().to_string();
    let nowhere = closed_port_url()?;
    let world_dir = home.join("world");
    let world_dir = world_dir.display().to_string();
    assert_eq!(
        run(home, &["bootstrap", "--out", &world_dir])?
            .status
            .code(),
        Some(0)
    );

    // (command line, exit code, what stderr must name); {url}, {nowhere}, {alice}, {natster},
    // {open} (creds others can read) and {world} are filled in.
    let table = [
        ("call stats --nats-url {url} --creds {alice}", 0, ""),
        ("call whoami --nats-url {url} --creds {alice}", 3, "404"),
        ("call", 2, "<OP>"),
        ("call whoami --cred {alice}", 2, "'--creds'"),
        (
            "call whoami --nats-url {url} --creds /nonexistent.creds",
            2,
            "/nonexistent.creds",
        ),
        (
            "call whoami --nats-url {url} --creds {open}",
            2,
            "others can read",
        ),
        ("call whoami --context nope", 2, "nope"),
        (
            "call whoami --timeout 0s --nats-url {url} --creds {alice}",
            2,
            "greater than zero",
        ),
        (
            "call whoami --output table --nats-url {url} --creds {alice}",
            2,
            "--output table shows only",
        ),
        (
            "call stats --nats-url {url} --creds {alice} --tls-ca-file /nonexistent-ca.pem",
            2,
            "/nonexistent-ca.pem",
        ),
        (
            "call stats --nats-url {nowhere} --creds {alice}",
            5,
            "cannot connect",
        ),
        (
            "projections rebuild --projection nope --nats-url {nowhere} --creds {natster}",
            2,
            "unknown projection",
        ),
        (
            "projections parked --projection nope --nats-url {nowhere} --creds {natster}",
            2,
            "unknown projection",
        ),
        (
            "projections status --nats-url {url} --creds {alice}",
            1,
            "service account's creds",
        ),
        (
            "projections status --nats-url {nowhere} --creds {natster}",
            5,
            "cannot connect",
        ),
        (
            "projections status --nats-url {url} --creds {open}",
            2,
            "others can read",
        ),
        (
            "projections status --nats-url {url} --creds {natster}",
            0,
            "",
        ),
        ("bootstrap --out {world}", 2, "--force"),
        (
            "bootstrap --out {world} --users Not_Valid",
            2,
            "invalid user account name",
        ),
        ("serve --replicas 9", 2, "--replicas"),
        (
            "serve --nats-url {url} --creds {open}",
            2,
            "others can read",
        ),
        ("schemas --bogus", 2, "--bogus"),
        ("dev --replicas 9", 2, "--replicas"),
        (
            "dev --dir {world} --web-account not-a-key",
            2,
            "--web-account",
        ),
    ];
    let fill = |line: &str| {
        line.replace("{url}", &url)
            .replace("{nowhere}", &nowhere)
            .replace("{alice}", &alice)
            .replace("{natster}", &natster)
            .replace("{open}", &open_creds)
            .replace("{world}", &world_dir)
    };
    let cases: Vec<(String, i32, &str)> = table
        .iter()
        .map(|(line, code, named)| (fill(line), *code, *named))
        .collect();
    let mut wrong = Vec::new();
    for (line, code, named) in &cases {
        let args: Vec<&str> = line.split_whitespace().collect();
        let output = run(home, &args)?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        let ok = output.status.code() == Some(*code)
            && stderr.contains(named)
            && !stderr.contains("panicked")
            && (*code == 0 || stderr.starts_with("error: "))
            && !stderr.contains("Error: ");
        if !ok {
            wrong.push(format!(
                "{args:?}: exit {:?}, stderr {stderr}",
                output.status.code()
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // The commands that print results print nothing of the NATS client's on stderr.
    let status = run(
        home,
        &[
            "projections",
            "status",
            "--nats-url",
            &url,
            "--creds",
            &natster,
        ],
    )?;
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(stderr.trim().is_empty(), "{stderr}");
    running.stop().await
}

#[tokio::test]
async fn clap_messages_keep_their_hints_and_usage() -> Result<()> {
    let home = tempfile::tempdir()?;
    let home = home.path();
    let missing = run(home, &["call"])?;
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("<OP>") && stderr.contains("Usage:"),
        "{stderr}"
    );
    let typo = run(home, &["call", "whoami", "--cred", "x"])?;
    let stderr = String::from_utf8_lossy(&typo.stderr);
    assert!(
        stderr.contains("tip:") && stderr.contains("'--creds'"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_a_command_quietly() -> Result<()> {
    let running = Running::start().await?;
    let (home, url, alice, natster) = (
        running.home.path(),
        running.tw.server.url(),
        running.creds("alice"),
        running.creds(NATSTER),
    );
    for args in [
        vec!["--help"],
        vec!["call", "--help"],
        vec!["--version"],
        vec![
            "call",
            "my.shares",
            "--output",
            "table",
            "--nats-url",
            &url,
            "--creds",
            &alice,
        ],
        vec!["call", "stats", "--nats-url", &url, "--creds", &alice],
        vec![
            "projections",
            "status",
            "--nats-url",
            &url,
            "--creds",
            &natster,
        ],
        vec!["schemas", "--out", home.to_str().context("utf-8")?],
    ] {
        let output = run_into_closed_pipe(home, &args)?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stderr.trim().is_empty(), "{args:?}: {stderr}");
    }
    running.stop().await
}
