//! How a command connects to NATS: server URLs, creds (a file whose permissions are checked, or
//! a JWT and seed from the environment), and the connection's name.

use std::path::{Path, PathBuf};

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated.
    pub url: String,
    pub auth: NatsAuth,
    /// Connection name shown by the server.
    pub name: String,
    /// Accept creds files that group or others can read.
    pub allow_insecure_files: bool,
}

/// How the connection authenticates.
#[derive(Clone)]
pub enum NatsAuth {
    None,
    /// A `.creds` file (user JWT + seed).
    CredsFile(PathBuf),
    /// A user JWT and seed given directly (`USER_JWT`/`USER_SEED`, as the original reads them).
    JwtAndSeed {
        jwt: String,
        seed: String,
    },
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NatsAuth::None => write!(f, "None"),
            NatsAuth::CredsFile(path) => write!(f, "CredsFile({})", path.display()),
            NatsAuth::JwtAndSeed { .. } => write!(f, "JwtAndSeed(<redacted>)"),
        }
    }
}

/// Why the connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("the user seed is not a valid nkey seed")]
    Seed,
    #[error("cannot connect to {url}: {source}")]
    Nats {
        url: String,
        source: async_nats::ConnectError,
    },
}

/// Checks that a file holding a secret is readable by its owner only.
pub fn check_private_file(path: &Path) -> Result<(), ConnectError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| ConnectError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(ConnectError::File {
            path: path.to_path_buf(),
            reason: "holds a secret but group or others can read it (chmod 600, or pass --allow-insecure-files)".into(),
        });
    }
    Ok(())
}

impl NatsConfig {
    /// Connects, waiting for the server if it is not up yet; reconnects forever afterwards.
    pub async fn connect(&self) -> Result<async_nats::Client, ConnectError> {
        let options = self
            .options()
            .await?
            .retry_on_initial_connect()
            .max_reconnects(None);
        self.connect_with(options).await
    }

    /// Connects once; fails at once when the server cannot be reached (for the CLI client).
    pub async fn connect_once(&self) -> Result<async_nats::Client, ConnectError> {
        let options = self.options().await?;
        self.connect_with(options).await
    }

    async fn connect_with(
        &self,
        options: async_nats::ConnectOptions,
    ) -> Result<async_nats::Client, ConnectError> {
        let urls: Vec<&str> = self.url.split(',').map(str::trim).collect();
        options
            .name(&self.name)
            .connect(urls.as_slice())
            .await
            .map_err(|source| ConnectError::Nats {
                url: self.url.clone(),
                source,
            })
    }

    async fn options(&self) -> Result<async_nats::ConnectOptions, ConnectError> {
        let options = match &self.auth {
            NatsAuth::None => async_nats::ConnectOptions::new(),
            NatsAuth::CredsFile(path) => {
                if !self.allow_insecure_files {
                    check_private_file(path)?;
                }
                async_nats::ConnectOptions::with_credentials_file(path)
                    .await
                    .map_err(|e| ConnectError::File {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?
            }
            NatsAuth::JwtAndSeed { jwt, seed } => {
                let key = std::sync::Arc::new(
                    nkeys::KeyPair::from_seed(seed).map_err(|_| ConnectError::Seed)?,
                );
                async_nats::ConnectOptions::with_jwt(jwt.clone(), move |nonce| {
                    let key = key.clone();
                    async move { key.sign(&nonce).map_err(async_nats::AuthError::new) }
                })
            }
        };
        Ok(options)
    }
}
