//! `coffer init`: writes `.coffer.toml` in the working directory.

use serde_json::json;

use super::{Context, interactive, prompt};
use crate::config::{FILE_NAME, ProjectFile};
use crate::credentials::{Credentials, normalize_server};
use crate::error::CliError;
use crate::output::Style;

/// The environment a new project file names when none is given: the first of coffer-server's
/// default environments.
const DEFAULT_ENVIRONMENT: &str = "development";

/// A value from the flags (or variables), else asked for on a terminal.
fn value(given: Option<&String>, question: &str, flag: &str) -> Result<String, CliError> {
    if let Some(value) = given.filter(|v| !v.trim().is_empty()) {
        return Ok(value.trim().to_owned());
    }
    if interactive() {
        let answer = prompt(question)?;
        if !answer.trim().is_empty() {
            return Ok(answer.trim().to_owned());
        }
    }
    Err(CliError::usage(format!("pass {flag}")))
}

pub fn init(ctx: &Context, args: &crate::cli::InitArgs) -> Result<(), CliError> {
    let path = ctx.cwd.join(FILE_NAME);
    if path.exists() && !args.force {
        return Err(CliError::usage(format!(
            "{} exists: pass --force to replace it",
            path.display()
        )));
    }
    // What the flags and variables do not say comes from the nearest .coffer.toml (this one,
    // or one above), so `coffer init --force --env production` changes the environment only.
    let settings = &ctx.settings;
    let server = match &settings.server {
        Some(server) => Some(server.clone()),
        None => {
            Credentials::in_dir(ctx.config_dir()?)
                .load()?
                .default_server
        }
    };
    let server = match server {
        Some(server) => server,
        None => value(None, "Server URL: ", "--server URL")?,
    };
    let server = normalize_server(&server)?;
    let org = value(settings.org.as_ref(), "Organization: ", "--org ORG")?;
    let project = value(settings.project.as_ref(), "Project: ", "--project PROJECT")?;
    let environment = settings
        .env
        .clone()
        .unwrap_or_else(|| DEFAULT_ENVIRONMENT.to_owned());
    let file = ProjectFile {
        server: Some(server.trim_end_matches('/').to_owned()),
        org: Some(org),
        project: Some(project),
        environment: Some(environment),
    };
    std::fs::write(&path, file.to_toml()?).map_err(|e| CliError::file("cannot write", &path, e))?;
    if ctx.out.json {
        ctx.out.json(&json!({ "path": path, "config": file }))?;
    } else {
        ctx.out.styled_line(
            &format!(
                "Wrote {}: {}/{} in {} on {}",
                path.display(),
                file.org.as_deref().unwrap_or_default(),
                file.project.as_deref().unwrap_or_default(),
                file.environment.as_deref().unwrap_or_default(),
                file.server.as_deref().unwrap_or_default(),
            ),
            Style::Green,
        )?;
    }
    Ok(())
}
