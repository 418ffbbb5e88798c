//! The `audit_events` table. Events never hold passwords, tokens or secret values.

use sqlx::any::AnyExecutor;
use sqlx::{Connection, FromRow};

use super::{Backend, Db};
use crate::ids::{AuditEventId, Timestamp, UserId};

/// A stored audit event.
#[derive(Debug, Clone, FromRow)]
pub struct AuditRow {
    pub id: AuditEventId,
    pub occurred_at: Timestamp,
    pub user_id: Option<UserId>,
    pub actor_type: String,
    pub actor_id: Option<String>,
    pub action: String,
    pub outcome: String,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub details: Option<String>,
    pub org_id: Option<String>,
    pub project_id: Option<String>,
    pub environment_id: Option<String>,
}

const INSERT: &str = "INSERT INTO audit_events (id, occurred_at, user_id, actor_type, actor_id, \
                       action, outcome, target_type, target_id, client_ip, user_agent, details, \
                       org_id, project_id, environment_id) VALUES ";
const COLUMNS: usize = 15;

/// Rows per `INSERT` statement in [`insert_many`]: 64 × 15 parameters stays under the 999 that
/// the oldest SQLite builds allow in one statement.
const ROWS_PER_STATEMENT: usize = 64;
const _: () = assert!(ROWS_PER_STATEMENT * COLUMNS <= 999);

pub async fn insert<'e>(ex: impl AnyExecutor<'e>, e: &AuditRow) -> Result<(), sqlx::Error> {
    bind(sqlx::query(&values_sql(1)), e).execute(ex).await?;
    Ok(())
}

/// Commits `rows`, all or none, on the read-audit writer's connection, whose commits are
/// relaxed (see [`Db`]). On SQLite it waits its turn in the writer queue like every write.
pub async fn commit_batch(db: &Db, rows: &[AuditRow]) -> Result<(), sqlx::Error> {
    let _writer = db.queue_writer().await;
    let mut conn = db.audit_connection().await?;
    let begin = match db.backend() {
        Backend::Sqlite => "BEGIN IMMEDIATE",
        Backend::Postgres => "BEGIN",
    };
    let stored = insert_atomically(&mut conn, rows, begin).await;
    conn.settle(stored)
}

/// Inserts `rows`, all or none: a batch that fits in one statement is that statement alone
/// (atomic by itself, one round trip), a larger one a transaction started with `begin`.
async fn insert_atomically(
    conn: &mut sqlx::AnyConnection,
    rows: &[AuditRow],
    begin: &'static str,
) -> Result<(), sqlx::Error> {
    if rows.len() <= ROWS_PER_STATEMENT {
        return insert_many(conn, rows).await;
    }
    let mut tx = conn.begin_with(begin).await?;
    insert_many(&mut tx, rows).await?;
    tx.commit().await
}

/// Inserts `rows` with as few statements as the parameter limit allows; the caller owns the
/// transaction (on failure nothing must be committed).
pub async fn insert_many(
    conn: &mut sqlx::AnyConnection,
    rows: &[AuditRow],
) -> Result<(), sqlx::Error> {
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let sql = values_sql(chunk.len());
        let mut query = sqlx::query(&sql);
        for row in chunk {
            query = bind(query, row);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// `INSERT … VALUES ($1, …, $15), ($16, …)` for `n` rows.
fn values_sql(n: usize) -> String {
    values_sql_from(n, 1)
}

/// `INSERT INTO audit_events … VALUES (…)` for one row whose parameters start at `$first`, to
/// be bound with [`bind`]: for a statement that stores an event along with other work.
pub fn insert_one_sql(first: usize) -> String {
    values_sql_from(1, first)
}

/// [`values_sql`] numbering parameters from `$first`.
fn values_sql_from(n: usize, first: usize) -> String {
    let mut sql = String::with_capacity(INSERT.len() + n * 80);
    sql.push_str(INSERT);
    for row in 0..n {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for col in 0..COLUMNS {
            if col > 0 {
                sql.push_str(", ");
            }
            sql.push('$');
            sql.push_str(&(row * COLUMNS + col + first).to_string());
        }
        sql.push(')');
    }
    sql
}

pub fn bind<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    e: &'q AuditRow,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    query
        .bind(e.id)
        .bind(e.occurred_at)
        .bind(e.user_id)
        .bind(&e.actor_type)
        .bind(&e.actor_id)
        .bind(&e.action)
        .bind(&e.outcome)
        .bind(&e.target_type)
        .bind(&e.target_id)
        .bind(&e.client_ip)
        .bind(&e.user_agent)
        .bind(&e.details)
        .bind(&e.org_id)
        .bind(&e.project_id)
        .bind(&e.environment_id)
}

/// A user's events, newest first, strictly older than `before` when given.
pub async fn list_for_user<'e>(
    ex: impl AnyExecutor<'e>,
    user_id: UserId,
    before: Option<AuditEventId>,
    limit: i64,
) -> Result<Vec<AuditRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, occurred_at, user_id, actor_type, actor_id, action, outcome, target_type, \
                target_id, client_ip, user_agent, details, org_id, project_id, environment_id \
         FROM audit_events WHERE user_id = $1 AND ($2 IS NULL OR id < $2) \
         ORDER BY id DESC LIMIT $3",
    )
    .bind(user_id)
    .bind(before)
    .bind(limit)
    .fetch_all(ex)
    .await
}

/// Filters of an organization's audit log.
#[derive(Debug, Clone, Default)]
pub struct OrgAuditFilter {
    pub actor_id: Option<String>,
    pub action: Option<String>,
    pub project_id: Option<String>,
    pub environment_id: Option<String>,
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
}

/// An organization's events, newest first, strictly older than `before` when given.
pub async fn list_for_org<'e>(
    ex: impl AnyExecutor<'e>,
    org_id: &str,
    filter: &OrgAuditFilter,
    before: Option<AuditEventId>,
    limit: i64,
) -> Result<Vec<AuditRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, occurred_at, user_id, actor_type, actor_id, action, outcome, target_type, \
                target_id, client_ip, user_agent, details, org_id, project_id, environment_id \
         FROM audit_events WHERE org_id = $1 AND ($2 IS NULL OR id < $2) \
           AND ($3 IS NULL OR actor_id = $3) AND ($4 IS NULL OR action = $4) \
           AND ($5 IS NULL OR project_id = $5) AND ($6 IS NULL OR environment_id = $6) \
           AND ($7 IS NULL OR occurred_at >= $7) AND ($8 IS NULL OR occurred_at < $8) \
         ORDER BY id DESC LIMIT $9",
    )
    .bind(org_id)
    .bind(before)
    .bind(&filter.actor_id)
    .bind(&filter.action)
    .bind(&filter.project_id)
    .bind(&filter.environment_id)
    .bind(filter.since)
    .bind(filter.until)
    .bind(limit)
    .fetch_all(ex)
    .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use tokio::time::Instant;

    #[test]
    fn values_sql_numbers_the_parameters_of_every_row() {
        let sql = values_sql(2);
        assert!(sql.starts_with(INSERT));
        assert!(sql.ends_with("$14, $15), ($16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30)"), "{sql}");
        assert_eq!(sql.matches('$').count(), 2 * COLUMNS);
    }

    fn row() -> AuditRow {
        AuditRow {
            id: AuditEventId::new(),
            occurred_at: Timestamp::now(),
            user_id: None,
            actor_type: "anonymous".into(),
            actor_id: None,
            action: "secrets.read".into(),
            outcome: "success".into(),
            target_type: None,
            target_id: None,
            client_ip: None,
            user_agent: None,
            details: None,
            org_id: None,
            project_id: None,
            environment_id: None,
        }
    }

    async fn synchronous(conn: &mut sqlx::AnyConnection) -> i64 {
        sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(conn)
            .await
            .expect("pragma")
    }

    #[tokio::test]
    async fn sqlite_audit_batches_are_relaxed_and_the_wal_keeper_fsyncs_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let db = Db::connect(&url, 2, 0).await.expect("connect");
        db.migrate().await.expect("migrate");
        let mut tx = db.begin().await.expect("begin");
        assert_eq!(
            synchronous(&mut tx).await,
            2,
            "a write transaction commits with FULL"
        );
        let automatic: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint")
            .fetch_one(&mut *tx)
            .await
            .expect("pragma");
        assert_eq!(automatic, 0, "no checkpoint inside a request's commit");
        tx.rollback().await.expect("rollback");
        let mut audit = db.audit_connection().await.expect("audit connection");
        assert_eq!(synchronous(&mut audit).await, 1, "audit commits are NORMAL");
        drop(audit);

        // Let the keeper see the WAL as it is, then commit: the keeper fsyncs the change.
        let synced = db.wal_syncs();
        commit_batch(&db, &[row(), row()]).await.expect("commit");
        let many: Vec<AuditRow> = (0..100).map(|_| row()).collect();
        commit_batch(&db, &many)
            .await
            .expect("commit in a transaction");
        // A guard against hanging, not a measure: the keeper runs every 200 ms.
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        while db.wal_syncs() == synced && Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(db.wal_syncs() > synced, "the WAL keeper fsyncs new commits");
        let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_events")
            .fetch_one(db.pool())
            .await
            .expect("count");
        assert_eq!(stored, 102);
        db.close().await;
    }

    #[tokio::test]
    async fn postgres_audit_commits_are_asynchronous_and_writes_synchronous() {
        let Ok(url) = std::env::var("COFFER_TEST_DATABASE_URL") else {
            eprintln!("skipped: COFFER_TEST_DATABASE_URL is not set");
            return;
        };
        let db = Db::connect(&url, 2, 0).await.expect("connect");
        let show = "SHOW synchronous_commit";
        let mut tx = db.begin().await.expect("begin");
        let mode: String = sqlx::query_scalar(show).fetch_one(&mut *tx).await.unwrap();
        assert_eq!(mode, "on");
        tx.rollback().await.unwrap();
        let mut audit = db.audit_connection().await.expect("audit connection");
        let mode: String = sqlx::query_scalar(show)
            .fetch_one(&mut *audit)
            .await
            .unwrap();
        assert_eq!(mode, "off");
    }
}
