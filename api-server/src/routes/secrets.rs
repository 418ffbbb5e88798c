//! `…/environments/{env}/secrets`: values, history, bulk writes, import and export.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, put};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Caller, Principal};
use crate::db::secrets::VersionRow;
use crate::error::{ApiError, ErrorResponse};
use crate::http::{Json, NumberPageParams, Page, PageExt as _, Query, Revealed};
use crate::secrets::formats::Format;
use crate::service::secrets::{BulkRead, SecretInput, SecretValue, UpsertReport};
use crate::service::tenancy::EnvPath;
use crate::service::{self, ClientMeta};
use crate::state::AppState;
use std::collections::BTreeMap;

use coffer_client::types::formats;

pub use coffer_client::types::{
    BulkUpsertRequest, Comparison, CopyReport, CopySecretsRequest, CreateSecretRequest,
    PutSecretRequest, RollbackRequest, Secret, SecretVersion, SecretsPage, VersionAuthor,
    WriteReport,
};

const SECRETS: &str = "/{org}/projects/{project}/environments/{env}/secrets";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_secret, read_all, bulk_upsert))
        .routes(routes!(export))
        .routes(routes!(import))
        .routes(routes!(copy_secrets))
        .routes(routes!(compare))
        // These paths name an operation of the collection for one method (GET …/export with a
        // format, POST …/import and …/copy); for the others they name the secret of that key,
        // as `…/secrets/{key}` does for every other key.
        .route(&format!("{SECRETS}/export"), secret_named("export", false))
        .route(&format!("{SECRETS}/import"), secret_named("import", true))
        .route(&format!("{SECRETS}/copy"), secret_named("copy", true))
        .routes(routes!(read_secret, put_secret, delete_secret))
        .routes(routes!(restore_secret))
        .routes(routes!(list_versions))
        .routes(routes!(read_version))
        .routes(routes!(rollback_secret))
        .routes(routes!(rotate_project_key))
}

type EnvSegments = (String, String, String);
type KeySegments = (String, String, String, String);

fn path(p: &EnvSegments) -> EnvPath<'_> {
    EnvPath {
        org: &p.0,
        project: &p.1,
        env: &p.2,
    }
}

fn key_path(p: &KeySegments) -> (EnvPath<'_>, &str) {
    (
        EnvPath {
            org: &p.0,
            project: &p.1,
            env: &p.2,
        },
        &p.3,
    )
}

impl From<SecretValue> for Secret {
    fn from(s: SecretValue) -> Self {
        Self {
            key: s.key,
            value: Revealed(s.value),
            comment: s.comment.map(Revealed),
            version: s.version,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

impl From<UpsertReport> for WriteReport {
    fn from(r: UpsertReport) -> Self {
        Self {
            created: r.created.len(),
            updated: r.updated.len(),
            unchanged: r.unchanged.len(),
            revision: r.revision,
        }
    }
}

impl From<VersionRow> for SecretVersion {
    fn from(v: VersionRow) -> Self {
        Self {
            version: v.version,
            created_at: v.created_at,
            actor: VersionAuthor {
                kind: v.actor_type,
                id: v.actor_id,
            },
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ResolveParams {
    /// Resolve `${…}` references (default: true for the bulk read and export, false otherwise).
    pub resolve: Option<bool>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FormatParams {
    /// `dotenv`, `json` or `yaml` (import: default `dotenv`).
    #[param(pattern = "^(dotenv|json|yaml)$")]
    pub format: Option<String>,
    /// Resolve `${…}` references (export only; default false, so an export imports back as is).
    pub resolve: Option<bool>,
}

fn format_of(params: &FormatParams) -> Result<Format, ApiError> {
    params
        .format
        .as_deref()
        .unwrap_or("dotenv")
        .parse()
        .map_err(|_| ApiError::bad_request("invalid_query", "format must be dotenv, json or yaml"))
}

/// The segments of the secret `key` of the environment at `p`.
fn named(p: EnvSegments, key: &str) -> Path<KeySegments> {
    Path((p.0, p.1, p.2, key.to_owned()))
}

/// GET (unless `get` is false), PUT and DELETE of the secret `key`, for a path where a fixed
/// route would otherwise hide it.
fn secret_named(key: &'static str, get_too: bool) -> MethodRouter<AppState> {
    let router = put(
        move |state: State<AppState>,
              meta: ClientMeta,
              principal: Caller,
              Path(p): Path<EnvSegments>,
              body: Json<PutSecretRequest>| {
            put_secret(state, meta, principal, named(p, key), body)
        },
    )
    .merge(delete(
        move |state: State<AppState>,
              meta: ClientMeta,
              principal: Caller,
              Path(p): Path<EnvSegments>| {
            delete_secret(state, meta, principal, named(p, key))
        },
    ));
    if !get_too {
        return router;
    }
    router.merge(get(
        move |state: State<AppState>,
              meta: ClientMeta,
              principal: Caller,
              Path(p): Path<EnvSegments>,
              query: Query<ResolveParams>| {
            read_secret(state, meta, principal, named(p, key), query)
        },
    ))
}

fn secret_path(p: &KeySegments) -> Result<(EnvPath<'_>, &str), ApiError> {
    let (env, key) = key_path(p);
    service::secrets::check_key(key).map_err(|_| ApiError::not_found("secret"))?;
    Ok((env, key))
}

/// Create a secret (409 when the key exists).
#[utoipa::path(
    post, path = "/{org}/projects/{project}/environments/{env}/secrets", tag = "secrets", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), ("env" = String, Path)), request_body = CreateSecretRequest,
    responses((status = 201, body = Secret), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse), (status = 422, body = ErrorResponse))
)]
pub async fn create_secret(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Caller,
    Path(p): Path<EnvSegments>,
    Json(req): Json<CreateSecretRequest>,
) -> Result<(StatusCode, Json<Secret>), ApiError> {
    let input = SecretInput {
        key: req.key,
        value: req.value,
        comment: req.comment,
    };
    let secret = service::secrets::create(&state, &meta, &principal, path(&p), input).await?;
    Ok((StatusCode::CREATED, Json(secret.into())))
}

/// Every secret of the environment, decrypted (and resolved unless `?resolve=false`). Answers
/// `304 Not Modified` to an `If-None-Match` with the current `ETag`, without decrypting anything.
#[utoipa::path(
    get, path = "/{org}/projects/{project}/environments/{env}/secrets", tag = "secrets", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), ("env" = String, Path), ResolveParams),
    responses((status = 200, body = SecretsPage, headers(("ETag" = String))), (status = 304), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse), (status = 422, body = ErrorResponse))
)]
pub async fn read_all(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Caller,
    Path(p): Path<EnvSegments>,
    Query(params): Query<ResolveParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let if_none_match = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok());
    let read = service::secrets::read_all(
        &state,
        &meta,
        &principal,
        path(&p),
        params.resolve.unwrap_or(true),
        if_none_match,
    )
    .await?;
    let (etag, response) = match read {
        BulkRead::NotModified { etag, .. } => (etag, StatusCode::NOT_MODIFIED.into_response()),
        BulkRead::Values {
            etag,
            revision,
            secrets,
        } => {
            let page = SecretsPage {
                revision,
                secrets: secrets.into_iter().map(Secret::from).collect(),
            };
            (etag, Json(page).into_response())
        }
    };
    let mut response = response;
    if let Ok(value) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    Ok(response)
}

/// Create or update many secrets in one transaction; identical ones are left alone.
#[utoipa::path(
    put, path = "/{org}/projects/{project}/environments/{env}/secrets", tag = "secrets", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), ("env" = String, Path)), request_body = BulkUpsertRequest,
    responses((status = 200, body = WriteReport), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse), (status = 422, body = ErrorResponse))
)]
pub async fn bulk_upsert(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Caller,
    Path(p): Path<EnvSegments>,
    Json(req): Json<BulkUpsertRequest>,
) -> Result<Json<WriteReport>, ApiError> {
    let inputs = req
        .secrets
        .into_iter()
        .map(|s| SecretInput {
            key: s.key,
            value: s.value,
            comment: s.comment,
        })
        .collect();
    Ok(Json(
        service::secrets::bulk_upsert(&state, &meta, &principal, path(&p), inputs)
            .await?
            .into(),
    ))
}

/// What `GET …/secrets/export` answers as JSON: the file (`format=json`), or without `format`
/// the secret whose key is `export`.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)] // only documented
#[serde(untagged)]
pub enum ExportJson {
    File(BTreeMap<String, String>),
    Secret(Secret),
}

/// The environment's secrets as a `.env`, JSON or YAML file (`format` is required: without it,
/// this path reads the secret whose key is `export`).
#[utoipa::path(
    get, path = "/{org}/projects/{project}/environments/{env}/secrets/export", tag = "secrets", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), ("env" = String, Path), FormatParams),
    responses((status = 200, description = "the file; without `format`, the secret whose key is `export`", content((String = "text/plain"), (ExportJson = "application/json"), (BTreeMap<String, String> = "application/yaml"))), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
pub async fn export(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Caller,
    Path(p): Path<EnvSegments>,
    Query(params): Query<FormatParams>,
) -> Result<Response, ApiError> {
    if params.format.is_none() {
        let resolve = Query(ResolveParams {
            resolve: params.resolve,
        });
        let secret = read_secret(State(state), meta, principal, named(p, "export"), resolve);
        return Ok(secret.await?.into_response());
    }
    let format = format_of(&params)?;
    let file = service::secrets::export(
        &state,
        &meta,
        &principal,
        path(&p),
        format,
        params.resolve.unwrap_or(false),
    )
    .await?;
    let disposition = format!(
        "attachment; filename=\"{}.{}\"",
        p.2,
        format.file_extension()
    );
    let mut response = file.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

/// Import a `.env`, JSON or YAML file (the request body) in one transaction; a malformed file
/// changes nothing and the error names its line. An empty file (or no body) imports nothing.
#[utoipa::path(
    post, path = "/{org}/projects/{project}/environments/{env}/secrets/import", tag = "secrets", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), ("env" = String, Path), FormatParams),
    request_body(content = Option<String>, content_type = "text/plain"),
    responses((status = 200, body = WriteReport), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse), (status = 422, body = ErrorResponse))
)]
pub async fn import(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Caller,
    Path(p): Path<EnvSegments>,
    Query(params): Query<FormatParams>,
    body: String,
) -> Result<Json<WriteReport>, ApiError> {
    let format = format_of(&params)?;
    Ok(Json(
        service::secrets::import(&state, &meta, &principal, path(&p), format, &body)
            .await?
            .into(),
    ))
}

/// Copy secrets of another environment of the project into this one, in one transaction: the
/// values as stored, or references to them (`as_reference`). Keys this environment has with
/// another value are skipped unless `overwrite`. Nothing changes when the caller may not read
/// the source or write here, or when a named key is not in the source.
#[utoipa::path(
    post, path = "/{org}/projects/{project}/environments/{env}/secrets/copy", tag = "secrets", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), ("env" = String, Path)), request_body = CopySecretsRequest,
    responses((status = 200, body = CopyReport), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse), (status = 422, body = ErrorResponse))
)]
pub async fn copy_secrets(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Caller,
    Path(p): Path<EnvSegments>,
    Json(req): Json<CopySecretsRequest>,
) -> Result<Json<CopyReport>, ApiError> {
    let report = service::sharing::copy(&state, &meta, &principal, path(&p), req).await?;
    Ok(Json(CopyReport {
        created: report.created,
        updated: report.updated,
        unchanged: report.unchanged,
        skipped: report.skipped,
        revision: report.revision,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CompareParams {
    /// The environment compared against (slug).
    pub base: String,
    /// The environment compared with it (slug).
    pub head: String,
    /// Include the values as stored (audited as reads of both environments; default false).
    pub reveal: Option<bool>,
}

/// Two environments of the project side by side, key by key: only in one, different or the
/// same, with versions and update times. Both must be readable by the caller.
#[utoipa::path(
    get, path = "/{org}/projects/{project}/compare", tag = "secrets", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), CompareParams),
    responses((status = 200, body = Comparison), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
pub async fn compare(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Caller,
    Path((org, project)): Path<(String, String)>,
    Query(params): Query<CompareParams>,
) -> Result<Json<Comparison>, ApiError> {
    let comparison = service::sharing::compare(
        &state,
        &meta,
        &principal,
        &org,
        &project,
        (&params.base, &params.head),
        params.reveal.unwrap_or(false),
    )
    .await?;
    Ok(Json(comparison))
}

/// One secret (`?resolve=true` resolves its references).
#[utoipa::path(
    get, path = "/{org}/projects/{project}/environments/{env}/secrets/{key}", tag = "secrets", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), ("env" = String, Path), ("key" = formats::SecretKey, Path), ResolveParams),
    responses((status = 200, body = Secret), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
pub async fn read_secret(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Caller,
    Path(p): Path<KeySegments>,
    Query(params): Query<ResolveParams>,
) -> Result<Json<Secret>, ApiError> {
    let (env, key) = secret_path(&p)?;
    let secret = service::secrets::read_one(
        &state,
        &meta,
        &principal,
        env,
        key,
        None,
        params.resolve.unwrap_or(false),
    )
    .await?;
    Ok(Json(secret.into()))
}

/// Set a secret's value (a new version), creating it if needed.
#[utoipa::path(
    put, path = "/{org}/projects/{project}/environments/{env}/secrets/{key}", tag = "secrets", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), ("env" = String, Path), ("key" = formats::SecretKey, Path)), request_body = PutSecretRequest,
    responses((status = 200, body = Secret), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse), (status = 422, body = ErrorResponse))
)]
pub async fn put_secret(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Caller,
    Path(p): Path<KeySegments>,
    Json(req): Json<PutSecretRequest>,
) -> Result<Json<Secret>, ApiError> {
    let (env, key) = key_path(&p);
    let input = SecretInput {
        key: key.to_owned(),
        value: req.value,
        comment: req.comment,
    };
    Ok(Json(
        service::secrets::put(&state, &meta, &principal, env, input)
            .await?
            .into(),
    ))
}

/// Delete a secret; its history is kept and it can be restored.
#[utoipa::path(
    delete, path = "/{org}/projects/{project}/environments/{env}/secrets/{key}", tag = "secrets", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), ("env" = String, Path), ("key" = formats::SecretKey, Path)),
    responses((status = 204), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
pub async fn delete_secret(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Caller,
    Path(p): Path<KeySegments>,
) -> Result<StatusCode, ApiError> {
    let (env, key) = secret_path(&p)?;
    service::secrets::delete(&state, &meta, &principal, env, key).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Bring a deleted secret back at its last version.
#[utoipa::path(
    post, path = "/{org}/projects/{project}/environments/{env}/secrets/{key}/restore", tag = "secrets", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), ("env" = String, Path), ("key" = formats::SecretKey, Path)),
    responses((status = 200, body = Secret), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
pub async fn restore_secret(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Caller,
    Path(p): Path<KeySegments>,
) -> Result<Json<Secret>, ApiError> {
    let (env, key) = secret_path(&p)?;
    Ok(Json(
        service::secrets::restore(&state, &meta, &principal, env, key)
            .await?
            .into(),
    ))
}

/// A secret's versions, newest first.
#[utoipa::path(
    get, path = "/{org}/projects/{project}/environments/{env}/secrets/{key}/versions", tag = "secrets", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), ("env" = String, Path), ("key" = formats::SecretKey, Path), NumberPageParams),
    responses((status = 200, body = Page<SecretVersion>), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
pub async fn list_versions(
    State(state): State<AppState>,
    principal: Caller,
    Path(p): Path<KeySegments>,
    Query(page): Query<NumberPageParams>,
) -> Result<Json<Page<SecretVersion>>, ApiError> {
    let (env, key) = secret_path(&p)?;
    let limit = page.limit()?;
    let versions =
        service::secrets::versions(&state, &principal, env, key, page.cursor()?, limit).await?;
    Ok(Json(Page::from_rows(
        versions,
        limit,
        |v| v.version.to_string(),
        SecretVersion::from,
    )))
}

/// One version of a secret, with its value.
#[utoipa::path(
    get, path = "/{org}/projects/{project}/environments/{env}/secrets/{key}/versions/{version}", tag = "secrets", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), ("env" = String, Path), ("key" = formats::SecretKey, Path), ("version" = i64, Path)),
    responses((status = 200, body = Secret), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
pub async fn read_version(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Caller,
    Path((org, project, env, key, version)): Path<(String, String, String, String, String)>,
) -> Result<Json<Secret>, ApiError> {
    let version: i64 = version
        .parse()
        .map_err(|_| ApiError::not_found("secret version"))?;
    let p = (org, project, env, key);
    let (env, key) = secret_path(&p)?;
    Ok(Json(
        service::secrets::read_one(&state, &meta, &principal, env, key, Some(version), false)
            .await?
            .into(),
    ))
}

/// Make an earlier version's value current again (as a new version).
#[utoipa::path(
    post, path = "/{org}/projects/{project}/environments/{env}/secrets/{key}/rollback", tag = "secrets", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), ("env" = String, Path), ("key" = formats::SecretKey, Path)), request_body = RollbackRequest,
    responses((status = 200, body = Secret), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
pub async fn rollback_secret(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Caller,
    Path(p): Path<KeySegments>,
    Json(req): Json<RollbackRequest>,
) -> Result<Json<Secret>, ApiError> {
    let (env, key) = secret_path(&p)?;
    Ok(Json(
        service::secrets::rollback(&state, &meta, &principal, env, key, req.version)
            .await?
            .into(),
    ))
}

/// What a data-key rotation did.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyRotation {
    /// The project's new data-key version.
    pub dek_version: i64,
    /// How many secret versions were re-encrypted.
    pub reencrypted_versions: usize,
}

/// Give the project a new data key and re-encrypt every secret version with it (project admins).
#[utoipa::path(
    post, path = "/{org}/projects/{project}/rotate-key", tag = "secrets", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path)),
    responses((status = 200, body = KeyRotation), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
pub async fn rotate_project_key(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Path((org, project)): Path<(String, String)>,
) -> Result<Json<KeyRotation>, ApiError> {
    let done = service::secrets::rotate_project_dek(
        &state,
        &meta,
        &Caller::User(principal),
        &org,
        &project,
    )
    .await?;
    Ok(Json(KeyRotation {
        dek_version: done.dek_version,
        reencrypted_versions: done.reencrypted_versions,
    }))
}
