//! The Kubernetes manifest runs as shipped: `serve` is started with the Deployment's args and
//! environment, as the pod's uid and gid, its secrets laid out the way the kubelet mounts a
//! secret volume under `fsGroup` (files owned by root, group `fsGroup`, mode `defaultMode`
//! plus group-read, reached through the `..data` symlink), against a 3-node cluster that
//! requires TLS (the manifest asks for three replicas and verifies the servers with the CA in
//! its Secret). Substituted, as an operator must: the server URLs, the mount path (a directory
//! here), the HTTP port (a free one) and the web account's key.
//!
//! Not reproduced here: the read-only root filesystem and the dropped capabilities (the
//! process is started without privileges either way).

use anyhow::{ensure, Context, Result};
use natster_global::contract::Envelope;
use natster_global::tooling::bootstrap::{World, NATSTER, WEB};
use natster_testkit::{
    connect_creds_tls, http_get, init_data, put_event, seq_of, Cluster, TestCertificates,
};
use serde::Deserialize;
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// What the Deployment says about running the container.
struct Pod {
    args: Vec<String>,
    /// `(name, value)`; values from the ConfigMap resolved.
    env: Vec<(String, String)>,
    run_as_user: u32,
    run_as_group: u32,
    fs_group: u32,
    /// The secret volume's `defaultMode`.
    default_mode: u32,
    mount_path: String,
    grace: Duration,
}

fn manifest() -> Result<Vec<Value>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("ops/k8s/natster-global.yaml");
    let text = std::fs::read_to_string(path)?;
    Ok(serde_norway::Deserializer::from_str(&text)
        .map(Value::deserialize)
        .collect::<Result<_, _>>()?)
}

fn pod() -> Result<Pod> {
    let documents = manifest()?;
    let kind = |k: &str| {
        documents
            .iter()
            .find(|d| d["kind"] == k)
            .with_context(|| format!("a {k}"))
    };
    let config_map = kind("ConfigMap")?;
    let spec = &kind("Deployment")?["spec"]["template"]["spec"];
    let container = &spec["containers"][0];
    let number = |v: &Value, what: &str| v.as_u64().with_context(|| what.to_string());
    let mut env = Vec::new();
    for entry in container["env"].as_array().context("env")? {
        let name = entry["name"].as_str().context("env name")?.to_string();
        let value = match entry["value"].as_str() {
            Some(value) => value.to_string(),
            None => {
                let key = entry["valueFrom"]["configMapKeyRef"]["key"]
                    .as_str()
                    .with_context(|| format!("{name}: a value or a ConfigMap key"))?;
                config_map["data"][key]
                    .as_str()
                    .with_context(|| format!("ConfigMap key {key}"))?
                    .to_string()
            }
        };
        env.push((name, value));
    }
    let volume = &spec["volumes"][0];
    ensure!(
        container["volumeMounts"][0]["name"] == volume["name"],
        "the container mounts the secret volume"
    );
    Ok(Pod {
        args: container["args"]
            .as_array()
            .context("args")?
            .iter()
            .map(|a| a.as_str().map(String::from).context("arg"))
            .collect::<Result<_>>()?,
        env,
        run_as_user: number(&spec["securityContext"]["runAsUser"], "runAsUser")? as u32,
        run_as_group: number(&spec["securityContext"]["runAsGroup"], "runAsGroup")? as u32,
        fs_group: number(&spec["securityContext"]["fsGroup"], "fsGroup")? as u32,
        default_mode: file_mode(&volume["secret"]["defaultMode"])?,
        mount_path: container["volumeMounts"][0]["mountPath"]
            .as_str()
            .context("mountPath")?
            .to_string(),
        grace: Duration::from_secs(number(
            &spec["terminationGracePeriodSeconds"],
            "terminationGracePeriodSeconds",
        )?),
    })
}

/// A `defaultMode` as Kubernetes reads it: YAML 1.1 takes `0400` for octal (the YAML 1.2
/// parser here leaves it a string), JSON and plain numbers are decimal (`256`).
fn file_mode(value: &Value) -> Result<u32> {
    match value {
        Value::Number(n) => Ok(n.as_u64().context("defaultMode")? as u32),
        Value::String(s) if s.starts_with('0') => {
            Ok(u32::from_str_radix(s.trim_start_matches("0o"), 8)?)
        }
        other => anyhow::bail!("defaultMode {other}"),
    }
}

/// Whether this test runs as root (as CI does): then files are owned by root and the service
/// runs as the pod's uid and gid, exactly as on a node. Otherwise files are owned by this user
/// and the service runs as this user: the modes are the kubelet's, the owner cannot be.
fn as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Lays `files` out under `dir` as the kubelet writes a secret volume (an atomic writer's
/// timestamped directory, `..data` pointing at it, one symlink per key) and applies what
/// `fsGroup` does: group `fs_group` on everything, group-read added to each file's mode,
/// directories group-searchable and setgid.
fn mount_secret(dir: &Path, files: &[(&str, String)], mode: u32, fs_group: u32) -> Result<()> {
    let timestamped = dir.join("..2026_12_04_12_00_00.000000001");
    std::fs::create_dir_all(&timestamped)?;
    for (name, contents) in files {
        let file = timestamped.join(name);
        std::fs::write(&file, contents)?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode | 0o440))?;
        std::os::unix::fs::symlink(Path::new("..data").join(name), dir.join(name))?;
    }
    std::os::unix::fs::symlink(timestamped.file_name().context("name")?, dir.join("..data"))?;
    for path in [dir, timestamped.as_path()] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o2750))?;
    }
    if as_root() {
        let group = Some(rustix::fs::Gid::from_raw(fs_group));
        for path in [dir.to_path_buf(), timestamped.clone()]
            .into_iter()
            .chain(files.iter().map(|(name, _)| timestamped.join(name)))
        {
            rustix::fs::chown(&path, None, group)?;
        }
    }
    Ok(())
}

/// The pod's environment with the operator's substitutions.
fn environment(
    pod: &Pod,
    mount: &Path,
    urls: &str,
    http_port: u16,
    web: &str,
) -> Vec<(String, String)> {
    pod.env
        .iter()
        .map(|(name, value)| {
            let value = match name.as_str() {
                "NATS_URL" => urls
                    .split(',')
                    .map(|url| url.replace("nats://", "tls://"))
                    .collect::<Vec<_>>()
                    .join(","),
                "NATSTER_HTTP_ADDR" => format!("0.0.0.0:{http_port}"),
                "NATSTER_WEB_ACCOUNTS" => web.to_string(),
                _ => value.replace(&pod.mount_path, &mount.display().to_string()),
            };
            (name.clone(), value)
        })
        .collect()
}

/// The binary where the image has it, in `dir` (readable by the pod's user wherever the
/// build tree is, as `/usr/local/bin` of the image is).
fn install_binary(dir: &Path) -> Result<std::path::PathBuf> {
    let bin = dir.join("usr-local-bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;
    let binary = bin.join("natster-global");
    std::fs::copy(env!("CARGO_BIN_EXE_natster-global"), &binary)?;
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755))?;
    Ok(binary)
}

/// `serve` as the container runs it, from `binary` (see [`install_binary`]).
fn start(binary: &Path, pod: &Pod, env: &[(String, String)]) -> Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new(binary);
    command
        .args(&pod.args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if as_root() {
        command.uid(pod.run_as_user).gid(pod.run_as_group);
    }
    Ok(command.spawn()?)
}

async fn wait_ready(addr: std::net::SocketAddr, child: &mut std::process::Child) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait()? {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().context("stderr")?, &mut stderr)?;
            anyhow::bail!("serve exited with {status}: {stderr}");
        }
        if let Ok((200, _)) = http_get(addr, "/readyz").await {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "not ready within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn serve_runs_as_the_kubernetes_manifest_runs_it() -> Result<()> {
    let pod = pod()?;
    assert_eq!(pod.args, ["serve"]);
    assert_eq!(
        pod.run_as_group, pod.fs_group,
        "the kubelet's group is the process's own"
    );

    let dir = tempfile::tempdir()?;
    let world = World::generate(&dir.path().join("world"), &["alice".to_string()])?;
    world.write(false)?;
    let tls_dir = dir.path().join("tls");
    std::fs::create_dir_all(&tls_dir)?;
    let tls = TestCertificates::make(&tls_dir)?;
    let cluster = Cluster::start_tls(&world, &tls).await?;
    let urls = cluster.urls().join(",");

    // The secret as `kubectl create secret generic … --from-file=…` (the manifest's header).
    let files = [
        (
            "natster.creds",
            std::fs::read_to_string(world.creds_path(NATSTER))?,
        ),
        ("service.xk", std::fs::read_to_string(world.xkey_path())?),
        ("ca.pem", std::fs::read_to_string(&tls.ca)?),
    ];
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let mount = dir.path().join("etc-natster-global");
    mount_secret(&mount, &files, pod.default_mode, pod.fs_group)?;
    let creds_mode = std::fs::metadata(mount.join("natster.creds"))?
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(
        creds_mode, 0o440,
        "defaultMode 0400 under fsGroup is 0440 on the node"
    );

    let http_port = natster_testkit::port()?;
    let env = environment(&pod, &mount, &urls, http_port, &world.key(WEB)?);
    for (name, value) in &env {
        if name == "NATS_CREDS" || name == "NATSTER_XKEY_SEED_FILE" || name == "NATS_CA" {
            assert!(
                value.starts_with(&mount.display().to_string()),
                "{name} is in the mount"
            );
        }
    }
    let mut child = start(&install_binary(dir.path())?, &pod, &env)?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], http_port));
    wait_ready(addr, &mut child).await?;
    assert_eq!(http_get(addr, "/healthz").await?.0, 200);

    // Serving, with the xkey read: a one-time code for an initialised account is issued.
    let alice = connect_creds_tls(
        &cluster.nodes[1].url(),
        &world.creds_path("alice"),
        &tls.ca,
        "alice",
    )
    .await?;
    let key = world.key("alice")?;
    seq_of(
        &put_event(
            &alice,
            "natster_initialized",
            "none",
            "none",
            init_data(&key),
        )
        .await?,
    )?;
    let context = json!({"team_id": "t", "system_id": "s", "account_id": "a", "account_name": "alice",
        "account_public_key": key, "access_token": "token-0123456789", "user_id": "u", "creds": "x"});
    let reply = alice
        .request(
            "natster.global.otc.generate",
            serde_json::to_vec(&context)?.into(),
        )
        .await?;
    let envelope: Envelope = serde_json::from_slice(&reply.payload)?;
    assert_eq!(envelope.code, 200, "{envelope:?}");

    // SIGTERM, as the kubelet stops a pod: exit 0 within the grace period.
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )?;
    let deadline = std::time::Instant::now() + pod.grace;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "still running after the grace period"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status}");
    Ok(())
}

#[tokio::test]
async fn serve_refuses_a_mounted_secret_that_others_can_read_with_exit_2() -> Result<()> {
    let pod = pod()?;
    let dir = tempfile::tempdir()?;
    let world = World::generate(&dir.path().join("world"), &["alice".to_string()])?;
    world.write(false)?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let mount = dir.path().join("etc-natster-global");
    let files = [
        (
            "natster.creds",
            std::fs::read_to_string(world.creds_path(NATSTER))?,
        ),
        ("service.xk", std::fs::read_to_string(world.xkey_path())?),
        ("ca.pem", "not read: the seed is refused first".to_string()),
    ];
    // A `defaultMode` of 0444: every user on the node can read the seed.
    mount_secret(&mount, &files, 0o444, pod.fs_group)?;
    let env = environment(
        &pod,
        &mount,
        "nats://127.0.0.1:1",
        natster_testkit::port()?,
        &world.key(WEB)?,
    );
    let output = start(&install_binary(dir.path())?, &pod, &env)?.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("others can read"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    Ok(())
}
