//! The `bootstrap` and `dev` subcommands as a newcomer runs them.

use anyhow::{Context, Result};
use natster_global::tooling::bootstrap::{read_index, NATSTER};
use natster_global::tooling::natsd::{free_port, NatsServer, ServerSpec};
use natster_testkit::connect_creds;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Kills the child if the test fails before it stops it.
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn natster_global() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_natster-global"));
    command
        .env_remove("NATS_URL")
        .env_remove("NATS_CREDS")
        .env_remove("USER_JWT")
        .env_remove("USER_SEED");
    command
}

#[tokio::test]
async fn bootstrap_writes_a_world_that_a_real_server_accepts() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("world");
    let status = natster_global()
        .args(["bootstrap", "--users", "carol,dave", "--out"])
        .arg(&out)
        .stdout(Stdio::null())
        .status()?;
    assert!(status.success());
    let index = read_index(&out)?;
    let names: Vec<&str> = index.accounts.keys().map(String::as_str).collect();
    assert_eq!(names, ["HUB", "NATSTER", "SYS", "WEB", "carol", "dave"]);
    assert_eq!(index.service_account, index.accounts[NATSTER].public_key);
    assert!(index.xkey_seed_file.exists());
    let xkey = std::fs::read_to_string(&index.xkey_seed_file)?;
    assert!(nkeys::XKey::from_seed(xkey.trim()).is_ok());

    // Refuses to overwrite without --force, and says how.
    let again = natster_global()
        .args(["bootstrap", "--out"])
        .arg(&out)
        .output()?;
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert_eq!(read_index(&out)?, index, "the world is unchanged");

    // The written config runs a real server in operator mode; every account's creds connect
    // and the service account has JetStream.
    let server = NatsServer::start(ServerSpec {
        config: Some(index.server_config.clone()),
        ..Default::default()
    })
    .await?;
    for (name, entry) in &index.accounts {
        let client = connect_creds(&server.url(), &entry.creds, name).await?;
        client.flush().await?;
    }
    let service = connect_creds(&server.url(), &index.accounts[NATSTER].creds, "svc").await?;
    async_nats::jetstream::new(service).query_account().await?;
    let carol = connect_creds(&server.url(), &index.accounts["carol"].creds, "carol").await?;
    assert!(
        async_nats::jetstream::new(carol)
            .query_account()
            .await
            .is_err(),
        "user accounts have no JetStream of their own"
    );
    assert!(
        out.join("jetstream").exists(),
        "the store lives inside the world directory"
    );

    let forced = natster_global()
        .args(["bootstrap", "--force", "--users", "erin", "--out"])
        .arg(&out)
        .stdout(Stdio::null())
        .status()?;
    assert!(forced.success());
    assert!(read_index(&out)?.accounts.contains_key("erin"));
    Ok(())
}

#[tokio::test]
async fn dev_runs_the_stack_prints_working_commands_and_stops_cleanly() -> Result<()> {
    dev_stack(false).await
}

#[tokio::test]
async fn dev_cluster_runs_three_nodes_with_replicated_resources() -> Result<()> {
    dev_stack(true).await
}

/// A client port `p` such that `p..p+3` and the routes `p+2000..p+2003` are all free (what
/// `dev --cluster` listens on), or a free port for a single server.
fn free_ports_for(cluster: bool) -> Result<u16> {
    for _ in 0..100 {
        let port = free_port()?;
        let wanted: Vec<u16> = if cluster {
            (0..3).flat_map(|i| [port + i, port + 2000 + i]).collect()
        } else {
            vec![port]
        };
        if port < 60_000
            && wanted
                .iter()
                .all(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        {
            return Ok(port);
        }
    }
    anyhow::bail!("no free run of ports")
}

/// `dev` (with `--cluster`: three nodes) prints instructions whose commands reach the service,
/// and stops cleanly on Ctrl-C, servers included.
async fn dev_stack(cluster: bool) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_ports_for(cluster)?;
    let mut args = vec![
        "dev".to_string(),
        "--http-addr".into(),
        "127.0.0.1:0".into(),
        "--port".into(),
        port.to_string(),
    ];
    if cluster {
        args.push("--cluster".into());
    }
    let mut dev = KillOnDrop(Some(
        natster_global()
            .args(&args)
            .arg("--dir")
            .arg(dir.path().join("stack"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?,
    ));
    let stdout = dev
        .0
        .as_mut()
        .context("dev")?
        .stdout
        .take()
        .context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .context("dev did not print its instructions")?;
        let done = line.contains("Press Ctrl-C");
        printed.push(line);
        if done {
            break;
        }
    }
    let call_line = printed
        .iter()
        .find(|l| l.contains(" call whoami ") && l.contains("alice.creds"))
        .context("a call command for alice")?;
    let words: Vec<&str> = call_line.split_whitespace().collect();
    let output = Command::new(words[0]).args(&words[1..]).output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(3),
        "a 404 reply from the service: {stderr}"
    );
    assert!(
        stderr.contains("404") && stderr.contains("not initialised"),
        "{stderr}"
    );

    if cluster {
        let creds = dir.path().join("stack").join("creds").join("NATSTER.creds");
        let service =
            connect_creds(&format!("nats://127.0.0.1:{}", port + 2), &creds, "check").await?;
        let info = async_nats::jetstream::new(service)
            .get_stream("NATSTER_EVENTS")
            .await?
            .info()
            .await?
            .clone();
        assert_eq!(info.config.num_replicas, 3, "the log is R3 under --cluster");
        assert_eq!(info.cluster.map(|c| c.replicas.len()), Some(2));
    }

    let mut child = dev.0.take().context("dev")?;
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()?;
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait()).await??;
    assert!(exit.success(), "dev exits 0 on Ctrl-C: {exit}");
    let nodes = if cluster { 3 } else { 1 };
    for node_port in port..port + nodes {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", node_port)).is_err(),
            "the nats-server child on {node_port} is stopped"
        );
    }
    Ok(())
}
