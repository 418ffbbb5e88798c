//! The `password_resets` table: one link per user at most, found by its token's hash.

use sqlx::FromRow;
use sqlx::any::AnyExecutor;

use crate::ids::{OrgId, Timestamp, UserId};

/// A reset link, without its token hash.
#[derive(Debug, Clone, FromRow)]
pub struct PasswordResetRow {
    pub user_id: UserId,
    /// Who issued it; `None` for the server's administrator.
    pub created_by: Option<UserId>,
    /// The organization it was issued in; `None` for the server's administrator.
    pub org_id: Option<OrgId>,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub used_at: Option<Timestamp>,
}

/// Stores `user`'s reset link, replacing any earlier one (used or not): that one stops working.
#[allow(clippy::too_many_arguments)]
pub async fn replace<'e>(
    ex: impl AnyExecutor<'e>,
    user: UserId,
    token_hash: &str,
    created_by: Option<UserId>,
    org: Option<OrgId>,
    now: Timestamp,
    expires_at: Timestamp,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO password_resets (user_id, token_hash, created_by, org_id, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (user_id) DO UPDATE SET token_hash = excluded.token_hash, \
         created_by = excluded.created_by, org_id = excluded.org_id, \
         created_at = excluded.created_at, expires_at = excluded.expires_at, used_at = NULL",
    )
    .bind(user)
    .bind(token_hash)
    .bind(created_by)
    .bind(org)
    .bind(now)
    .bind(expires_at)
    .execute(ex)
    .await?;
    Ok(())
}

pub async fn by_token_hash<'e>(
    ex: impl AnyExecutor<'e>,
    token_hash: &str,
) -> Result<Option<PasswordResetRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT user_id, created_by, org_id, created_at, expires_at, used_at \
         FROM password_resets WHERE token_hash = $1",
    )
    .bind(token_hash)
    .fetch_optional(ex)
    .await
}

/// Marks the link of this token used, if it is still unused and unexpired at `now`; false
/// when it is not (used concurrently, replaced, or expired meanwhile).
pub async fn claim<'e>(
    ex: impl AnyExecutor<'e>,
    token_hash: &str,
    now: Timestamp,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE password_resets SET used_at = $1 \
         WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $1",
    )
    .bind(now)
    .bind(token_hash)
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// How many organizations `user` belongs to in which `issuer` has no authority over them: is
/// not an owner there, nor an admin while `user` is not an owner.
pub async fn orgs_beyond_issuer<'e>(
    ex: impl AnyExecutor<'e>,
    issuer: UserId,
    user: UserId,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM org_members t WHERE t.user_id = $1 AND NOT EXISTS ( \
           SELECT 1 FROM org_members i WHERE i.org_id = t.org_id AND i.user_id = $2 \
           AND (i.role = 'owner' OR (i.role = 'admin' AND t.role <> 'owner')))",
    )
    .bind(user)
    .bind(issuer)
    .fetch_one(ex)
    .await
}
