//! `/api/v1/audit-events`: the caller's own audit trail.

use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Principal;
use crate::db;
use crate::db::audit::AuditRow;
use crate::error::{ApiError, ErrorResponse};
use crate::http::{Json, Page, PageParams, Query};
use crate::ids::{AuditEventId, Timestamp};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_events))
}

/// Who acted: `user`, `api_key` or `anonymous`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Actor {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: Option<String>,
}

/// What the action was applied to.
#[derive(Debug, Serialize, ToSchema)]
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
        }
    }
}

/// The caller's audit events, newest first.
#[utoipa::path(
    get, path = "/", tag = "audit", security(("bearer" = [])), params(PageParams),
    responses((status = 200, body = Page<AuditEvent>), (status = 401, body = ErrorResponse))
)]
pub async fn list_events(
    State(state): State<AppState>,
    principal: Principal,
    Query(page): Query<PageParams>,
) -> Result<Json<Page<AuditEvent>>, ApiError> {
    let limit = page.limit()?;
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
