//! Who is calling: a user through a login session (JWT) or through a personal API key.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{Method, header};

use crate::auth::tokens::{self, API_KEY_PREFIX};
use crate::db;
use crate::error::ApiError;
use crate::ids::{ApiKeyId, SessionId, Timestamp, UserId};
use crate::state::AppState;

/// How the caller authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    Session(SessionId),
    ApiKey { id: ApiKeyId, read_only: bool },
}

/// An authenticated caller. Taking it as an argument makes a route require authentication;
/// a read-only API key is refused (403) on any method that could change something.
#[derive(Debug, Clone, Copy)]
pub struct Principal {
    pub user_id: UserId,
    pub credential: Credential,
}

impl Principal {
    /// `("user" | "api_key", id)` for audit events.
    pub fn actor(&self) -> (&'static str, String) {
        match self.credential {
            Credential::Session(_) => ("user", self.user_id.to_string()),
            Credential::ApiKey { id, .. } => ("api_key", id.to_string()),
        }
    }

    /// The login session, for operations that only a person at a login may do.
    pub fn require_session(&self, what: &str) -> Result<SessionId, ApiError> {
        match self.credential {
            Credential::Session(id) => Ok(id),
            Credential::ApiKey { .. } => Err(ApiError::forbidden(
                "session_required",
                format!("{what} needs a login session, not an API key"),
            )),
        }
    }
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
        ApiError::unauthorized(
            "missing_credentials",
            "authentication required: send `Authorization: Bearer <token>`",
        )
    })?;
    let value = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            ApiError::unauthorized(
                "invalid_credentials",
                "expected `Authorization: Bearer <token>`",
            )
        })?;
    Ok(value)
}

fn invalid_token() -> ApiError {
    ApiError::unauthorized("invalid_token", "the token is invalid, expired or revoked")
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        let now = Timestamp::now();
        let principal = if token.starts_with(API_KEY_PREFIX) {
            let key = db::api_keys::by_token_hash(state.db.pool(), &tokens::hash(token), now)
                .await?
                .ok_or_else(invalid_token)?;
            db::api_keys::touch(state.db.pool(), key.id, now).await?;
            Self {
                user_id: key.user_id,
                credential: Credential::ApiKey {
                    id: key.id,
                    read_only: key.read_only(),
                },
            }
        } else {
            let claims = state.jwt.verify(token).ok_or_else(invalid_token)?;
            let session = match state.sessions.get(&claims.sid) {
                Some(cached) => cached,
                None => {
                    let found = db::sessions::session(state.db.pool(), claims.sid)
                        .await?
                        .ok_or_else(invalid_token)?;
                    if found.is_active(now) {
                        state.sessions.insert(found.id, found.clone());
                    }
                    found
                }
            };
            if !session.is_active(now) || session.user_id != claims.sub {
                return Err(ApiError::unauthorized(
                    "session_ended",
                    "the session has ended; log in again",
                ));
            }
            Self {
                user_id: claims.sub,
                credential: Credential::Session(session.id),
            }
        };
        if let Credential::ApiKey {
            read_only: true, ..
        } = principal.credential
        {
            if !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) {
                return Err(ApiError::forbidden(
                    "read_only_key",
                    "this API key is read-only",
                ));
            }
        }
        Ok(principal)
    }
}
