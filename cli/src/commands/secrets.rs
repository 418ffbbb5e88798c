//! `coffer secrets list|get|set|delete|history|rollback`.

use std::io::Read as _;

use coffer_client::{
    BulkUpsertRequest, Client, CreateSecretRequest, PutSecretRequest, RollbackRequest,
    SecretVersion,
};
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::json;
use zeroize::Zeroizing;

use super::{Context, confirm, interactive};
use crate::cli::{
    DeleteArgs, GetArgs, HistoryArgs, ListArgs, RollbackArgs, SecretsCommand, SetArgs,
};
use crate::error::CliError;
use crate::output::{self, Cell, Style};
use crate::session::Retry;

/// The most a value read from stdin or a file may be: far above the server's limit (64 KiB),
/// so that the server's own error explains it, without reading endless input.
const MAX_VALUE_BYTES: u64 = 1024 * 1024;
/// A secret's history is read a page (200 versions) at a time, at most this many pages.
const MAX_HISTORY_PAGES: usize = 50;

pub async fn run(ctx: &Context, command: SecretsCommand) -> Result<(), CliError> {
    match command {
        SecretsCommand::List(args) => list(ctx, &args).await,
        SecretsCommand::Get(args) => get(ctx, &args).await,
        SecretsCommand::Set(args) => set(ctx, args).await,
        SecretsCommand::Delete(args) => delete(ctx, &args).await,
        SecretsCommand::History(args) => history(ctx, &args).await,
        SecretsCommand::Rollback(args) => rollback(ctx, &args).await,
    }
}

async fn list(ctx: &Context, args: &ListArgs) -> Result<(), CliError> {
    let t = ctx.target()?;
    let mut session = ctx.session()?;
    let fetched = session
        .call(Retry::Idempotent, async |c: &Client| {
            c.read_secrets(&t.org, &t.project, &t.env, None).await
        })
        .await?;
    let Some(page) = fetched.into_value() else {
        return Err(CliError::Other(
            "the server answered 304 to a read that was not conditional".into(),
        ));
    };
    if ctx.out.json {
        let secrets: Vec<_> = page
            .secrets
            .iter()
            .map(|s| {
                let mut entry = json!({
                    "key": s.key,
                    "version": s.version,
                    "updated_at": s.updated_at,
                });
                if args.reveal {
                    entry["value"] = json!(s.value.expose());
                }
                entry
            })
            .collect();
        ctx.out.json(&json!({
            "org": t.org, "project": t.project, "environment": t.env,
            "revision": page.revision, "secrets": secrets,
        }))?;
        return Ok(());
    }
    let mut header = vec!["KEY", "VERSION", "UPDATED"];
    if args.reveal {
        header.push("VALUE");
    }
    let rows: Vec<Vec<Cell>> = page
        .secrets
        .iter()
        .map(|s| {
            let mut row = vec![
                Cell::styled(&s.key, Style::Bold),
                Cell::new(s.version.to_string()),
                Cell::styled(output::time(s.updated_at), Style::Dim),
            ];
            if args.reveal {
                row.push(Cell::new(s.value.expose()));
            }
            row
        })
        .collect();
    if rows.is_empty() && ctx.out.tty {
        ctx.out.line(&format!("No secrets in {}", t.label()))?;
        return Ok(());
    }
    ctx.out.table(&header, &rows)?;
    Ok(())
}

async fn get(ctx: &Context, args: &GetArgs) -> Result<(), CliError> {
    let t = ctx.target()?;
    let mut session = ctx.session()?;
    let key = args.key.as_str();
    let secret = match args.version {
        Some(version) => {
            session
                .call(Retry::Idempotent, async |c: &Client| {
                    c.get_secret_version(&t.org, &t.project, &t.env, key, version)
                        .await
                })
                .await?
        }
        None => {
            session
                .call(Retry::Idempotent, async |c: &Client| {
                    c.get_secret(&t.org, &t.project, &t.env, key, !args.raw)
                        .await
                })
                .await?
        }
    };
    if ctx.out.json {
        ctx.out.json(&secret)?;
    } else {
        ctx.out.raw(secret.value.expose().as_bytes())?;
    }
    Ok(())
}

/// What `coffer secrets set` was asked to write.
fn entries(args: SetArgs) -> Result<Vec<(String, SecretString)>, CliError> {
    let SetArgs {
        entries, from_file, ..
    } = args;
    let all_pairs = entries.iter().all(|e| e.contains('='));
    if let Some(path) = from_file {
        let [key] = entries.as_slice() else {
            return Err(CliError::usage(
                "--from-file sets one secret: give one KEY (without =VALUE)",
            ));
        };
        if key.contains('=') {
            return Err(CliError::usage(
                "with --from-file, give the KEY alone: the value is the file",
            ));
        }
        let file =
            std::fs::File::open(&path).map_err(|e| CliError::file("cannot read", &path, e))?;
        let value = read_value(file).map_err(|e| CliError::file("cannot read", &path, e))?;
        return Ok(vec![(key.clone(), value)]);
    }
    if all_pairs {
        return entries
            .into_iter()
            .map(|entry| {
                let entry = Zeroizing::new(entry);
                let (key, value) = entry.split_once('=').unwrap_or((entry.as_str(), ""));
                if key.is_empty() {
                    return Err(CliError::usage("KEY=VALUE needs a key before the `=`"));
                }
                Ok((key.to_owned(), SecretString::from(value.to_owned())))
            })
            .collect();
    }
    let [key] = entries.as_slice() else {
        return Err(CliError::usage(
            "give KEY=VALUE pairs, or one KEY alone to read its value from stdin or --from-file",
        ));
    };
    let value = if interactive() {
        let typed = rpassword::prompt_password(format!("Value of {key}: "))
            .map_err(|e| CliError::Other(format!("cannot read from the terminal: {e}")))?;
        SecretString::from(typed)
    } else {
        let value = read_value(std::io::stdin().lock())
            .map_err(|e| CliError::Other(format!("cannot read stdin: {e}")))?;
        // `echo value | coffer secrets set KEY` means "value", not "value\n".
        let text = value.expose_secret();
        let trimmed = text
            .strip_suffix("\r\n")
            .or_else(|| text.strip_suffix('\n'))
            .unwrap_or(text);
        SecretString::from(trimmed.to_owned())
    };
    Ok(vec![(key.clone(), value)])
}

/// All of `reader` as UTF-8 text, refused past [`MAX_VALUE_BYTES`].
fn read_value(reader: impl std::io::Read) -> std::io::Result<SecretString> {
    let mut bytes = Zeroizing::new(Vec::new());
    reader.take(MAX_VALUE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_VALUE_BYTES {
        return Err(std::io::Error::other(format!(
            "longer than {} (a secret holds at most 64 KiB)",
            output::bytes(MAX_VALUE_BYTES)
        )));
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| std::io::Error::other("not UTF-8 text (encode binary values, e.g. base64)"))?;
    Ok(SecretString::from(text.to_owned()))
}

async fn set(ctx: &Context, args: SetArgs) -> Result<(), CliError> {
    let t = ctx.target()?;
    let comment = args.comment.clone().map(SecretString::from);
    let entries = entries(args)?;
    let mut session = ctx.session()?;
    if let [(key, value)] = entries.as_slice() {
        let request = PutSecretRequest {
            value: value.clone(),
            comment,
        };
        let secret = session
            .call(Retry::Idempotent, async |c: &Client| {
                c.put_secret(&t.org, &t.project, &t.env, key, &request)
                    .await
            })
            .await?;
        if ctx.out.json {
            ctx.out.json(&json!({
                "key": secret.key, "version": secret.version, "updated_at": secret.updated_at,
            }))?;
        } else {
            ctx.out.styled_line(
                &format!(
                    "Set {} in {} (version {})",
                    secret.key,
                    t.label(),
                    secret.version
                ),
                Style::Green,
            )?;
        }
        return Ok(());
    }
    let request = BulkUpsertRequest {
        secrets: entries
            .into_iter()
            .map(|(key, value)| CreateSecretRequest {
                key,
                value,
                comment: comment.clone(),
            })
            .collect(),
    };
    let report = session
        .call(Retry::Idempotent, async |c: &Client| {
            c.bulk_upsert(&t.org, &t.project, &t.env, &request).await
        })
        .await?;
    if ctx.out.json {
        ctx.out.json(&report)?;
    } else {
        ctx.out.styled_line(
            &format!(
                "Set {} secrets in {}: {} created, {} updated, {} unchanged",
                request.secrets.len(),
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

async fn delete(ctx: &Context, args: &DeleteArgs) -> Result<(), CliError> {
    let t = ctx.target()?;
    if !args.yes
        && interactive()
        && !confirm(&format!(
            "Delete {} from {}?",
            args.keys.join(", "),
            t.label()
        ))?
    {
        return Err(CliError::Other("nothing deleted".into()));
    }
    let mut session = ctx.session()?;
    let mut deleted = Vec::new();
    for key in &args.keys {
        session
            .call(Retry::Idempotent, async |c: &Client| {
                c.delete_secret(&t.org, &t.project, &t.env, key).await
            })
            .await?;
        if !ctx.out.json {
            ctx.out
                .line(&format!("Deleted {key} from {} (history kept)", t.label()))?;
        }
        deleted.push(key.as_str());
    }
    if ctx.out.json {
        ctx.out.json(&json!({ "deleted": deleted }))?;
    }
    Ok(())
}

async fn history(ctx: &Context, args: &HistoryArgs) -> Result<(), CliError> {
    let t = ctx.target()?;
    let mut session = ctx.session()?;
    let key = args.key.as_str();
    let mut versions: Vec<SecretVersion> = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_HISTORY_PAGES {
        let page = session
            .call(Retry::Idempotent, async |c: &Client| {
                c.secret_versions(&t.org, &t.project, &t.env, key, cursor.as_deref())
                    .await
            })
            .await?;
        versions.extend(page.items);
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    if ctx.out.json {
        ctx.out.json(&json!({ "key": key, "versions": versions }))?;
        return Ok(());
    }
    let rows: Vec<Vec<Cell>> = versions
        .iter()
        .map(|v| {
            let by = match &v.actor.id {
                Some(id) => format!("{} {id}", v.actor.kind),
                None => v.actor.kind.clone(),
            };
            vec![
                Cell::styled(v.version.to_string(), Style::Bold),
                Cell::new(output::time(v.created_at)),
                Cell::styled(by, Style::Dim),
            ]
        })
        .collect();
    ctx.out.table(&["VERSION", "CREATED", "BY"], &rows)?;
    Ok(())
}

async fn rollback(ctx: &Context, args: &RollbackArgs) -> Result<(), CliError> {
    let t = ctx.target()?;
    let mut session = ctx.session()?;
    let request = RollbackRequest {
        version: args.version,
    };
    let secret = session
        .call(Retry::Never, async |c: &Client| {
            c.rollback_secret(&t.org, &t.project, &t.env, &args.key, &request)
                .await
        })
        .await?;
    if ctx.out.json {
        ctx.out.json(&json!({
            "key": secret.key, "rolled_back_to": args.version, "version": secret.version,
        }))?;
    } else {
        ctx.out.styled_line(
            &format!(
                "Rolled {} in {} back to the value of version {}: it is now version {}",
                secret.key,
                t.label(),
                args.version,
                secret.version
            ),
            Style::Green,
        )?;
    }
    Ok(())
}
