//! `coffer run --fallback-file PATH`: the last values read, sealed with AES-256-GCM under a key
//! kept in the configuration directory, for when the server cannot be reached. The file and the
//! key are 0600; the associated data binds the file to its organization, project and
//! environment, so a copy made for one environment never starts a program with another's.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead as _, KeyInit as _, OsRng, Payload};
use aes_gcm::{AeadCore as _, Aes256Gcm, Key, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::Values;
use crate::config::Target;
use crate::error::CliError;
use crate::files::{self, PRIVATE_FILE_MODE};

const KEY_FILE: &str = "fallback.key";
const FORMAT: &str = "coffer-fallback";
const VERSION: u32 = 1;

/// The sealed file.
#[derive(Debug, Serialize, Deserialize)]
struct Sealed {
    format: String,
    version: u32,
    nonce: String,
    ciphertext: String,
}

/// What is sealed: when, and the values.
#[derive(Serialize, Deserialize)]
struct Contents {
    saved_at: String,
    values: BTreeMap<String, String>,
}

impl Drop for Contents {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        for value in self.values.values_mut() {
            value.zeroize();
        }
    }
}

/// A fallback file and the key that seals it.
pub struct Fallback {
    path: PathBuf,
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for Fallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fallback")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn associated_data(t: &Target) -> Vec<u8> {
    format!("{FORMAT}/v{VERSION}\0{}\0{}\0{}", t.org, t.project, t.env).into_bytes()
}

/// The key in `config_dir`, made (0600) the first time.
fn load_or_create_key(config_dir: &Path) -> Result<Zeroizing<[u8; 32]>, CliError> {
    let path = config_dir.join(KEY_FILE);
    let decode = |text: &[u8]| -> Result<Zeroizing<[u8; 32]>, CliError> {
        let bytes = Zeroizing::new(BASE64.decode(text.trim_ascii()).unwrap_or_default());
        let mut key = Zeroizing::new([0_u8; 32]);
        if bytes.len() != key.len() {
            return Err(CliError::Other(format!(
                "{} is damaged: delete it (fallback files sealed with it become unreadable)",
                path.display()
            )));
        }
        key.copy_from_slice(&bytes);
        Ok(key)
    };
    if let Some(text) = files::read_private(&path)? {
        return decode(&text);
    }
    files::ensure_private_dir(config_dir)?;
    let key = Aes256Gcm::generate_key(OsRng);
    let text = Zeroizing::new(format!("{}\n", BASE64.encode(key.as_slice())));
    // create_new: of two processes making the key at once, one writes it and both use it.
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_FILE_MODE)
        .open(&path)
    {
        Ok(mut file) => {
            file.write_all(text.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| CliError::file("cannot write", &path, e))?;
            decode(text.as_bytes())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let text = files::read_private(&path)?.unwrap_or_default();
            decode(&text)
        }
        Err(e) => Err(CliError::file("cannot create", &path, e)),
    }
}

impl Fallback {
    /// The fallback file at `path`, with the key of `config_dir` (made if needed).
    pub fn open(path: &Path, config_dir: &Path) -> Result<Self, CliError> {
        let key = load_or_create_key(config_dir)?;
        Ok(Self {
            path: path.to_path_buf(),
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key.as_slice())),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Seals `values` of `target` into the file (replaced whole, 0600).
    pub fn save(&self, target: &Target, values: &Values) -> Result<(), CliError> {
        let saved_at = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let contents = Contents {
            saved_at,
            values: values
                .exposed()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        };
        let plaintext = Zeroizing::new(
            serde_json::to_vec(&contents).map_err(|e| CliError::Other(e.to_string()))?,
        );
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let aad = associated_data(target);
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: &plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| CliError::Other("cannot seal the fallback copy".into()))?;
        let sealed = Sealed {
            format: FORMAT.into(),
            version: VERSION,
            nonce: BASE64.encode(nonce),
            ciphertext: BASE64.encode(ciphertext),
        };
        let bytes = serde_json::to_vec(&sealed).map_err(|e| CliError::Other(e.to_string()))?;
        files::write_private(&self.path, &bytes)
    }

    /// The values sealed for `target` and when they were saved.
    pub fn load(&self, target: &Target) -> Result<(Values, String), CliError> {
        let unreadable = |why: &str| {
            CliError::Other(format!(
                "the fallback copy {} cannot be used: {why}",
                self.path.display()
            ))
        };
        let bytes = files::read_private(&self.path)?.ok_or_else(|| {
            unreadable("it does not exist yet (it is written after a successful read)")
        })?;
        let sealed: Sealed =
            serde_json::from_slice(&bytes).map_err(|_| unreadable("it is not a fallback copy"))?;
        if sealed.format != FORMAT || sealed.version != VERSION {
            return Err(unreadable("it is not a fallback copy of this version"));
        }
        let nonce = BASE64
            .decode(&sealed.nonce)
            .ok()
            .filter(|n| n.len() == 12)
            .ok_or_else(|| unreadable("it is damaged"))?;
        let ciphertext = BASE64
            .decode(&sealed.ciphertext)
            .map_err(|_| unreadable("it is damaged"))?;
        let aad = associated_data(target);
        let plaintext = Zeroizing::new(
            self.cipher
                .decrypt(
                    Nonce::from_slice(&nonce),
                    Payload {
                        msg: &ciphertext,
                        aad: &aad,
                    },
                )
                .map_err(|_| {
                    unreadable(&format!(
                        "it was made for another environment than {}/{}/{}, with another key, or it was altered",
                        target.org, target.project, target.env
                    ))
                })?,
        );
        let contents: Contents =
            serde_json::from_slice(&plaintext).map_err(|_| unreadable("it is damaged"))?;
        let values = Values::from_pairs(
            contents
                .values
                .iter()
                .map(|(k, v)| (k.clone(), SecretString::from(v.clone()))),
        );
        Ok((values, contents.saved_at.clone()))
    }
}

/// `values`' secrets, for tests.
#[cfg(test)]
fn plain(values: &Values) -> Vec<(String, String)> {
    values
        .exposed()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn target(env: &str) -> Target {
        Target {
            org: "acme".into(),
            project: "web".into(),
            env: env.into(),
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn values_sealed_for_an_environment_come_back_only_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        let path = dir.path().join("fallback");
        let values = Values::from_pairs([
            ("A".to_owned(), SecretString::from("alpha-secret")),
            ("B".to_owned(), SecretString::from("")),
        ]);
        let fallback = Fallback::open(&path, &config).unwrap();
        fallback.save(&target("production"), &values).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&config.join(KEY_FILE)), 0o600);
        let on_disk = std::fs::read_to_string(&path).unwrap();
        assert!(!on_disk.contains("alpha-secret"), "{on_disk}");

        // the same key is used next time
        let again = Fallback::open(&path, &config).unwrap();
        let (back, saved_at) = again.load(&target("production")).unwrap();
        assert_eq!(plain(&back), plain(&values));
        assert!(saved_at.starts_with("20"), "{saved_at}");

        let err = again.load(&target("staging")).unwrap_err().to_string();
        assert!(err.contains("another environment"), "{err}");
        assert!(!err.contains("alpha-secret"));
        assert!(!format!("{again:?}").contains("alpha"));
    }

    #[test]
    fn a_missing_or_altered_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fallback");
        let fallback = Fallback::open(&path, dir.path()).unwrap();
        let err = fallback.load(&target("dev")).unwrap_err().to_string();
        assert!(err.contains("does not exist yet"), "{err}");
        fallback
            .save(
                &target("dev"),
                &Values::from_pairs([("A".to_owned(), SecretString::from("1"))]),
            )
            .unwrap();
        let mut sealed: Sealed = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let mut bytes = BASE64.decode(&sealed.ciphertext).unwrap();
        bytes[0] ^= 1;
        sealed.ciphertext = BASE64.encode(bytes);
        std::fs::write(&path, serde_json::to_vec(&sealed).unwrap()).unwrap();
        assert!(fallback.load(&target("dev")).is_err());
    }
}
