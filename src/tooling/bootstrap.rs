//! A complete operator-mode "world": operator, accounts with the service's exports and the
//! callers' imports, one user per account, an xkey for the service, a nats-server config and a
//! `world.json` index.
//!
//! Layout of a world directory (seeds and creds mode 0600, their directories 0700):
//! ```text
//! operator.jwt  nats-server.conf  world.json  service.xk
//! accounts/<NAME>.jwt   creds/<NAME>.creds   keys/<NAME>.nk (account seeds), keys/operator.nk
//! jetstream/            (the server's store)
//! ```
//! `bootstrap` and `dev` write it; tests build one per test with [`World::generate`].

use super::jwt::{
    self as auth, AccountClaims, AccountLimits, Export, ExportType, Import, OperatorClaims,
    ResponseType, UserClaims,
};
use crate::contract::{client_imports, ImportKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The system account's name in a world.
pub const SYS: &str = "SYS";
/// The service's own account.
pub const NATSTER: &str = "NATSTER";
/// The website's account (privileged ops).
pub const WEB: &str = "WEB";
/// The hub catalog's account.
pub const HUB: &str = "HUB";

/// Default client port of a bootstrapped world's server.
pub const DEFAULT_PORT: u16 = 4222;

/// Why a world could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("{0} already holds a world (world.json); pass --force to overwrite it")]
    Exists(PathBuf),
    #[error("invalid user account name {0:?}: use lowercase letters, digits, '-' or '_', starting with a letter, at most 32 characters, and not SYS/NATSTER/WEB/HUB")]
    InvalidName(String),
    #[error("duplicate account name {0:?}")]
    Duplicate(String),
    #[error("no account named {0:?} in this world")]
    UnknownAccount(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("world.json is not valid: {0}")]
    Index(#[from] serde_json::Error),
    #[error("key material is not valid: {0}")]
    Key(#[from] nkeys::error::Error),
    #[error(transparent)]
    Jwt(#[from] auth::JwtError),
}

/// What an account is for; decides its exports and imports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    Service,
    Web,
    Hub,
    User,
    /// Added by a test or an operator with hand-made claims.
    Custom,
}

/// One account of a world with its single user.
pub struct Account {
    pub name: String,
    pub role: Role,
    pub key: nkeys::KeyPair,
    pub claims: AccountClaims,
    pub jwt: String,
    pub user: nkeys::KeyPair,
    pub user_jwt: String,
}

impl Account {
    /// The account's public key.
    pub fn public_key(&self) -> String {
        self.key.public_key()
    }

    /// The text of this account user's creds file.
    pub fn creds(&self) -> String {
        auth::format_creds(&self.user_jwt, &self.user.seed().unwrap_or_default())
    }
}

/// Index written as `world.json`: names to public keys and file paths. Holds no secrets.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorldIndex {
    pub operator: String,
    pub nats_url: String,
    pub server_config: PathBuf,
    pub xkey_seed_file: PathBuf,
    pub service_account: String,
    pub web_account: String,
    pub hub_account: String,
    pub accounts: BTreeMap<String, AccountEntry>,
}

/// One account in `world.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AccountEntry {
    pub public_key: String,
    pub role: Role,
    pub creds: PathBuf,
    pub jwt: PathBuf,
}

/// An operator-mode world held in memory; [`World::write`] puts it on disk.
pub struct World {
    pub dir: PathBuf,
    pub operator: nkeys::KeyPair,
    pub operator_jwt: String,
    pub accounts: BTreeMap<String, Account>,
    pub xkey: nkeys::XKey,
    pub port: u16,
}

impl World {
    /// Mints a new world for `dir` (nothing is written yet): SYS, NATSTER, WEB, HUB and one
    /// account per name in `users`.
    pub fn generate(dir: &Path, users: &[String]) -> Result<World, BootstrapError> {
        for (i, name) in users.iter().enumerate() {
            if !valid_user_name(name) {
                return Err(BootstrapError::InvalidName(name.clone()));
            }
            if users[..i].contains(name) {
                return Err(BootstrapError::Duplicate(name.clone()));
            }
        }
        let operator = nkeys::KeyPair::new_operator();
        let keys: Vec<(String, Role, nkeys::KeyPair)> = [
            (SYS.to_string(), Role::System),
            (NATSTER.to_string(), Role::Service),
            (WEB.to_string(), Role::Web),
            (HUB.to_string(), Role::Hub),
        ]
        .into_iter()
        .chain(users.iter().map(|u| (u.clone(), Role::User)))
        .map(|(name, role)| (name, role, nkeys::KeyPair::new_account()))
        .collect();
        let system_key = keys[0].2.public_key();
        let service_key = keys[1].2.public_key();
        let operator_jwt = auth::encode(
            &OperatorClaims::new("natster", &operator.public_key(), &system_key),
            &operator,
        )?;
        let mut world = World {
            dir: dir.to_path_buf(),
            operator,
            operator_jwt,
            accounts: BTreeMap::new(),
            xkey: nkeys::XKey::new(),
            port: DEFAULT_PORT,
        };
        for (name, role, key) in keys {
            let claims = standard_claims(&name, role, &key.public_key(), &service_key);
            world.add_account(&name, role, key, claims)?;
        }
        Ok(world)
    }

    /// Sets the client port written into the server config and `world.json`.
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Adds (or replaces) an account with the given claims, signed by this world's operator,
    /// with a fresh user. The caller writes the world again for the server to see it.
    pub fn add_account(
        &mut self,
        name: &str,
        role: Role,
        key: nkeys::KeyPair,
        claims: AccountClaims,
    ) -> Result<&Account, BootstrapError> {
        let jwt = auth::encode(&claims, &self.operator)?;
        let user = nkeys::KeyPair::new_user();
        let user_jwt = auth::encode(
            &UserClaims::new(&format!("{name}-user"), &user.public_key()),
            &key,
        )?;
        self.accounts.insert(
            name.to_string(),
            Account {
                name: name.to_string(),
                role,
                key,
                claims,
                jwt,
                user,
                user_jwt,
            },
        );
        Ok(&self.accounts[name])
    }

    /// Re-signs `name`'s account JWT after its claims were changed (for example a revocation).
    pub fn resign(&mut self, name: &str) -> Result<&Account, BootstrapError> {
        let account = self
            .accounts
            .get_mut(name)
            .ok_or_else(|| BootstrapError::UnknownAccount(name.into()))?;
        account.jwt = auth::encode(&account.claims, &self.operator)?;
        Ok(account)
    }

    /// The account called `name`.
    pub fn account(&self, name: &str) -> Result<&Account, BootstrapError> {
        self.accounts
            .get(name)
            .ok_or_else(|| BootstrapError::UnknownAccount(name.into()))
    }

    /// Public key of the account called `name`.
    pub fn key(&self, name: &str) -> Result<String, BootstrapError> {
        Ok(self.account(name)?.public_key())
    }

    /// Path of the creds file of `name`'s user.
    pub fn creds_path(&self, name: &str) -> PathBuf {
        self.dir.join("creds").join(format!("{name}.creds"))
    }

    /// Path of the service's xkey seed file.
    pub fn xkey_path(&self) -> PathBuf {
        self.dir.join("service.xk")
    }

    /// Path of the nats-server config.
    pub fn server_config_path(&self) -> PathBuf {
        self.dir.join("nats-server.conf")
    }

    /// Directory that holds the server's JetStream store.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.join("jetstream")
    }

    /// The client URL of this world's server.
    pub fn nats_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Whether `dir` already holds a world.
    pub fn exists(dir: &Path) -> bool {
        dir.join("world.json").exists()
    }

    /// Writes every file of the world. Refuses when the directory already holds a world,
    /// unless `force`.
    pub fn write(&self, force: bool) -> Result<WorldIndex, BootstrapError> {
        if !force && Self::exists(&self.dir) {
            return Err(BootstrapError::Exists(self.dir.clone()));
        }
        for sub in ["", "accounts", "creds", "keys", "jetstream"] {
            create_private_dir(&self.dir.join(sub))?;
        }
        write_file(&self.dir.join("operator.jwt"), &self.operator_jwt, false)?;
        write_file(
            &self.dir.join("keys").join("operator.nk"),
            &format!("{}\n", self.operator.seed()?),
            true,
        )?;
        write_file(&self.xkey_path(), &format!("{}\n", self.xkey.seed()?), true)?;
        let mut entries = BTreeMap::new();
        for account in self.accounts.values() {
            let jwt_path = self
                .dir
                .join("accounts")
                .join(format!("{}.jwt", account.name));
            write_file(&jwt_path, &account.jwt, false)?;
            write_file(
                &self.dir.join("keys").join(format!("{}.nk", account.name)),
                &format!("{}\n", account.key.seed()?),
                true,
            )?;
            let creds_path = self.creds_path(&account.name);
            write_file(&creds_path, &account.creds(), true)?;
            entries.insert(
                account.name.clone(),
                AccountEntry {
                    public_key: account.public_key(),
                    role: account.role,
                    creds: creds_path,
                    jwt: jwt_path,
                },
            );
        }
        write_file(
            &self.server_config_path(),
            &self.server_config(&ServerConfigOptions::default()),
            false,
        )?;
        let index = WorldIndex {
            operator: self.operator.public_key(),
            nats_url: self.nats_url(),
            server_config: self.server_config_path(),
            xkey_seed_file: self.xkey_path(),
            service_account: self.key(NATSTER)?,
            web_account: self.key(WEB)?,
            hub_account: self.key(HUB)?,
            accounts: entries,
        };
        write_file(
            &self.dir.join("world.json"),
            &serde_json::to_string_pretty(&index)?,
            false,
        )?;
        Ok(index)
    }

    /// Reads a world written by [`World::write`] back (keys, claims and users included).
    pub fn load(dir: &Path) -> Result<World, BootstrapError> {
        let index = read_index(dir)?;
        let operator = nkeys::KeyPair::from_seed(read_file(&dir.join("keys/operator.nk"))?.trim())?;
        let operator_jwt = read_file(&dir.join("operator.jwt"))?;
        let xkey = nkeys::XKey::from_seed(read_file(&dir.join("service.xk"))?.trim())?;
        let mut accounts = BTreeMap::new();
        for (name, entry) in &index.accounts {
            let jwt = read_file(&entry.jwt)?;
            let claims: AccountClaims = auth::decode(&jwt)?;
            let key = nkeys::KeyPair::from_seed(
                read_file(&dir.join("keys").join(format!("{name}.nk")))?.trim(),
            )?;
            let creds =
                auth::parse_creds(&read_file(&entry.creds)?).ok_or_else(|| BootstrapError::Io {
                    path: entry.creds.clone(),
                    source: std::io::Error::other("not a creds file"),
                })?;
            accounts.insert(
                name.clone(),
                Account {
                    name: name.clone(),
                    role: entry.role,
                    key,
                    claims,
                    jwt,
                    user: nkeys::KeyPair::from_seed(&creds.seed)?,
                    user_jwt: creds.jwt,
                },
            );
        }
        let port = index
            .nats_url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(DEFAULT_PORT);
        Ok(World {
            dir: dir.to_path_buf(),
            operator,
            operator_jwt,
            accounts,
            xkey,
            port,
        })
    }

    /// nats-server configuration text for this world: operator mode, MEMORY resolver with
    /// every account preloaded, the system account, JetStream, loopback only.
    pub fn server_config(&self, options: &ServerConfigOptions) -> String {
        let port = options.port.unwrap_or(self.port);
        let store = options
            .store_dir
            .clone()
            .unwrap_or_else(|| self.store_dir());
        let mut conf = format!(
            "# Generated by natster-global bootstrap. Operator mode: identities are JWTs signed by the operator.\n\
             server_name: {name}\n\
             listen: 127.0.0.1:{port}\n\
             max_payload: 1MB\n\
             operator: {operator:?}\n\
             system_account: {system}\n\
             resolver: MEMORY\n\
             resolver_preload: {{\n",
            name = options.server_name.as_deref().unwrap_or("natster"),
            operator = self.dir.join("operator.jwt").display().to_string(),
            system = self.accounts.get(SYS).map(|a| a.public_key()).unwrap_or_default(),
        );
        for account in self.accounts.values() {
            conf.push_str(&format!(
                "  # {}\n  {}: \"{}\"\n",
                account.name,
                account.public_key(),
                account.jwt
            ));
        }
        conf.push_str("}\n");
        conf.push_str(&format!(
            "jetstream {{\n  store_dir: {:?}\n  max_memory_store: 256MB\n  max_file_store: 8GB\n}}\n",
            store.display().to_string()
        ));
        if let Some(cluster) = &options.cluster {
            conf.push_str(&cluster_block(cluster));
        }
        conf
    }
}

/// Settings that differ between servers running the same world (port, store, cluster).
#[derive(Debug, Clone, Default)]
pub struct ServerConfigOptions {
    pub server_name: Option<String>,
    pub port: Option<u16>,
    pub store_dir: Option<PathBuf>,
    pub cluster: Option<ClusterOptions>,
}

/// Cluster block of a server config.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub name: String,
    pub port: u16,
    pub routes: Vec<u16>,
}

/// Renders a `cluster { … }` block with loopback routes.
pub fn cluster_block(cluster: &ClusterOptions) -> String {
    let routes: Vec<String> = cluster
        .routes
        .iter()
        .map(|p| format!("    nats-route://127.0.0.1:{p}"))
        .collect();
    format!(
        "cluster {{\n  name: {}\n  listen: 127.0.0.1:{}\n  routes: [\n{}\n  ]\n}}\n",
        cluster.name,
        cluster.port,
        routes.join("\n")
    )
}

/// The exports and imports of an account in the given role.
fn standard_claims(name: &str, role: Role, key: &str, service_key: &str) -> AccountClaims {
    let mut claims = AccountClaims::new(name, key);
    match role {
        Role::System | Role::Custom => {}
        Role::Service => {
            claims.nats.limits = AccountLimits::with_jetstream();
            claims.nats.exports = service_exports();
        }
        Role::Web | Role::Hub | Role::User => {
            claims.nats.imports = caller_imports(key, service_key);
        }
    }
    claims
}

/// What the service account exports: every subject of the contract's client imports.
pub fn service_exports() -> Vec<Export> {
    client_imports()
        .into_iter()
        .map(|import| {
            let export = match import.kind {
                ImportKind::Service => {
                    Export::service(import.name, &import.export, import.account_token_position)
                }
                ImportKind::Stream => {
                    Export::stream(import.name, &import.export, import.account_token_position)
                }
            };
            if import.streamed_replies {
                export.with_response_type(ResponseType::Stream)
            } else {
                export
            }
        })
        .collect()
}

/// What a caller account (user, web, hub) imports from the service account `service_key`,
/// always under its own key `key`.
pub fn caller_imports(key: &str, service_key: &str) -> Vec<Import> {
    client_imports()
        .into_iter()
        .map(|import| {
            let kind = match import.kind {
                ImportKind::Service => ExportType::Service,
                ImportKind::Stream => ExportType::Stream,
            };
            Import::new(
                kind,
                import.name,
                service_key,
                &import.subject_for(key),
                import.local,
            )
        })
        .collect()
}

fn valid_user_name(name: &str) -> bool {
    let reserved = [SYS, NATSTER, WEB, HUB];
    !name.is_empty()
        && name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && !reserved.iter().any(|r| r.eq_ignore_ascii_case(name))
}

/// Reads `world.json` of `dir`.
pub fn read_index(dir: &Path) -> Result<WorldIndex, BootstrapError> {
    Ok(serde_json::from_str(&read_file(&dir.join("world.json"))?)?)
}

fn read_file(path: &Path) -> Result<String, BootstrapError> {
    fs::read_to_string(path).map_err(|source| BootstrapError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn create_private_dir(path: &Path) -> Result<(), BootstrapError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |source| BootstrapError::Io {
        path: path.to_path_buf(),
        source,
    };
    fs::create_dir_all(path).map_err(io)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(io)
}

/// Writes `text` to `path`; secret files get mode 0600 from creation on.
fn write_file(path: &Path, text: &str, secret: bool) -> Result<(), BootstrapError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| BootstrapError::Io {
        path: path.to_path_buf(),
        source,
    };
    let _ = fs::remove_file(path);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)
}

#[cfg(test)]
mod tests;
