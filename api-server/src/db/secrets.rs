//! Data-encryption keys, secrets and their versions. Values and comments are stored sealed.

use std::sync::Arc;

use sqlx::any::AnyExecutor;
use sqlx::{AnyConnection, FromRow};

use super::audit::AuditRow;
use super::cache::Snapshot;
use crate::ids::{EnvironmentId, OrgId, ProjectId, SecretId, Timestamp};

/// A project's data-encryption key, wrapped.
#[derive(Debug, Clone, FromRow)]
pub struct DekRow {
    pub id: String,
    pub project_id: ProjectId,
    pub version: i64,
    pub kek_id: String,
    pub wrapped: Vec<u8>,
    pub encryptions: i64,
}

/// The current version of a secret, sealed.
#[derive(Debug, Clone, FromRow)]
pub struct SealedRow {
    pub id: SecretId,
    pub key: String,
    pub version: i64,
    pub dek_id: String,
    pub value_ct: Vec<u8>,
    pub comment_ct: Option<Vec<u8>>,
    pub has_references: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub deleted_at: Option<Timestamp>,
}

/// One version's metadata.
#[derive(Debug, Clone, FromRow)]
pub struct VersionRow {
    pub version: i64,
    pub created_at: Timestamp,
    pub actor_type: String,
    pub actor_id: Option<String>,
}

const DEK_COLUMNS: &str = "id, project_id, version, kek_id, wrapped, encryptions";

pub async fn insert_dek<'e>(
    ex: impl AnyExecutor<'e>,
    dek: &DekRow,
    now: Timestamp,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO deks (id, project_id, version, kek_id, wrapped, encryptions, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&dek.id)
    .bind(dek.project_id)
    .bind(dek.version)
    .bind(&dek.kek_id)
    .bind(&dek.wrapped)
    .bind(dek.encryptions)
    .bind(now)
    .execute(ex)
    .await?;
    Ok(())
}

/// Takes the project's key lock until the end of the transaction. Every path that picks,
/// creates or retires a project's DEK (a write, its automatic rotation when the nonce budget is
/// spent, a rotation on request) takes it first, before reading any DEK: so a write never seals
/// under a DEK that a concurrent rotation retires, and two writers never both start the next DEK.
/// On PostgreSQL it is the project row's `FOR NO KEY UPDATE` lock (rows of other tables that
/// reference the project can still be inserted); on SQLite the write transaction is the lock.
/// The DEK is read by a later statement: one that waits for this lock re-reads only the locked
/// row, so a DEK read in the same statement could be one that the writer it waited for has just
/// replaced. False when the project is gone.
pub async fn lock_project_keys(
    conn: &mut AnyConnection,
    project: ProjectId,
) -> Result<bool, sqlx::Error> {
    let sql = if super::is_postgres(conn) {
        "SELECT id FROM projects WHERE id = $1 FOR NO KEY UPDATE"
    } else {
        "SELECT id FROM projects WHERE id = $1"
    };
    let found: Option<String> = sqlx::query_scalar(sql)
        .bind(project)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(found.is_some())
}

/// How many versions of the project's secrets are sealed under a retired DEK (after a rotation
/// this must be none).
pub async fn versions_under_retired_deks<'e>(
    ex: impl AnyExecutor<'e>,
    project: ProjectId,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM secret_versions v JOIN deks d ON d.id = v.dek_id \
         WHERE d.project_id = $1 AND d.retired_at IS NOT NULL",
    )
    .bind(project)
    .fetch_one(ex)
    .await
}

/// The project's newest DEK that is not retired.
pub async fn active_dek<'e>(
    ex: impl AnyExecutor<'e>,
    project: ProjectId,
) -> Result<Option<DekRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {DEK_COLUMNS} FROM deks WHERE project_id = $1 AND retired_at IS NULL ORDER BY version DESC LIMIT 1"
    ))
    .bind(project)
    .fetch_optional(ex)
    .await
}

/// Ends a write of secrets: adds `seals` to the DEK's count of encryptions, bumps the
/// organization's secrets revision, stores `event` and notifies other replicas of the changes
/// recorded on `tx` (see [`super::cache`]). One statement on PostgreSQL, where each is otherwise
/// one more round trip while the environment's lock is held; three elsewhere.
pub async fn finish_write(
    tx: &mut super::Tx,
    dek: &str,
    seals: i64,
    org: OrgId,
    event: &AuditRow,
) -> Result<(), sqlx::Error> {
    if !super::is_postgres(tx) {
        count_encryptions(&mut **tx, dek, seals).await?;
        bump_org_revision(&mut **tx, org).await?;
        return super::audit::insert(&mut **tx, event).await;
    }
    let notification = tx.take_notification();
    // A data-modifying statement of a `WITH` runs in full, its `RETURNING` list included, even
    // though nothing reads it.
    let (notify, first_audit_param) = match notification {
        Some(_) => (" RETURNING pg_notify($4, $5)", 6),
        None => ("", 4),
    };
    let sql = format!(
        "WITH d AS (UPDATE deks SET encryptions = encryptions + $1 WHERE id = $2), \
              o AS (UPDATE organizations SET secrets_revision = secrets_revision + 1 WHERE id = $3{notify}) \
         {}",
        super::audit::insert_one_sql(first_audit_param)
    );
    let mut query = sqlx::query(&sql).bind(seals).bind(dek).bind(org);
    if let Some((channel, payload)) = &notification {
        query = query.bind(&**channel).bind(payload.as_str());
    }
    super::audit::bind(query, event).execute(&mut **tx).await?;
    Ok(())
}

pub async fn dek<'e>(
    ex: impl AnyExecutor<'e>,
    project: ProjectId,
    id: &str,
) -> Result<Option<DekRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {DEK_COLUMNS} FROM deks WHERE project_id = $1 AND id = $2"
    ))
    .bind(project)
    .bind(id)
    .fetch_optional(ex)
    .await
}

/// Counts `n` more encryptions under a DEK (the random-nonce budget).
pub async fn count_encryptions<'e>(
    ex: impl AnyExecutor<'e>,
    id: &str,
    n: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE deks SET encryptions = encryptions + $1 WHERE id = $2")
        .bind(n)
        .bind(id)
        .execute(ex)
        .await?;
    Ok(())
}

/// An environment's live secrets at their current versions with its validators, from this
/// replica's cache or in one statement (then kept, see [`super::cache`]). `None` when the
/// environment is gone.
pub async fn snapshot(
    db: &super::Db,
    org: OrgId,
    env: EnvironmentId,
) -> Result<Option<Arc<Snapshot>>, sqlx::Error> {
    let cache = db.cache();
    if let Some(snapshot) = cache.get(org, env) {
        return Ok(Some(snapshot));
    }
    let epoch = cache.epoch();
    let mut conn = db.read_connection().await?;
    let loaded = load_snapshot(&mut conn, org, env).await;
    let loaded = conn.settle(loaded)?;
    Ok(loaded.map(|snapshot| cache.store(org, env, snapshot, epoch)))
}

/// The live secret `key` of an environment at its current version: from the cached snapshot,
/// or by loading the snapshot (then kept) when it would be kept, else its row alone, so that a
/// read of one secret never loads a whole environment that is not cached.
pub async fn live_one(
    db: &super::Db,
    org: OrgId,
    env: EnvironmentId,
    key: &str,
) -> Result<Option<SealedRow>, sqlx::Error> {
    let cache = db.cache();
    if let Some(snapshot) = cache.get(org, env) {
        return Ok(snapshot.row(key).cloned());
    }
    if cache.worth_loading(env) {
        let snapshot = snapshot(db, org, env).await?;
        return Ok(snapshot.and_then(|s| s.row(key).cloned()));
    }
    let mut conn = db.read_connection().await?;
    let found = one(&mut *conn, env, key, None).await;
    Ok(conn.settle(found)?.filter(|r| r.deleted_at.is_none()))
}

/// [`snapshot`] from the database: one statement, so what it reads is one consistent state.
async fn load_snapshot(
    conn: &mut AnyConnection,
    org: OrgId,
    env: EnvironmentId,
) -> Result<Option<Snapshot>, sqlx::Error> {
    #[derive(FromRow)]
    struct Row {
        revision: i64,
        org_revision: i64,
        id: Option<SecretId>,
        key: Option<String>,
        version: Option<i64>,
        dek_id: Option<String>,
        value_ct: Option<Vec<u8>>,
        comment_ct: Option<Vec<u8>>,
        has_references: Option<i64>,
        created_at: Option<Timestamp>,
        updated_at: Option<Timestamp>,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT e.revision, o.secrets_revision AS org_revision, s.id, s.key, \
                s.current_version AS version, v.dek_id, v.value_ct, v.comment_ct, \
                v.has_references, s.created_at, s.updated_at \
         FROM environments e CROSS JOIN organizations o \
         LEFT JOIN secrets s ON s.environment_id = e.id AND s.deleted_at IS NULL \
         LEFT JOIN secret_versions v ON v.secret_id = s.id AND v.version = s.current_version \
         WHERE e.id = $1 AND o.id = $2",
    )
    .bind(env)
    .bind(org)
    .fetch_all(conn)
    .await?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let (revision, org_revision) = (first.revision, first.org_revision);
    let mut sealed: Vec<SealedRow> = rows
        .into_iter()
        .filter_map(|r| {
            Some(SealedRow {
                id: r.id?,
                key: r.key?,
                version: r.version?,
                dek_id: r.dek_id?,
                value_ct: r.value_ct?,
                comment_ct: r.comment_ct,
                has_references: r.has_references?,
                created_at: r.created_at?,
                updated_at: r.updated_at?,
                deleted_at: None,
            })
        })
        .collect();
    // By bytes, whatever the database's collation: lookups search it.
    sealed.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    Ok(Some(Snapshot::new(revision, org_revision, sealed)))
}

/// One secret (live or deleted) at `version`, or at its current version.
pub async fn one<'e>(
    ex: impl AnyExecutor<'e>,
    env: EnvironmentId,
    key: &str,
    version: Option<i64>,
) -> Result<Option<SealedRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT s.id, s.key, v.version, v.dek_id, v.value_ct, v.comment_ct, v.has_references, \
                s.created_at, s.updated_at, s.deleted_at FROM secrets s \
         JOIN secret_versions v ON v.secret_id = s.id AND v.version = COALESCE($3, s.current_version) \
         WHERE s.environment_id = $1 AND s.key = $2",
    )
    .bind(env)
    .bind(key)
    .bind(version)
    .fetch_optional(ex)
    .await
}

pub async fn versions<'e>(
    ex: impl AnyExecutor<'e>,
    secret: SecretId,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<VersionRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT version, created_at, actor_type, actor_id FROM secret_versions \
         WHERE secret_id = $1 AND ($2 IS NULL OR version < $2) ORDER BY version DESC LIMIT $3",
    )
    .bind(secret)
    .bind(before)
    .bind(limit)
    .fetch_all(ex)
    .await
}

/// [`next_version`]'s statement, returning `id, current_version, created_at`; parameters: a new
/// id, the environment, the key, the time.
const NEXT_VERSION: &str = "INSERT INTO secrets (id, environment_id, key, current_version, created_at, updated_at) \
     VALUES ($1, $2, $3, 1, $4, $4) \
     ON CONFLICT (environment_id, key) DO UPDATE SET current_version = secrets.current_version + 1, \
        updated_at = excluded.updated_at, deleted_at = NULL \
     RETURNING id, current_version, created_at";

/// Creates the secret or moves it to its next version (reviving it if deleted); returns its id,
/// the new version number and when the secret was created.
pub async fn next_version<'e>(
    ex: impl AnyExecutor<'e>,
    env: EnvironmentId,
    key: &str,
    now: Timestamp,
) -> Result<(SecretId, i64, Timestamp), sqlx::Error> {
    sqlx::query_as(NEXT_VERSION)
        .bind(SecretId::new())
        .bind(env)
        .bind(key)
        .bind(now)
        .fetch_one(ex)
        .await
}

/// What a new version row holds.
#[derive(Debug)]
pub struct NewVersion<'a> {
    pub version: i64,
    pub dek_id: &'a str,
    pub value_ct: &'a [u8],
    pub comment_ct: Option<&'a [u8]>,
    pub has_references: bool,
    pub created_at: Timestamp,
    pub actor_type: &'a str,
    pub actor_id: &'a str,
}

pub async fn insert_version<'e>(
    ex: impl AnyExecutor<'e>,
    secret: SecretId,
    v: &NewVersion<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO secret_versions (secret_id, version, dek_id, value_ct, comment_ct, has_references, \
                                      created_at, actor_type, actor_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(secret)
    .bind(v.version)
    .bind(v.dek_id)
    .bind(v.value_ct)
    .bind(v.comment_ct)
    .bind(i64::from(v.has_references))
    .bind(v.created_at)
    .bind(v.actor_type)
    .bind(v.actor_id)
    .execute(ex)
    .await?;
    Ok(())
}

/// Moves `key` to version `v.version` (creating the secret, or bringing a deleted one back) and
/// inserts that version; returns the secret's creation time. One statement on PostgreSQL, two
/// elsewhere. The caller read the version to come under the environment's lock: should the
/// secret be at another, this fails (and the transaction must not commit).
pub async fn upsert_with_version(
    tx: &mut super::Tx,
    env: EnvironmentId,
    key: &str,
    v: &NewVersion<'_>,
) -> Result<Timestamp, sqlx::Error> {
    let mismatch = |found: i64| {
        sqlx::Error::Protocol(format!(
            "secret version {found} written where {} was expected",
            v.version
        ))
    };
    if !super::is_postgres(tx) {
        let (secret, version, created_at) = next_version(&mut **tx, env, key, v.created_at).await?;
        if version != v.version {
            return Err(mismatch(version));
        }
        insert_version(&mut **tx, secret, v).await?;
        return Ok(created_at);
    }
    let sql = format!(
        "WITH s AS ({NEXT_VERSION}), \
              v AS (INSERT INTO secret_versions (secret_id, version, dek_id, value_ct, comment_ct, \
                                                 has_references, created_at, actor_type, actor_id) \
                    SELECT id, $5, $6, $7, $8, $9, $4, $10, $11 FROM s WHERE current_version = $5) \
         SELECT current_version, created_at FROM s"
    );
    let (version, created_at): (i64, Timestamp) = sqlx::query_as(&sql)
        .bind(SecretId::new())
        .bind(env)
        .bind(key)
        .bind(v.created_at)
        .bind(v.version)
        .bind(v.dek_id)
        .bind(v.value_ct)
        .bind(v.comment_ct)
        .bind(i64::from(v.has_references))
        .bind(v.actor_type)
        .bind(v.actor_id)
        .fetch_one(&mut **tx)
        .await?;
    if version != v.version {
        return Err(mismatch(version));
    }
    Ok(created_at)
}

/// Soft-deletes a live secret; false when there is none.
pub async fn mark_deleted<'e>(
    ex: impl AnyExecutor<'e>,
    env: EnvironmentId,
    key: &str,
    now: Timestamp,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE secrets SET deleted_at = $1, updated_at = $1 WHERE environment_id = $2 AND key = $3 AND deleted_at IS NULL",
    )
    .bind(now)
    .bind(env)
    .bind(key)
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Restores a deleted secret at its last version; false when it is not deleted.
pub async fn restore<'e>(
    ex: impl AnyExecutor<'e>,
    env: EnvironmentId,
    key: &str,
    now: Timestamp,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE secrets SET deleted_at = NULL, updated_at = $1 WHERE environment_id = $2 AND key = $3 AND deleted_at IS NOT NULL",
    )
    .bind(now)
    .bind(env)
    .bind(key)
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// [`lock_and_bump_environment`]'s statement; parameters: the time, the environment.
const BUMP_ENVIRONMENT: &str = "UPDATE environments SET revision = revision + 1, updated_at = $1 WHERE id = $2 RETURNING revision";

/// Moves the environment to its next revision and returns it; the first statement of every
/// write of the environment, as it also takes the environment's write lock for the rest of the
/// transaction (a row lock on PostgreSQL; SQLite has one writer anyway), so writers of one
/// environment run one at a time: what one reads and counts is not changed by another before it
/// commits. (A write that fails after it rolls back, revision and all.) `None` when the environment
/// is gone.
pub async fn lock_and_bump_environment<'e>(
    ex: impl AnyExecutor<'e>,
    env: EnvironmentId,
    now: Timestamp,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(BUMP_ENVIRONMENT)
        .bind(now)
        .bind(env)
        .fetch_optional(ex)
        .await
}

/// [`lock_and_bump_environment`], then [`lock_project_keys`] of its project: one statement on
/// PostgreSQL. `None` when either is gone.
pub async fn lock_environment_and_keys(
    conn: &mut AnyConnection,
    env: EnvironmentId,
    project: ProjectId,
    now: Timestamp,
) -> Result<Option<i64>, sqlx::Error> {
    if !super::is_postgres(conn) {
        let Some(revision) = lock_and_bump_environment(&mut *conn, env, now).await? else {
            return Ok(None);
        };
        return Ok(lock_project_keys(conn, project).await?.then_some(revision));
    }
    sqlx::query_scalar(&format!(
        "WITH e AS ({BUMP_ENVIRONMENT}) \
         SELECT e.revision FROM e, projects p WHERE p.id = $3 FOR NO KEY UPDATE OF p"
    ))
    .bind(now)
    .bind(env)
    .bind(project)
    .fetch_optional(conn)
    .await
}

/// How many live secrets the environment holds.
pub async fn count_live<'e>(
    ex: impl AnyExecutor<'e>,
    env: EnvironmentId,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM secrets WHERE environment_id = $1 AND deleted_at IS NULL",
    )
    .bind(env)
    .fetch_one(ex)
    .await
}

/// Bumps the organization's secrets revision (after [`lock_and_bump_environment`]). Taken last,
/// just before commit: on PostgreSQL the organization's row lock serializes the writers of all
/// its environments for as short a time as possible.
pub async fn bump_org_revision<'e>(
    ex: impl AnyExecutor<'e>,
    org: OrgId,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE organizations SET secrets_revision = secrets_revision + 1 WHERE id = $1")
        .bind(org)
        .execute(ex)
        .await?;
    Ok(())
}

/// A wrapped DEK with what binds it: its organization and project.
#[derive(Debug, Clone, FromRow)]
pub struct WrappedDekRow {
    pub id: String,
    pub org_id: OrgId,
    pub project_id: ProjectId,
    pub kek_id: String,
    pub wrapped: Vec<u8>,
}

/// Keeps every other transaction from adding, changing or deleting DEKs until the end of this
/// one (they wait; reads go on). A master-key rotation takes it first, so the DEKs it rewraps are
/// all there are when it commits. PostgreSQL only: on SQLite the write transaction is the lock.
pub async fn lock_deks_table(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    if super::is_postgres(conn) {
        sqlx::query("LOCK TABLE deks IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// How many DEKs `kek_id` does not wrap.
pub async fn count_deks_not_wrapped_by<'e>(
    ex: impl AnyExecutor<'e>,
    kek_id: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM deks WHERE kek_id <> $1")
        .bind(kek_id)
        .fetch_one(ex)
        .await
}

/// The DEKs not wrapped by `kek_id`.
pub async fn deks_not_wrapped_by<'e>(
    ex: impl AnyExecutor<'e>,
    kek_id: &str,
) -> Result<Vec<WrappedDekRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT d.id, p.org_id, d.project_id, d.kek_id, d.wrapped FROM deks d \
         JOIN projects p ON p.id = d.project_id WHERE d.kek_id <> $1 ORDER BY d.id",
    )
    .bind(kek_id)
    .fetch_all(ex)
    .await
}

pub async fn set_wrapped<'e>(
    ex: impl AnyExecutor<'e>,
    id: &str,
    kek_id: &str,
    wrapped: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE deks SET kek_id = $1, wrapped = $2 WHERE id = $3")
        .bind(kek_id)
        .bind(wrapped)
        .bind(id)
        .execute(ex)
        .await?;
    Ok(())
}

/// Every key-encryption key id that wraps some DEK.
pub async fn kek_ids_in_use<'e>(ex: impl AnyExecutor<'e>) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT DISTINCT kek_id FROM deks ORDER BY kek_id")
        .fetch_all(ex)
        .await
}

/// One stored version with where it lives, for re-encryption.
#[derive(Debug, Clone, FromRow)]
pub struct StoredVersionRow {
    pub secret_id: SecretId,
    pub version: i64,
    pub dek_id: String,
    pub value_ct: Vec<u8>,
    pub comment_ct: Option<Vec<u8>>,
    pub key: String,
    pub environment_id: EnvironmentId,
}

/// Every version of every secret of a project.
pub async fn project_versions<'e>(
    ex: impl AnyExecutor<'e>,
    project: ProjectId,
) -> Result<Vec<StoredVersionRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT v.secret_id, v.version, v.dek_id, v.value_ct, v.comment_ct, s.key, s.environment_id \
         FROM secret_versions v JOIN secrets s ON s.id = v.secret_id \
         JOIN environments e ON e.id = s.environment_id WHERE e.project_id = $1",
    )
    .bind(project)
    .fetch_all(ex)
    .await
}

pub async fn reseal_version<'e>(
    ex: impl AnyExecutor<'e>,
    secret: SecretId,
    version: i64,
    dek_id: &str,
    value_ct: &[u8],
    comment_ct: Option<&[u8]>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE secret_versions SET dek_id = $1, value_ct = $2, comment_ct = $3 WHERE secret_id = $4 AND version = $5")
        .bind(dek_id)
        .bind(value_ct)
        .bind(comment_ct)
        .bind(secret)
        .bind(version)
        .execute(ex)
        .await?;
    Ok(())
}

/// Retires every DEK of the project but `keep`; they wrap nothing any more.
pub async fn retire_deks_except<'e>(
    ex: impl AnyExecutor<'e>,
    project: ProjectId,
    keep: &str,
    now: Timestamp,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE deks SET retired_at = $1 WHERE project_id = $2 AND id <> $3 AND retired_at IS NULL",
    )
    .bind(now)
    .bind(project)
    .bind(keep)
    .execute(ex)
    .await?;
    Ok(())
}

/// The environment's deleted secrets, most recently deleted first: key, last version, when.
pub async fn deleted<'e>(
    ex: impl AnyExecutor<'e>,
    env: EnvironmentId,
    limit: i64,
) -> Result<Vec<(String, i64, Timestamp)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT key, current_version, deleted_at FROM secrets \
         WHERE environment_id = $1 AND deleted_at IS NOT NULL \
         ORDER BY deleted_at DESC, key LIMIT $2",
    )
    .bind(env)
    .bind(limit)
    .fetch_all(ex)
    .await
}
