//! Sealing of secrets (the access token in a context) with the service's xkey
//! (curve25519, nkeys), before they reach any event or bucket.

use data_encoding::BASE64URL_NOPAD;

const PREFIX: &str = "xkv1.";

/// The xkey seed file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SeedFileError {
    #[error("{}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not an xkey seed (SX…)", .0.display())]
    NotASeed(std::path::PathBuf),
}

/// Could not open a sealed value.
#[derive(Debug, thiserror::Error)]
#[error("a sealed value could not be opened with this service's xkey")]
pub struct SealError;

/// Seals and opens values with one xkey (the service is both sender and recipient).
pub struct Sealer {
    key: nkeys::XKey,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer({})", self.key.public_key())
    }
}

impl Sealer {
    /// A sealer for the xkey seed `seed` (`SX…`).
    pub fn from_seed(seed: &str) -> Result<Sealer, nkeys::error::Error> {
        Ok(Sealer {
            key: nkeys::XKey::from_seed(seed.trim())?,
        })
    }

    /// Reads a seed file holding one xkey seed on one line.
    pub fn from_file(path: &std::path::Path) -> Result<Sealer, SeedFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| SeedFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_seed(&text).map_err(|_| SeedFileError::NotASeed(path.to_path_buf()))
    }

    /// Seals `plaintext`; an empty value stays empty.
    pub fn seal(&self, plaintext: &str) -> String {
        if plaintext.is_empty() {
            return String::new();
        }
        let sealed = self
            .key
            .seal(plaintext.as_bytes(), &self.key)
            .expect("sealing with a full xkey does not fail");
        format!("{PREFIX}{}", BASE64URL_NOPAD.encode(&sealed))
    }

    /// Opens a value sealed by [`Sealer::seal`] with the same key. A value without the sealed
    /// prefix comes from an adopted log of the original service, which stored tokens as they
    /// were; it is returned as it is.
    pub fn open(&self, sealed: &str) -> Result<String, SealError> {
        let Some(encoded) = sealed.strip_prefix(PREFIX) else {
            return Ok(sealed.to_string());
        };
        let bytes = BASE64URL_NOPAD
            .decode(encoded.as_bytes())
            .map_err(|_| SealError)?;
        let plain = self.key.open(&bytes, &self.key).map_err(|_| SealError)?;
        String::from_utf8(plain).map_err(|_| SealError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_the_same_key() {
        let key = nkeys::XKey::new();
        let sealer = Sealer::from_seed(&key.seed().unwrap()).unwrap();
        let sealed = sealer.seal("token-123");
        assert!(!sealed.contains("token-123"));
        assert_ne!(sealed, sealer.seal("token-123"), "a fresh nonce each time");
        assert_eq!(sealer.open(&sealed).unwrap(), "token-123");
        let other = Sealer::from_seed(&nkeys::XKey::new().seed().unwrap()).unwrap();
        assert!(other.open(&sealed).is_err());
        assert_eq!(sealer.open("legacy-plain").unwrap(), "legacy-plain");
        assert!(sealer.open("xkv1.AAAA").is_err());
        assert_eq!(sealer.seal(""), "");
    }
}
