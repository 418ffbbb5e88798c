//! Change events (see [`crate::service::events`]) and the index of references between
//! environments that tells which other environments a change reaches.
//!
//! Event ids increase in the order their transactions commit, so that a reader that has seen id
//! `n` has seen every event up to `n` and will see every later one after it. SQLite has one
//! writer at a time. On PostgreSQL, ids come from a sequence at insert time, and transactions
//! may commit in another order: a transaction therefore takes the events lock (a transaction
//! advisory lock) in the statement that inserts its events, its last before `COMMIT`, and holds
//! it until it ends. Event-writing commits of one database are serialized by it; nothing else
//! waits for it, and it is never held while waiting for anything but the commit.

use sqlx::any::AnyExecutor;
use sqlx::{AnyConnection, FromRow};

use crate::ids::{EnvironmentId, OrgId, ProjectId, Timestamp};

/// An event to insert with its transaction.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub org_id: OrgId,
    pub project_id: ProjectId,
    pub environment_id: EnvironmentId,
    pub kind: &'static str,
    pub revision: i64,
    /// The event's JSON, without its id.
    pub body: String,
    pub created_at: Timestamp,
}

/// A stored event.
#[derive(Debug, Clone, FromRow)]
pub struct EventRow {
    pub id: i64,
    pub environment_id: EnvironmentId,
    pub kind: String,
    pub body: String,
}

/// The key of the events lock of the schema `schema`: one per deployment, like the change
/// channel (FNV-1a of the schema's name, so that tests in their own schemas do not share it).
pub fn lock_key(schema: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in b"coffer.events:".iter().chain(schema.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    i64::from_ne_bytes(hash.to_ne_bytes())
}

/// Events per insert statement (PostgreSQL allows 65,535 parameters, SQLite 32,766).
const EVENTS_PER_STATEMENT: usize = 500;
const COLUMNS: usize = 7;

/// Inserts `events`, last before `COMMIT`: on PostgreSQL (`lock` set) under the events lock,
/// taken by the same statement, which also sends `notify` (channel, payload) when given.
pub async fn insert(
    conn: &mut AnyConnection,
    lock: Option<i64>,
    events: &[NewEvent],
    notify: Option<(&str, &str)>,
) -> Result<(), sqlx::Error> {
    for (i, chunk) in events.chunks(EVENTS_PER_STATEMENT).enumerate() {
        let first = i == 0;
        let mut sql = String::with_capacity(160 + chunk.len() * 64);
        let mut n = 0;
        let mut param = |sql: &mut String, cast: &str| {
            n += 1;
            sql.push_str(&format!("${n}{cast}"));
        };
        let postgres = lock.is_some();
        let (text, int) = if postgres {
            ("::text", "::bigint")
        } else {
            ("", "")
        };
        if postgres {
            sql.push_str("WITH l AS (SELECT pg_advisory_xact_lock(");
            param(&mut sql, "::bigint");
            sql.push(')');
            if first && notify.is_some() {
                sql.push_str(", pg_notify(");
                param(&mut sql, text);
                sql.push_str(", ");
                param(&mut sql, text);
                sql.push(')');
            }
            sql.push_str(") ");
        }
        sql.push_str(
            "INSERT INTO events (org_id, project_id, environment_id, type, revision, body, created_at) ",
        );
        if postgres {
            // The rows come out of a join with the lock: every id is drawn after it is held.
            sql.push_str("SELECT v.* FROM l, (VALUES ");
        } else {
            sql.push_str("VALUES ");
        }
        for (j, _) in chunk.iter().enumerate() {
            if j > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for c in 0..COLUMNS {
                if c > 0 {
                    sql.push_str(", ");
                }
                param(&mut sql, if c == 4 || c == 6 { int } else { text });
            }
            sql.push(')');
        }
        if postgres {
            sql.push_str(") AS v (o, p, e, t, r, b, c)");
        }
        let mut query = sqlx::query(&sql);
        if let Some(key) = lock {
            query = query.bind(key);
            if first && let Some((channel, payload)) = notify {
                query = query.bind(channel.to_owned()).bind(payload.to_owned());
            }
        }
        for e in chunk {
            query = query
                .bind(e.org_id)
                .bind(e.project_id)
                .bind(e.environment_id)
                .bind(e.kind)
                .bind(e.revision)
                .bind(e.body.as_str())
                .bind(e.created_at);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Events of `project` after `after`, oldest first, at most `limit`; only those of
/// `environments` when given.
pub async fn after<'e>(
    ex: impl AnyExecutor<'e>,
    project: ProjectId,
    after: i64,
    environments: Option<&[EnvironmentId]>,
    limit: i64,
) -> Result<Vec<EventRow>, sqlx::Error> {
    let mut sql = String::from(
        "SELECT id, environment_id, type AS kind, body FROM events WHERE project_id = $1 AND id > $2",
    );
    if let Some(envs) = environments {
        if envs.is_empty() {
            return Ok(Vec::new());
        }
        sql.push_str(" AND environment_id IN (");
        for i in 0..envs.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", i + 4));
        }
        sql.push(')');
    }
    sql.push_str(" ORDER BY id LIMIT $3");
    let mut query = sqlx::query_as(&sql).bind(project).bind(after).bind(limit);
    for env in environments.unwrap_or_default() {
        query = query.bind(*env);
    }
    query.fetch_all(ex).await
}

/// The id of the last event stored, or up to which events were pruned when there are none
/// left (0 when there never were any).
pub async fn head<'e>(ex: impl AnyExecutor<'e>) -> Result<i64, sqlx::Error> {
    let (last, pruned): (i64, i64) = sqlx::query_as(
        "SELECT COALESCE((SELECT MAX(id) FROM events), 0), \
                (SELECT pruned_through FROM event_log WHERE singleton = 1)",
    )
    .fetch_one(ex)
    .await?;
    Ok(last.max(pruned))
}

/// Up to which id events have been pruned.
pub async fn pruned_through<'e>(ex: impl AnyExecutor<'e>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT pruned_through FROM event_log WHERE singleton = 1")
        .fetch_one(ex)
        .await
}

/// Whether an event created before `cutoff` is stored (a read: an idle server writes nothing).
pub async fn any_before<'e>(
    ex: impl AnyExecutor<'e>,
    cutoff: Timestamp,
) -> Result<bool, sqlx::Error> {
    let oldest: Option<Timestamp> = sqlx::query_scalar("SELECT MIN(created_at) FROM events")
        .fetch_one(ex)
        .await?;
    Ok(oldest.is_some_and(|t| t < cutoff))
}

/// Deletes up to `batch` of the oldest events created before `cutoff`; how many it deleted.
/// Records the last id deleted as pruned, so that readers behind it resynchronise.
pub async fn prune(
    conn: &mut AnyConnection,
    cutoff: Timestamp,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    let last: Option<i64> = sqlx::query_scalar(
        "SELECT MAX(id) FROM (SELECT id FROM events WHERE created_at < $1 ORDER BY id LIMIT $2) o",
    )
    .bind(cutoff)
    .bind(batch)
    .fetch_one(&mut *conn)
    .await?;
    let Some(last) = last else {
        return Ok(0);
    };
    let deleted = sqlx::query("DELETE FROM events WHERE id <= $1")
        .bind(last)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    sqlx::query(
        "UPDATE event_log SET pruned_through = $1 WHERE singleton = 1 AND pruned_through < $1",
    )
    .bind(last)
    .execute(&mut *conn)
    .await?;
    Ok(deleted)
}

/// A place a secret's value refers to (slugs, as written).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    pub project: String,
    pub env: String,
    pub key: String,
}

/// Replaces what the secret `key` of `env` refers to in other environments.
pub async fn replace_references(
    conn: &mut AnyConnection,
    org: OrgId,
    env: EnvironmentId,
    key: &str,
    targets: &[Target],
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM secret_references WHERE environment_id = $1 AND key = $2")
        .bind(env)
        .bind(key)
        .execute(&mut *conn)
        .await?;
    for chunk in targets.chunks(EVENTS_PER_STATEMENT) {
        let mut sql = String::from(
            "INSERT INTO secret_references \
             (environment_id, key, org_id, target_project, target_env, target_key) VALUES ",
        );
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            let b = i * 3;
            sql.push_str(&format!("($1, $2, $3, ${}, ${}, ${})", b + 4, b + 5, b + 6));
        }
        sql.push_str(" ON CONFLICT DO NOTHING");
        let mut query = sqlx::query(&sql).bind(env).bind(key).bind(org);
        for t in chunk {
            query = query
                .bind(t.project.as_str())
                .bind(t.env.as_str())
                .bind(t.key.as_str());
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// A live secret whose value refers to a place that changed.
#[derive(Debug, Clone, FromRow)]
pub struct Referrer {
    pub environment_id: EnvironmentId,
    pub key: String,
    pub env_slug: String,
    pub revision: i64,
    pub project_id: ProjectId,
    pub project_slug: String,
}

/// Keys per lookup of [`referrers`].
const KEYS_PER_LOOKUP: usize = 400;

/// The live secrets of `org` that refer to `project`/`env` (any environment of `project` when
/// `env` is `None`), to one of `keys` (any key when `None`).
pub async fn referrers(
    conn: &mut AnyConnection,
    org: OrgId,
    project: &str,
    env: Option<&str>,
    keys: Option<&[String]>,
) -> Result<Vec<Referrer>, sqlx::Error> {
    let chunks: Vec<Option<&[String]>> = match keys {
        Some(keys) => keys.chunks(KEYS_PER_LOOKUP).map(Some).collect(),
        None => vec![None],
    };
    let mut out = Vec::new();
    for chunk in chunks {
        let mut sql = String::from(
            "SELECT DISTINCT r.environment_id, r.key, e.slug AS env_slug, e.revision, \
                    p.id AS project_id, p.slug AS project_slug \
             FROM secret_references r \
             JOIN secrets s ON s.environment_id = r.environment_id AND s.key = r.key \
                           AND s.deleted_at IS NULL \
             JOIN environments e ON e.id = r.environment_id \
             JOIN projects p ON p.id = e.project_id \
             WHERE r.org_id = $1 AND r.target_project = $2",
        );
        let mut n = 2;
        if env.is_some() {
            n += 1;
            sql.push_str(&format!(" AND r.target_env = ${n}"));
        }
        if let Some(keys) = chunk {
            if keys.is_empty() {
                continue;
            }
            sql.push_str(" AND r.target_key IN (");
            for i in 0..keys.len() {
                if i > 0 {
                    sql.push_str(", ");
                }
                n += 1;
                sql.push_str(&format!("${n}"));
            }
            sql.push(')');
        }
        let mut query = sqlx::query_as(&sql).bind(org).bind(project);
        if let Some(env) = env {
            query = query.bind(env);
        }
        for key in chunk.unwrap_or_default() {
            query = query.bind(key.as_str());
        }
        out.extend(query.fetch_all(&mut *conn).await?);
    }
    Ok(out)
}

/// A live secret whose current value refers to something, with no entry in the index: written
/// before the index existed.
#[derive(Debug, Clone, FromRow)]
pub struct Unindexed {
    pub org_id: OrgId,
    pub project_id: ProjectId,
    pub project_slug: String,
    pub environment_id: EnvironmentId,
    pub env_slug: String,
    pub key: String,
}

/// Up to `limit` secrets to index (see [`Unindexed`]) after `(environment, key)`.
pub async fn unindexed<'e>(
    ex: impl AnyExecutor<'e>,
    after: Option<(EnvironmentId, String)>,
    limit: i64,
) -> Result<Vec<Unindexed>, sqlx::Error> {
    let (env, key) = after.map_or((String::new(), String::new()), |(e, k)| (e.to_string(), k));
    sqlx::query_as(
        "SELECT p.org_id, p.id AS project_id, p.slug AS project_slug, \
                s.environment_id, e.slug AS env_slug, s.key \
         FROM secrets s \
         JOIN secret_versions v ON v.secret_id = s.id AND v.version = s.current_version \
         JOIN environments e ON e.id = s.environment_id \
         JOIN projects p ON p.id = e.project_id \
         WHERE v.has_references = 1 \
           AND (s.environment_id > $1 OR (s.environment_id = $1 AND s.key > $2)) \
           AND NOT EXISTS (SELECT 1 FROM secret_references r \
                           WHERE r.environment_id = s.environment_id AND r.key = s.key) \
         ORDER BY s.environment_id, s.key LIMIT $3",
    )
    .bind(env)
    .bind(key)
    .bind(limit)
    .fetch_all(ex)
    .await
}

/// Which event streams should read on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Those of one project.
    Project(ProjectId),
    /// All of them: notifications may have been missed.
    All,
}

/// Forwards other replicas' event notifications (heard by the change listener) as wakes, until
/// the database handle is gone.
pub async fn wake_on_remote(
    mut remote: tokio::sync::broadcast::Receiver<std::sync::Arc<[super::cache::Change]>>,
    wake: tokio::sync::broadcast::Sender<Wake>,
) {
    use super::cache::Change;
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match remote.recv().await {
            Ok(changes) => {
                for change in changes.iter() {
                    match change {
                        Change::Events(project) => {
                            let _ = wake.send(Wake::Project(*project));
                        }
                        Change::Everything => {
                            let _ = wake.send(Wake::All);
                        }
                        Change::Environment { .. } | Change::Session(_) | Change::Access => {}
                    }
                }
            }
            Err(RecvError::Lagged(_)) => {
                let _ = wake.send(Wake::All);
            }
            Err(RecvError::Closed) => return,
        }
    }
}
