//! `/api/v1` and `/api/v1/openapi.json`: what this API is and how it is shaped.

use std::collections::BTreeMap;

use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::Json;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(index))
        .routes(routes!(openapi_json))
}

/// The API's name, version and entry points.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiIndex {
    #[schema(example = "coffer")]
    pub name: &'static str,
    pub version: &'static str,
    pub links: BTreeMap<&'static str, &'static str>,
}

/// About this API.
#[utoipa::path(get, path = "", tag = "meta", responses((status = 200, body = ApiIndex)))]
pub async fn index() -> Json<ApiIndex> {
    let links = BTreeMap::from([
        ("self", "/api/v1"),
        ("openapi", "/api/v1/openapi.json"),
        ("health", "/health"),
        ("ready", "/ready"),
        ("register", "/api/v1/auth/register"),
        ("login", "/api/v1/auth/login"),
        ("refresh", "/api/v1/auth/refresh"),
        ("me", "/api/v1/auth/me"),
        ("api_keys", "/api/v1/api-keys"),
        ("audit_events", "/api/v1/audit-events"),
        ("orgs", "/api/v1/orgs"),
    ]);
    Json(ApiIndex {
        name: "coffer",
        version: env!("CARGO_PKG_VERSION"),
        links,
    })
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta", responses((status = 200, description = "OpenAPI 3 document")))]
pub async fn openapi_json() -> Response {
    axum::Json(super::openapi_json()).into_response()
}
