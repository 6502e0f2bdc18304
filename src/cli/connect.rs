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
    /// CA certificate(s) (PEM) to verify the server's TLS certificate with; TLS is then
    /// required. Without it, TLS is used when the server asks for it, verified against the
    /// system's roots.
    pub tls_ca: Option<PathBuf>,
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

/// Checks that a file holding a secret (creds, xkey seed) is private enough to use.
///
/// Allowed: readable by its owner only (`0600`, `0400`); or, when the file belongs to root and
/// its group is one this process is in, readable by that group too (`0640`, `0440`). The second
/// is how Kubernetes mounts a secret under `fsGroup` (root-owned, group `fsGroup`, group-read
/// added to `defaultMode`) and how Debian keeps keys for a service group (`root:ssl-cert 0640`):
/// only root and the service's own group can read it. Refused, always: any access by others,
/// and write access by the group. Symlinks are followed (Kubernetes mounts are `..data` links).
pub fn check_private_file(path: &Path) -> Result<(), ConnectError> {
    use std::os::unix::fs::MetadataExt;
    let refuse = |reason: String| ConnectError::File {
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| refuse(e.to_string()))?;
    secret_file_problem(SecretFile {
        mode: meta.mode() & 0o777,
        owner: meta.uid(),
        group: meta.gid(),
        group_is_ours: in_group(meta.gid()),
    })
    .map_or(Ok(()), |problem| Err(refuse(problem)))
}

/// What [`check_private_file`] looks at.
#[derive(Debug, Clone, Copy)]
struct SecretFile {
    /// Permission bits (`0o777` mask).
    mode: u32,
    owner: u32,
    group: u32,
    /// Whether this process is in the file's group.
    group_is_ours: bool,
}

/// Why `file` may not hold a secret, if it may not (the rule of [`check_private_file`]).
fn secret_file_problem(file: SecretFile) -> Option<String> {
    let mode = file.mode;
    if mode & 0o007 != 0 {
        return Some(format!(
            "holds a secret but others can read or write it (mode {mode:04o}; chmod 600, or pass --allow-insecure-files)"
        ));
    }
    if mode & 0o020 != 0 {
        return Some(format!(
            "holds a secret but its group can write it (mode {mode:04o}; chmod 600, or 640 for a root-owned file)"
        ));
    }
    if mode & 0o040 != 0 && !(file.owner == 0 && file.group_is_ours) {
        return Some(format!(
            "holds a secret but its group can read it (mode {mode:04o}, owner uid {}, group gid {}): \
             group-read is accepted only for a root-owned file whose group this process is in \
             (as Kubernetes mounts secrets under fsGroup); chmod 600, or pass --allow-insecure-files",
            file.owner, file.group
        ));
    }
    None
}

/// Whether this process is in group `gid` (effective or supplementary).
fn in_group(gid: u32) -> bool {
    use rustix::process::{getegid, getgroups};
    getegid().as_raw() == gid
        || getgroups().is_ok_and(|groups| groups.iter().any(|g| g.as_raw() == gid))
}

impl NatsConfig {
    /// Checks the creds file without connecting: that it can be read, and that it is private
    /// (see [`check_private_file`]) unless insecure files are allowed.
    pub fn check_files(&self) -> Result<(), ConnectError> {
        if let Some(ca) = &self.tls_ca {
            std::fs::File::open(ca).map_err(|e| ConnectError::File {
                path: ca.clone(),
                reason: e.to_string(),
            })?;
        }
        let NatsAuth::CredsFile(path) = &self.auth else {
            return Ok(());
        };
        if self.allow_insecure_files {
            std::fs::File::open(path).map_err(|e| ConnectError::File {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            Ok(())
        } else {
            check_private_file(path)
        }
    }

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
            // The file's permissions were checked before connecting (`check_files`, called by
            // `ConnectArgs::nats_config`); reading it here reports what is left.
            NatsAuth::CredsFile(path) => async_nats::ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|e| ConnectError::File {
                    path: path.clone(),
                    reason: e.to_string(),
                })?,
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
        Ok(match &self.tls_ca {
            Some(ca) => options.add_root_certificates(ca.clone()).require_tls(true),
            None => options,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{secret_file_problem, SecretFile};

    fn file(mode: u32, owner: u32, group_is_ours: bool) -> SecretFile {
        SecretFile {
            mode,
            owner,
            group: 65532,
            group_is_ours,
        }
    }

    #[test]
    fn owner_only_modes_are_accepted_for_any_owner() {
        for mode in [0o600, 0o400, 0o700] {
            for owner in [0, 1000] {
                assert_eq!(
                    secret_file_problem(file(mode, owner, false)),
                    None,
                    "{mode:o}"
                );
            }
        }
    }

    #[test]
    fn group_read_is_accepted_only_for_root_owned_files_of_our_group() {
        // Kubernetes under fsGroup: root:fsGroup 0440; Debian: root:ssl-cert 0640.
        for mode in [0o440, 0o640] {
            assert_eq!(secret_file_problem(file(mode, 0, true)), None, "{mode:o}");
            let foreign_group = secret_file_problem(file(mode, 0, false)).expect("refused");
            assert!(
                foreign_group.contains("its group can read it"),
                "{foreign_group}"
            );
            let not_root = secret_file_problem(file(mode, 1000, true)).expect("refused");
            assert!(not_root.contains("root-owned"), "{not_root}");
        }
    }

    #[test]
    fn others_access_and_group_write_are_always_refused() {
        for mode in [0o644, 0o604, 0o444, 0o602, 0o601] {
            let problem = secret_file_problem(file(mode, 0, true)).expect("refused");
            assert!(
                problem.contains("others can read or write"),
                "{mode:o}: {problem}"
            );
        }
        for mode in [0o660, 0o620] {
            let problem = secret_file_problem(file(mode, 0, true)).expect("refused");
            assert!(problem.contains("group can write"), "{mode:o}: {problem}");
        }
    }
}
