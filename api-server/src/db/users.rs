//! The `users` table.

use sqlx::FromRow;
use sqlx::any::AnyExecutor;

use crate::ids::{Timestamp, UserId};

/// A stored user, password hash included: never serialise this type.
#[derive(Clone, FromRow)]
pub struct UserRow {
    pub id: UserId,
    pub email: String,
    pub name: String,
    pub password_hash: String,
    pub created_at: Timestamp,
}

impl std::fmt::Debug for UserRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRow")
            .field("id", &self.id)
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

const COLUMNS: &str = "id, email, name, password_hash, created_at";

pub async fn insert<'e>(
    ex: impl AnyExecutor<'e>,
    id: UserId,
    email: &str,
    name: &str,
    password_hash: &str,
    now: Timestamp,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO users (id, email, name, password_hash, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $5)",
    )
    .bind(id)
    .bind(email)
    .bind(name)
    .bind(password_hash)
    .bind(now)
    .execute(ex)
    .await?;
    Ok(())
}

pub async fn by_email<'e>(
    ex: impl AnyExecutor<'e>,
    email: &str,
) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM users WHERE email = $1"))
        .bind(email)
        .fetch_optional(ex)
        .await
}

pub async fn by_id<'e>(
    ex: impl AnyExecutor<'e>,
    id: UserId,
) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM users WHERE id = $1"))
        .bind(id)
        .fetch_optional(ex)
        .await
}

pub async fn set_password_hash<'e>(
    ex: impl AnyExecutor<'e>,
    id: UserId,
    password_hash: &str,
    now: Timestamp,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3")
        .bind(password_hash)
        .bind(now)
        .bind(id)
        .execute(ex)
        .await?;
    Ok(())
}

pub async fn set_name<'e>(
    ex: impl AnyExecutor<'e>,
    id: UserId,
    name: &str,
    now: Timestamp,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE users SET name = $1, updated_at = $2 WHERE id = $3")
        .bind(name)
        .bind(now)
        .bind(id)
        .execute(ex)
        .await?;
    Ok(())
}
