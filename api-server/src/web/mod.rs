//! The web dashboard, served by coffer-server under `/` beside the API: pages rendered here from
//! templates compiled into the binary (askama), htmx for partial updates and live views, Pico
//! CSS; every file embedded (see [`assets`]), nothing fetched from elsewhere.
//!
//! Pages call the same service functions as the API, as the signed-in user: what a role may not
//! do is not offered, and the services refuse it anyway. Secret values are never in a page until
//! the user reveals one, a request of its own that is audited as a read.

mod assets;
mod pages;
pub mod session;

use std::borrow::Cow;

use askama::Template;
use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use crate::error::ApiError;
use crate::http::KeepBody;
use crate::state::AppState;

pub use assets::{AssetUrls, URLS as ASSETS};

/// The Content-Security-Policy of every response: scripts, styles and images from this server
/// only, no inline script or style, no framing, forms posted here only.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The dashboard's routes, behind the session and CSRF layer.
pub fn router(state: &AppState) -> Router<AppState> {
    use pages::{auth, orgs, projects, secrets, settings};
    Router::new()
        .route("/", get(orgs::home))
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/signup", get(auth::signup_page).post(auth::signup))
        .route("/logout", post(auth::logout))
        .route(
            "/reset-password/{token}",
            get(auth::reset_page).post(auth::reset),
        )
        .route(
            "/invitations/{token}",
            get(orgs::invitation_page).post(orgs::accept_invitation),
        )
        .route("/orgs", post(orgs::create))
        .route("/orgs/{org}", get(projects::list))
        .route("/orgs/{org}/projects", post(projects::create))
        .route("/orgs/{org}/projects/{project}", get(secrets::grid))
        .route(
            "/orgs/{org}/projects/{project}/rename",
            post(projects::rename),
        )
        .route(
            "/orgs/{org}/projects/{project}/delete",
            post(projects::delete),
        )
        .route(
            "/orgs/{org}/projects/{project}/envs/{env}",
            get(secrets::environment),
        )
        .route(
            "/orgs/{org}/projects/{project}/envs/{env}/secrets",
            post(secrets::add),
        )
        .route(
            "/orgs/{org}/projects/{project}/envs/{env}/secrets/{key}",
            get(secrets::row).post(secrets::save),
        )
        .route(
            "/orgs/{org}/projects/{project}/envs/{env}/secrets/{key}/reveal",
            get(secrets::reveal),
        )
        .route(
            "/orgs/{org}/projects/{project}/envs/{env}/secrets/{key}/edit",
            get(secrets::edit),
        )
        .route(
            "/orgs/{org}/projects/{project}/envs/{env}/secrets/{key}/delete",
            post(secrets::delete),
        )
        .route(
            "/orgs/{org}/projects/{project}/envs/{env}/secrets/{key}/restore",
            post(secrets::restore),
        )
        .route(
            "/orgs/{org}/projects/{project}/envs/{env}/secrets/{key}/history",
            get(secrets::history),
        )
        .route(
            "/orgs/{org}/projects/{project}/envs/{env}/secrets/{key}/rollback",
            post(secrets::rollback),
        )
        .route("/settings", get(settings::page))
        .route("/settings/profile", post(settings::change_profile))
        .route("/settings/password", post(settings::change_password))
        .route("/settings/sessions/{id}/end", post(settings::end_session))
        .route("/settings/sessions/end-others", post(settings::end_others))
        .merge(pages::api_keys::routes())
        .merge(pages::service_tokens::routes())
        .merge(pages::teams::routes())
        .merge(pages::access::routes())
        .merge(pages::transfer::routes())
        .merge(pages::members::routes())
        .merge(pages::environments::routes())
        .merge(pages::audit::routes())
        .merge(pages::webhooks::routes())
        .merge(pages::dynamic::routes())
        .merge(pages::analytics::routes())
        // A form may change who may do what (members, grants, keys, policies): as the API's
        // requests do, it makes the server forget what it remembered of access.
        .route_layer(axum::middleware::from_fn(crate::http::mark_access_change))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            session::layer,
        ))
        // Assets need no session: they are the same for everyone.
        .route("/assets/{file}", get(assets::serve))
}

/// Why a dashboard request failed; rendered by [`finish`] as a page, or as a message for htmx.
#[derive(Debug)]
pub enum WebError {
    /// What a service refused, with its status and message.
    Api(ApiError),
    /// Not signed in (or the session ended): to the sign-in page, then back to `next`.
    SignIn { next: Option<String> },
    /// A state-changing request without this site's CSRF token.
    Csrf,
    /// A template could not be rendered.
    Internal(Cow<'static, str>),
}

impl From<ApiError> for WebError {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

impl From<askama::Error> for WebError {
    fn from(e: askama::Error) -> Self {
        Self::Internal(Cow::Owned(e.to_string()))
    }
}

/// An error to show: set on the response by [`WebError`], turned into a page (or a message
/// for htmx) by [`finish`], which knows the request.
#[derive(Debug, Clone)]
struct ErrorPage {
    status: StatusCode,
    message: String,
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Self::SignIn { next } => {
                let to = match next {
                    Some(next) => format!("/login?next={}", urlencode(&next)),
                    None => "/login".to_owned(),
                };
                let mut response = Redirect::to(&to).into_response();
                if let Ok(v) = HeaderValue::from_str(&to) {
                    response.headers_mut().insert("hx-redirect", v);
                }
                return response;
            }
            Self::Csrf => (
                StatusCode::FORBIDDEN,
                "This form has expired or did not come from this site. Reload the page and try again."
                    .to_owned(),
            ),
            Self::Internal(cause) => {
                tracing::error!(error = %cause, "dashboard page failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong on the server.".to_owned(),
                )
            }
            Self::Api(e) => {
                let status = e.status();
                if let ApiError::Internal(cause) = &e {
                    tracing::error!(error = format!("{cause:#}"), "dashboard request failed");
                }
                (status, api_message(&e))
            }
        };
        let mut response = status.into_response();
        response
            .extensions_mut()
            .insert(ErrorPage { status, message });
        response.extensions_mut().insert(KeepBody);
        response
    }
}

/// What a user is told of a refusal: the service's message, capitalised.
fn api_message(e: &ApiError) -> String {
    let text = match e {
        ApiError::NotFound { what } => {
            format!("This {what} does not exist, or you may not see it.")
        }
        ApiError::Internal(_) => "Something went wrong on the server.".to_owned(),
        other => other.to_string(),
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => text,
    }
}

pub fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorTemplate<'a> {
    assets: &'static AssetUrls,
    status: u16,
    reason: &'a str,
    message: &'a str,
}

#[derive(Template)]
#[template(path = "fragments/alert.html")]
struct AlertTemplate<'a> {
    message: &'a str,
}

/// Renders the errors of dashboard responses: a whole page, or for htmx a message shown in
/// the page's alert area. Runs outside [`session::layer`], so it sees its refusals too.
pub async fn finish(req: Request, next: Next) -> Response {
    let htmx = req.headers().contains_key("hx-request");
    let mut response = next.run(req).await;
    let Some(page) = response.extensions_mut().remove::<ErrorPage>() else {
        return response;
    };
    let rendered = if htmx {
        AlertTemplate {
            message: &page.message,
        }
        .render()
    } else {
        ErrorTemplate {
            assets: &ASSETS,
            status: page.status.as_u16(),
            reason: page.status.canonical_reason().unwrap_or("Error"),
            message: &page.message,
        }
        .render()
    };
    let mut out = (page.status, Html(rendered.unwrap_or_default())).into_response();
    if htmx {
        let headers = out.headers_mut();
        headers.insert("hx-retarget", HeaderValue::from_static("#alerts"));
        headers.insert("hx-reswap", HeaderValue::from_static("innerHTML"));
    }
    out.extensions_mut().insert(KeepBody);
    out
}

/// A page's HTML, or the error of rendering it.
pub fn render(template: &impl Template) -> Result<Response, WebError> {
    let mut response = Html(template.render()?).into_response();
    // A form shown again with its refusal keeps its status, and stays a page.
    response.extensions_mut().insert(KeepBody);
    Ok(response)
}

/// The answer to a path no route has: the API's JSON 404 under `/api/`, a page elsewhere.
pub async fn fallback(req: Request) -> Response {
    if req.uri().path().starts_with("/api/") {
        return ApiError::NotFound { what: "route" }.into_response();
    }
    not_found().into_response()
}

pub fn not_found() -> WebError {
    WebError::Api(ApiError::NotFound { what: "page" })
}

/// Sets the security headers every response carries (the API's too: they cost nothing there).
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        "permissions-policy",
        HeaderValue::from_static("camera=(), microphone=(), geolocation=(), interest-cohort=()"),
    );
    response
}
