//! The `audit_events` table. Events never hold passwords, tokens or secret values.

use sqlx::FromRow;
use sqlx::any::AnyExecutor;

use super::Db;
use crate::ids::{AuditEventId, Timestamp, UserId};

/// A stored audit event.
#[derive(Debug, Clone, FromRow, serde::Serialize, serde::Deserialize)]
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
    bind(sqlx::query(&insert_one_sql(1)), e).execute(ex).await?;
    Ok(())
}

/// Stores `rows` in one durable transaction (a writer like any other). A row whose id is already
/// stored is skipped: the read-audit journal may drain a segment again after a crash.
pub async fn commit_batch(db: &Db, rows: &[AuditRow], pace: Pace) -> Result<(), sqlx::Error> {
    if pace == Pace::CatchUp && rows.len() <= MAX_DRAINED_PER_STATEMENT {
        // One statement is atomic by itself, and a commit of its own: one round trip.
        let _turn = db.write_turn().await;
        let mut conn = db.pool().acquire().await?;
        return insert_chunks(&mut conn, rows, Batch::Drained(pace)).await;
    }
    let mut tx = db.begin().await?;
    insert_chunks(&mut tx, rows, Batch::Drained(pace)).await?;
    tx.commit().await
}

/// Rows of one statement when the drainer catches up: 15,360 parameters, under both SQLite's
/// limit (32,766 since 3.32) and PostgreSQL's (65,535).
pub const MAX_DRAINED_PER_STATEMENT: usize = 1024;

/// Inserts `rows` with as few statements as the parameter limit allows; the caller owns the
/// transaction (on failure nothing must be committed).
pub async fn insert_many(
    conn: &mut sqlx::AnyConnection,
    rows: &[AuditRow],
) -> Result<(), sqlx::Error> {
    insert_chunks(conn, rows, Batch::WithChange).await
}

/// How a batch drained from the read-audit journal is inserted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// In the background, while the drainer keeps up: a few rows per statement, yielding to
    /// other tasks between statements, so that the database server (on the same cores, in a
    /// small deployment) serves requests' statements between these instead of after all of
    /// them.
    Background,
    /// As fast as it can, in as few statements as it can: the drainer is behind, or reads
    /// wait for room.
    CatchUp,
}

/// What a batch of rows is inserted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Batch {
    /// With the change they audit: as few statements as possible.
    WithChange,
    /// Drained from the read-audit journal: rows already stored are skipped.
    Drained(Pace),
}

async fn insert_chunks(
    conn: &mut sqlx::AnyConnection,
    rows: &[AuditRow],
    batch: Batch,
) -> Result<(), sqlx::Error> {
    let skip_stored = " ON CONFLICT (id) DO NOTHING";
    let (per_statement, suffix) = match batch {
        Batch::WithChange => (ROWS_PER_STATEMENT, ""),
        Batch::Drained(Pace::Background) => (8, skip_stored),
        Batch::Drained(Pace::CatchUp) => (MAX_DRAINED_PER_STATEMENT, skip_stored),
    };
    let numbered = super::is_postgres(conn);
    for (i, chunk) in rows.chunks(per_statement).enumerate() {
        if i > 0 && batch == Batch::Drained(Pace::Background) {
            tokio::task::yield_now().await;
        }
        let mut sql = values_sql(chunk.len(), numbered.then_some(1));
        sql.push_str(suffix);
        let mut query = sqlx::query(&sql);
        for row in chunk {
            query = bind(query, row);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// `INSERT INTO audit_events … VALUES (…)` for one row whose parameters start at `$first`, to
/// be bound with [`bind`]: for a statement that stores an event along with other work.
pub fn insert_one_sql(first: usize) -> String {
    values_sql(1, Some(first))
}

/// `INSERT … VALUES ($1, …, $15), ($16, …)` for `n` rows, numbered from `$first`; or, without
/// `first`, with SQLite's anonymous `?`: the SQLite driver looks the name of every numbered
/// parameter up, and SQLite finds a name by walking the statement's list of them, so numbered
/// parameters cost the square of their count (a fifth of a read's time when audit rows were
/// inserted 64 at a time).
fn values_sql(n: usize, first: Option<usize>) -> String {
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
            match first {
                Some(first) => {
                    sql.push('$');
                    sql.push_str(&(row * COLUMNS + col + first).to_string());
                }
                None => sql.push('?'),
            }
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

/// A place in an organization's audit feed: on PostgreSQL the inserting transaction's id and
/// the insert order; on SQLite (`0`, rowid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct FeedPosition(pub i64, pub i64);

impl std::fmt::Display for FeedPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

impl std::str::FromStr for FeedPosition {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (a, b) = s.split_once('.').ok_or(())?;
        let (a, b) = (a.parse().map_err(drop)?, b.parse().map_err(drop)?);
        if a < 0 || b < 0 {
            return Err(());
        }
        Ok(Self(a, b))
    }
}

/// An event of the feed with its position.
#[derive(Debug, Clone, FromRow)]
pub struct FeedRow {
    #[sqlx(flatten)]
    pub row: AuditRow,
    pub feed_a: i64,
    pub feed_b: i64,
}

const FEED_COLUMNS: &str = "id, occurred_at, user_id, actor_type, actor_id, action, outcome, \
     target_type, target_id, client_ip, user_agent, details, org_id, project_id, environment_id";

/// The organization's events after `after` that can no longer be preceded by another, oldest
/// first, at most `limit`.
pub async fn feed_after(
    conn: &mut sqlx::AnyConnection,
    org_id: &str,
    after: FeedPosition,
    opened: Option<&str>,
    limit: i64,
) -> Result<Vec<FeedRow>, sqlx::Error> {
    let sql = if super::is_postgres(conn) {
        format!(
            "SELECT {FEED_COLUMNS}, feed_tx AS feed_a, feed_seq AS feed_b FROM audit_events \
             WHERE org_id = $1 AND (feed_tx > $2 OR (feed_tx = $2 AND feed_seq > $3)) \
               AND feed_tx < CAST(CAST(pg_snapshot_xmin(pg_current_snapshot()) AS TEXT) AS BIGINT) \
               AND (CAST($5 AS TEXT) IS NULL OR NOT pg_visible_in_snapshot( \
                    CAST(CAST(feed_tx AS TEXT) AS xid8), CAST(CAST($5 AS TEXT) AS pg_snapshot))) \
             ORDER BY feed_tx, feed_seq LIMIT $4"
        )
    } else {
        format!(
            "SELECT {FEED_COLUMNS}, 0 AS feed_a, rowid AS feed_b FROM audit_events \
             WHERE org_id = $1 AND $2 >= 0 AND rowid > $3 AND ($5 IS NULL OR $5 IS NOT NULL) \
             ORDER BY rowid LIMIT $4"
        )
    };
    sqlx::query_as(&sql)
        .bind(org_id)
        .bind(after.0)
        .bind(after.1)
        .bind(limit)
        .bind(opened)
        .fetch_all(conn)
        .await
}

/// Where a stream that starts now starts: after every event of the organization committed
/// before this moment, and before every one committed after it.
///
/// On PostgreSQL, events are ordered by their transaction's id, and a transaction that began
/// before another may commit after it. So "now" is a snapshot: the stream starts at its oldest
/// transaction still running (`xmin`) and skips, with the snapshot (returned as text, to give
/// to [`feed_after`]), the events of every transaction it already saw committed. A long
/// transaction elsewhere in the cluster then holds the stream back, but never makes it deliver
/// events of the past. On SQLite, the last row: writers are serialised.
pub async fn feed_start(
    conn: &mut sqlx::AnyConnection,
    org_id: &str,
) -> Result<(FeedPosition, Option<String>), sqlx::Error> {
    if super::is_postgres(conn) {
        let snapshot: String = sqlx::query_scalar("SELECT CAST(pg_current_snapshot() AS TEXT)")
            .fetch_one(conn)
            .await?;
        let xmin = snapshot
            .split(':')
            .next()
            .and_then(|x| x.parse::<i64>().ok())
            .ok_or_else(|| sqlx::Error::Protocol(format!("unexpected snapshot {snapshot}")))?;
        // Events of the transaction `xmin` itself are after the start: it was still running.
        return Ok((FeedPosition(xmin, 0), Some(snapshot)));
    }
    let found: Option<(i64, i64)> = sqlx::query_as(
        "SELECT 0, rowid FROM audit_events WHERE org_id = $1 ORDER BY rowid DESC LIMIT 1",
    )
    .bind(org_id)
    .fetch_optional(conn)
    .await?;
    Ok((
        found.map_or(FeedPosition::default(), |(a, b)| FeedPosition(a, b)),
        None,
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn values_sql_numbers_the_parameters_of_every_row() {
        let anonymous = values_sql(2, None);
        assert_eq!(anonymous.matches('?').count(), 2 * COLUMNS);
        assert!(!anonymous.contains('$'));
        let sql = values_sql(2, Some(1));
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

    #[tokio::test]
    async fn a_batch_drained_again_stores_only_the_events_not_yet_stored() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let db = Db::connect(&url, 2, 0).await.expect("connect");
        db.migrate().await.expect("migrate");
        let first: Vec<AuditRow> = (0..100).map(|_| row()).collect();
        commit_batch(&db, &first, Pace::Background)
            .await
            .expect("commit");
        // Drained again after a crash, along with events that were not.
        let mut again = first[40..].to_vec();
        again.extend((0..10).map(|_| row()));
        commit_batch(&db, &again, Pace::CatchUp)
            .await
            .expect("commit again");
        let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_events")
            .fetch_one(db.pool())
            .await
            .expect("count");
        assert_eq!(stored, 110);
        db.close().await;
    }
}
