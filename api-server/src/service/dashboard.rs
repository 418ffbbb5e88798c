//! What the web dashboard shows that the API answers differently: a project's secrets as a grid
//! of keys × environments (which values are missing or differ, never the values), an
//! environment's secrets with their metadata and deleted keys, and what the caller may do.

use std::collections::{BTreeMap, BTreeSet};

use secrecy::ExposeSecret as _;
use serde_json::json;

use crate::auth::Caller;
use crate::authz::{Action, Decision, Standing, decide};
use crate::db;
use crate::error::ApiResult;
use crate::ids::Timestamp;
use crate::service::ClientMeta;
use crate::service::secrets::{self, action, audit};
use crate::service::tenancy::{self, EnvCtx, EnvPath, ProjectCtx};
use crate::state::AppState;

/// Whether the caller of `ctx` may do `action` in its environment.
pub fn may_in_env(ctx: &EnvCtx, action: Action) -> bool {
    let standing = Standing {
        org_role: ctx.project.org.role,
        token: None,
        project: Some((ctx.project.project.id.to_string(), ctx.project.role)),
        environment: Some((ctx.env.id.to_string(), ctx.policy)),
    };
    decide(&standing, action) == Decision::Allow
}

/// Whether the caller of `ctx` may do `action` on its project.
pub fn may_in_project(ctx: &ProjectCtx, action: Action) -> bool {
    let standing = Standing {
        org_role: ctx.org.role,
        token: None,
        project: Some((ctx.project.id.to_string(), ctx.role)),
        environment: None,
    };
    decide(&standing, action) == Decision::Allow
}

/// One environment as a column of the grid.
#[derive(Debug, Clone)]
pub struct Column {
    pub slug: String,
    pub name: String,
    pub readable: bool,
    pub writable: bool,
}

/// One key's cell in one environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    /// The caller may not read this environment.
    NoAccess,
    Missing,
    /// `group`: cells of a row with equal values share a group number (0 for the first value
    /// met, left to right).
    Present {
        version: i64,
        group: usize,
        updated_at: Timestamp,
    },
}

/// A key across the environments.
#[derive(Debug, Clone)]
pub struct Row {
    pub key: String,
    pub cells: Vec<Cell>,
    /// Some environment lacks it.
    pub missing: bool,
    /// Two environments hold different values.
    pub differs: bool,
}

#[derive(Debug, Clone)]
pub struct Grid {
    pub columns: Vec<Column>,
    pub rows: Vec<Row>,
}

/// The project's secrets as keys × environments. Each environment the caller may read is
/// decrypted to compare its values (audited as a comparison, as the API's compare is); the
/// values never leave this function.
pub async fn grid(
    state: &AppState,
    meta: &ClientMeta,
    caller: &Caller,
    org: &str,
    project: &str,
) -> ApiResult<(ProjectCtx, Grid)> {
    let (ctx, envs) = crate::service::projects::get(state, caller, org, project).await?;
    let mut columns = Vec::with_capacity(envs.len());
    let mut values = Vec::with_capacity(envs.len());
    let mut events = Vec::new();
    for env in &envs {
        let at = EnvPath {
            org,
            project,
            env: &env.slug,
        };
        let env_ctx = tenancy::environment(state, caller, at, Action::ProjectRead).await?;
        let readable = may_in_env(&env_ctx, Action::SecretsRead);
        columns.push(Column {
            slug: env.slug.clone(),
            name: env.name.clone(),
            readable,
            writable: may_in_env(&env_ctx, Action::SecretsWrite),
        });
        if readable {
            let current = secrets::current_values(state, &env_ctx).await?;
            events.push(
                audit(meta, caller, &env_ctx, action::COMPARED)
                    .details(json!({ "keys": current.len(), "view": "dashboard" })),
            );
            values.push(Some(current));
        } else {
            values.push(None);
        }
    }
    let keys: BTreeSet<&String> = values.iter().flatten().flat_map(|v| v.keys()).collect();
    let rows = keys
        .into_iter()
        .map(|key| {
            let mut seen: Vec<&str> = Vec::new();
            let cells: Vec<Cell> = values
                .iter()
                .map(|env| match env {
                    None => Cell::NoAccess,
                    Some(env) => match env.get(key) {
                        None => Cell::Missing,
                        Some(v) => {
                            let value = v.value.expose_secret();
                            let group =
                                seen.iter().position(|s| *s == value).unwrap_or_else(|| {
                                    seen.push(value);
                                    seen.len() - 1
                                });
                            Cell::Present {
                                version: v.version,
                                group,
                                updated_at: v.updated_at,
                            }
                        }
                    },
                })
                .collect();
            Row {
                key: key.clone(),
                missing: cells.contains(&Cell::Missing),
                differs: seen.len() > 1,
                cells,
            }
        })
        .collect();
    if !events.is_empty() {
        state.audit.record(events).await?;
    }
    Ok((ctx, Grid { columns, rows }))
}

/// A secret's metadata.
#[derive(Debug, Clone)]
pub struct SecretMeta {
    pub key: String,
    pub version: i64,
    pub updated_at: Timestamp,
    pub has_comment: bool,
}

/// A deleted secret, restorable.
#[derive(Debug, Clone)]
pub struct DeletedMeta {
    pub key: String,
    pub version: i64,
    pub deleted_at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct EnvSecrets {
    pub ctx: EnvCtx,
    pub live: Vec<SecretMeta>,
    pub deleted: Vec<DeletedMeta>,
}

/// Most deleted keys listed.
const MAX_DELETED_LISTED: i64 = 200;

/// An environment's secrets without their values (nothing is decrypted, so nothing is read).
pub async fn environment(
    state: &AppState,
    caller: &Caller,
    at: EnvPath<'_>,
) -> ApiResult<EnvSecrets> {
    let ctx = tenancy::environment(state, caller, at, Action::SecretsRead).await?;
    let live = secrets::metadata(state, &ctx).await?;
    let deleted = db::secrets::deleted(state.db.pool(), ctx.env.id, MAX_DELETED_LISTED)
        .await?
        .into_iter()
        .map(|(key, version, deleted_at)| DeletedMeta {
            key,
            version,
            deleted_at,
        })
        .collect();
    Ok(EnvSecrets { ctx, live, deleted })
}

/// Counts of a grid's rows, for its summary line.
pub fn summary(grid: &Grid) -> BTreeMap<&'static str, usize> {
    let mut counts = BTreeMap::new();
    counts.insert("keys", grid.rows.len());
    counts.insert("missing", grid.rows.iter().filter(|r| r.missing).count());
    counts.insert("differ", grid.rows.iter().filter(|r| r.differs).count());
    counts
}
