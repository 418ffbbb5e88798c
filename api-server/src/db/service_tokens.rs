//! The `service_tokens` table: machine identities of an organization, stored as hashes only.

use sqlx::FromRow;
use sqlx::any::AnyExecutor;

use crate::ids::{EnvironmentId, OrgId, ProjectId, ServiceTokenId, Timestamp, UserId};

/// A stored service token (without its hash).
#[derive(Debug, Clone, FromRow)]
pub struct ServiceTokenRow {
    pub id: ServiceTokenId,
    pub org_id: OrgId,
    pub project_id: ProjectId,
    pub name: String,
    pub prefix: String,
    pub access: String,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
    pub previous_expires_at: Option<Timestamp>,
}

impl ServiceTokenRow {
    pub fn read_write(&self) -> bool {
        is_read_write(&self.access)
    }
}

/// Whether a token with this `access` may also write.
pub fn is_read_write(access: &str) -> bool {
    access == "read-write"
}

const COLUMNS: &str = "id, org_id, project_id, name, prefix, access, created_at, expires_at, last_used_at, previous_expires_at";

/// What a new token row holds.
#[derive(Debug)]
pub struct NewServiceToken<'a> {
    pub id: ServiceTokenId,
    pub org_id: OrgId,
    pub project_id: ProjectId,
    pub name: &'a str,
    pub prefix: &'a str,
    pub token_hash: &'a str,
    pub access: &'a str,
    pub created_by: UserId,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
}

pub async fn insert(
    conn: &mut sqlx::AnyConnection,
    t: &NewServiceToken<'_>,
    environments: &[EnvironmentId],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO service_tokens (id, org_id, project_id, name, prefix, token_hash, access, created_by, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(t.id)
    .bind(t.org_id)
    .bind(t.project_id)
    .bind(t.name)
    .bind(t.prefix)
    .bind(t.token_hash)
    .bind(t.access)
    .bind(t.created_by)
    .bind(t.created_at)
    .bind(t.expires_at)
    .execute(&mut *conn)
    .await?;
    for env in environments {
        sqlx::query(
            "INSERT INTO service_token_environments (token_id, environment_id) VALUES ($1, $2)",
        )
        .bind(t.id)
        .bind(env)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The slugs of a token's project and environments, for display.
pub async fn scope_slugs<'e>(
    ex: impl AnyExecutor<'e>,
    token: ServiceTokenId,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT p.slug, e.slug FROM service_token_environments te JOIN environments e ON e.id = te.environment_id \
         JOIN projects p ON p.id = e.project_id WHERE te.token_id = $1 ORDER BY e.position",
    )
    .bind(token)
    .fetch_all(ex)
    .await
}

pub async fn list<'e>(
    ex: impl AnyExecutor<'e>,
    org: OrgId,
    before: Option<ServiceTokenId>,
    limit: i64,
) -> Result<Vec<ServiceTokenRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM service_tokens WHERE org_id = $1 AND revoked_at IS NULL \
         AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
    ))
    .bind(org)
    .bind(before)
    .bind(limit)
    .fetch_all(ex)
    .await
}

pub async fn get<'e>(
    ex: impl AnyExecutor<'e>,
    org: OrgId,
    id: ServiceTokenId,
) -> Result<Option<ServiceTokenRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM service_tokens WHERE org_id = $1 AND id = $2 AND revoked_at IS NULL"
    ))
    .bind(org)
    .bind(id)
    .fetch_optional(ex)
    .await
}
