//! `/api/v1/orgs/{org}/service-tokens`: machine identities (owners and admins manage them).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use secrecy::SecretString;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Principal;
use crate::error::{ApiError, ErrorResponse};
use crate::http::{IdPageParams, Json, Page, PageExt as _, Query, Revealed};
use crate::ids::ServiceTokenId;
use crate::routes::api_keys::RotateApiKeyRequest;
use crate::service::service_tokens::{NewToken, ServiceTokenView};
use crate::service::{self, ClientMeta};
use crate::state::AppState;

pub use coffer_client::types::{
    CreateServiceTokenRequest, IssuedServiceToken, ServiceToken, TokenAccess,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_token, list_tokens))
        .routes(routes!(revoke_token))
        .routes(routes!(rotate_token))
}

impl From<ServiceTokenView> for ServiceToken {
    fn from(v: ServiceTokenView) -> Self {
        let access = if v.token.read_write() {
            TokenAccess::ReadWrite
        } else {
            TokenAccess::Read
        };
        Self {
            id: v.token.id,
            name: v.token.name,
            prefix: v.token.prefix,
            project: v.project,
            environments: v.environments,
            access,
            created_at: v.token.created_at,
            expires_at: v.token.expires_at,
            last_used_at: v.token.last_used_at,
        }
    }
}

fn issued(view: ServiceTokenView, secret: SecretString) -> IssuedServiceToken {
    let previous_token_expires_at = view.token.previous_expires_at;
    IssuedServiceToken {
        service_token: view.into(),
        token: Revealed(secret),
        previous_token_expires_at,
    }
}

fn parse_id(id: &str) -> Result<ServiceTokenId, ApiError> {
    id.parse().map_err(|_| ApiError::not_found("service token"))
}

/// Create a service token for one project and some of its environments.
#[utoipa::path(
    post, path = "/{org}/service-tokens", tag = "service-tokens", security(("bearer" = [])),
    params(("org" = String, Path)), request_body = CreateServiceTokenRequest,
    responses((status = 201, body = IssuedServiceToken), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse), (status = 422, body = ErrorResponse))
)]
pub async fn create_token(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Path(org): Path<String>,
    Json(req): Json<CreateServiceTokenRequest>,
) -> Result<(StatusCode, Json<IssuedServiceToken>), ApiError> {
    let new = NewToken {
        name: &req.name,
        project: &req.project,
        environments: &req.environments,
        read_write: req.access == TokenAccess::ReadWrite,
        expires_in_days: req.expires_in_days,
    };
    let (view, secret) =
        service::service_tokens::create(&state, &meta, &principal, &org, new).await?;
    Ok((StatusCode::CREATED, Json(issued(view, secret))))
}

/// The organization's service tokens, newest first.
#[utoipa::path(
    get, path = "/{org}/service-tokens", tag = "service-tokens", security(("bearer" = [])),
    params(("org" = String, Path), IdPageParams),
    responses((status = 200, body = Page<ServiceToken>), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
pub async fn list_tokens(
    State(state): State<AppState>,
    principal: Principal,
    Path(org): Path<String>,
    Query(page): Query<IdPageParams>,
) -> Result<Json<Page<ServiceToken>>, ApiError> {
    let limit = page.limit()?;
    let rows =
        service::service_tokens::list(&state, &principal, &org, page.cursor()?, limit).await?;
    Ok(Json(Page::from_rows(
        rows,
        limit,
        |t| t.token.id.to_string(),
        ServiceToken::from,
    )))
}

/// Revoke a service token at once.
#[utoipa::path(
    delete, path = "/{org}/service-tokens/{id}", tag = "service-tokens", security(("bearer" = [])),
    params(("org" = String, Path), ("id" = ServiceTokenId, Path)),
    responses((status = 204), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
pub async fn revoke_token(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Path((org, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    service::service_tokens::revoke(&state, &meta, &principal, &org, parse_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Replace a service token's secret; the old one keeps working for the grace period only.
#[utoipa::path(
    post, path = "/{org}/service-tokens/{id}/rotate", tag = "service-tokens", security(("bearer" = [])),
    params(("org" = String, Path), ("id" = ServiceTokenId, Path)), request_body(content = Option<RotateApiKeyRequest>, description = "optional"),
    responses((status = 200, body = IssuedServiceToken), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse), (status = 422, body = ErrorResponse))
)]
pub async fn rotate_token(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Path((org, id)): Path<(String, String)>,
    body: Option<Json<Option<RotateApiKeyRequest>>>,
) -> Result<Json<IssuedServiceToken>, ApiError> {
    // No body and a JSON `null` both mean no grace period.
    let grace = body
        .and_then(|Json(b)| b)
        .and_then(|b| b.grace_period_seconds)
        .unwrap_or(0);
    let (view, secret) = service::service_tokens::rotate(
        &state,
        &meta,
        &principal,
        &org,
        parse_id(&id)?,
        Duration::from_secs(grace),
    )
    .await?;
    Ok(Json(issued(view, secret)))
}
