//! The `api_keys` table: personal API keys, stored as hashes only.

use sqlx::FromRow;
use sqlx::any::AnyExecutor;

use crate::ids::{ApiKeyId, Timestamp, UserId};

/// A stored API key (without its hash).
#[derive(Debug, Clone, FromRow)]
pub struct ApiKeyRow {
    pub id: ApiKeyId,
    pub user_id: UserId,
    pub name: String,
    pub prefix: String,
    pub access: String,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
    pub previous_expires_at: Option<Timestamp>,
}

impl ApiKeyRow {
    pub fn read_only(&self) -> bool {
        is_read_only(&self.access)
    }
}

/// Whether a key with this `access` may only read.
pub fn is_read_only(access: &str) -> bool {
    access == "read"
}

const COLUMNS: &str =
    "id, user_id, name, prefix, access, created_at, expires_at, last_used_at, previous_expires_at";

/// What a new key row holds.
#[derive(Debug)]
pub struct NewApiKey<'a> {
    pub id: ApiKeyId,
    pub user_id: UserId,
    pub name: &'a str,
    pub prefix: &'a str,
    pub token_hash: &'a str,
    pub access: &'a str,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
}

pub async fn insert<'e>(ex: impl AnyExecutor<'e>, key: &NewApiKey<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO api_keys (id, user_id, name, prefix, token_hash, access, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(key.id)
    .bind(key.user_id)
    .bind(key.name)
    .bind(key.prefix)
    .bind(key.token_hash)
    .bind(key.access)
    .bind(key.created_at)
    .bind(key.expires_at)
    .execute(ex)
    .await?;
    Ok(())
}

/// The user's keys that are not revoked, newest first.
pub async fn list<'e>(
    ex: impl AnyExecutor<'e>,
    user_id: UserId,
    after: Option<ApiKeyId>,
    limit: i64,
) -> Result<Vec<ApiKeyRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL \
           AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
    ))
    .bind(user_id)
    .bind(after)
    .bind(limit)
    .fetch_all(ex)
    .await
}

pub async fn get<'e>(
    ex: impl AnyExecutor<'e>,
    user_id: UserId,
    id: ApiKeyId,
) -> Result<Option<ApiKeyRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM api_keys WHERE user_id = $1 AND id = $2 AND revoked_at IS NULL"
    ))
    .bind(user_id)
    .bind(id)
    .fetch_optional(ex)
    .await
}

/// Revokes every live (unexpired, unrevoked) key of the user; how many there were.
pub async fn revoke_all<'e>(
    ex: impl AnyExecutor<'e>,
    user_id: UserId,
    now: Timestamp,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE api_keys SET revoked_at = $1 \
         WHERE user_id = $2 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $1)",
    )
    .bind(now)
    .bind(user_id)
    .execute(ex)
    .await?;
    Ok(done.rows_affected())
}
