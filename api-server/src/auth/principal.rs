//! Who is calling: a user through a login session (JWT) or a personal API key ([`Principal`]),
//! or an organization's machine identity, a service token ([`Caller::ServiceToken`]).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{Method, header};

use crate::auth::tokens::{self, API_KEY_PREFIX};
use crate::db;
use crate::db::credentials::{self, Live, Table};
use crate::error::ApiError;
use crate::ids::{
    ApiKeyId, EnvironmentId, OrgId, ProjectId, ServiceTokenId, SessionId, Timestamp, UserId,
};
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

/// The bearer token of a request.
pub fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    bearer_header(&parts.headers)
}

/// The bearer token in `headers`.
pub fn bearer_header(headers: &axum::http::HeaderMap) -> Result<&str, ApiError> {
    let value = headers.get(header::AUTHORIZATION).ok_or_else(|| {
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

/// A service token: an organization's machine identity, limited to one project and some of its
/// environments, read-only or read-write.
#[derive(Debug, Clone)]
pub struct ServiceTokenPrincipal {
    pub id: ServiceTokenId,
    pub org_id: OrgId,
    pub project_id: ProjectId,
    pub environment_ids: Vec<EnvironmentId>,
    pub read_write: bool,
}

/// Any authenticated caller. Routes that machine identities may use take this; the others take
/// [`Principal`], which refuses service tokens.
#[derive(Debug, Clone)]
pub enum Caller {
    User(Principal),
    ServiceToken(ServiceTokenPrincipal),
}

/// What the policy and the audit log need to know of a caller.
pub trait Subject {
    /// The user acting, if a user is.
    fn user(&self) -> Option<UserId>;
    /// The service token acting, if one is.
    fn token(&self) -> Option<&ServiceTokenPrincipal>;
    /// `("user" | "api_key" | "service_token", id)` for audit events.
    fn actor(&self) -> (&'static str, String);
}

impl Subject for Principal {
    fn user(&self) -> Option<UserId> {
        Some(self.user_id)
    }
    fn token(&self) -> Option<&ServiceTokenPrincipal> {
        None
    }
    fn actor(&self) -> (&'static str, String) {
        Principal::actor(self)
    }
}

impl Subject for Caller {
    fn user(&self) -> Option<UserId> {
        match self {
            Self::User(p) => Some(p.user_id),
            Self::ServiceToken(_) => None,
        }
    }
    fn token(&self) -> Option<&ServiceTokenPrincipal> {
        match self {
            Self::User(_) => None,
            Self::ServiceToken(t) => Some(t),
        }
    }
    fn actor(&self) -> (&'static str, String) {
        match self {
            Self::User(p) => p.actor(),
            Self::ServiceToken(t) => ("service_token", t.id.to_string()),
        }
    }
}

/// The live credential whose secret hashes to `hash`: from memory when it was confirmed
/// recently (see [`crate::access`]), else from the database. Its use is recorded at most once
/// per [`credentials::TOUCH_INTERVAL`] either way.
async fn live_credential(state: &AppState, hash: String, now: Timestamp) -> Result<Live, ApiError> {
    let epoch = state.access.epoch();
    let (mut live, remembered) = match state.access.credential(&hash, now) {
        Some(live) => (live, true),
        None => {
            let live = credentials::live_by_hash(state.db.pool(), &hash, now)
                .await?
                .ok_or_else(invalid_token)?;
            (live, false)
        }
    };
    let touch = credentials::needs_touch(live.last_used_at(), now);
    if touch {
        let _turn = state.db.write_turn().await;
        let pool = state.db.pool();
        match &live {
            Live::ApiKey { id, .. } => credentials::touch(pool, Table::ApiKeys, *id, now).await?,
            Live::ServiceToken { id, .. } => {
                credentials::touch(pool, Table::ServiceTokens, *id, now).await?;
            }
        }
        live.touched(now);
    }
    if touch || !remembered {
        state.access.put_credential(epoch, hash, live.clone());
    }
    Ok(live)
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match Caller::from_request_parts(parts, state).await? {
            Caller::User(p) => Ok(p),
            Caller::ServiceToken(_) => Err(ApiError::forbidden(
                "user_required",
                "this endpoint is for users; service tokens read and write secrets only",
            )),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        Self::authenticate(state, token, &parts.method).await
    }
}

/// A caller on a route where what is done counts as a read whatever the method: taking a
/// lease of a dynamic secret (new credentials are read, like a secret's value), renewing it or
/// giving it back. Read-only API keys and service tokens are accepted; what needs write access
/// checks [`Caller::read_only`].
#[derive(Debug, Clone)]
pub struct LeaseCaller(pub Caller);

impl FromRequestParts<AppState> for LeaseCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        Caller::authenticate(state, token, &Method::GET)
            .await
            .map(Self)
    }
}

impl Caller {
    /// Whether the credential may only read (a read-only API key or service token).
    pub fn read_only(&self) -> bool {
        match self {
            Self::User(p) => matches!(
                p.credential,
                Credential::ApiKey {
                    read_only: true,
                    ..
                }
            ),
            Self::ServiceToken(t) => !t.read_write,
        }
    }

    /// The caller a bearer `token` stands for, on a request with `method` (read-only
    /// credentials are refused on methods that could change something). Long-lived requests
    /// (event streams) ask again from time to time: a credential revoked meanwhile fails.
    pub async fn authenticate(
        state: &AppState,
        token: &str,
        method: &Method,
    ) -> Result<Self, ApiError> {
        let now = Timestamp::now();
        let principal = if token.starts_with(API_KEY_PREFIX) {
            let hash = tokens::hash(token);
            match live_credential(state, hash, now).await? {
                Live::ApiKey {
                    id,
                    user_id,
                    access,
                    ..
                } => Principal {
                    user_id,
                    credential: Credential::ApiKey {
                        id,
                        read_only: db::api_keys::is_read_only(&access),
                    },
                },
                Live::ServiceToken {
                    id,
                    org_id,
                    project_id,
                    access,
                    environment_ids,
                    ..
                } => {
                    let read_write = db::service_tokens::is_read_write(&access);
                    if !read_write && !is_safe(method) {
                        return Err(ApiError::forbidden(
                            "read_only_token",
                            "this service token is read-only",
                        ));
                    }
                    return Ok(Self::ServiceToken(ServiceTokenPrincipal {
                        id,
                        org_id,
                        project_id,
                        environment_ids,
                        read_write,
                    }));
                }
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
            Principal {
                user_id: claims.sub,
                credential: Credential::Session(session.id),
            }
        };
        if let Credential::ApiKey {
            read_only: true, ..
        } = principal.credential
            && !is_safe(method)
        {
            return Err(ApiError::forbidden(
                "read_only_key",
                "this API key is read-only",
            ));
        }
        Ok(Self::User(principal))
    }
}

#[cfg(test)]
mod props;
