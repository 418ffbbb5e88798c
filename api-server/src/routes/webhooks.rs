//! `/api/v1/orgs/{org}/projects/{project}/webhooks`: a project's webhooks, their signing
//! secrets, pings, and the log of delivery attempts.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Principal;
use crate::error::{ApiError, ErrorResponse};
use crate::http::{IdPageParams, Json, Page, PageExt as _, Query, Revealed};
use crate::service::{self, ClientMeta};
use crate::state::AppState;

pub use coffer_client::types::{
    CreateWebhookRequest, CreatedWebhook, QueuedDelivery, RotateWebhookSecretRequest,
    UpdateWebhookRequest, Webhook, WebhookAttempt, WebhookSecret,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_webhook, list_webhooks))
        .routes(routes!(get_webhook, update_webhook, delete_webhook))
        .routes(routes!(rotate_secret))
        .routes(routes!(ping))
        .routes(routes!(list_attempts))
        .routes(routes!(redeliver))
}

type ProjectSegments = (String, String);
type HookSegments = (String, String, String);

/// Create a webhook (project admins). The answer holds its signing secret, shown this once.
/// Every delivery is a `POST` of the event's JSON with `Coffer-Webhook-Id`, `Coffer-Event-Id` and
/// `Coffer-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">` keyed with the secret.
#[utoipa::path(
    post, path = "/{org}/projects/{project}/webhooks", tag = "webhooks", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path)),
    request_body = CreateWebhookRequest,
    responses((status = 201, body = CreatedWebhook), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse), (status = 422, body = ErrorResponse))
)]
pub async fn create_webhook(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Path((org, project)): Path<ProjectSegments>,
    Json(request): Json<CreateWebhookRequest>,
) -> Result<(StatusCode, Json<CreatedWebhook>), ApiError> {
    let (webhook, secret) =
        service::webhooks::create(&state, &meta, &principal, &org, &project, request).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedWebhook {
            webhook,
            secret: Revealed(secret),
        }),
    ))
}

/// The project's webhooks.
#[utoipa::path(
    get, path = "/{org}/projects/{project}/webhooks", tag = "webhooks", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), IdPageParams),
    responses((status = 200, body = Page<Webhook>), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
pub async fn list_webhooks(
    State(state): State<AppState>,
    principal: Principal,
    Path((org, project)): Path<ProjectSegments>,
    Query(page): Query<IdPageParams>,
) -> Result<Json<Page<Webhook>>, ApiError> {
    let limit = page.limit()?;
    let rows =
        service::webhooks::list(&state, &principal, &org, &project, page.cursor()?, limit).await?;
    Ok(Json(Page::from_rows(rows, limit, |w| w.id.clone(), |w| w)))
}

#[utoipa::path(
    get, path = "/{org}/projects/{project}/webhooks/{id}", tag = "webhooks", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = Webhook), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
pub async fn get_webhook(
    State(state): State<AppState>,
    principal: Principal,
    Path((org, project, id)): Path<HookSegments>,
) -> Result<Json<Webhook>, ApiError> {
    Ok(Json(
        service::webhooks::get(&state, &principal, &org, &project, &id).await?,
    ))
}

/// Change a webhook's URL, filters, or enabled state (enabling clears its failure count).
#[utoipa::path(
    patch, path = "/{org}/projects/{project}/webhooks/{id}", tag = "webhooks", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), ("id" = String, Path)),
    request_body = UpdateWebhookRequest,
    responses((status = 200, body = Webhook), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse), (status = 422, body = ErrorResponse))
)]
pub async fn update_webhook(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Path((org, project, id)): Path<HookSegments>,
    Json(request): Json<UpdateWebhookRequest>,
) -> Result<Json<Webhook>, ApiError> {
    Ok(Json(
        service::webhooks::update(&state, &meta, &principal, &org, &project, &id, request).await?,
    ))
}

/// Delete a webhook and its queue.
#[utoipa::path(
    delete, path = "/{org}/projects/{project}/webhooks/{id}", tag = "webhooks", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), ("id" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
pub async fn delete_webhook(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Path((org, project, id)): Path<HookSegments>,
) -> Result<StatusCode, ApiError> {
    service::webhooks::delete(&state, &meta, &principal, &org, &project, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Give a webhook a new signing secret (shown this once); the previous one keeps signing too
/// (a second `v1=`) for `overlap_seconds`.
#[utoipa::path(
    post, path = "/{org}/projects/{project}/webhooks/{id}/rotate-secret", tag = "webhooks", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), ("id" = String, Path)),
    request_body(content = Option<RotateWebhookSecretRequest>),
    responses((status = 200, body = WebhookSecret), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse), (status = 422, body = ErrorResponse))
)]
pub async fn rotate_secret(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Path((org, project, id)): Path<HookSegments>,
    request: Option<Json<Option<RotateWebhookSecretRequest>>>,
) -> Result<Json<WebhookSecret>, ApiError> {
    // No body and a JSON `null` both mean the defaults.
    let overlap = request
        .and_then(|Json(r)| r)
        .and_then(|r| r.overlap_seconds);
    let (secret, until) =
        service::webhooks::rotate_secret(&state, &meta, &principal, &org, &project, &id, overlap)
            .await?;
    Ok(Json(WebhookSecret {
        secret: Revealed(secret),
        previous_secret_expires_at: until,
    }))
}

/// Send the webhook a test `ping` now (`{"type":"ping","webhook":…,"time":…}`), signed like
/// every delivery; its attempts appear in the log.
#[utoipa::path(
    post, path = "/{org}/projects/{project}/webhooks/{id}/ping", tag = "webhooks", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), ("id" = String, Path)),
    responses((status = 202, body = QueuedDelivery), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
pub async fn ping(
    State(state): State<AppState>,
    principal: Principal,
    Path((org, project, id)): Path<HookSegments>,
) -> Result<(StatusCode, Json<QueuedDelivery>), ApiError> {
    let delivery_id = service::webhooks::ping(&state, &principal, &org, &project, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(QueuedDelivery { delivery_id })))
}

/// The webhook's delivery attempts, newest first: status, response code, duration, attempt
/// number, next retry (and at most 1 KiB of each answer).
#[utoipa::path(
    get, path = "/{org}/projects/{project}/webhooks/{id}/deliveries", tag = "webhooks", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), ("id" = String, Path), IdPageParams),
    responses((status = 200, body = Page<WebhookAttempt>), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
pub async fn list_attempts(
    State(state): State<AppState>,
    principal: Principal,
    Path((org, project, id)): Path<HookSegments>,
    Query(page): Query<IdPageParams>,
) -> Result<Json<Page<WebhookAttempt>>, ApiError> {
    let limit = page.limit()?;
    let rows = service::webhooks::attempts(
        &state,
        &principal,
        &org,
        &project,
        &id,
        page.cursor()?,
        limit,
    )
    .await?;
    Ok(Json(Page::from_rows(rows, limit, |r| r.1.clone(), |r| r.0)))
}

/// Queue a delivery again now, as a new delivery with the same body.
#[utoipa::path(
    post, path = "/{org}/projects/{project}/webhooks/{id}/deliveries/{delivery}/redeliver", tag = "webhooks", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), ("id" = String, Path), ("delivery" = String, Path)),
    responses((status = 202, body = QueuedDelivery), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
pub async fn redeliver(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Path((org, project, id, delivery)): Path<(String, String, String, String)>,
) -> Result<(StatusCode, Json<QueuedDelivery>), ApiError> {
    let delivery_id =
        service::webhooks::redeliver(&state, &meta, &principal, &org, &project, &id, &delivery)
            .await?;
    Ok((StatusCode::ACCEPTED, Json(QueuedDelivery { delivery_id })))
}
