//! `nats` CLI contexts: `~/.config/nats/context/<name>.json` (or under `$XDG_CONFIG_HOME`),
//! the selected one named in `~/.config/nats/context.txt`. Only the server URL and the creds
//! file are taken from a context; other ways a context can authenticate are refused with a
//! clear error rather than silently ignored.

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// What a context gives the connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsContext {
    pub name: String,
    pub url: Option<String>,
    pub creds: Option<PathBuf>,
}

/// Why a context could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("nats context {name:?}: cannot read {path}: {reason}")]
    Read {
        name: String,
        path: PathBuf,
        reason: String,
    },
    #[error("nats context {name:?} authenticates with {what}, which natster-global does not take; use a creds file")]
    Unsupported { name: String, what: &'static str },
    #[error("nats context name {0:?} is not a plain name")]
    BadName(String),
}

#[derive(Debug, Default, Deserialize)]
struct ContextFile {
    #[serde(default)]
    url: String,
    #[serde(default)]
    creds: String,
    #[serde(default)]
    nkey: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    token: String,
}

/// The `nats` configuration directory.
pub fn config_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("nats"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config").join("nats"))
}

/// The context selected with `nats context select` (`context.txt`), if any.
pub fn selected(dir: &Path) -> Option<String> {
    let name = std::fs::read_to_string(dir.join("context.txt")).ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// Loads context `name` from `dir`.
pub fn load(dir: &Path, name: &str) -> Result<NatsContext, ContextError> {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(ContextError::BadName(name.to_string()));
    }
    let path = dir.join("context").join(format!("{name}.json"));
    let read_error = |reason: String| ContextError::Read {
        name: name.to_string(),
        path: path.clone(),
        reason,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| read_error(e.to_string()))?;
    let file: ContextFile = serde_json::from_str(&text).map_err(|e| read_error(e.to_string()))?;
    let unsupported = |what| ContextError::Unsupported {
        name: name.to_string(),
        what,
    };
    if !file.nkey.is_empty() {
        return Err(unsupported("an nkey"));
    }
    if !file.user.is_empty() {
        return Err(unsupported("a user and password"));
    }
    if !file.token.is_empty() {
        return Err(unsupported("a token"));
    }
    let some = |s: String| (!s.is_empty()).then_some(s);
    Ok(NatsContext {
        name: name.to_string(),
        url: some(file.url),
        creds: some(file.creds).map(|c| expand_home(&c)),
    })
}

/// `~/x` as the nats CLI writes it, made absolute.
fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_give_url_and_creds_and_refuse_other_auth() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("context")).unwrap();
        std::fs::write(
            dir.path().join("context/prod.json"),
            r#"{"description":"","url":"nats://a:4222,nats://b:4222","creds":"/etc/x.creds","nkey":""}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("context/pw.json"),
            r#"{"user":"u","password":"p"}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("context.txt"), "prod\n").unwrap();
        assert_eq!(selected(dir.path()).as_deref(), Some("prod"));
        let prod = load(dir.path(), "prod").unwrap();
        assert_eq!(prod.url.as_deref(), Some("nats://a:4222,nats://b:4222"));
        assert_eq!(prod.creds, Some(PathBuf::from("/etc/x.creds")));
        assert!(matches!(
            load(dir.path(), "pw"),
            Err(ContextError::Unsupported { .. })
        ));
        assert!(matches!(
            load(dir.path(), "missing"),
            Err(ContextError::Read { .. })
        ));
        assert!(matches!(
            load(dir.path(), "../etc"),
            Err(ContextError::BadName(_))
        ));
    }
}
