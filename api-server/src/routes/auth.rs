//! `/api/v1/auth`: registration, login, token refresh, logout, the current user, password change
//! and reset.

use axum::extract::State;
use axum::http::StatusCode;
use secrecy::SecretString;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Principal;
use crate::db::users::UserRow;
use crate::error::{ApiError, ErrorResponse};
use crate::http::{Json, Revealed};
use crate::service::{self, ClientMeta};
use crate::state::AppState;
use coffer_client::types::formats;
pub use coffer_client::types::{LoggedIn, LoginRequest, RefreshRequest, SessionTokens, User};

/// Signing up, in and out, refreshing, resetting a password: none changes an API key, a service token or anyone's
/// standing (sessions are remembered apart, see `AppState::sessions`).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(me, update_me))
        .routes(routes!(reset_password))
}

/// Changing the password, which revokes the user's API keys (unless asked not to).
pub fn credentials_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(change_password))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    #[schema(value_type = formats::Email)]
    pub email: String,
    #[schema(value_type = formats::NewPassword)]
    pub password: SecretString,
    #[schema(value_type = formats::Name)]
    pub name: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProfileRequest {
    #[schema(value_type = formats::Name)]
    pub name: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordRequest {
    #[schema(value_type = String, format = Password)]
    pub current_password: SecretString,
    #[schema(value_type = formats::NewPassword)]
    pub new_password: SecretString,
    /// Revoke all of the user's API keys as well (default: true), since whoever knew the old
    /// password may have made some.
    #[serde(default = "yes")]
    #[schema(default = true)]
    pub revoke_api_keys: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetPasswordRequest {
    /// The token of a password-reset link (`cfp_…`, its last path segment).
    #[schema(value_type = String, format = Password)]
    pub token: SecretString,
    #[schema(value_type = formats::NewPassword)]
    pub new_password: SecretString,
}

fn yes() -> bool {
    true
}

impl From<UserRow> for User {
    fn from(u: UserRow) -> Self {
        Self {
            id: u.id,
            email: u.email,
            name: u.name,
            created_at: u.created_at,
        }
    }
}

impl From<service::auth::IssuedTokens> for SessionTokens {
    fn from(t: service::auth::IssuedTokens) -> Self {
        Self {
            access_token: Revealed(t.access_token),
            refresh_token: Revealed(t.refresh_token),
            token_type: "Bearer".to_owned(),
            expires_in: t.expires_in.as_secs(),
        }
    }
}

impl From<service::auth::LoggedIn> for LoggedIn {
    fn from(l: service::auth::LoggedIn) -> Self {
        Self {
            user: l.user.into(),
            tokens: l.tokens.into(),
        }
    }
}

/// Create an account and log in.
#[utoipa::path(
    post, path = "/register", tag = "auth", request_body = RegisterRequest,
    responses(
        (status = 201, body = LoggedIn),
        (status = 409, description = "email taken", body = ErrorResponse),
        (status = 422, description = "invalid email, name or weak password", body = ErrorResponse),
        (status = 429, body = ErrorResponse),
    )
)]
pub async fn register(
    State(state): State<AppState>,
    meta: ClientMeta,
    Json(req): Json<RegisterRequest>,
) -> Result<(StatusCode, Json<LoggedIn>), ApiError> {
    let done = service::auth::register(&state, &meta, &req.email, &req.password, &req.name).await?;
    Ok((StatusCode::CREATED, Json(done.into())))
}

/// Log in with email and password.
#[utoipa::path(
    post, path = "/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = LoggedIn), (status = 401, body = ErrorResponse), (status = 429, body = ErrorResponse))
)]
pub async fn login(
    State(state): State<AppState>,
    meta: ClientMeta,
    Json(req): Json<LoginRequest>,
) -> Result<Json<LoggedIn>, ApiError> {
    Ok(Json(
        service::auth::login(&state, &meta, &req.email, &req.password)
            .await?
            .into(),
    ))
}

/// Trade a refresh token for new tokens. Each refresh token works once; presenting a used one
/// ends its session.
#[utoipa::path(
    post, path = "/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = SessionTokens), (status = 401, body = ErrorResponse), (status = 429, body = ErrorResponse))
)]
pub async fn refresh(
    State(state): State<AppState>,
    meta: ClientMeta,
    Json(req): Json<RefreshRequest>,
) -> Result<Json<SessionTokens>, ApiError> {
    let (_, tokens) = service::auth::refresh(&state, &meta, &req.refresh_token).await?;
    Ok(Json(tokens.into()))
}

/// End the current session at once.
#[utoipa::path(
    post, path = "/logout", tag = "auth", security(("bearer" = [])),
    responses((status = 204), (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse))
)]
pub async fn logout(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
) -> Result<StatusCode, ApiError> {
    service::auth::logout(&state, &meta, &principal).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The authenticated user.
#[utoipa::path(
    get, path = "/me", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = User), (status = 401, body = ErrorResponse))
)]
pub async fn me(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<User>, ApiError> {
    Ok(Json(service::auth::me(&state, &principal).await?.into()))
}

/// Change the authenticated user's name.
#[utoipa::path(
    patch, path = "/me", tag = "auth", security(("bearer" = [])), request_body = UpdateProfileRequest,
    responses((status = 200, body = User), (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse), (status = 422, body = ErrorResponse))
)]
pub async fn update_me(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Json(req): Json<UpdateProfileRequest>,
) -> Result<Json<User>, ApiError> {
    Ok(Json(
        service::auth::rename(&state, &meta, &principal, &req.name)
            .await?
            .into(),
    ))
}

/// Change the password; every other session of the user ends, and (unless
/// `revoke_api_keys` is false) every API key of the user is revoked. Needs a login session.
#[utoipa::path(
    put, path = "/change-password", tag = "auth", security(("bearer" = [])), request_body = ChangePasswordRequest,
    responses(
        (status = 204),
        (status = 401, body = ErrorResponse),
        (status = 403, description = "wrong current password, or not a login session", body = ErrorResponse),
        (status = 422, body = ErrorResponse),
        (status = 429, description = "too many wrong current passwords", body = ErrorResponse),
    )
)]
pub async fn change_password(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Json(req): Json<ChangePasswordRequest>,
) -> Result<StatusCode, ApiError> {
    service::auth::change_password(
        &state,
        &meta,
        &principal,
        &req.current_password,
        &req.new_password,
        req.revoke_api_keys,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Set a new password with the token of a password-reset link (no authentication: the token is
/// the credential). The token works once; every session of the account ends.
#[utoipa::path(
    post, path = "/password-reset", tag = "auth", request_body = ResetPasswordRequest,
    responses(
        (status = 204),
        (status = 401, description = "the token is unknown, expired, used or replaced (`invalid_reset_token`)", body = ErrorResponse),
        (status = 422, description = "weak password (the token stays usable)", body = ErrorResponse),
        (status = 429, body = ErrorResponse),
    )
)]
pub async fn reset_password(
    State(state): State<AppState>,
    meta: ClientMeta,
    Json(req): Json<ResetPasswordRequest>,
) -> Result<StatusCode, ApiError> {
    service::password_reset::redeem(&state, &meta, &req.token, &req.new_password).await?;
    Ok(StatusCode::NO_CONTENT)
}
