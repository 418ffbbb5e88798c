//! `coffer export` and `coffer import`: an environment as a dotenv, JSON or YAML file.

use std::io::{Read as _, Write as _};
use std::path::Path;

use coffer_client::{Client, FileFormat};
use secrecy::ExposeSecret as _;
use serde_json::json;
use zeroize::Zeroizing;

use super::Context;
use crate::cli::{ExportArgs, ImportArgs};
use crate::error::CliError;
use crate::files;
use crate::output::{self, Style};
use crate::progress;
use crate::session::Retry;

/// Files from this size on get a spinner while they upload (on a terminal).
const SPINNER_FROM_BYTES: usize = 64 * 1024;

pub async fn export(ctx: &Context, args: ExportArgs) -> Result<(), CliError> {
    let t = ctx.target()?;
    let mut session = ctx.session()?;
    let file = session
        .call(Retry::Idempotent, async |c: &Client| {
            c.export_secrets(&t.org, &t.project, &t.env, args.format, args.resolve)
                .await
        })
        .await?;
    let bytes = file.expose_secret().as_bytes();
    match &args.output {
        Some(path) => {
            let mut out = files::create_private(path)?;
            out.write_all(bytes)
                .and_then(|()| out.sync_all())
                .map_err(|e| CliError::file("cannot write", path, e))?;
            if ctx.out.json {
                ctx.out.json(&json!({
                    "path": path, "format": args.format, "bytes": bytes.len(),
                }))?;
            } else {
                output::note(&format!(
                    "Wrote {} as {} to {} ({})",
                    t.label(),
                    args.format,
                    path.display(),
                    output::bytes(bytes.len() as u64)
                ));
            }
        }
        // The file is the output, whatever --json says: JSON is one of its formats.
        None => ctx.out.raw(bytes)?,
    }
    Ok(())
}

/// The format to import `path` as: the one asked for, else the one its name suggests.
fn format_of(path: &Path, asked: Option<FileFormat>) -> Result<FileFormat, CliError> {
    if let Some(format) = asked {
        return Ok(format);
    }
    FileFormat::from_file_name(&path.to_string_lossy()).ok_or_else(|| {
        CliError::usage(format!(
            "cannot tell the format of {} from its name: pass --format dotenv, json or yaml",
            path.display()
        ))
    })
}

pub async fn import(ctx: &Context, args: ImportArgs) -> Result<(), CliError> {
    let t = ctx.target()?;
    let stdin = args.file.as_os_str() == "-";
    let format = if stdin {
        args.format
            .ok_or_else(|| CliError::usage("reading stdin: pass --format dotenv, json or yaml"))?
    } else {
        format_of(&args.file, args.format)?
    };
    let mut body = Zeroizing::new(Vec::new());
    if stdin {
        std::io::stdin()
            .lock()
            .read_to_end(&mut body)
            .map_err(|e| CliError::Other(format!("cannot read stdin: {e}")))?;
    } else {
        std::fs::File::open(&args.file)
            .and_then(|mut f| f.read_to_end(&mut body))
            .map_err(|e| CliError::file("cannot read", &args.file, e))?;
    }
    let size = body.len();
    let mut session = ctx.session()?;
    let show = size >= SPINNER_FROM_BYTES && !ctx.out.json && progress::visible();
    let label = format!(
        "uploading {} ({}) to {}",
        if stdin {
            "stdin".to_owned()
        } else {
            args.file.display().to_string()
        },
        output::bytes(size as u64),
        t.label()
    );
    let report = progress::spin(
        &label,
        show,
        session.call(Retry::Never, async |c: &Client| {
            c.import_secrets(&t.org, &t.project, &t.env, format, body.to_vec())
                .await
        }),
    )
    .await?;
    if ctx.out.json {
        ctx.out.json(&report)?;
    } else {
        ctx.out.styled_line(
            &format!(
                "Imported {} into {}: {} created, {} updated, {} unchanged",
                if stdin {
                    "stdin".to_owned()
                } else {
                    args.file.display().to_string()
                },
                t.label(),
                report.created,
                report.updated,
                report.unchanged
            ),
            Style::Green,
        )?;
    }
    Ok(())
}
