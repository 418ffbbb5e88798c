//! `/api/v1/api-keys`: personal API keys for the CLI and CI.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Principal;
use crate::db::api_keys::ApiKeyRow;
use crate::error::{ApiError, ErrorResponse};
use crate::http::{IdPageParams, Json, Page, PageExt as _, Query, Revealed};
use crate::ids::{ApiKeyId, Timestamp};
use crate::service::{self, ClientMeta};
use crate::state::AppState;
use coffer_client::types::{formats, integer};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_key, list_keys))
        .routes(routes!(delete_key))
        .routes(routes!(rotate_key))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    #[schema(value_type = formats::Name)]
    pub name: String,
    /// Days until the key stops working (1 to 3650); without it the key does not expire.
    #[serde(default, deserialize_with = "integer::optional")]
    #[schema(minimum = 1, maximum = 3650)]
    pub expires_in_days: Option<u32>,
    /// A read-only key can only read.
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RotateApiKeyRequest {
    /// How long the old token keeps working, in seconds (default 0, at most 604800: 7 days).
    #[serde(default, deserialize_with = "integer::optional")]
    #[schema(maximum = 604_800)]
    pub grace_period_seconds: Option<u64>,
}

/// An API key's metadata; the token itself is shown only when created or rotated.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub name: String,
    /// The first characters of the token, to recognise it.
    #[schema(example = "cfr_AbCd1234")]
    pub prefix: String,
    pub read_only: bool,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
}

impl From<ApiKeyRow> for ApiKey {
    fn from(k: ApiKeyRow) -> Self {
        let read_only = k.read_only();
        Self {
            id: k.id,
            name: k.name,
            prefix: k.prefix,
            read_only,
            created_at: k.created_at,
            expires_at: k.expires_at,
            last_used_at: k.last_used_at,
        }
    }
}

/// A key with its token: store the token now, it is not shown again.
#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedApiKey {
    #[serde(flatten)]
    pub key: ApiKey,
    #[schema(example = "cfr_AbCd1234…")]
    pub token: Revealed,
    /// Until when the previous token still works (after a rotation).
    pub previous_token_expires_at: Option<Timestamp>,
}

impl From<service::api_keys::IssuedKey> for IssuedApiKey {
    fn from(i: service::api_keys::IssuedKey) -> Self {
        let previous_token_expires_at = i.key.previous_expires_at;
        Self {
            key: i.key.into(),
            token: Revealed(i.token),
            previous_token_expires_at,
        }
    }
}

fn parse_id(id: &str) -> Result<ApiKeyId, ApiError> {
    id.parse().map_err(|_| ApiError::not_found("api key"))
}

/// Create an API key acting as the caller. Needs a login session: an API key cannot make keys.
#[utoipa::path(
    post, path = "/", tag = "api-keys", security(("bearer" = [])), request_body = CreateApiKeyRequest,
    responses(
        (status = 201, body = IssuedApiKey),
        (status = 401, body = ErrorResponse),
        (status = 403, description = "not a login session", body = ErrorResponse),
        (status = 422, body = ErrorResponse),
    )
)]
pub async fn create_key(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Json(req): Json<CreateApiKeyRequest>,
) -> Result<(StatusCode, Json<IssuedApiKey>), ApiError> {
    let issued = service::api_keys::create(
        &state,
        &meta,
        &principal,
        &req.name,
        req.expires_in_days,
        req.read_only,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(issued.into())))
}

/// The caller's API keys, newest first.
#[utoipa::path(
    get, path = "/", tag = "api-keys", security(("bearer" = [])), params(IdPageParams),
    responses((status = 200, body = Page<ApiKey>), (status = 401, body = ErrorResponse))
)]
pub async fn list_keys(
    State(state): State<AppState>,
    principal: Principal,
    Query(page): Query<IdPageParams>,
) -> Result<Json<Page<ApiKey>>, ApiError> {
    let limit = page.limit()?;
    let rows = service::api_keys::list(&state, &principal, page.cursor()?, limit).await?;
    Ok(Json(Page::from_rows(
        rows,
        limit,
        |k| k.id.to_string(),
        ApiKey::from,
    )))
}

/// Revoke an API key at once.
#[utoipa::path(
    delete, path = "/{id}", tag = "api-keys", security(("bearer" = [])),
    params(("id" = ApiKeyId, Path)),
    responses((status = 204), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
pub async fn delete_key(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    service::api_keys::revoke(&state, &meta, &principal, parse_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Replace an API key's token; the old token keeps working for the grace period only. Needs a
/// login session.
#[utoipa::path(
    post, path = "/{id}/rotate", tag = "api-keys", security(("bearer" = [])),
    params(("id" = ApiKeyId, Path)), request_body(content = Option<RotateApiKeyRequest>, description = "optional"),
    responses(
        (status = 200, body = IssuedApiKey),
        (status = 401, body = ErrorResponse),
        (status = 403, description = "not a login session", body = ErrorResponse),
        (status = 404, body = ErrorResponse),
    )
)]
pub async fn rotate_key(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Path(id): Path<String>,
    body: Option<Json<Option<RotateApiKeyRequest>>>,
) -> Result<Json<IssuedApiKey>, ApiError> {
    // No body and a JSON `null` both mean no grace period.
    let grace = body
        .and_then(|Json(b)| b)
        .and_then(|b| b.grace_period_seconds)
        .unwrap_or(0);
    let issued = service::api_keys::rotate(
        &state,
        &meta,
        &principal,
        parse_id(&id)?,
        Duration::from_secs(grace),
    )
    .await?;
    Ok(Json(issued.into()))
}
