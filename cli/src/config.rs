//! `.coffer.toml`: which server, organization, project and environment a directory works with,
//! found in the working directory or the nearest one above it; and the precedence
//! flag > environment variable > `.coffer.toml` (clap gives flags precedence over variables).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::CliError;

/// The project file's name.
pub const FILE_NAME: &str = ".coffer.toml";

/// The contents of a `.coffer.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectFile {
    /// The server's URL (`https://coffer.example.com`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The organization's slug.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// The project's slug.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// The environment used when none is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
}

impl ProjectFile {
    /// Reads the file at `path`.
    pub fn load(path: &Path) -> Result<Self, CliError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| CliError::file("cannot read", path, e))?;
        toml::from_str(&text).map_err(|e| {
            CliError::usage(format!(
                "{} is not a valid project file: {}",
                path.display(),
                e.message()
            ))
        })
    }

    /// The file as written by `coffer init`.
    pub fn to_toml(&self) -> Result<String, CliError> {
        let body = toml::to_string(self).map_err(|e| CliError::Other(e.to_string()))?;
        Ok(format!(
            "# Written by `coffer init`. Flags (--server, --org, --project, --env) and the\n\
             # variables COFFER_SERVER_URL, COFFER_ORG, COFFER_PROJECT and COFFER_ENVIRONMENT override it.\n\
             {body}"
        ))
    }
}

/// The nearest `.coffer.toml`: in `start` or the closest directory above it.
pub fn find(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|dir| dir.join(FILE_NAME))
        .find(|candidate| candidate.is_file())
}

/// What the flags and environment variables (already merged by clap) say.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub server: Option<String>,
    pub org: Option<String>,
    pub project: Option<String>,
    pub env: Option<String>,
}

/// Where a command works: the overrides over the project file, if there is one.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub server: Option<String>,
    pub org: Option<String>,
    pub project: Option<String>,
    pub env: Option<String>,
    /// The project file the settings came from, if any.
    pub file: Option<PathBuf>,
}

/// The project (and environment) a command acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub org: String,
    pub project: String,
    pub env: String,
}

impl Target {
    /// `project/env`, for messages.
    pub fn label(&self) -> String {
        format!("{}/{}", self.project, self.env)
    }
}

fn given(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

impl Settings {
    /// The overrides over the `.coffer.toml` found from `cwd` up.
    pub fn resolve(overrides: Overrides, cwd: &Path) -> Result<Self, CliError> {
        let file_path = find(cwd);
        let file = match &file_path {
            Some(path) => ProjectFile::load(path)?,
            None => ProjectFile::default(),
        };
        Ok(Self {
            server: given(overrides.server).or(file.server),
            org: given(overrides.org).or(file.org),
            project: given(overrides.project).or(file.project),
            env: given(overrides.env).or(file.environment),
            file: file_path,
        })
    }

    /// The organization and project, or what to do to name them.
    pub fn project(&self) -> Result<(String, String), CliError> {
        let hint = if self.file.is_some() {
            ""
        } else {
            " (no .coffer.toml in this directory or above)"
        };
        let org = self.org.clone().ok_or_else(|| {
            CliError::usage(format!(
                "no organization: run `coffer init` or pass --org{hint}"
            ))
        })?;
        let project = self.project.clone().ok_or_else(|| {
            CliError::usage(format!(
                "no project: run `coffer init` or pass --project{hint}"
            ))
        })?;
        Ok((org, project))
    }

    /// The organization, project and environment, or what to do to name them.
    pub fn target(&self) -> Result<Target, CliError> {
        let (org, project) = self.project()?;
        let env = self.env.clone().ok_or_else(|| {
            CliError::usage(
                "no environment: pass --env (or set `environment` in .coffer.toml with `coffer init --env`)",
            )
        })?;
        Ok(Target { org, project, env })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn write(dir: &Path, text: &str) {
        std::fs::write(dir.join(FILE_NAME), text).unwrap();
    }

    #[test]
    fn the_nearest_project_file_above_the_working_directory_is_used() {
        let root = tempfile::tempdir().unwrap();
        let deep = root.path().join("a/b/c");
        std::fs::create_dir_all(&deep).unwrap();
        assert_eq!(find(&deep), None);
        write(root.path(), "org = \"outer\"\n");
        write(
            &root.path().join("a"),
            "org = \"inner\"\nproject = \"web\"\n",
        );
        let settings = Settings::resolve(Overrides::default(), &deep).unwrap();
        assert_eq!(settings.org.as_deref(), Some("inner"));
        assert_eq!(settings.file, Some(root.path().join("a").join(FILE_NAME)));
    }

    #[test]
    fn overrides_come_before_the_file_and_empty_ones_do_not_count() {
        let root = tempfile::tempdir().unwrap();
        write(
            root.path(),
            "server = \"http://f\"\norg = \"acme\"\nproject = \"web\"\nenvironment = \"development\"\n",
        );
        let settings = Settings::resolve(
            Overrides {
                env: Some("production".into()),
                project: Some(String::new()),
                ..Overrides::default()
            },
            root.path(),
        )
        .unwrap();
        assert_eq!(
            settings.target().unwrap(),
            Target {
                org: "acme".into(),
                project: "web".into(),
                env: "production".into()
            }
        );
        assert_eq!(settings.server.as_deref(), Some("http://f"));
    }

    #[test]
    fn missing_settings_say_what_to_do() {
        let root = tempfile::tempdir().unwrap();
        let settings = Settings::resolve(
            Overrides {
                org: Some("acme".into()),
                ..Overrides::default()
            },
            root.path(),
        )
        .unwrap();
        let err = settings.target().unwrap_err().to_string();
        assert!(
            err.contains("no project: run `coffer init` or pass --project"),
            "{err}"
        );
        assert!(err.contains("no .coffer.toml"), "{err}");
    }

    #[test]
    fn a_written_file_reads_back_and_unknown_keys_are_refused() {
        let file = ProjectFile {
            server: Some("https://coffer.example.com".into()),
            org: Some("acme".into()),
            project: Some("web".into()),
            environment: Some("development".into()),
        };
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join(FILE_NAME), file.to_toml().unwrap()).unwrap();
        assert_eq!(
            ProjectFile::load(&root.path().join(FILE_NAME)).unwrap(),
            file
        );
        write(root.path(), "projet = \"web\"\n");
        let err = ProjectFile::load(&root.path().join(FILE_NAME)).unwrap_err();
        assert!(
            err.to_string().contains("not a valid project file"),
            "{err}"
        );
    }
}
