//! `coffer compare` and `coffer copy`: two environments of a project side by side, and secrets
//! from one to the other.

use coffer_client::{Client, ComparedVersion, CopySecretsRequest, KeyComparison};

use super::Context;
use crate::cli::{CompareArgs, CopyArgs};
use crate::error::CliError;
use crate::output::{Cell, Style};
use crate::session::Retry;

fn status(status: KeyComparison) -> Cell {
    match status {
        KeyComparison::OnlyInBase => Cell::styled("only in base", Style::Red),
        KeyComparison::OnlyInHead => Cell::styled("only in head", Style::Green),
        KeyComparison::Different => Cell::styled("different", Style::Yellow),
        KeyComparison::Same => Cell::styled("same", Style::Dim),
    }
}

fn version(v: Option<&ComparedVersion>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("v{}", v.version))
}

fn value(v: Option<&ComparedVersion>) -> String {
    v.and_then(|v| v.value.as_ref())
        .map_or_else(String::new, |value| value.expose().to_owned())
}

pub async fn compare(ctx: &Context, args: CompareArgs) -> Result<(), CliError> {
    let (org, project) = ctx.settings.project()?;
    let mut session = ctx.session()?;
    let comparison = session
        .call(Retry::Idempotent, async |c: &Client| {
            c.compare(&org, &project, &args.base, &args.head, args.reveal)
                .await
        })
        .await?;
    if ctx.out.json {
        ctx.out.json(&comparison)?;
        return Ok(());
    }
    let mut header = vec!["KEY", "STATUS", "BASE", "HEAD"];
    if args.reveal {
        header.extend([args.base.as_str(), args.head.as_str()]);
    }
    let rows: Vec<Vec<Cell>> = comparison
        .keys
        .iter()
        .map(|k| {
            let mut row = vec![
                Cell::styled(&k.key, Style::Bold),
                status(k.status),
                Cell::new(version(k.base.as_ref())),
                Cell::new(version(k.head.as_ref())),
            ];
            if args.reveal {
                row.push(Cell::new(value(k.base.as_ref())));
                row.push(Cell::new(value(k.head.as_ref())));
            }
            row
        })
        .collect();
    ctx.out.table(&header, &rows)?;
    if ctx.out.tty {
        let s = &comparison.summary;
        ctx.out.styled_line(
            &format!(
                "{} only in {}, {} only in {}, {} different, {} same",
                s.only_in_base,
                comparison.base,
                s.only_in_head,
                comparison.head,
                s.different,
                s.same
            ),
            Style::Dim,
        )?;
    }
    Ok(())
}

pub async fn copy(ctx: &Context, args: CopyArgs) -> Result<(), CliError> {
    let (org, project) = ctx.settings.project()?;
    let to = match args.to {
        Some(to) => to,
        None => ctx.target()?.env,
    };
    if to == args.from {
        return Err(CliError::usage(format!(
            "--from and --to are both {to}: name two environments"
        )));
    }
    let request = CopySecretsRequest {
        from: args.from.clone(),
        keys: (!args.keys.is_empty()).then(|| args.keys.clone()),
        overwrite: args.overwrite,
        as_reference: args.as_reference,
    };
    let mut session = ctx.session()?;
    let report = session
        .call(Retry::Never, async |c: &Client| {
            c.copy_secrets(&org, &project, &to, &request).await
        })
        .await?;
    if ctx.out.json {
        ctx.out.json(&report)?;
        return Ok(());
    }
    ctx.out.styled_line(
        &format!(
            "Copied from {} to {} in {project}{}",
            args.from,
            to,
            if args.as_reference {
                " as references"
            } else {
                ""
            }
        ),
        Style::Green,
    )?;
    let groups = [
        ("created", &report.created, Style::Green),
        ("updated", &report.updated, Style::Yellow),
        ("unchanged", &report.unchanged, Style::Dim),
        (
            "skipped (they exist; --overwrite replaces them)",
            &report.skipped,
            Style::Red,
        ),
    ];
    for (what, keys, style) in groups {
        if !keys.is_empty() {
            ctx.out
                .styled_line(&format!("  {what}: {}", keys.join(", ")), style)?;
        }
    }
    Ok(())
}
