//! Files only their owner may read: the configuration directory, the credentials, the key and
//! the copy of `coffer run --fallback-file`, and exported secrets.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::error::CliError;
use crate::output;

/// The mode of every file `coffer` writes secrets or credentials to.
pub const PRIVATE_FILE_MODE: u32 = 0o600;
const PRIVATE_DIR_MODE: u32 = 0o700;

/// Where `coffer` keeps its credentials: `COFFER_CONFIG_DIR`, else the user's configuration
/// directory (`~/.config/coffer` on Linux, `~/Library/Application Support/dev.coffer.coffer`
/// on macOS).
pub fn config_dir() -> Result<PathBuf, CliError> {
    if let Some(dir) = std::env::var_os("COFFER_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    directories::ProjectDirs::from("dev", "coffer", "coffer")
        .map(|dirs| dirs.config_dir().to_path_buf())
        .ok_or_else(no_config_dir)
}

/// The error when [`config_dir`] cannot tell.
pub fn no_config_dir() -> CliError {
    CliError::usage(
        "cannot tell where your configuration directory is (no home directory): set COFFER_CONFIG_DIR",
    )
}

/// Creates `dir` (and its parents) readable by its owner only, if it does not exist.
pub fn ensure_private_dir(dir: &Path) -> Result<(), CliError> {
    DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
        .map_err(|e| CliError::file("cannot create the directory", dir, e))
}

/// Replaces `path` with `contents` at once (a private temporary file renamed over it), so a
/// reader never sees half a file and the file is never, even briefly, wider than 0600.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), CliError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    ensure_private_dir(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(PRIVATE_FILE_MODE)
            .open(&temporary)?;
        // An earlier temporary file of the same name may have had other permissions.
        file.set_permissions(fs::Permissions::from_mode(PRIVATE_FILE_MODE))?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&temporary, path)
    })();
    written.map_err(|e| {
        let _ = fs::remove_file(&temporary);
        CliError::file("cannot write", path, e)
    })
}

/// Creates (or truncates) `path` for writing, 0600 from the start; an existing file is made
/// 0600 too, since it is about to hold secrets.
pub fn create_private(path: &Path) -> Result<File, CliError> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(PRIVATE_FILE_MODE)
        .open(path)
        .map_err(|e| CliError::file("cannot write", path, e))?;
    file.set_permissions(fs::Permissions::from_mode(PRIVATE_FILE_MODE))
        .map_err(|e| CliError::file("cannot restrict the permissions of", path, e))?;
    Ok(file)
}

/// The contents of the private file `path`, `None` when it does not exist. A file that others
/// may read (someone widened it) is narrowed back to 0600, with a warning.
pub fn read_private(path: &Path) -> Result<Option<Zeroizing<Vec<u8>>>, CliError> {
    let metadata = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CliError::file("cannot read", path, e)),
    };
    if metadata.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(PRIVATE_FILE_MODE))
            .map_err(|e| CliError::file("cannot restrict the permissions of", path, e))?;
        output::warn(&format!(
            "{} could be read by other users; it is now readable by you only (0600)",
            path.display()
        ));
    }
    match fs::read(path) {
        Ok(bytes) => Ok(Some(Zeroizing::new(bytes))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CliError::file("cannot read", path, e)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn private_files_are_0600_in_a_0700_directory_and_replaced_whole() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        let path = dir.join("credentials.json");
        write_private(&path, b"one").unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir), 0o700);
        write_private(&path, b"two").unwrap();
        assert_eq!(&*read_private(&path).unwrap().unwrap(), b"two");
        // no temporary file is left behind
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
    }

    #[test]
    fn a_widened_private_file_is_narrowed_when_read() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("key");
        write_private(&path, b"k").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(&*read_private(&path).unwrap().unwrap(), b"k");
        assert_eq!(mode(&path), 0o600);
        assert!(read_private(&root.path().join("absent")).unwrap().is_none());
    }

    #[test]
    fn an_existing_file_written_with_secrets_becomes_0600() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("export.env");
        fs::write(&path, "old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o664)).unwrap();
        drop(create_private(&path).unwrap());
        assert_eq!(mode(&path), 0o600);
        assert_eq!(fs::read(&path).unwrap(), b"");
    }
}
