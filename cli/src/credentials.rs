//! The credentials `coffer login` keeps, one per server, in `credentials.json` in the
//! configuration directory: created 0600, replaced whole, and changed under a lock so that two
//! `coffer` processes refreshing at once do not both spend the same refresh token (which would
//! end the session).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use coffer_client::Revealed;
use serde::{Deserialize, Serialize};

use crate::error::CliError;
use crate::files::{self, PRIVATE_FILE_MODE};

const FILE_NAME: &str = "credentials.json";
const LOCK_NAME: &str = "credentials.lock";
/// How long to wait for another `coffer` process to finish changing the credentials: longer
/// than one refresh takes (a request with a 10 s timeout).
const LOCK_WAIT: Duration = Duration::from_secs(15);

/// Everything in `credentials.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Store {
    /// The server of the last login, used when nothing else names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_server: Option<String>,
    /// By server URL, normalised (`https://coffer.example.com/`).
    #[serde(default)]
    pub servers: BTreeMap<String, Stored>,
}

/// The credential kept for one server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Stored {
    /// A login session (`coffer login` with email and password).
    Session {
        email: String,
        access_token: Revealed,
        /// When the access token expires, in seconds since the Unix epoch.
        access_expires_at: i64,
        refresh_token: Revealed,
    },
    /// An API key or a service token (`coffer login --token`).
    Token {
        token: Revealed,
        /// Whom it belongs to, as far as `coffer login` could tell (for `coffer whoami`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
    },
}

/// `credentials.json` and its lock in a configuration directory.
#[derive(Debug, Clone)]
pub struct Credentials {
    path: PathBuf,
    lock_path: PathBuf,
}

/// Held while the credentials are read, changed and written back; released when dropped.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

impl Credentials {
    pub fn in_dir(config_dir: &Path) -> Self {
        Self {
            path: config_dir.join(FILE_NAME),
            lock_path: config_dir.join(LOCK_NAME),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What is stored; nothing when there is no file yet.
    pub fn load(&self) -> Result<Store, CliError> {
        match files::read_private(&self.path)? {
            None => Ok(Store::default()),
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|_| {
                CliError::Other(format!(
                    "{} is damaged: delete it and run `coffer login` again",
                    self.path.display()
                ))
            }),
        }
    }

    /// Replaces what is stored (0600).
    pub fn save(&self, store: &Store) -> Result<(), CliError> {
        let bytes = zeroize::Zeroizing::new(
            serde_json::to_vec_pretty(store).map_err(|e| CliError::Other(e.to_string()))?,
        );
        files::write_private(&self.path, &bytes)
    }

    /// Waits (at most 15 s) until no other `coffer` process is changing the credentials.
    pub async fn lock(&self) -> Result<Lock, CliError> {
        if let Some(dir) = self.lock_path.parent() {
            files::ensure_private_dir(dir)?;
        }
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(PRIVATE_FILE_MODE)
            .open(&self.lock_path)
            .map_err(|e| CliError::file("cannot open", &self.lock_path, e))?;
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Lock { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(CliError::Other(format!(
                        "another coffer process has held {} for {} s: try again",
                        self.lock_path.display(),
                        LOCK_WAIT.as_secs()
                    )));
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(CliError::file("cannot lock", &self.lock_path, e));
                }
            }
        }
    }
}

/// `url` normalised as the client sees it (`http://host:port/`), or what is wrong with it.
pub fn normalize_server(url: &str) -> Result<String, CliError> {
    coffer_client::Client::anonymous(url.trim())
        .map(|c| c.base_url().to_owned())
        .map_err(|e| CliError::usage(format!("{e} (check --server or COFFER_SERVER_URL)")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::fs::PermissionsExt as _;

    use secrecy::SecretString;

    use super::*;

    #[tokio::test]
    async fn credentials_are_kept_0600_and_never_debug() {
        let dir = tempfile::tempdir().unwrap();
        let credentials = Credentials::in_dir(&dir.path().join("coffer"));
        assert!(credentials.load().unwrap().servers.is_empty());
        let _lock = credentials.lock().await.unwrap();
        let mut store = Store::default();
        store.servers.insert(
            "http://127.0.0.1:8080/".into(),
            Stored::Session {
                email: "ann@example.com".into(),
                access_token: Revealed(SecretString::from("access-secret")),
                access_expires_at: 1,
                refresh_token: Revealed(SecretString::from("refresh-secret")),
            },
        );
        credentials.save(&store).unwrap();
        let mode = std::fs::metadata(credentials.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = credentials.load().unwrap();
        let Some(Stored::Session { refresh_token, .. }) =
            back.servers.get("http://127.0.0.1:8080/")
        else {
            panic!("not kept");
        };
        assert_eq!(refresh_token.expose(), "refresh-secret");
        let debug = format!("{back:?}");
        assert!(!debug.contains("secret"), "{debug}");
    }

    #[tokio::test]
    async fn the_lock_is_taken_by_one_holder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let credentials = Credentials::in_dir(dir.path());
        let first = credentials.lock().await.unwrap();
        let second = tokio::time::timeout(Duration::from_millis(100), credentials.lock()).await;
        assert!(second.is_err(), "taken twice");
        drop(first);
        credentials.lock().await.unwrap();
    }

    #[test]
    fn server_urls_are_normalised_and_bad_ones_refused() {
        assert_eq!(
            normalize_server(" http://127.0.0.1:8080 ").unwrap(),
            "http://127.0.0.1:8080/"
        );
        let err = normalize_server("https://user:hunter2@example.com").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(normalize_server("ftp://example.com").is_err());
    }
}
