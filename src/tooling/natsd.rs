//! Running `nats-server` as a child process: finding the pinned binary, starting it on a free
//! loopback port, waiting for *its own* ready line, and stopping it on drop.
//!
//! Used by `dev`, the integration tests and the benchmarks. Other nats-servers may run on the
//! same machine, so a server is only considered up once the log of the process we started says
//! it listens on the port we gave it and is ready.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a server may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts with a fresh port when another process grabbed ours first.
const PORT_ATTEMPTS: usize = 5;

/// Why a server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum NatsdError {
    #[error("nats-server not found: set NATS_SERVER_BIN, or run ops/install-nats-server (installs the pinned 2.15.1 into .tools/bin/)")]
    NotFound,
    #[error("could not start {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("nats-server exited before it was ready:\n{log}")]
    Exited { log: String },
    #[error("nats-server was not ready within {READY_TIMEOUT:?}:\n{log}")]
    Timeout { log: String },
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Finds the nats-server binary: `NATS_SERVER_BIN`, then `.tools/bin/nats-server` (in the
/// current directory, then in this crate's checkout), then `PATH`.
pub fn find_binary() -> Result<PathBuf, NatsdError> {
    if let Some(explicit) = std::env::var_os("NATS_SERVER_BIN") {
        let path = PathBuf::from(explicit);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(NatsdError::NotFound)
        };
    }
    let local = [
        PathBuf::from(".tools/bin/nats-server"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/nats-server"),
    ];
    if let Some(found) = local.into_iter().find(|p| p.is_file()) {
        return Ok(found);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file())
        .ok_or(NatsdError::NotFound)
}

/// A free TCP port on 127.0.0.1 (bound, then released for the server to take).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// How to start one server.
#[derive(Debug, Clone, Default)]
pub struct ServerSpec {
    /// Config file; `None` runs a plain JetStream server with `store_dir`.
    pub config: Option<PathBuf>,
    /// JetStream store for plain servers.
    pub store_dir: Option<PathBuf>,
    /// Client port; `None` picks a free one (and retries on a lost race).
    pub port: Option<u16>,
    /// Copy the server's log lines to our stderr.
    pub echo_log: bool,
    /// Run the server in its own process group, so a terminal's Ctrl-C reaches only us and we
    /// stop the server after the service has drained (`dev`).
    pub own_process_group: bool,
}

/// A running nats-server child. Killed (and waited for) on drop.
pub struct NatsServer {
    binary: PathBuf,
    spec: ServerSpec,
    child: Option<Child>,
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl NatsServer {
    /// Starts a server as `spec` says and returns once it is ready.
    pub async fn start(spec: ServerSpec) -> Result<NatsServer, NatsdError> {
        let binary = find_binary()?;
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = match spec.port {
                Some(port) => port,
                None => free_port()?,
            };
            let mut server = NatsServer {
                binary: binary.clone(),
                spec: spec.clone(),
                child: None,
                port,
                log: Arc::default(),
            };
            match server.launch().await {
                Ok(()) => return Ok(server),
                Err(NatsdError::Exited { log })
                    if spec.port.is_none() && log.contains("address already in use") =>
                {
                    last_error = Some(NatsdError::Exited { log });
                }
                Err(other) => return Err(other),
            }
        }
        Err(last_error.unwrap_or(NatsdError::NotFound))
    }

    /// Starts a plain (no auth) JetStream server with its store in `store_dir`.
    pub async fn plain_jetstream(store_dir: &Path) -> Result<NatsServer, NatsdError> {
        Self::start(ServerSpec {
            store_dir: Some(store_dir.to_path_buf()),
            ..Default::default()
        })
        .await
    }

    async fn launch(&mut self) -> Result<(), NatsdError> {
        let mut command = Command::new(&self.binary);
        if let Some(config) = &self.spec.config {
            command.arg("-c").arg(config);
        } else {
            command.arg("-js");
            if let Some(store) = &self.spec.store_dir {
                command.arg("-sd").arg(store);
            }
        }
        command
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if self.spec.own_process_group {
            use std::os::unix::process::CommandExt;
            command.process_group(0);
        }
        let mut child = command.spawn().map_err(|source| NatsdError::Spawn {
            binary: self.binary.clone(),
            source,
        })?;
        let stderr = child.stderr.take().expect("stderr is piped");
        self.child = Some(child);
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel();
        let log = self.log.clone();
        let echo = self.spec.echo_log;
        let listening = format!(
            "Listening for client connections on 127.0.0.1:{}",
            self.port
        );
        std::thread::spawn(move || {
            let mut saw_listening = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("[nats-server] {line}");
                }
                saw_listening |= line.contains(&listening);
                let ready = saw_listening && line.contains("Server is ready");
                log.lock().expect("log lock").push(line);
                if ready {
                    let _ = ready_tx.send(());
                }
            }
        });
        match tokio::time::timeout(READY_TIMEOUT, ready_rx.recv()).await {
            Ok(Some(())) => Ok(()),
            Ok(None) => {
                self.kill();
                Err(NatsdError::Exited {
                    log: self.log_text(),
                })
            }
            Err(_) => {
                self.kill();
                Err(NatsdError::Timeout {
                    log: self.log_text(),
                })
            }
        }
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Process id of the running server.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the server logged so far.
    pub fn log_text(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }

    /// Kills the server (SIGKILL) and waits for it; the store is kept.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server gracefully (SIGTERM), killing it if it has not exited within `within`.
    pub async fn stop(&mut self, within: Duration) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            let deadline = tokio::time::Instant::now() + within;
            while !self.has_exited() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.kill();
    }

    /// Kills the server and starts it again on the same port with the same store.
    pub async fn restart(&mut self) -> Result<(), NatsdError> {
        self.kill();
        self.log.lock().expect("log lock").clear();
        let mut last = None;
        // The port is ours; a just-killed listener can take a moment to be released.
        for _ in 0..PORT_ATTEMPTS {
            match self.launch().await {
                Ok(()) => return Ok(()),
                Err(error) => last = Some(error),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last.unwrap_or(NatsdError::NotFound))
    }

    /// Whether the child has exited.
    pub fn has_exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(Some(_))),
            None => true,
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
