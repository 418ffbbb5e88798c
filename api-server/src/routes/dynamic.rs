//! `…/environments/{env}/dynamic-secrets`: credentials minted on demand, and their leases.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Caller, LeaseCaller, Principal};
use crate::error::{ApiError, ErrorResponse};
use crate::http::{IdPageParams, Json, Page, PageExt as _, PageParams, Query};
use crate::service::tenancy::EnvPath;
use crate::service::{self, ClientMeta};
use crate::state::AppState;

pub use coffer_client::types::{
    CreateDynamicSecretRequest, DynamicSecret, IssueLeaseRequest, IssuedLease, Lease,
    RenewLeaseRequest, RevokedLeases, UpdateDynamicSecretRequest,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_dynamic_secret, list_dynamic_secrets))
        .routes(routes!(
            get_dynamic_secret,
            update_dynamic_secret,
            delete_dynamic_secret
        ))
        .routes(routes!(issue_lease, list_leases, revoke_all_leases))
        .routes(routes!(get_lease, revoke_lease))
        .routes(routes!(renew_lease))
}

type EnvSegments = (String, String, String);
type NameSegments = (String, String, String, String);
type LeaseSegments = (String, String, String, String, String);

/// The environment named by a request's first three path segments.
fn env_at<'a>(org: &'a str, project: &'a str, env: &'a str) -> EnvPath<'a> {
    EnvPath { org, project, env }
}

/// Configure a dynamic secret (project admins): the engine checks the administrator's
/// connection first (422 `connection_failed`, `connection_refused` or `insufficient_privilege`
/// with the database's message, nothing stored). The connection URL is sealed and never
/// returned.
#[utoipa::path(
    post, path = "/{org}/projects/{project}/environments/{env}/dynamic-secrets", tag = "dynamic-secrets", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), ("env" = String, Path)),
    request_body = CreateDynamicSecretRequest,
    responses((status = 201, body = DynamicSecret), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse), (status = 422, body = ErrorResponse))
)]
pub async fn create_dynamic_secret(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Path(p): Path<EnvSegments>,
    Json(request): Json<CreateDynamicSecretRequest>,
) -> Result<(StatusCode, Json<DynamicSecret>), ApiError> {
    let at = env_at(&p.0, &p.1, &p.2);
    let created = service::dynamic::create(&state, &meta, &principal, at, request).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// The environment's dynamic secrets.
#[utoipa::path(
    get, path = "/{org}/projects/{project}/environments/{env}/dynamic-secrets", tag = "dynamic-secrets", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), ("env" = String, Path), PageParams),
    responses((status = 200, body = Page<DynamicSecret>), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
pub async fn list_dynamic_secrets(
    State(state): State<AppState>,
    caller: Caller,
    Path(p): Path<EnvSegments>,
    Query(page): Query<PageParams>,
) -> Result<Json<Page<DynamicSecret>>, ApiError> {
    let at = env_at(&p.0, &p.1, &p.2);
    let limit = page.limit()?;
    let rows = service::dynamic::list(&state, &caller, at, page.cursor()?, limit).await?;
    Ok(Json(Page::from_rows(
        rows,
        limit,
        |d| d.name.clone(),
        |d| d,
    )))
}

#[utoipa::path(
    get, path = "/{org}/projects/{project}/environments/{env}/dynamic-secrets/{name}", tag = "dynamic-secrets", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), ("env" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = DynamicSecret), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
pub async fn get_dynamic_secret(
    State(state): State<AppState>,
    caller: Caller,
    Path(p): Path<NameSegments>,
) -> Result<Json<DynamicSecret>, ApiError> {
    let at = env_at(&p.0, &p.1, &p.2);
    Ok(Json(
        service::dynamic::get(&state, &caller, at, &p.3).await?,
    ))
}

/// Change a dynamic secret (project admins); absent fields stay. Leases already issued keep
/// their expiry and maximum.
#[utoipa::path(
    patch, path = "/{org}/projects/{project}/environments/{env}/dynamic-secrets/{name}", tag = "dynamic-secrets", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), ("env" = String, Path), ("name" = String, Path)),
    request_body = UpdateDynamicSecretRequest,
    responses((status = 200, body = DynamicSecret), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse), (status = 422, body = ErrorResponse))
)]
pub async fn update_dynamic_secret(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Path(p): Path<NameSegments>,
    Json(request): Json<UpdateDynamicSecretRequest>,
) -> Result<Json<DynamicSecret>, ApiError> {
    let at = env_at(&p.0, &p.1, &p.2);
    Ok(Json(
        service::dynamic::update(&state, &meta, &principal, at, &p.3, request).await?,
    ))
}

/// Revoke every lease of the dynamic secret, then delete it (project admins). 409
/// `leases_pending` (and nothing deleted) while a role could not be dropped yet: the reaper
/// keeps trying, and the delete can be repeated.
#[utoipa::path(
    delete, path = "/{org}/projects/{project}/environments/{env}/dynamic-secrets/{name}", tag = "dynamic-secrets", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), ("env" = String, Path), ("name" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse))
)]
pub async fn delete_dynamic_secret(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Path(p): Path<NameSegments>,
) -> Result<StatusCode, ApiError> {
    let at = env_at(&p.0, &p.1, &p.2);
    service::dynamic::delete(&state, &meta, &principal, at, &p.3).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Issue a lease: a new role with a new password (readers of the environment's secrets,
/// service tokens included). With an `Idempotency-Key` header, a repeated request gets the
/// same lease: 200 with its credentials when it comes from the same caller within 15 minutes,
/// otherwise 409 `idempotency_key_used` (the lease is listed with its key). 502
/// `engine_failed`/`engine_unavailable` with the database's message when the role could not be
/// made (whatever was made is revoked).
#[utoipa::path(
    post, path = "/{org}/projects/{project}/environments/{env}/dynamic-secrets/{name}/leases", tag = "dynamic-secrets", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), ("env" = String, Path), ("name" = String, Path),
           ("Idempotency-Key" = Option<String>, Header, nullable = false, pattern = r"^[!-~]{1,255}$", description = "Makes a retry return the lease of the first request: 1 to 255 printable ASCII characters")),
    request_body(content = Option<IssueLeaseRequest>),
    responses((status = 201, body = IssuedLease), (status = 200, body = IssuedLease), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse), (status = 422, body = ErrorResponse), (status = 502, body = ErrorResponse))
)]
pub async fn issue_lease(
    State(state): State<AppState>,
    meta: ClientMeta,
    LeaseCaller(caller): LeaseCaller,
    Path(p): Path<NameSegments>,
    headers: HeaderMap,
    request: Option<Json<Option<IssueLeaseRequest>>>,
) -> Result<(StatusCode, Json<IssuedLease>), ApiError> {
    let at = env_at(&p.0, &p.1, &p.2);
    let key = match headers.get("idempotency-key") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| {
                    ApiError::bad_request(
                        "invalid_idempotency_key",
                        "Idempotency-Key is printable ASCII",
                    )
                })?
                .to_owned(),
        ),
        None => None,
    };
    // No body and a JSON `null` both mean the defaults, as documented.
    let request = request.and_then(|Json(r)| r).unwrap_or_default();
    let issued = service::dynamic::issue(&state, &meta, &caller, at, &p.3, request, key).await?;
    let status = if issued.replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(issued.lease)))
}

/// The dynamic secret's leases, newest first, in every state (never their passwords).
#[utoipa::path(
    get, path = "/{org}/projects/{project}/environments/{env}/dynamic-secrets/{name}/leases", tag = "dynamic-secrets", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), ("env" = String, Path), ("name" = String, Path), IdPageParams),
    responses((status = 200, body = Page<Lease>), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
pub async fn list_leases(
    State(state): State<AppState>,
    caller: Caller,
    Path(p): Path<NameSegments>,
    Query(page): Query<IdPageParams>,
) -> Result<Json<Page<Lease>>, ApiError> {
    let at = env_at(&p.0, &p.1, &p.2);
    let limit = page.limit()?;
    let rows =
        service::dynamic::list_leases(&state, &caller, at, &p.3, page.cursor()?, limit).await?;
    Ok(Json(Page::from_rows(rows, limit, |l| l.id.clone(), |l| l)))
}

/// Revoke every lease of the dynamic secret now (writers of the environment's secrets).
/// `pending` counts those whose revocation failed for now (retried in the background) or that
/// are still being created.
#[utoipa::path(
    delete, path = "/{org}/projects/{project}/environments/{env}/dynamic-secrets/{name}/leases", tag = "dynamic-secrets", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), ("env" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = RevokedLeases), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
pub async fn revoke_all_leases(
    State(state): State<AppState>,
    meta: ClientMeta,
    caller: Caller,
    Path(p): Path<NameSegments>,
) -> Result<Json<RevokedLeases>, ApiError> {
    let at = env_at(&p.0, &p.1, &p.2);
    Ok(Json(
        service::dynamic::revoke_all(&state, &meta, &caller, at, &p.3).await?,
    ))
}

#[utoipa::path(
    get, path = "/{org}/projects/{project}/environments/{env}/dynamic-secrets/{name}/leases/{id}", tag = "dynamic-secrets", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), ("env" = String, Path), ("name" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = Lease), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
pub async fn get_lease(
    State(state): State<AppState>,
    caller: Caller,
    Path(p): Path<LeaseSegments>,
) -> Result<Json<Lease>, ApiError> {
    let at = env_at(&p.0, &p.1, &p.2);
    Ok(Json(
        service::dynamic::get_lease(&state, &caller, at, &p.3, &p.4).await?,
    ))
}

/// Revoke a lease now: its role is dropped (its sessions ended, what it owns reassigned to the
/// administrator). The answer's state is `revoked`, or `revoking` when the database refused
/// for now (retried in the background until the role is gone). Its issuer may revoke it with
/// read access; others need write access.
#[utoipa::path(
    delete, path = "/{org}/projects/{project}/environments/{env}/dynamic-secrets/{name}/leases/{id}", tag = "dynamic-secrets", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), ("env" = String, Path), ("name" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = Lease), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse))
)]
pub async fn revoke_lease(
    State(state): State<AppState>,
    meta: ClientMeta,
    LeaseCaller(caller): LeaseCaller,
    Path(p): Path<LeaseSegments>,
) -> Result<Json<Lease>, ApiError> {
    let at = env_at(&p.0, &p.1, &p.2);
    Ok(Json(
        service::dynamic::revoke(&state, &meta, &caller, at, &p.3, &p.4).await?,
    ))
}

/// Extend an active lease by `ttl` seconds from now (default the dynamic secret's
/// `default_ttl`); 422 `beyond_max_ttl` when that would pass its `max_expires_at`.
#[utoipa::path(
    post, path = "/{org}/projects/{project}/environments/{env}/dynamic-secrets/{name}/leases/{id}/renew", tag = "dynamic-secrets", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), ("env" = String, Path), ("name" = String, Path), ("id" = String, Path)),
    request_body(content = Option<RenewLeaseRequest>),
    responses((status = 200, body = Lease), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse), (status = 422, body = ErrorResponse), (status = 502, body = ErrorResponse))
)]
pub async fn renew_lease(
    State(state): State<AppState>,
    meta: ClientMeta,
    LeaseCaller(caller): LeaseCaller,
    Path(p): Path<LeaseSegments>,
    request: Option<Json<Option<RenewLeaseRequest>>>,
) -> Result<Json<Lease>, ApiError> {
    let at = env_at(&p.0, &p.1, &p.2);
    let request = request.and_then(|Json(r)| r).unwrap_or_default();
    Ok(Json(
        service::dynamic::renew(&state, &meta, &caller, at, (&p.3, &p.4), request).await?,
    ))
}
