//! The API's routes, one module per resource, assembled with their OpenAPI description so the
//! document and the router are built from the same declarations.

pub mod api_keys;
pub mod audit;
pub mod auth;
pub mod dynamic;
pub mod events;
pub mod health;
pub mod meta;
pub mod orgs;
pub mod projects;
mod responses;
pub mod secrets;
pub mod service_tokens;
pub mod teams;
pub mod webhooks;

use std::sync::{Arc, OnceLock};

use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{InfoBuilder, OpenApi as OpenApiDoc};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

use crate::http;
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "Coffer API", description = "Coffer secrets manager: REST API of coffer-server."),
    modifiers(&BearerAuth),
    tags(
        (name = "health", description = "Probes"),
        (name = "meta", description = "About this API"),
        (name = "auth", description = "Accounts and login sessions"),
        (name = "api-keys", description = "Personal API keys"),
        (name = "audit", description = "Audit trail"),
        (name = "orgs", description = "Organizations, members and invitations"),
        (name = "teams", description = "Teams of an organization's members"),
        (name = "projects", description = "Projects, environments and access"),
        (name = "secrets", description = "Secrets: values, versions, import and export"),
        (name = "events", description = "Change events: streams and history"),
        (name = "webhooks", description = "Change events sent to HTTP endpoints, signed"),
        (name = "dynamic-secrets", description = "Credentials minted on demand (PostgreSQL roles), leased, renewed and revoked"),
        (name = "service-tokens", description = "Machine identities scoped to a project's environments"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut OpenApiDoc) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An access token (JWT) from /auth/login, or an API key `cfr_…`",
                    ))
                    .build(),
            ),
        );
    }
}

/// Every route, with its documentation.
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(health::router())
        .nest("/api/v1", meta::router())
        .nest(
            "/api/v1/auth",
            auth::router().merge(changes_access(auth::credentials_router())),
        )
        .nest("/api/v1/api-keys", changes_access(api_keys::router()))
        .nest("/api/v1/audit-events", audit::router())
        .nest(
            "/api/v1/orgs",
            changes_access(
                orgs::router()
                    .merge(teams::router())
                    .merge(projects::router())
                    .merge(service_tokens::router())
                    .merge(webhooks::router()),
            )
            .merge(secrets::router())
            .merge(dynamic::router())
            .merge(events::router())
            .merge(audit::org_router()),
        )
        .nest(
            "/api/v1/invitations",
            changes_access(orgs::invitations_router()),
        )
}

/// Routes whose state-changing requests may change who may do what (see [`crate::access`]).
/// The secret data routes are the only others that change anything.
fn changes_access(routes: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    routes.route_layer(axum::middleware::from_fn(http::mark_access_change))
}

/// The OpenAPI document of this server.
pub fn openapi() -> Arc<OpenApiDoc> {
    static DOC: OnceLock<Arc<OpenApiDoc>> = OnceLock::new();
    DOC.get_or_init(|| {
        let (_, mut doc) = api().split_for_parts();
        responses::document(&mut doc);
        doc.info = InfoBuilder::from(doc.info)
            .version(env!("CARGO_PKG_VERSION"))
            .build();
        Arc::new(doc)
    })
    .clone()
}

/// The OpenAPI document as served: [`openapi`] in JSON, with the links' fields named as the
/// specification names them (utoipa 5 writes `operation_id`, not `operationId`).
pub fn openapi_json() -> Arc<serde_json::Value> {
    static DOC: OnceLock<Arc<serde_json::Value>> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = serde_json::to_value(&*openapi()).unwrap_or(serde_json::Value::Null);
        responses::camel_case_links(&mut doc);
        Arc::new(doc)
    })
    .clone()
}

/// The routes without middleware.
pub fn router() -> Router<AppState> {
    api().split_for_parts().0
}
