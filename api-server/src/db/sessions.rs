//! The `sessions` and `refresh_tokens` tables: one session is one refresh-token family.

use sqlx::FromRow;
use sqlx::any::AnyExecutor;

use crate::ids::{RefreshTokenId, SessionId, Timestamp, UserId};

/// What request verification needs to know of a session.
#[derive(Debug, Clone, FromRow)]
pub struct SessionRow {
    pub id: SessionId,
    pub user_id: UserId,
    pub expires_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

impl SessionRow {
    pub fn is_active(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && self.expires_at > now
    }
}

/// A refresh token with its session, as found by the token's hash.
#[derive(Debug, Clone, FromRow)]
pub struct RefreshTokenRow {
    pub id: RefreshTokenId,
    pub session_id: SessionId,
    pub expires_at: Timestamp,
    pub used_at: Option<Timestamp>,
    pub user_id: UserId,
    pub session_expires_at: Timestamp,
    pub session_revoked_at: Option<Timestamp>,
}

#[allow(clippy::too_many_arguments)]
pub async fn insert_session<'e>(
    ex: impl AnyExecutor<'e>,
    id: SessionId,
    user_id: UserId,
    now: Timestamp,
    expires_at: Timestamp,
    client_ip: Option<&str>,
    user_agent: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO sessions (id, user_id, created_at, expires_at, client_ip, user_agent) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(user_id)
    .bind(now)
    .bind(expires_at)
    .bind(client_ip)
    .bind(user_agent)
    .execute(ex)
    .await?;
    Ok(())
}

pub async fn session<'e>(
    ex: impl AnyExecutor<'e>,
    id: SessionId,
) -> Result<Option<SessionRow>, sqlx::Error> {
    sqlx::query_as("SELECT id, user_id, expires_at, revoked_at FROM sessions WHERE id = $1")
        .bind(id)
        .fetch_optional(ex)
        .await
}

pub async fn insert_refresh_token<'e>(
    ex: impl AnyExecutor<'e>,
    session_id: SessionId,
    token_hash: &str,
    now: Timestamp,
    expires_at: Timestamp,
) -> Result<RefreshTokenId, sqlx::Error> {
    let id = RefreshTokenId::new();
    sqlx::query(
        "INSERT INTO refresh_tokens (id, session_id, token_hash, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(session_id)
    .bind(token_hash)
    .bind(now)
    .bind(expires_at)
    .execute(ex)
    .await?;
    Ok(id)
}

pub async fn refresh_token_by_hash<'e>(
    ex: impl AnyExecutor<'e>,
    token_hash: &str,
) -> Result<Option<RefreshTokenRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT r.id, r.session_id, r.expires_at, r.used_at, s.user_id, \
                s.expires_at AS session_expires_at, s.revoked_at AS session_revoked_at \
         FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id \
         WHERE r.token_hash = $1",
    )
    .bind(token_hash)
    .fetch_optional(ex)
    .await
}

/// Marks a refresh token used; false when it already was (a concurrent or replayed use).
pub async fn mark_refresh_token_used<'e>(
    ex: impl AnyExecutor<'e>,
    id: RefreshTokenId,
    now: Timestamp,
) -> Result<bool, sqlx::Error> {
    let done =
        sqlx::query("UPDATE refresh_tokens SET used_at = $1 WHERE id = $2 AND used_at IS NULL")
            .bind(now)
            .bind(id)
            .execute(ex)
            .await?;
    Ok(done.rows_affected() == 1)
}

/// Ends a session (idempotent: the first reason is kept).
pub async fn revoke_session<'e>(
    ex: impl AnyExecutor<'e>,
    id: SessionId,
    reason: &str,
    now: Timestamp,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE sessions SET revoked_at = $1, revoked_reason = $2 WHERE id = $3 AND revoked_at IS NULL")
        .bind(now)
        .bind(reason)
        .bind(id)
        .execute(ex)
        .await?;
    Ok(())
}

/// Ends every active session of a user but `keep`; returns the ended ones.
pub async fn revoke_other_sessions<'e>(
    ex: impl AnyExecutor<'e>,
    user_id: UserId,
    keep: Option<SessionId>,
    reason: &str,
    now: Timestamp,
) -> Result<Vec<SessionId>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE sessions SET revoked_at = $1, revoked_reason = $2 \
         WHERE user_id = $3 AND revoked_at IS NULL AND ($4 IS NULL OR id <> $4) RETURNING id",
    )
    .bind(now)
    .bind(reason)
    .bind(user_id)
    .bind(keep)
    .fetch_all(ex)
    .await
}

/// A dashboard session, as found by its cookie's hash.
#[derive(Debug, Clone, FromRow)]
pub struct WebSessionRow {
    pub id: SessionId,
    pub user_id: UserId,
    pub expires_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
    pub last_seen_at: Option<Timestamp>,
}

/// A session as its owner sees it in their settings.
#[derive(Debug, Clone, FromRow)]
pub struct SessionInfo {
    pub id: SessionId,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub last_seen_at: Option<Timestamp>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub web_token_hash: Option<String>,
}

/// Makes `id` a dashboard session, reached by the cookie whose hash is `token_hash`.
pub async fn set_web_token<'e>(
    ex: impl AnyExecutor<'e>,
    id: SessionId,
    token_hash: &str,
    now: Timestamp,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE sessions SET web_token_hash = $1, last_seen_at = $2 WHERE id = $3")
        .bind(token_hash)
        .bind(now)
        .bind(id)
        .execute(ex)
        .await?;
    Ok(())
}

pub async fn web_session_by_hash<'e>(
    ex: impl AnyExecutor<'e>,
    token_hash: &str,
) -> Result<Option<WebSessionRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, user_id, expires_at, revoked_at, last_seen_at FROM sessions \
         WHERE web_token_hash = $1",
    )
    .bind(token_hash)
    .fetch_optional(ex)
    .await
}

/// Records that a dashboard session was used at `now`.
pub async fn touch_web_session<'e>(
    ex: impl AnyExecutor<'e>,
    id: SessionId,
    now: Timestamp,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE id = $2 AND revoked_at IS NULL")
        .bind(now)
        .bind(id)
        .execute(ex)
        .await?;
    Ok(())
}

/// The active sessions of a user, newest first (at most `limit`).
pub async fn active_sessions<'e>(
    ex: impl AnyExecutor<'e>,
    user_id: UserId,
    now: Timestamp,
    limit: i64,
) -> Result<Vec<SessionInfo>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, created_at, expires_at, last_seen_at, client_ip, user_agent, web_token_hash \
         FROM sessions WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2 \
         ORDER BY created_at DESC LIMIT $3",
    )
    .bind(user_id)
    .bind(now)
    .bind(limit)
    .fetch_all(ex)
    .await
}

/// The user's session `id`, if it is theirs and active.
pub async fn owned_session<'e>(
    ex: impl AnyExecutor<'e>,
    user_id: UserId,
    id: SessionId,
    now: Timestamp,
) -> Result<bool, sqlx::Error> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM sessions WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL \
         AND expires_at > $3",
    )
    .bind(id)
    .bind(user_id)
    .bind(now)
    .fetch_optional(ex)
    .await?;
    Ok(found.is_some())
}
