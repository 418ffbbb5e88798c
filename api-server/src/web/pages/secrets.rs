//! A project's secrets: the grid of keys × environments, an environment's secrets (add, edit
//! inline, delete, restore, reveal, copy), a secret's history (diff, rollback).
//!
//! Values are only in the fragments `…/reveal` answers, each read audited as the API's reads
//! are; every response is `Cache-Control: no-store`.

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;

use super::{FormError, Layout, when};
use crate::auth::Caller;
use crate::authz::Action;
use crate::db;
use crate::error::ApiError;
use crate::ids::UserId;
use crate::service::dashboard::{self, Cell, may_in_env, may_in_project};
use crate::service::secrets::SecretInput;
use crate::service::tenancy::EnvPath;
use crate::service::{self, ClientMeta};
use crate::state::AppState;
use crate::web::session::SignedIn;
use crate::web::{WebError, render};

type ProjectPath = (String, String);
type EnvPathParts = (String, String, String);
type KeyPath = (String, String, String, String);

fn caller(who: &SignedIn) -> Caller {
    Caller::User(who.principal)
}

fn base_url(org: &str, project: &str, env: &str) -> String {
    format!("/orgs/{org}/projects/{project}/envs/{env}")
}

/// A cell of the grid, as the template shows it.
#[derive(Debug)]
pub struct CellView {
    pub env: String,
    pub env_name: String,
    /// `present`, `missing` or `hidden`.
    pub state: &'static str,
    pub version: i64,
    /// A letter per distinct value in the row: cells showing the same letter hold equal values.
    pub group: char,
    pub updated: String,
}

#[derive(Debug)]
pub struct RowView {
    pub key: String,
    pub cells: Vec<CellView>,
    pub missing: bool,
    pub differs: bool,
}

#[derive(Debug)]
pub struct ColumnView {
    pub slug: String,
    pub name: String,
    pub readable: bool,
}

#[derive(Template)]
#[template(path = "grid.html")]
struct GridPage {
    layout: Layout,
    org: String,
    project: String,
    project_name: String,
    columns: Vec<ColumnView>,
    rows: Vec<RowView>,
    missing: usize,
    differ: usize,
    may_rename: bool,
    may_delete: bool,
}

fn group_letter(group: usize) -> char {
    u8::try_from(group)
        .ok()
        .filter(|g| *g < 26)
        .map_or('*', |g| char::from(b'A' + g))
}

/// `/orgs/{org}/projects/{project}`: every key × every environment.
pub async fn grid(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path((org, project)): Path<ProjectPath>,
) -> Result<Response, WebError> {
    let (ctx, grid) = dashboard::grid(&state, &meta, &caller(&who), &org, &project).await?;
    let counts = dashboard::summary(&grid);
    let rows = grid
        .rows
        .iter()
        .map(|row| RowView {
            key: row.key.clone(),
            missing: row.missing,
            differs: row.differs,
            cells: row
                .cells
                .iter()
                .zip(&grid.columns)
                .map(|(cell, column)| {
                    let (state, version, group, updated) = match cell {
                        Cell::NoAccess => ("hidden", 0, ' ', String::new()),
                        Cell::Missing => ("missing", 0, ' ', String::new()),
                        Cell::Present {
                            version,
                            group,
                            updated_at,
                        } => ("present", *version, group_letter(*group), when(*updated_at)),
                    };
                    CellView {
                        env: column.slug.clone(),
                        env_name: column.name.clone(),
                        state,
                        version,
                        group,
                        updated,
                    }
                })
                .collect(),
        })
        .collect();
    let layout =
        Layout::signed_in(&state, &who, Some(&ctx.org), &ctx.project.name, "projects").await?;
    render(&GridPage {
        layout,
        may_rename: may_in_project(&ctx, Action::ProjectUpdate),
        may_delete: may_in_project(&ctx, Action::ProjectDelete),
        org,
        project,
        project_name: ctx.project.name.clone(),
        columns: grid
            .columns
            .into_iter()
            .map(|c| ColumnView {
                slug: c.slug,
                name: c.name,
                readable: c.readable,
            })
            .collect(),
        rows,
        missing: counts.get("missing").copied().unwrap_or(0),
        differ: counts.get("differ").copied().unwrap_or(0),
    })
}

/// A secret's line in an environment's table.
#[derive(Debug)]
pub struct SecretRowView {
    pub key: String,
    pub version: i64,
    pub updated: String,
    pub has_comment: bool,
}

#[derive(Debug)]
pub struct DeletedView {
    pub key: String,
    pub version: i64,
    pub deleted: String,
}

#[derive(Debug)]
pub struct EnvTab {
    pub slug: String,
    pub name: String,
}

#[derive(Template)]
#[template(path = "environment.html")]
struct EnvironmentPage {
    layout: Layout,
    org: String,
    project: String,
    project_name: String,
    env: String,
    env_name: String,
    envs: Vec<EnvTab>,
    base: String,
    secrets: Vec<SecretRowView>,
    deleted: Vec<DeletedView>,
    writable: bool,
    new_key: String,
    error: FormError,
}

async fn environment_page(
    state: &AppState,
    who: &SignedIn,
    (org, project, env): &EnvPathParts,
    new_key: String,
    error: FormError,
) -> Result<Response, WebError> {
    let at = EnvPath { org, project, env };
    let listing = dashboard::environment(state, &caller(who), at).await?;
    let envs = db::projects::environments(state.db.pool(), listing.ctx.project.project.id)
        .await
        .map_err(ApiError::from)?
        .into_iter()
        .map(|e| EnvTab {
            slug: e.slug,
            name: e.name,
        })
        .collect();
    let ctx = &listing.ctx;
    let layout = Layout::signed_in(
        state,
        who,
        Some(&ctx.project.org),
        format!("{} · {}", ctx.project.project.name, ctx.env.name),
        "projects",
    )
    .await?;
    render(&EnvironmentPage {
        layout,
        org: org.clone(),
        project: project.clone(),
        project_name: ctx.project.project.name.clone(),
        env: env.clone(),
        env_name: ctx.env.name.clone(),
        envs,
        base: base_url(org, project, env),
        writable: may_in_env(ctx, Action::SecretsWrite),
        secrets: listing
            .live
            .iter()
            .map(|s| SecretRowView {
                key: s.key.clone(),
                version: s.version,
                updated: when(s.updated_at),
                has_comment: s.has_comment,
            })
            .collect(),
        deleted: listing
            .deleted
            .iter()
            .map(|d| DeletedView {
                key: d.key.clone(),
                version: d.version,
                deleted: when(d.deleted_at),
            })
            .collect(),
        new_key,
        error,
    })
}

/// `/orgs/{org}/projects/{project}/envs/{env}`: one environment's secrets.
pub async fn environment(
    State(state): State<AppState>,
    who: SignedIn,
    Path(path): Path<EnvPathParts>,
) -> Result<Response, WebError> {
    environment_page(&state, &who, &path, String::new(), FormError::none()).await
}

#[derive(Deserialize)]
pub struct AddForm {
    key: String,
    value: SecretString,
    #[serde(default)]
    comment: Option<String>,
}

fn comment_of(text: Option<String>) -> Option<SecretString> {
    text.map(|c| c.trim_end().to_owned())
        .filter(|c| !c.is_empty())
        .map(SecretString::from)
}

/// Adds a secret (refused if the key exists: editing is done on its line).
pub async fn add(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path(path): Path<EnvPathParts>,
    Form(form): Form<AddForm>,
) -> Result<Response, WebError> {
    let (org, project, env) = &path;
    let at = EnvPath { org, project, env };
    let input = SecretInput {
        key: form.key.trim().to_owned(),
        value: form.value,
        comment: comment_of(form.comment),
    };
    match service::secrets::create(&state, &meta, &caller(&who), at, input).await {
        Ok(_) => Ok(Redirect::to(&base_url(org, project, env)).into_response()),
        Err(e) => {
            let status = e.status();
            let page =
                environment_page(&state, &who, &path, form.key, FormError::from_api(&e)).await?;
            Ok((status, page).into_response())
        }
    }
}

#[derive(Template)]
#[template(path = "fragments/secret_row.html")]
struct SecretRow {
    base: String,
    s: SecretRowView,
    writable: bool,
}

#[derive(Template)]
#[template(path = "fragments/secret_edit.html")]
struct SecretEdit {
    base: String,
    key: String,
    error: FormError,
}

async fn row_fragment(
    state: &AppState,
    who: &SignedIn,
    (org, project, env, key): &KeyPath,
) -> Result<Response, WebError> {
    let at = EnvPath { org, project, env };
    let listing = dashboard::environment(state, &caller(who), at).await?;
    let found = listing
        .live
        .iter()
        .find(|s| s.key == *key)
        .ok_or(ApiError::not_found("secret"))?;
    render(&SecretRow {
        base: base_url(org, project, env),
        writable: may_in_env(&listing.ctx, Action::SecretsWrite),
        s: SecretRowView {
            key: found.key.clone(),
            version: found.version,
            updated: when(found.updated_at),
            has_comment: found.has_comment,
        },
    })
}

/// A secret's line (after an edit is cancelled).
pub async fn row(
    State(state): State<AppState>,
    who: SignedIn,
    Path(path): Path<KeyPath>,
) -> Result<Response, WebError> {
    row_fragment(&state, &who, &path).await
}

/// The inline edit form of a secret's line: the value is not in it (a new one is typed).
pub async fn edit(
    State(state): State<AppState>,
    who: SignedIn,
    Path((org, project, env, key)): Path<KeyPath>,
) -> Result<Response, WebError> {
    let at = EnvPath {
        org: &org,
        project: &project,
        env: &env,
    };
    // Checks the caller may write here before offering the form.
    service::tenancy::environment(&state, &caller(&who), at, Action::SecretsWrite).await?;
    render(&SecretEdit {
        base: base_url(&org, &project, &env),
        key,
        error: FormError::none(),
    })
}

#[derive(Deserialize)]
pub struct SaveForm {
    value: SecretString,
    #[serde(default)]
    comment: Option<String>,
    /// Whether the comment field was shown (an empty one then removes the comment).
    #[serde(default)]
    set_comment: Option<String>,
}

/// Saves a new value (and comment) from the inline form: the updated line, or the form with
/// the refusal next to the field.
pub async fn save(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path(path): Path<KeyPath>,
    Form(form): Form<SaveForm>,
) -> Result<Response, WebError> {
    let (org, project, env, key) = &path;
    let at = EnvPath { org, project, env };
    let comment = match form.set_comment {
        Some(_) => {
            Some(comment_of(form.comment).unwrap_or_else(|| SecretString::from(String::new())))
        }
        None => None,
    };
    let input = SecretInput {
        key: key.clone(),
        value: form.value,
        comment,
    };
    match service::secrets::put(&state, &meta, &caller(&who), at, input).await {
        Ok(_) => row_fragment(&state, &who, &path).await,
        Err(e) => {
            let status = e.status();
            let form = render(&SecretEdit {
                base: base_url(org, project, env),
                key: key.clone(),
                error: FormError::from_api(&e),
            })?;
            let mut response = (status, form).into_response();
            // Shown in place of the line, not in the page's alert area.
            response
                .headers_mut()
                .insert("hx-reswap", HeaderValue::from_static("outerHTML"));
            Ok(response)
        }
    }
}

/// Back to the environment's page after a change made with a plain form, or (htmx) a reload.
fn back_to(base: &str, headers: &HeaderMap) -> Response {
    if headers.contains_key("hx-request") {
        let mut response = ().into_response();
        if let Ok(v) = HeaderValue::from_str(base) {
            response.headers_mut().insert("hx-location", v);
        }
        response
    } else {
        Redirect::to(base).into_response()
    }
}

pub async fn delete(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    headers: HeaderMap,
    Path((org, project, env, key)): Path<KeyPath>,
) -> Result<Response, WebError> {
    let at = EnvPath {
        org: &org,
        project: &project,
        env: &env,
    };
    service::secrets::delete(&state, &meta, &caller(&who), at, &key).await?;
    Ok(back_to(&base_url(&org, &project, &env), &headers))
}

pub async fn restore(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    headers: HeaderMap,
    Path((org, project, env, key)): Path<KeyPath>,
) -> Result<Response, WebError> {
    let at = EnvPath {
        org: &org,
        project: &project,
        env: &env,
    };
    service::secrets::restore(&state, &meta, &caller(&who), at, &key).await?;
    Ok(back_to(&base_url(&org, &project, &env), &headers))
}

#[derive(Debug, Deserialize)]
pub struct RevealQuery {
    #[serde(default)]
    version: Option<i64>,
    /// Masks the value again (nothing is read).
    #[serde(default)]
    hide: Option<u8>,
}

#[derive(Template)]
#[template(path = "fragments/revealed.html")]
struct Revealed {
    url: String,
    value: String,
    comment: Option<String>,
}

#[derive(Template)]
#[template(path = "fragments/masked.html")]
struct Masked {
    url: String,
    label: String,
}

/// A value revealed: read (and audited) like the API's read of one secret, answered with
/// `Cache-Control: no-store` as every response is. `?hide=1` masks it again.
pub async fn reveal(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path((org, project, env, key)): Path<KeyPath>,
    Query(q): Query<RevealQuery>,
) -> Result<Response, WebError> {
    let mut url = format!("{}/secrets/{key}/reveal", base_url(&org, &project, &env));
    if let Some(v) = q.version {
        url.push_str(&format!("?version={v}"));
    }
    if q.hide.is_some() {
        return render(&Masked {
            url,
            label: format!("{key} in {env}"),
        });
    }
    let at = EnvPath {
        org: &org,
        project: &project,
        env: &env,
    };
    let secret =
        service::secrets::read_one(&state, &meta, &caller(&who), at, &key, q.version, false)
            .await?;
    render(&Revealed {
        url,
        value: secret.value.expose_secret().to_owned(),
        comment: secret
            .comment
            .map(|c| c.expose_secret().to_owned())
            .filter(|c| !c.is_empty()),
    })
}

#[derive(Debug)]
pub struct VersionView {
    pub version: i64,
    pub created: String,
    pub author: String,
    pub current: bool,
}

#[derive(Debug)]
pub struct DiffLine {
    /// `+`, `-` or ` `.
    pub tag: char,
    pub text: String,
}

#[derive(Template)]
#[template(path = "history.html")]
struct HistoryPage {
    layout: Layout,
    org: String,
    project: String,
    project_name: String,
    env_name: String,
    key: String,
    base: String,
    versions: Vec<VersionView>,
    writable: bool,
    diff: Option<(i64, i64, Vec<DiffLine>)>,
}

#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    /// Shows what version `diff` changed from the one before it (both are read).
    #[serde(default)]
    diff: Option<i64>,
}

/// Most versions the history page lists.
const HISTORY_PAGE: u32 = 100;

/// The line diff of two values.
fn diff_lines(old: &str, new: &str) -> Vec<DiffLine> {
    similar::TextDiff::from_lines(old, new)
        .iter_all_changes()
        .map(|change| DiffLine {
            tag: match change.tag() {
                similar::ChangeTag::Delete => '-',
                similar::ChangeTag::Insert => '+',
                similar::ChangeTag::Equal => ' ',
            },
            text: change.value().trim_end_matches('\n').to_owned(),
        })
        .collect()
}

/// Who wrote a version, as people know them.
async fn author(state: &AppState, actor_type: &str, actor_id: Option<&str>) -> String {
    match (actor_type, actor_id) {
        ("user", Some(id)) => match id.parse::<UserId>() {
            Ok(user) => match db::users::by_id(state.db.pool(), user).await {
                Ok(Some(u)) => u.email,
                _ => "a former member".to_owned(),
            },
            Err(_) => "a user".to_owned(),
        },
        ("api_key", _) => "an API key".to_owned(),
        ("service_token", _) => "a service token".to_owned(),
        (other, _) => other.replace('_', " "),
    }
}

/// `…/secrets/{key}/history`: the versions, a diff on request, rollback.
pub async fn history(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path((org, project, env, key)): Path<KeyPath>,
    Query(q): Query<HistoryQuery>,
) -> Result<Response, WebError> {
    let at = EnvPath {
        org: &org,
        project: &project,
        env: &env,
    };
    let who_calls = caller(&who);
    let ctx = service::tenancy::environment(&state, &who_calls, at, Action::SecretsRead).await?;
    let rows = service::secrets::versions(&state, &who_calls, at, &key, None, HISTORY_PAGE).await?;
    let newest = rows.iter().map(|v| v.version).max().unwrap_or(0);
    let mut versions = Vec::with_capacity(rows.len());
    for v in &rows {
        versions.push(VersionView {
            version: v.version,
            created: when(v.created_at),
            author: author(&state, &v.actor_type, v.actor_id.as_deref()).await,
            current: v.version == newest,
        });
    }
    let diff = match q.diff {
        Some(n) if n > 1 => {
            let read = |version| {
                service::secrets::read_one(
                    &state,
                    &meta,
                    &who_calls,
                    at,
                    &key,
                    Some(version),
                    false,
                )
            };
            let old = read(n - 1).await?;
            let new = read(n).await?;
            Some((
                n - 1,
                n,
                diff_lines(old.value.expose_secret(), new.value.expose_secret()),
            ))
        }
        _ => None,
    };
    let layout = Layout::signed_in(
        &state,
        &who,
        Some(&ctx.project.org),
        format!("{key} · history"),
        "projects",
    )
    .await?;
    render(&HistoryPage {
        layout,
        base: base_url(&org, &project, &env),
        writable: may_in_env(&ctx, Action::SecretsWrite),
        project_name: ctx.project.project.name.clone(),
        env_name: ctx.env.name.clone(),
        org,
        project,
        key,
        versions,
        diff,
    })
}

#[derive(Deserialize)]
pub struct RollbackForm {
    version: i64,
}

/// Makes an earlier version's value current again (as a new version).
pub async fn rollback(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path((org, project, env, key)): Path<KeyPath>,
    Form(form): Form<RollbackForm>,
) -> Result<Response, WebError> {
    let at = EnvPath {
        org: &org,
        project: &project,
        env: &env,
    };
    service::secrets::rollback(&state, &meta, &caller(&who), at, &key, form.version).await?;
    Ok(Redirect::to(&format!(
        "{}/secrets/{key}/history",
        base_url(&org, &project, &env)
    ))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_are_by_line() {
        let lines = diff_lines("a\nb\n", "a\nc\n");
        let tags: String = lines.iter().map(|l| l.tag).collect();
        assert_eq!(tags, " -+");
        assert_eq!(lines[2].text, "c");
    }

    #[test]
    fn groups_are_letters() {
        assert_eq!(group_letter(0), 'A');
        assert_eq!(group_letter(25), 'Z');
        assert_eq!(group_letter(26), '*');
    }
}
