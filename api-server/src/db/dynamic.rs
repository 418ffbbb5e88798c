//! Dynamic secrets and their leases.
//!
//! A lease row is written before its credentials are created and moved on with conditional
//! updates (`WHERE state = …`), so that the request that issues it, a revocation and the reaper
//! (on any replica) never both act on the same step: whoever changes the row owns the step.

use sqlx::FromRow;
use sqlx::any::AnyExecutor;

use crate::ids::{EnvironmentId, OrgId, ProjectId, Timestamp, UserId};

/// A dynamic secret as stored.
#[derive(Debug, Clone, FromRow)]
pub struct DynamicSecretRow {
    pub id: String,
    pub org_id: OrgId,
    pub project_id: ProjectId,
    pub environment_id: EnvironmentId,
    pub name: String,
    pub engine: String,
    pub connection_dek_id: String,
    pub connection_ct: Vec<u8>,
    pub connection_generation: i64,
    pub settings: String,
    pub default_ttl: i64,
    pub max_ttl: i64,
    pub created_by: Option<UserId>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

const SECRET_COLUMNS: &str = "id, org_id, project_id, environment_id, name, engine, \
     connection_dek_id, connection_ct, connection_generation, settings, default_ttl, max_ttl, \
     created_by, created_at, updated_at";

pub async fn insert_secret<'e>(
    ex: impl AnyExecutor<'e>,
    d: &DynamicSecretRow,
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "INSERT INTO dynamic_secrets ({SECRET_COLUMNS}) VALUES \
         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
    ))
    .bind(&d.id)
    .bind(d.org_id)
    .bind(d.project_id)
    .bind(d.environment_id)
    .bind(&d.name)
    .bind(&d.engine)
    .bind(&d.connection_dek_id)
    .bind(&d.connection_ct)
    .bind(d.connection_generation)
    .bind(&d.settings)
    .bind(d.default_ttl)
    .bind(d.max_ttl)
    .bind(d.created_by)
    .bind(d.created_at)
    .bind(d.updated_at)
    .execute(ex)
    .await?;
    Ok(())
}

/// Writes the settings, TTLs and connection of `d`.
pub async fn update_secret<'e>(
    ex: impl AnyExecutor<'e>,
    d: &DynamicSecretRow,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE dynamic_secrets SET connection_dek_id = $1, connection_ct = $2, \
         connection_generation = $3, settings = $4, default_ttl = $5, max_ttl = $6, \
         updated_at = $7 WHERE id = $8 AND environment_id = $9",
    )
    .bind(&d.connection_dek_id)
    .bind(&d.connection_ct)
    .bind(d.connection_generation)
    .bind(&d.settings)
    .bind(d.default_ttl)
    .bind(d.max_ttl)
    .bind(d.updated_at)
    .bind(&d.id)
    .bind(d.environment_id)
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The dynamic secret `name` of an environment.
pub async fn secret_by_name<'e>(
    ex: impl AnyExecutor<'e>,
    env: EnvironmentId,
    name: &str,
) -> Result<Option<DynamicSecretRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {SECRET_COLUMNS} FROM dynamic_secrets WHERE environment_id = $1 AND name = $2"
    ))
    .bind(env)
    .bind(name)
    .fetch_optional(ex)
    .await
}

pub async fn secret_by_id<'e>(
    ex: impl AnyExecutor<'e>,
    id: &str,
) -> Result<Option<DynamicSecretRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {SECRET_COLUMNS} FROM dynamic_secrets WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(ex)
    .await
}

/// A page of an environment's dynamic secrets, by name after `after`.
pub async fn list_secrets<'e>(
    ex: impl AnyExecutor<'e>,
    env: EnvironmentId,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<DynamicSecretRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {SECRET_COLUMNS} FROM dynamic_secrets WHERE environment_id = $1 AND name > $2 \
         ORDER BY name LIMIT $3"
    ))
    .bind(env)
    .bind(after.unwrap_or(""))
    .bind(limit)
    .fetch_all(ex)
    .await
}

pub async fn count_secrets<'e>(
    ex: impl AnyExecutor<'e>,
    env: EnvironmentId,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM dynamic_secrets WHERE environment_id = $1")
        .bind(env)
        .fetch_one(ex)
        .await
}

/// Where dynamic secrets are counted, for refusing to delete what holds some.
#[derive(Debug, Clone, Copy)]
pub enum Scope {
    Org(OrgId),
    Project(ProjectId),
    Environment(EnvironmentId),
}

/// How many dynamic secrets `scope` holds.
pub async fn count_in<'e>(ex: impl AnyExecutor<'e>, scope: Scope) -> Result<i64, sqlx::Error> {
    let (column, id) = match scope {
        Scope::Org(id) => ("org_id", id.to_string()),
        Scope::Project(id) => ("project_id", id.to_string()),
        Scope::Environment(id) => ("environment_id", id.to_string()),
    };
    sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM dynamic_secrets WHERE {column} = $1"
    ))
    .bind(id)
    .fetch_one(ex)
    .await
}

/// Deletes a dynamic secret and its finished leases, if it has no other.
pub async fn delete_secret(conn: &mut sqlx::AnyConnection, id: &str) -> Result<bool, sqlx::Error> {
    sqlx::query(
        "DELETE FROM leases WHERE dynamic_secret_id = $1 AND state IN ('revoked', 'failed')",
    )
    .bind(id)
    .execute(&mut *conn)
    .await?;
    let done = sqlx::query(
        "DELETE FROM dynamic_secrets WHERE id = $1 \
         AND NOT EXISTS (SELECT 1 FROM leases WHERE dynamic_secret_id = $1)",
    )
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Every dynamic secret of `project` (for re-sealing connections with a new data key).
pub async fn secrets_of_project<'e>(
    ex: impl AnyExecutor<'e>,
    project: ProjectId,
) -> Result<Vec<DynamicSecretRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {SECRET_COLUMNS} FROM dynamic_secrets WHERE project_id = $1 ORDER BY id"
    ))
    .bind(project)
    .fetch_all(ex)
    .await
}

/// Connections and shown-again passwords of `project` sealed under a retired data key.
pub async fn sealed_under_retired_deks<'e>(
    ex: impl AnyExecutor<'e>,
    project: ProjectId,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM dynamic_secrets s JOIN deks d ON d.id = s.connection_dek_id \
                 WHERE s.project_id = $1 AND d.retired_at IS NOT NULL) \
              + (SELECT COUNT(*) FROM leases l JOIN deks d ON d.id = l.reveal_dek_id \
                 WHERE l.project_id = $1 AND d.retired_at IS NOT NULL)",
    )
    .bind(project)
    .fetch_one(ex)
    .await
}

/// Erases the shown-again passwords of `project` (a data-key rotation: a retry after it gets
/// `idempotency_key_used` rather than the credentials).
pub async fn forget_reveals_of_project<'e>(
    ex: impl AnyExecutor<'e>,
    project: ProjectId,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE leases SET reveal_dek_id = NULL, reveal_ct = NULL, reveal_until = NULL \
         WHERE project_id = $1 AND reveal_ct IS NOT NULL",
    )
    .bind(project)
    .execute(ex)
    .await?;
    Ok(done.rows_affected())
}

/// A lease as stored.
#[derive(Debug, Clone, FromRow)]
pub struct LeaseRow {
    pub id: String,
    pub dynamic_secret_id: String,
    pub org_id: OrgId,
    pub project_id: ProjectId,
    pub environment_id: EnvironmentId,
    pub username: String,
    pub state: String,
    pub end_reason: Option<String>,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    pub max_expires_at: Timestamp,
    pub renewals: i64,
    pub revoked_at: Option<Timestamp>,
    pub last_error: Option<String>,
    pub idempotency_key: Option<String>,
    pub issued_by_kind: String,
    pub issued_by_id: String,
    pub reveal_dek_id: Option<String>,
    pub reveal_ct: Option<Vec<u8>>,
    pub reveal_until: Option<Timestamp>,
    pub attempts: i64,
    pub next_attempt_at: Option<Timestamp>,
    pub locked_until: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

const LEASE_COLUMNS: &str = "id, dynamic_secret_id, org_id, project_id, environment_id, \
     username, state, end_reason, issued_at, expires_at, max_expires_at, renewals, revoked_at, \
     last_error, idempotency_key, issued_by_kind, issued_by_id, reveal_dek_id, reveal_ct, \
     reveal_until, attempts, next_attempt_at, locked_until, created_at, updated_at";

/// Inserts a new lease (state `creating`). False when its idempotency key is taken.
pub async fn insert_lease<'e>(ex: impl AnyExecutor<'e>, l: &LeaseRow) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(&format!(
        "INSERT INTO leases ({LEASE_COLUMNS}) VALUES \
         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, \
          $20, $21, $22, $23, $24, $25) \
         ON CONFLICT (dynamic_secret_id, idempotency_key) DO NOTHING"
    ))
    .bind(&l.id)
    .bind(&l.dynamic_secret_id)
    .bind(l.org_id)
    .bind(l.project_id)
    .bind(l.environment_id)
    .bind(&l.username)
    .bind(&l.state)
    .bind(&l.end_reason)
    .bind(l.issued_at)
    .bind(l.expires_at)
    .bind(l.max_expires_at)
    .bind(l.renewals)
    .bind(l.revoked_at)
    .bind(&l.last_error)
    .bind(&l.idempotency_key)
    .bind(&l.issued_by_kind)
    .bind(&l.issued_by_id)
    .bind(&l.reveal_dek_id)
    .bind(&l.reveal_ct)
    .bind(l.reveal_until)
    .bind(l.attempts)
    .bind(l.next_attempt_at)
    .bind(l.locked_until)
    .bind(l.created_at)
    .bind(l.updated_at)
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The lease `id` of a dynamic secret.
pub async fn lease<'e>(
    ex: impl AnyExecutor<'e>,
    secret: &str,
    id: &str,
) -> Result<Option<LeaseRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {LEASE_COLUMNS} FROM leases WHERE dynamic_secret_id = $1 AND id = $2"
    ))
    .bind(secret)
    .bind(id)
    .fetch_optional(ex)
    .await
}

pub async fn lease_by_id<'e>(
    ex: impl AnyExecutor<'e>,
    id: &str,
) -> Result<Option<LeaseRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {LEASE_COLUMNS} FROM leases WHERE id = $1"))
        .bind(id)
        .fetch_optional(ex)
        .await
}

/// The lease of a dynamic secret issued with `key`.
pub async fn lease_by_key<'e>(
    ex: impl AnyExecutor<'e>,
    secret: &str,
    key: &str,
) -> Result<Option<LeaseRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {LEASE_COLUMNS} FROM leases WHERE dynamic_secret_id = $1 AND idempotency_key = $2"
    ))
    .bind(secret)
    .bind(key)
    .fetch_optional(ex)
    .await
}

/// A page of a dynamic secret's leases, newest first, before `before`.
pub async fn list_leases<'e>(
    ex: impl AnyExecutor<'e>,
    secret: &str,
    before: Option<&str>,
    limit: i64,
) -> Result<Vec<LeaseRow>, sqlx::Error> {
    match before {
        Some(before) => {
            sqlx::query_as(&format!(
                "SELECT {LEASE_COLUMNS} FROM leases WHERE dynamic_secret_id = $1 AND id < $2 \
                 ORDER BY id DESC LIMIT $3"
            ))
            .bind(secret)
            .bind(before)
            .bind(limit)
            .fetch_all(ex)
            .await
        }
        None => {
            sqlx::query_as(&format!(
                "SELECT {LEASE_COLUMNS} FROM leases WHERE dynamic_secret_id = $1 \
                 ORDER BY id DESC LIMIT $2"
            ))
            .bind(secret)
            .bind(limit)
            .fetch_all(ex)
            .await
        }
    }
}

/// The leases of a dynamic secret not yet finished, by state.
pub async fn live_leases<'e>(ex: impl AnyExecutor<'e>, secret: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM leases WHERE dynamic_secret_id = $1 \
         AND state IN ('creating', 'active', 'revoking')",
    )
    .bind(secret)
    .fetch_one(ex)
    .await
}

/// The ids of a dynamic secret's leases that may hold a role: active, or being revoked.
pub async fn revocable_lease_ids<'e>(
    ex: impl AnyExecutor<'e>,
    secret: &str,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM leases WHERE dynamic_secret_id = $1 AND state IN ('active', 'revoking') \
         ORDER BY id",
    )
    .bind(secret)
    .fetch_all(ex)
    .await
}

/// `creating` → `active`, with the password to show again if there is one. False when the
/// lease is no longer `creating` (the reaper took it for failed).
pub async fn activate<'e>(
    ex: impl AnyExecutor<'e>,
    id: &str,
    reveal: Option<(&str, &[u8], Timestamp)>,
    now: Timestamp,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE leases SET state = 'active', reveal_dek_id = $1, reveal_ct = $2, \
         reveal_until = $3, updated_at = $4 WHERE id = $5 AND state = 'creating'",
    )
    .bind(reveal.map(|r| r.0))
    .bind(reveal.map(|r| r.1))
    .bind(reveal.map(|r| r.2))
    .bind(now)
    .bind(id)
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A new expiry for an active lease. False when it is no longer active.
pub async fn renew<'e>(
    ex: impl AnyExecutor<'e>,
    id: &str,
    expires_at: Timestamp,
    now: Timestamp,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE leases SET expires_at = $1, renewals = renewals + 1, updated_at = $2 \
         WHERE id = $3 AND state = 'active'",
    )
    .bind(expires_at)
    .bind(now)
    .bind(id)
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Takes a lease for revoking until `until`: from `creating` (a failed creation), `active`
/// (asked for, or expired) or `revoking` (a retry), whichever of `from` it is in and when no one
/// else holds it. False when it was not in one of those states or is held.
pub async fn claim_for_revoking<'e>(
    ex: impl AnyExecutor<'e>,
    id: &str,
    from: &[&str],
    reason: &str,
    until: Timestamp,
    now: Timestamp,
) -> Result<bool, sqlx::Error> {
    let states = from
        .iter()
        .map(|s| format!("'{}'", s.replace('\'', "")))
        .collect::<Vec<_>>()
        .join(", ");
    let done = sqlx::query(&format!(
        "UPDATE leases SET state = 'revoking', end_reason = COALESCE(end_reason, $1), \
         locked_until = $2, reveal_dek_id = NULL, reveal_ct = NULL, reveal_until = NULL, \
         updated_at = $3 \
         WHERE id = $4 AND state IN ({states}) AND (locked_until IS NULL OR locked_until < $3)"
    ))
    .bind(reason)
    .bind(until)
    .bind(now)
    .bind(id)
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The role of a `revoking` lease is gone: it ends as `revoked`, or `failed` when its creation
/// had failed.
pub async fn finish<'e>(
    ex: impl AnyExecutor<'e>,
    id: &str,
    now: Timestamp,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE leases SET state = CASE WHEN end_reason = 'failed' THEN 'failed' ELSE 'revoked' END, \
         revoked_at = $1, locked_until = NULL, next_attempt_at = NULL, updated_at = $1 \
         WHERE id = $2 AND state = 'revoking'",
    )
    .bind(now)
    .bind(id)
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A `creating` lease whose creation made nothing (its statements rolled back, and the name is
/// another's): `failed` at once, with nothing to revoke.
pub async fn fail_untouched<'e>(
    ex: impl AnyExecutor<'e>,
    id: &str,
    now: Timestamp,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE leases SET state = 'failed', end_reason = 'failed', revoked_at = $1, \
         updated_at = $1 WHERE id = $2 AND state = 'creating'",
    )
    .bind(now)
    .bind(id)
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Revoking a lease failed: the next attempt is due at `next`.
pub async fn revocation_failed<'e>(
    ex: impl AnyExecutor<'e>,
    id: &str,
    error: &str,
    next: Timestamp,
    now: Timestamp,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE leases SET attempts = attempts + 1, last_error = $1, next_attempt_at = $2, \
         locked_until = NULL, updated_at = $3 WHERE id = $4 AND state = 'revoking' \
         RETURNING attempts",
    )
    .bind(error)
    .bind(next)
    .bind(now)
    .bind(id)
    .fetch_optional(ex)
    .await
    .map(|n| n.unwrap_or(0))
}

/// Records why creating a lease failed.
pub async fn creation_failed<'e>(
    ex: impl AnyExecutor<'e>,
    id: &str,
    error: &str,
    now: Timestamp,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE leases SET last_error = $1, updated_at = $2 WHERE id = $3")
        .bind(error)
        .bind(now)
        .bind(id)
        .execute(ex)
        .await?;
    Ok(())
}

/// Leases the reaper should revoke now: expired active ones, `creating` ones older than
/// `stale_before`, and `revoking` ones whose retry is due (and no one holds), soonest expired
/// first, at most `per_secret` of one dynamic secret: `(id, state, dynamic secret)`.
pub async fn due<'e>(
    ex: impl AnyExecutor<'e>,
    now: Timestamp,
    stale_before: Timestamp,
    limit: i64,
    per_secret: i64,
) -> Result<Vec<(String, String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, state, dynamic_secret_id FROM ( \
           SELECT id, state, dynamic_secret_id, expires_at, ROW_NUMBER() OVER \
             (PARTITION BY dynamic_secret_id ORDER BY expires_at) AS place \
           FROM leases WHERE \
             ((state = 'active' AND expires_at <= $1) \
              OR (state = 'creating' AND created_at <= $2) \
              OR (state = 'revoking' AND (next_attempt_at IS NULL OR next_attempt_at <= $1))) \
             AND (locked_until IS NULL OR locked_until < $1) \
         ) AS due WHERE place <= $4 ORDER BY expires_at LIMIT $3",
    )
    .bind(now)
    .bind(stale_before)
    .bind(limit)
    .bind(per_secret)
    .fetch_all(ex)
    .await
}

/// Whether any shown-again password is past its window.
pub async fn has_stale_reveals<'e>(
    ex: impl AnyExecutor<'e>,
    now: Timestamp,
) -> Result<bool, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT 1 FROM leases WHERE reveal_until IS NOT NULL \
         AND reveal_until <= $1 LIMIT 1) AS stale",
    )
    .bind(now)
    .fetch_one(ex)
    .await?;
    Ok(n > 0)
}

pub async fn erase_stale_reveals<'e>(
    ex: impl AnyExecutor<'e>,
    now: Timestamp,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE leases SET reveal_dek_id = NULL, reveal_ct = NULL, reveal_until = NULL \
         WHERE reveal_until IS NOT NULL AND reveal_until <= $1",
    )
    .bind(now)
    .execute(ex)
    .await?;
    Ok(done.rows_affected())
}

/// Whether finished leases older than `before` are kept still.
pub async fn has_finished_before<'e>(
    ex: impl AnyExecutor<'e>,
    before: Timestamp,
) -> Result<bool, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT 1 FROM leases WHERE state IN ('revoked', 'failed') \
         AND revoked_at < $1 LIMIT 1) AS old",
    )
    .bind(before)
    .fetch_one(ex)
    .await?;
    Ok(n > 0)
}

pub async fn delete_finished_before<'e>(
    ex: impl AnyExecutor<'e>,
    before: Timestamp,
) -> Result<u64, sqlx::Error> {
    let done =
        sqlx::query("DELETE FROM leases WHERE state IN ('revoked', 'failed') AND revoked_at < $1")
            .bind(before)
            .execute(ex)
            .await?;
    Ok(done.rows_affected())
}

/// Where a lease lives, by slug, for its events: organization, project, environment (with its
/// revision).
#[derive(Debug, Clone, FromRow)]
pub struct LeasePlace {
    pub org_slug: String,
    pub project_slug: String,
    pub env_slug: String,
    pub revision: i64,
}

pub async fn place<'e>(
    ex: impl AnyExecutor<'e>,
    env: EnvironmentId,
) -> Result<Option<LeasePlace>, sqlx::Error> {
    sqlx::query_as(
        "SELECT o.slug AS org_slug, p.slug AS project_slug, e.slug AS env_slug, e.revision \
         FROM environments e JOIN projects p ON p.id = e.project_id \
         JOIN organizations o ON o.id = p.org_id WHERE e.id = $1",
    )
    .bind(env)
    .fetch_optional(ex)
    .await
}
