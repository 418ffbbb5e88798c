//! Moving secrets in and out: import (pasted or uploaded .env, JSON or YAML, with a preview of
//! what changes), export (a file download, audited), and comparing two environments with a copy
//! from one to the other.
//!
//! An import's values go from the browser to the server only: the preview answers key names,
//! and the form keeps what was pasted, so no value is ever sent back in a page.

use std::str::FromStr as _;

use askama::Template;
use axum::Form;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use coffer_client::types::{CopySecretsRequest, KeyComparison};

use super::{FormError, Layout};
use crate::auth::Caller;
use crate::authz::Action;
use crate::error::ApiError;
use crate::secrets::formats::Format;
use crate::service::dashboard::may_in_env;
use crate::service::secrets::UpsertReport;
use crate::service::tenancy::EnvPath;
use crate::service::{self, ClientMeta};
use crate::state::AppState;
use crate::web::session::SignedIn;
use crate::web::{WebError, render, urlencode};

pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route(
            "/orgs/{org}/projects/{project}/envs/{env}/import",
            get(import_page).post(import),
        )
        .route(
            "/orgs/{org}/projects/{project}/envs/{env}/import/preview",
            post(preview),
        )
        .route(
            "/orgs/{org}/projects/{project}/envs/{env}/export",
            post(export),
        )
        .route("/orgs/{org}/projects/{project}/compare", get(compare))
        .route("/orgs/{org}/projects/{project}/copy", post(copy))
}

type EnvParts = (String, String, String);

fn caller(who: &SignedIn) -> Caller {
    Caller::User(who.principal)
}

#[derive(Template)]
#[template(path = "import.html")]
struct ImportPage {
    layout: Layout,
    org: String,
    project: String,
    project_name: String,
    env: String,
    env_name: String,
}

/// `…/envs/{env}/import`: paste or upload a file, preview, import.
pub async fn import_page(
    State(state): State<AppState>,
    who: SignedIn,
    Path((org, project, env)): Path<EnvParts>,
) -> Result<Response, WebError> {
    let at = EnvPath {
        org: &org,
        project: &project,
        env: &env,
    };
    let ctx =
        service::tenancy::environment(&state, &caller(&who), at, Action::SecretsWrite).await?;
    let layout = Layout::signed_in(
        &state,
        &who,
        Some(&ctx.project.org),
        format!("Import into {}", ctx.env.name),
        "projects",
    )
    .await?;
    render(&ImportPage {
        layout,
        project_name: ctx.project.project.name.clone(),
        env_name: ctx.env.name.clone(),
        org,
        project,
        env,
    })
}

/// An import form as sent: the format chosen, and the file or the pasted text.
struct ImportForm {
    format: Format,
    content: String,
}

/// Most parts an import form has (format, content, file).
const MAX_PARTS: usize = 8;

fn format_of(chosen: &str, file_name: Option<&str>, content: &str) -> Result<Format, ApiError> {
    if chosen != "auto" {
        return Format::from_str(chosen)
            .map_err(|e| ApiError::validation("invalid_format", e.to_string()));
    }
    let by_name = file_name
        .and_then(|n| n.rsplit_once('.'))
        .map(|(_, ext)| ext.to_ascii_lowercase());
    Ok(match by_name.as_deref() {
        Some("json") => Format::Json,
        Some("yaml" | "yml") => Format::Yaml,
        _ if content.trim_start().starts_with('{') => Format::Json,
        _ => Format::Dotenv,
    })
}

async fn read_form(mut multipart: Multipart) -> Result<ImportForm, ApiError> {
    let unreadable = || ApiError::bad_request("invalid_form", "the form could not be read");
    let mut chosen = "auto".to_owned();
    let mut pasted = String::new();
    let mut file: Option<(Option<String>, String)> = None;
    for _ in 0..MAX_PARTS {
        let Some(field) = multipart.next_field().await.map_err(|_| unreadable())? else {
            let content = match file {
                Some((_, text)) if !text.is_empty() => text,
                _ => pasted,
            };
            return Ok(ImportForm {
                format: format_of(&chosen, None, &content)?,
                content,
            });
        };
        match field.name() {
            Some("format") => chosen = field.text().await.map_err(|_| unreadable())?,
            Some("content") => pasted = field.text().await.map_err(|_| unreadable())?,
            Some("file") => {
                let name = field.file_name().map(str::to_owned);
                let bytes = field.bytes().await.map_err(|_| unreadable())?;
                let text = String::from_utf8(bytes.to_vec()).map_err(|_| {
                    ApiError::validation("invalid_file", "the file is not UTF-8 text")
                })?;
                if !text.is_empty() && chosen == "auto" {
                    chosen = format_of("auto", name.as_deref(), &text)?
                        .as_str()
                        .to_owned();
                }
                file = Some((name, text));
            }
            _ => {}
        }
    }
    Err(unreadable())
}

#[derive(Template)]
#[template(path = "fragments/import_report.html")]
struct ImportReport {
    done: bool,
    format: &'static str,
    created: Vec<String>,
    updated: Vec<String>,
    unchanged: Vec<String>,
    back: String,
}

fn report(done: bool, format: Format, r: UpsertReport, back: String) -> ImportReport {
    ImportReport {
        done,
        format: format.as_str(),
        created: r.created,
        updated: r.updated,
        unchanged: r.unchanged,
        back,
    }
}

/// What the import would change (keys only).
pub async fn preview(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path((org, project, env)): Path<EnvParts>,
    multipart: Multipart,
) -> Result<Response, WebError> {
    let form = read_form(multipart).await?;
    let at = EnvPath {
        org: &org,
        project: &project,
        env: &env,
    };
    let r = service::secrets::import_preview(
        &state,
        &meta,
        &caller(&who),
        at,
        form.format,
        &form.content,
    )
    .await?;
    render(&report(
        false,
        form.format,
        r,
        format!("/orgs/{org}/projects/{project}/envs/{env}"),
    ))
}

/// Imports: every key of the file is created or updated, in one transaction.
pub async fn import(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path((org, project, env)): Path<EnvParts>,
    multipart: Multipart,
) -> Result<Response, WebError> {
    let form = read_form(multipart).await?;
    let at = EnvPath {
        org: &org,
        project: &project,
        env: &env,
    };
    let r = service::secrets::import(&state, &meta, &caller(&who), at, form.format, &form.content)
        .await?;
    render(&report(
        true,
        form.format,
        r,
        format!("/orgs/{org}/projects/{project}/envs/{env}"),
    ))
}

#[derive(Deserialize)]
pub struct ExportForm {
    format: String,
    #[serde(default)]
    resolve: Option<String>,
}

/// The environment as a file to download (audited as an export, as the API's).
pub async fn export(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path((org, project, env)): Path<EnvParts>,
    Form(form): Form<ExportForm>,
) -> Result<Response, WebError> {
    let format = Format::from_str(&form.format)
        .map_err(|e| ApiError::validation("invalid_format", e.to_string()))?;
    let at = EnvPath {
        org: &org,
        project: &project,
        env: &env,
    };
    let file = service::secrets::export(
        &state,
        &meta,
        &caller(&who),
        at,
        format,
        form.resolve.is_some(),
    )
    .await?;
    let name = format!("{project}-{env}.{}", format.file_extension());
    let mut response = file.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

#[derive(Debug, Deserialize)]
pub struct CompareQuery {
    #[serde(default)]
    base: Option<String>,
    #[serde(default)]
    head: Option<String>,
    #[serde(default)]
    copied: Option<usize>,
}

#[derive(Debug)]
pub struct ComparedRow {
    pub key: String,
    /// `same`, `different`, `only-base`, `only-head`
    pub status: &'static str,
    pub label: &'static str,
    pub in_base: bool,
}

#[derive(Debug)]
pub struct EnvChoice {
    pub slug: String,
    pub name: String,
}

#[derive(Template)]
#[template(path = "compare.html")]
struct ComparePage {
    layout: Layout,
    org: String,
    project: String,
    project_name: String,
    envs: Vec<EnvChoice>,
    base: String,
    head: String,
    rows: Vec<ComparedRow>,
    may_copy: bool,
    copied: Option<usize>,
    error: FormError,
}

/// `/orgs/{org}/projects/{project}/compare?base=&head=`: two environments key by key (no
/// values), and a copy of chosen keys from base into head.
pub async fn compare(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path((org, project)): Path<(String, String)>,
    Query(q): Query<CompareQuery>,
) -> Result<Response, WebError> {
    compare_page(&state, &who, &meta, &org, &project, q, FormError::none()).await
}

async fn compare_page(
    state: &AppState,
    who: &SignedIn,
    meta: &ClientMeta,
    org: &str,
    project: &str,
    q: CompareQuery,
    error: FormError,
) -> Result<Response, WebError> {
    let (ctx, envs) = service::projects::get(state, &caller(who), org, project).await?;
    let envs: Vec<EnvChoice> = envs
        .into_iter()
        .map(|e| EnvChoice {
            slug: e.slug,
            name: e.name,
        })
        .collect();
    let base = q
        .base
        .or_else(|| envs.first().map(|e| e.slug.clone()))
        .unwrap_or_default();
    let head = q
        .head
        .or_else(|| envs.get(1).map(|e| e.slug.clone()))
        .unwrap_or_default();
    let mut rows = Vec::new();
    let mut may_copy = false;
    if !base.is_empty() && !head.is_empty() && base != head {
        let comparison = service::sharing::compare(
            state,
            meta,
            &caller(who),
            org,
            project,
            (&base, &head),
            false,
        )
        .await?;
        rows = comparison
            .keys
            .into_iter()
            .map(|k| {
                let (status, label) = match k.status {
                    KeyComparison::Same => ("same", "same value"),
                    KeyComparison::Different => ("different", "different values"),
                    KeyComparison::OnlyInBase => ("only-base", "only in base"),
                    KeyComparison::OnlyInHead => ("only-head", "only in target"),
                };
                ComparedRow {
                    in_base: k.base.is_some(),
                    key: k.key,
                    status,
                    label,
                }
            })
            .collect();
        let at = EnvPath {
            org,
            project,
            env: &head,
        };
        let head_ctx =
            service::tenancy::environment(state, &caller(who), at, Action::ProjectRead).await?;
        may_copy = may_in_env(&head_ctx, Action::SecretsWrite);
    }
    let layout = Layout::signed_in(
        state,
        who,
        Some(&ctx.org),
        format!("Compare · {}", ctx.project.name),
        "projects",
    )
    .await?;
    render(&ComparePage {
        layout,
        org: org.to_owned(),
        project: project.to_owned(),
        project_name: ctx.project.name.clone(),
        envs,
        base,
        head,
        rows,
        may_copy,
        copied: q.copied,
        error,
    })
}

/// Copies the keys ticked on the comparison from base into head.
pub async fn copy(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path((org, project)): Path<(String, String)>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Result<Response, WebError> {
    let value = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let from = value("from").unwrap_or_default();
    let to = value("to").unwrap_or_default();
    let keys: Vec<String> = fields
        .iter()
        .filter(|(k, _)| k == "keys")
        .map(|(_, v)| v.clone())
        .collect();
    if keys.is_empty() {
        let q = CompareQuery {
            base: Some(from),
            head: Some(to),
            copied: None,
        };
        let error = FormError {
            message: Some("Tick the keys to copy.".to_owned()),
            field: None,
        };
        return compare_page(&state, &who, &meta, &org, &project, q, error).await;
    }
    let req = CopySecretsRequest {
        from: from.clone(),
        keys: Some(keys),
        overwrite: value("overwrite").is_some(),
        as_reference: value("as_reference").is_some(),
    };
    let at = EnvPath {
        org: &org,
        project: &project,
        env: &to,
    };
    match service::sharing::copy(&state, &meta, &caller(&who), at, req).await {
        Ok(r) => Ok(Redirect::to(&format!(
            "/orgs/{org}/projects/{project}/compare?base={}&head={}&copied={}",
            urlencode(&from),
            urlencode(&to),
            r.created.len() + r.updated.len()
        ))
        .into_response()),
        Err(e) => {
            let status = e.status();
            let q = CompareQuery {
                base: Some(from),
                head: Some(to),
                copied: None,
            };
            let page = compare_page(
                &state,
                &who,
                &meta,
                &org,
                &project,
                q,
                FormError::from_api(&e),
            )
            .await?;
            Ok((status, page).into_response())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn formats_are_chosen_or_detected() {
        assert_eq!(format_of("yaml", None, "").unwrap(), Format::Yaml);
        assert_eq!(
            format_of("auto", Some("prod.json"), "").unwrap(),
            Format::Json
        );
        assert_eq!(format_of("auto", Some("a.YML"), "").unwrap(), Format::Yaml);
        assert_eq!(
            format_of("auto", None, " {\"A\":\"b\"}").unwrap(),
            Format::Json
        );
        assert_eq!(format_of("auto", None, "A=b").unwrap(), Format::Dotenv);
        assert!(format_of("toml", None, "").is_err());
    }
}
