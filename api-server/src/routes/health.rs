//! Liveness and readiness probes.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::http::Json;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(ready))
}

/// A probe's answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Liveness: the process serves requests.
#[utoipa::path(get, path = "/health", tag = "health", responses((status = 200, body = Status)))]
pub async fn health() -> Json<Status> {
    Json(Status { status: "ok" })
}

/// Readiness: the database answers and every migration is applied.
#[utoipa::path(
    get, path = "/ready", tag = "health",
    responses((status = 200, body = Status), (status = 503, body = crate::error::ErrorResponse))
)]
pub async fn ready(State(state): State<AppState>) -> Result<(StatusCode, Json<Status>), ApiError> {
    if state.db.is_ready().await {
        Ok((StatusCode::OK, Json(Status { status: "ready" })))
    } else {
        Err(ApiError::Unavailable {
            message: "the database is not ready".into(),
            retry_after: Some(std::time::Duration::from_secs(5)),
        })
    }
}
