//! `/api/v1/audit-events`: the caller's own audit trail.

use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Principal;
use crate::db;
use crate::db::audit::AuditRow;
use crate::error::{ApiError, ErrorResponse};
use crate::http::{IdPageParams, Json, Page, PageExt as _, Query};
use crate::ids::{AuditEventId, Timestamp};
use crate::service;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_events))
}

/// `/api/v1/orgs/{org}/audit-events`.
pub fn org_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_org_events))
}

/// Who acted: `user`, `api_key` or `anonymous`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = AuditActor)]
pub struct Actor {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: Option<String>,
}

/// What the action was applied to.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = AuditTarget)]
pub struct Target {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
}

/// One audit event.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEvent {
    pub id: AuditEventId,
    pub occurred_at: Timestamp,
    #[schema(example = "auth.login")]
    pub action: String,
    /// `success`, `failure` or `denied`.
    pub outcome: String,
    pub actor: Actor,
    pub target: Option<Target>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
    pub org_id: Option<String>,
    pub project_id: Option<String>,
    pub environment_id: Option<String>,
}

/// Filters of an organization's audit log.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OrgAuditParams {
    /// Items per page, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page: the id the page starts after (a lower-case UUID).
    #[param(pattern = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
    pub cursor: Option<String>,
    /// Only events by this actor (a user or API key id).
    pub actor: Option<String>,
    /// Only this action, e.g. `secrets.read`.
    pub action: Option<String>,
    /// Only events in this project (slug).
    pub project: Option<String>,
    /// Only events in this environment (slug; needs `project`).
    pub environment: Option<String>,
    /// Only events at or after this time (RFC 3339).
    #[param(format = DateTime)]
    pub since: Option<String>,
    /// Only events before this time (RFC 3339).
    #[param(format = DateTime)]
    pub until: Option<String>,
    /// Stream (`Accept: text/event-stream`): start after this position (an SSE `id` of the
    /// stream; also taken from `Last-Event-ID`).
    pub after: Option<String>,
}

impl From<AuditRow> for AuditEvent {
    fn from(r: AuditRow) -> Self {
        Self {
            id: r.id,
            occurred_at: r.occurred_at,
            action: r.action,
            outcome: r.outcome,
            actor: Actor {
                kind: r.actor_type,
                id: r.actor_id,
            },
            target: r
                .target_type
                .zip(r.target_id)
                .map(|(kind, id)| Target { kind, id }),
            client_ip: r.client_ip,
            user_agent: r.user_agent,
            details: r.details.and_then(|d| serde_json::from_str(&d).ok()),
            org_id: r.org_id,
            project_id: r.project_id,
            environment_id: r.environment_id,
        }
    }
}

/// The caller's audit events, newest first.
#[utoipa::path(
    get, path = "/", tag = "audit", security(("bearer" = [])), params(IdPageParams),
    responses((status = 200, body = Page<AuditEvent>), (status = 401, body = ErrorResponse), (status = 503, body = ErrorResponse))
)]
pub async fn list_events(
    State(state): State<AppState>,
    principal: Principal,
    Query(page): Query<IdPageParams>,
) -> Result<Json<Page<AuditEvent>>, ApiError> {
    let limit = page.limit()?;
    state.audit.flush().await?;
    let rows = db::audit::list_for_user(
        state.db.pool(),
        principal.user_id,
        page.cursor()?,
        i64::from(limit) + 1,
    )
    .await?;
    Ok(Json(Page::from_rows(
        rows,
        limit,
        |e| e.id.to_string(),
        AuditEvent::from,
    )))
}

/// An organization's audit events (owners and admins). Pages, newest first, with filters; or,
/// with `Accept: text/event-stream`, a live stream of every event as it is stored (`event:
/// audit`, `data:` the event as JSON), oldest first, from now or after the position given by
/// `Last-Event-ID` (or `?after=`), with a heartbeat comment at least every 15 s.
#[utoipa::path(
    get, path = "/{org}/audit-events", tag = "audit", security(("bearer" = [])),
    params(("org" = String, Path), OrgAuditParams,
           ("Last-Event-ID" = Option<String>, Header, nullable = false, description = "Resume a stream after this position (an `id` the stream sent)")),
    responses(
        (status = 200, description = "A page (`Accept: application/json`), or the live stream (`Accept: text/event-stream`)",
         content(
            (Page<AuditEvent> = "application/json"),
            (String = "text/event-stream", example = "id: 812.40\nevent: audit\ndata: {\"id\":\"0193…\",\"action\":\"secret.updated\",…}\n\n"),
         )),
        (status = 400, body = ErrorResponse), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse),
        (status = 429, body = ErrorResponse), (status = 503, body = ErrorResponse))
)]
pub async fn list_org_events(
    State(state): State<AppState>,
    principal: Principal,
    Path(org): Path<String>,
    Query(params): Query<OrgAuditParams>,
    headers: axum::http::HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse as _;
    if crate::routes::events::wants_stream(&headers) {
        let position = headers
            .get("last-event-id")
            .map(|v| v.to_str().unwrap_or_default().to_owned())
            .or(params.after.clone());
        let after = position
            .map(|p| {
                p.trim().parse::<db::audit::FeedPosition>().map_err(|_| {
                    ApiError::bad_request(
                        "invalid_position",
                        "the position must be an id this stream sent",
                    )
                })
            })
            .transpose()?;
        let token = crate::auth::principal::bearer_header(&headers)?;
        let frames = service::audit::open_org_feed(
            &state,
            principal,
            service::audit::StreamCredential::Bearer(secrecy::SecretString::from(token)),
            org,
            after,
            service::audit::Render::Plain(|row| {
                serde_json::to_string(&AuditEvent::from(row.clone())).unwrap_or_default()
            }),
        )
        .await?;
        return Ok(crate::routes::events::sse(frames));
    }
    let page = IdPageParams {
        limit: params.limit,
        cursor: params.cursor.clone(),
    };
    let limit = page.limit()?;
    let time = |text: &Option<String>, name: &str| -> Result<Option<Timestamp>, ApiError> {
        text.as_deref()
            .map(|t| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                    .map(Timestamp::from)
                    .map_err(|_| {
                        ApiError::bad_request(
                            "invalid_query",
                            format!("{name} must be an RFC 3339 time"),
                        )
                    })
            })
            .transpose()
    };
    let filter = service::audit::OrgAuditQuery {
        actor: params.actor,
        action: params.action,
        project: params.project,
        environment: params.environment,
        since: time(&params.since, "since")?,
        until: time(&params.until, "until")?,
    };
    let rows =
        service::audit::list_for_org(&state, &principal, &org, &filter, page.cursor()?, limit)
            .await?;
    Ok(Json(Page::from_rows(
        rows,
        limit,
        |e| e.id.to_string(),
        AuditEvent::from,
    ))
    .into_response())
}
