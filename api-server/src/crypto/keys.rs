//! Loading keys from configuration, or generating development keys into the data directory.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::config::{Config, ConfigError};

const MASTER_KEY_FILE: &str = "master.key";
const JWT_SECRET_FILE: &str = "jwt.secret";
const MIN_JWT_SECRET_BYTES: usize = 32;

/// A 256-bit key-encryption key with a stable, non-secret identifier.
pub struct MasterKey {
    id: String,
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl MasterKey {
    pub fn from_bytes(key: [u8; 32]) -> Self {
        let key = Zeroizing::new(key);
        // The id is a MAC of a constant under the key: stable, and reveals nothing of the key.
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(key.as_ref()).unwrap_or_else(|_| unreachable!());
        mac.update(b"coffer master key id");
        let id = hex::encode(&mac.finalize().into_bytes()[..8]);
        Self { id, key }
    }

    /// Parses 32 bytes of base64.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bytes = Zeroizing::new(
            STANDARD
                .decode(text.trim())
                .map_err(|_| "is not valid base64".to_owned())?,
        );
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| format!("must decode to 32 bytes, not {}", bytes.len()))?;
        Ok(Self::from_bytes(key))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.key
    }
}

/// The keys coffer-server runs with.
#[derive(Debug)]
pub struct Keys {
    pub master: MasterKey,
    /// Earlier master keys, for unwrapping data keys not yet re-wrapped.
    pub previous: Vec<MasterKey>,
    pub jwt_secret: SecretString,
}

impl Keys {
    /// Keys from configuration; in development, missing ones are generated once into the data
    /// directory (mode 0600) with a warning. Production never generates (see `Config::validate`).
    pub fn load(config: &Config) -> Result<Self, ConfigError> {
        let master = match &config.master_key {
            Some(text) => MasterKey::parse(text.expose_secret())
                .map_err(|m| ConfigError::new("COFFER_MASTER_KEY", m))?,
            None => {
                let text = dev_secret(
                    &config.data_dir,
                    MASTER_KEY_FILE,
                    "COFFER_MASTER_KEY",
                    || {
                        let mut key = Zeroizing::new([0u8; 32]);
                        rand::rngs::OsRng.fill_bytes(key.as_mut());
                        STANDARD.encode(key.as_ref())
                    },
                )?;
                MasterKey::parse(text.expose_secret()).map_err(|m| {
                    ConfigError::new(
                        "COFFER_MASTER_KEY",
                        format!("{}: {m}", config.data_dir.join(MASTER_KEY_FILE).display()),
                    )
                })?
            }
        };
        let jwt_secret = match &config.jwt_secret {
            Some(secret) => secret.clone(),
            None => dev_secret(
                &config.data_dir,
                JWT_SECRET_FILE,
                "COFFER_JWT_SECRET",
                || {
                    let mut key = Zeroizing::new([0u8; 48]);
                    rand::rngs::OsRng.fill_bytes(key.as_mut());
                    STANDARD.encode(key.as_ref())
                },
            )?,
        };
        if jwt_secret.expose_secret().len() < MIN_JWT_SECRET_BYTES {
            return Err(ConfigError::new(
                "COFFER_JWT_SECRET",
                format!("must be at least {MIN_JWT_SECRET_BYTES} bytes long"),
            ));
        }
        let previous = match &config.previous_master_keys {
            None => Vec::new(),
            Some(list) => list
                .expose_secret()
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .enumerate()
                .map(|(i, k)| {
                    MasterKey::parse(k).map_err(|m| {
                        ConfigError::new(
                            "COFFER_PREVIOUS_MASTER_KEYS",
                            format!("key {}: {m}", i + 1),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        Ok(Self {
            master,
            previous,
            jwt_secret,
        })
    }
}

/// Reads `dir/file`, or creates it with `generate()` and mode 0600 when it does not exist.
fn dev_secret(
    dir: &Path,
    file: &str,
    var: &'static str,
    generate: impl FnOnce() -> String,
) -> Result<SecretString, ConfigError> {
    let path = dir.join(file);
    let io_err = |e: std::io::Error| ConfigError::new(var, format!("{}: {e}", path.display()));
    fs::create_dir_all(dir)
        .map_err(|e| ConfigError::new("COFFER_DATA_DIR", format!("{}: {e}", dir.display())))?;
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut f) => {
            let secret = Zeroizing::new(generate());
            f.write_all(secret.as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(io_err)?;
            tracing::warn!(
                path = %path.display(),
                "{var} is not set: generated a development key. Back it up with the data, and set {var} explicitly in production (COFFER_ENV=production refuses to start without it)"
            );
            Ok(SecretString::from(secret.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = fs::metadata(&path).map_err(io_err)?;
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "key file is readable by other users; run chmod 600 on it");
            }
            tracing::warn!(path = %path.display(), "{var} is not set: using the development key from the data directory");
            let text = Zeroizing::new(fs::read_to_string(&path).map_err(io_err)?);
            Ok(SecretString::from(text.trim().to_owned()))
        }
        Err(e) => Err(io_err(e)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn development_keys_are_generated_once_with_owner_only_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::defaults();
        config.data_dir = dir.path().to_path_buf();
        config.master_key = None;
        config.jwt_secret = None;
        let first = Keys::load(&config).unwrap();
        let second = Keys::load(&config).unwrap();
        assert_eq!(first.master.bytes(), second.master.bytes());
        assert_eq!(
            first.jwt_secret.expose_secret(),
            second.jwt_secret.expose_secret()
        );
        let mode = fs::metadata(dir.path().join(MASTER_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_master_key_of_the_wrong_length_is_refused_by_name() {
        let mut config = Config::defaults();
        config.master_key = Some(SecretString::from(STANDARD.encode([0u8; 16])));
        let err = Keys::load(&config).unwrap_err();
        assert_eq!(err.var, "COFFER_MASTER_KEY");
        assert!(err.message.contains("32 bytes"));
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let key = MasterKey::from_bytes([7u8; 32]);
        assert!(!format!("{key:?}").contains("7, 7"));
    }
}
