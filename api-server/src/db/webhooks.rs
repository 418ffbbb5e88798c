//! Webhooks, their delivery queue and the log of attempts.
//!
//! The queue is filled from the events table by one dispatcher at a time (the dispatch cursor's
//! row is locked, `SKIP LOCKED` on PostgreSQL so other replicas pass), in the transaction that
//! moves the cursor: an event gets its deliveries exactly once, and a restart resumes from the
//! cursor. A replica takes due deliveries by setting `locked_until` (selected `FOR UPDATE SKIP
//! LOCKED` on PostgreSQL), so two replicas never send the same attempt.

use sqlx::any::AnyExecutor;
use sqlx::{AnyConnection, FromRow};

use crate::ids::{OrgId, ProjectId, Timestamp, UserId};

/// A webhook as stored.
#[derive(Debug, Clone, FromRow)]
pub struct WebhookRow {
    pub id: String,
    pub org_id: OrgId,
    pub project_id: ProjectId,
    pub url: String,
    pub environments: Option<String>,
    pub events: Option<String>,
    pub secret_dek_id: String,
    pub secret_ct: Vec<u8>,
    pub secret_generation: i64,
    pub previous_dek_id: Option<String>,
    pub previous_ct: Option<Vec<u8>>,
    pub previous_expires_at: Option<Timestamp>,
    pub created_after_event: i64,
    pub consecutive_failures: i64,
    pub disabled_at: Option<Timestamp>,
    pub disabled_reason: Option<String>,
    pub created_by: Option<UserId>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

const COLUMNS: &str = "id, org_id, project_id, url, environments, events, secret_dek_id, \
     secret_ct, secret_generation, previous_dek_id, previous_ct, previous_expires_at, \
     created_after_event, consecutive_failures, disabled_at, disabled_reason, created_by, \
     created_at, updated_at";

pub async fn insert<'e>(ex: impl AnyExecutor<'e>, w: &WebhookRow) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "INSERT INTO webhooks ({COLUMNS}) VALUES \
         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)"
    ))
    .bind(&w.id)
    .bind(w.org_id)
    .bind(w.project_id)
    .bind(&w.url)
    .bind(&w.environments)
    .bind(&w.events)
    .bind(&w.secret_dek_id)
    .bind(&w.secret_ct)
    .bind(w.secret_generation)
    .bind(&w.previous_dek_id)
    .bind(&w.previous_ct)
    .bind(w.previous_expires_at)
    .bind(w.created_after_event)
    .bind(w.consecutive_failures)
    .bind(w.disabled_at)
    .bind(&w.disabled_reason)
    .bind(w.created_by)
    .bind(w.created_at)
    .bind(w.updated_at)
    .execute(ex)
    .await?;
    Ok(())
}

/// The webhook `id` of `project`.
pub async fn get<'e>(
    ex: impl AnyExecutor<'e>,
    project: ProjectId,
    id: &str,
) -> Result<Option<WebhookRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM webhooks WHERE project_id = $1 AND id = $2"
    ))
    .bind(project)
    .bind(id)
    .fetch_optional(ex)
    .await
}

/// The webhook `id`, whatever its project (for the delivery worker).
pub async fn by_id<'e>(
    ex: impl AnyExecutor<'e>,
    id: &str,
) -> Result<Option<WebhookRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM webhooks WHERE id = $1"))
        .bind(id)
        .fetch_optional(ex)
        .await
}

/// A page of the project's webhooks after `after`.
pub async fn list<'e>(
    ex: impl AnyExecutor<'e>,
    project: ProjectId,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<WebhookRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM webhooks WHERE project_id = $1 AND id > $2 ORDER BY id LIMIT $3"
    ))
    .bind(project)
    .bind(after.unwrap_or(""))
    .bind(limit)
    .fetch_all(ex)
    .await
}

pub async fn count<'e>(ex: impl AnyExecutor<'e>, project: ProjectId) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM webhooks WHERE project_id = $1")
        .bind(project)
        .fetch_one(ex)
        .await
}

/// Writes the settings of `w` (URL, filters, enabled state, secrets).
pub async fn update<'e>(ex: impl AnyExecutor<'e>, w: &WebhookRow) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE webhooks SET url = $1, environments = $2, events = $3, secret_dek_id = $4, \
         secret_ct = $5, secret_generation = $6, previous_dek_id = $7, previous_ct = $8, \
         previous_expires_at = $9, consecutive_failures = $10, disabled_at = $11, \
         disabled_reason = $12, updated_at = $13, created_after_event = $16 \
         WHERE id = $14 AND project_id = $15",
    )
    .bind(&w.url)
    .bind(&w.environments)
    .bind(&w.events)
    .bind(&w.secret_dek_id)
    .bind(&w.secret_ct)
    .bind(w.secret_generation)
    .bind(&w.previous_dek_id)
    .bind(&w.previous_ct)
    .bind(w.previous_expires_at)
    .bind(w.consecutive_failures)
    .bind(w.disabled_at)
    .bind(&w.disabled_reason)
    .bind(w.updated_at)
    .bind(&w.id)
    .bind(w.project_id)
    .bind(w.created_after_event)
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn delete<'e>(
    ex: impl AnyExecutor<'e>,
    project: ProjectId,
    id: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM webhooks WHERE project_id = $1 AND id = $2")
        .bind(project)
        .bind(id)
        .execute(ex)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Every webhook of `project` (for re-sealing its secrets with a new data key).
pub async fn of_project<'e>(
    ex: impl AnyExecutor<'e>,
    project: ProjectId,
) -> Result<Vec<WebhookRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM webhooks WHERE project_id = $1 ORDER BY id"
    ))
    .bind(project)
    .fetch_all(ex)
    .await
}

/// How many webhook secrets of `project` are sealed under a retired data key.
pub async fn secrets_under_retired_deks<'e>(
    ex: impl AnyExecutor<'e>,
    project: ProjectId,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM webhooks w JOIN deks d \
           ON d.id = w.secret_dek_id OR d.id = w.previous_dek_id \
         WHERE w.project_id = $1 AND d.retired_at IS NOT NULL",
    )
    .bind(project)
    .fetch_one(ex)
    .await
}

/// A delivery to enqueue.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: String,
    pub webhook_id: String,
    pub event_id: Option<i64>,
    pub kind: String,
    pub body: String,
}

pub async fn enqueue(
    conn: &mut AnyConnection,
    deliveries: &[NewDelivery],
    now: Timestamp,
) -> Result<(), sqlx::Error> {
    for chunk in deliveries.chunks(500) {
        let mut sql = String::from(
            "INSERT INTO webhook_deliveries (id, webhook_id, event_id, kind, body, status, \
             attempts, next_attempt_at, created_at, updated_at) VALUES ",
        );
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            let b = i * 5;
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${}, 'pending', 0, $1, $1, $1)",
                b + 2,
                b + 3,
                b + 4,
                b + 5,
                b + 6
            ));
        }
        let mut query = sqlx::query(&sql).bind(now);
        for d in chunk {
            query = query
                .bind(&d.id)
                .bind(&d.webhook_id)
                .bind(d.event_id)
                .bind(&d.kind)
                .bind(&d.body);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// The projects with an enabled webhook.
pub async fn hooked_projects<'e>(ex: impl AnyExecutor<'e>) -> Result<Vec<ProjectId>, sqlx::Error> {
    sqlx::query_scalar("SELECT DISTINCT project_id FROM webhooks WHERE disabled_at IS NULL")
        .fetch_all(ex)
        .await
}

/// Pending deliveries of a webhook.
/// Deliveries waiting to be sent, of every webhook.
pub async fn pending_total<'e>(ex: impl AnyExecutor<'e>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'pending'")
        .fetch_one(ex)
        .await
}

pub async fn pending_count<'e>(
    ex: impl AnyExecutor<'e>,
    webhook: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM webhook_deliveries WHERE webhook_id = $1 AND status = 'pending'",
    )
    .bind(webhook)
    .fetch_one(ex)
    .await
}

/// Where dispatching starts: after the cursor, and after every event older than the enabled
/// webhooks (none of them wants those); `None` when no webhook is enabled (nothing to do).
pub async fn dispatch_start<'e>(ex: impl AnyExecutor<'e>) -> Result<Option<i64>, sqlx::Error> {
    let (cursor, oldest): (i64, Option<i64>) = sqlx::query_as(
        "SELECT (SELECT last_event_id FROM webhook_dispatch WHERE singleton = 1), \
                (SELECT MIN(created_after_event) FROM webhooks WHERE disabled_at IS NULL)",
    )
    .fetch_one(ex)
    .await?;
    Ok(oldest.map(|oldest| cursor.max(oldest)))
}

/// Whether an event after `after` is one of a project with an enabled webhook (a read: an idle
/// server, or one whose events no webhook wants, writes nothing).
pub async fn undispatched<'e>(ex: impl AnyExecutor<'e>, after: i64) -> Result<bool, sqlx::Error> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT e.id FROM events e WHERE e.id > $1 AND e.project_id IN \
           (SELECT project_id FROM webhooks WHERE disabled_at IS NULL) LIMIT 1",
    )
    .bind(after)
    .fetch_optional(ex)
    .await?;
    Ok(found.is_some())
}

/// The dispatch cursor, locked for this transaction; `None` when another replica holds it.
pub async fn lock_dispatch(conn: &mut AnyConnection) -> Result<Option<i64>, sqlx::Error> {
    let sql = if super::is_postgres(conn) {
        "SELECT last_event_id FROM webhook_dispatch WHERE singleton = 1 FOR UPDATE SKIP LOCKED"
    } else {
        "SELECT last_event_id FROM webhook_dispatch WHERE singleton = 1"
    };
    sqlx::query_scalar(sql).fetch_optional(conn).await
}

/// Waits for a dispatch under way to end, and keeps the next from starting until this
/// transaction ends: a webhook created (or enabled) now then gets every event after the
/// position it is given, none missed by a dispatch that did not see it yet.
pub async fn hold_dispatch(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    if super::is_postgres(conn) {
        sqlx::query("SELECT last_event_id FROM webhook_dispatch WHERE singleton = 1 FOR UPDATE")
            .execute(conn)
            .await?;
    }
    Ok(())
}

pub async fn set_dispatched<'e>(ex: impl AnyExecutor<'e>, last: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE webhook_dispatch SET last_event_id = $1 WHERE singleton = 1")
        .bind(last)
        .execute(ex)
        .await?;
    Ok(())
}

/// An event to dispatch.
#[derive(Debug, Clone, FromRow)]
pub struct DispatchEvent {
    pub id: i64,
    pub project_id: ProjectId,
    pub kind: String,
    pub body: String,
}

/// Events after `after` of projects with an enabled webhook, oldest first.
pub async fn events_after<'e>(
    ex: impl AnyExecutor<'e>,
    after: i64,
    limit: i64,
) -> Result<Vec<DispatchEvent>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, project_id, type AS kind, body FROM events WHERE id > $1 AND project_id IN \
           (SELECT project_id FROM webhooks WHERE disabled_at IS NULL) ORDER BY id LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(ex)
    .await
}

/// The enabled webhooks of some projects.
pub async fn enabled_of(
    conn: &mut AnyConnection,
    projects: &[ProjectId],
) -> Result<Vec<WebhookRow>, sqlx::Error> {
    if projects.is_empty() {
        return Ok(Vec::new());
    }
    let list: Vec<String> = (1..=projects.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT {COLUMNS} FROM webhooks WHERE disabled_at IS NULL AND project_id IN ({})",
        list.join(", ")
    );
    let mut query = sqlx::query_as(&sql);
    for p in projects {
        query = query.bind(*p);
    }
    query.fetch_all(conn).await
}

/// A delivery taken to be sent.
#[derive(Debug, Clone, FromRow)]
pub struct Claimed {
    pub id: String,
    pub webhook_id: String,
    pub event_id: Option<i64>,
    pub kind: String,
    pub body: String,
    pub attempts: i64,
}

/// Takes up to `limit` due deliveries of enabled webhooks until `lease_until`.
pub async fn claim_due(
    conn: &mut AnyConnection,
    now: Timestamp,
    lease_until: Timestamp,
    limit: i64,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let skip = if super::is_postgres(conn) {
        " FOR UPDATE OF d SKIP LOCKED"
    } else {
        ""
    };
    sqlx::query_as(&format!(
        "UPDATE webhook_deliveries SET locked_until = $1 WHERE id IN ( \
            SELECT d.id FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id \
            WHERE d.status = 'pending' AND d.next_attempt_at <= $2 \
              AND (d.locked_until IS NULL OR d.locked_until < $2) AND w.disabled_at IS NULL \
            ORDER BY d.next_attempt_at LIMIT $3{skip}) \
         RETURNING id, webhook_id, event_id, kind, body, attempts"
    ))
    .bind(lease_until)
    .bind(now)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// When the next pending delivery of an enabled webhook is due.
pub async fn next_due<'e>(ex: impl AnyExecutor<'e>) -> Result<Option<Timestamp>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT MIN(d.next_attempt_at) FROM webhook_deliveries d \
         JOIN webhooks w ON w.id = d.webhook_id \
         WHERE d.status = 'pending' AND w.disabled_at IS NULL",
    )
    .fetch_one(ex)
    .await
}

/// One attempt, as logged.
#[derive(Debug, Clone, FromRow)]
pub struct AttemptRow {
    pub id: String,
    pub delivery_id: String,
    pub webhook_id: String,
    pub attempt: i64,
    pub started_at: Timestamp,
    pub duration_ms: i64,
    pub response_status: Option<i64>,
    pub response_body: Option<String>,
    pub error: Option<String>,
    pub next_attempt_at: Option<Timestamp>,
}

/// An attempt's log row and what it leaves its delivery as: `next_attempt_at` set means another
/// attempt follows; `succeeded` otherwise says how it ended.
pub async fn record_attempt(
    conn: &mut AnyConnection,
    row: &AttemptRow,
    succeeded: bool,
    now: Timestamp,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO webhook_attempts (id, delivery_id, webhook_id, attempt, started_at, \
         duration_ms, response_status, response_body, error, next_attempt_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&row.id)
    .bind(&row.delivery_id)
    .bind(&row.webhook_id)
    .bind(row.attempt)
    .bind(row.started_at)
    .bind(row.duration_ms)
    .bind(row.response_status)
    .bind(&row.response_body)
    .bind(&row.error)
    .bind(row.next_attempt_at)
    .execute(&mut *conn)
    .await?;
    let status = match (succeeded, row.next_attempt_at) {
        (true, _) => "succeeded",
        (false, Some(_)) => "pending",
        (false, None) => "failed",
    };
    sqlx::query(
        "UPDATE webhook_deliveries SET status = $1, attempts = $2, next_attempt_at = $3, \
         locked_until = NULL, updated_at = $4 WHERE id = $5",
    )
    .bind(status)
    .bind(row.attempt)
    .bind(row.next_attempt_at)
    .bind(now)
    .bind(&row.delivery_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Counts an attempt's outcome against its webhook; its consecutive failures afterwards.
pub async fn count_outcome(
    conn: &mut AnyConnection,
    webhook: &str,
    succeeded: bool,
) -> Result<i64, sqlx::Error> {
    let sql = if succeeded {
        "UPDATE webhooks SET consecutive_failures = 0 WHERE id = $1 RETURNING consecutive_failures"
    } else {
        "UPDATE webhooks SET consecutive_failures = consecutive_failures + 1 WHERE id = $1 \
         RETURNING consecutive_failures"
    };
    Ok(sqlx::query_scalar(sql)
        .bind(webhook)
        .fetch_optional(conn)
        .await?
        .unwrap_or(0))
}

/// Disables a webhook (unless it already is); true when this call did.
pub async fn disable<'e>(
    ex: impl AnyExecutor<'e>,
    webhook: &str,
    reason: &str,
    now: Timestamp,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE webhooks SET disabled_at = $1, disabled_reason = $2, updated_at = $1 \
         WHERE id = $3 AND disabled_at IS NULL",
    )
    .bind(now)
    .bind(reason)
    .bind(webhook)
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// An attempt with what its delivery carried.
#[derive(Debug, Clone, FromRow)]
pub struct LoggedAttempt {
    #[sqlx(flatten)]
    pub attempt: AttemptRow,
    pub event_id: Option<i64>,
    pub kind: String,
}

/// A page of a webhook's attempts, newest first, before `before`.
pub async fn attempts<'e>(
    ex: impl AnyExecutor<'e>,
    webhook: &str,
    before: Option<&str>,
    limit: i64,
) -> Result<Vec<LoggedAttempt>, sqlx::Error> {
    sqlx::query_as(
        "SELECT a.id, a.delivery_id, a.webhook_id, a.attempt, a.started_at, a.duration_ms, \
                a.response_status, a.response_body, a.error, a.next_attempt_at, \
                d.event_id, d.kind \
         FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id \
         WHERE a.webhook_id = $1 AND ($2 = '' OR a.id < $2) \
         ORDER BY a.id DESC LIMIT $3",
    )
    .bind(webhook)
    .bind(before.unwrap_or(""))
    .bind(limit)
    .fetch_all(ex)
    .await
}

/// The delivery `id` of `webhook`: its kind, event and body.
pub async fn delivery<'e>(
    ex: impl AnyExecutor<'e>,
    webhook: &str,
    id: &str,
) -> Result<Option<Claimed>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, webhook_id, event_id, kind, body, attempts FROM webhook_deliveries \
         WHERE webhook_id = $1 AND id = $2",
    )
    .bind(webhook)
    .bind(id)
    .fetch_optional(ex)
    .await
}

/// Whether a finished delivery last changed before `cutoff` is stored.
pub async fn any_finished_before<'e>(
    ex: impl AnyExecutor<'e>,
    cutoff: Timestamp,
) -> Result<bool, sqlx::Error> {
    let found: Option<String> = sqlx::query_scalar(
        "SELECT id FROM webhook_deliveries WHERE status <> 'pending' AND updated_at < $1 LIMIT 1",
    )
    .bind(cutoff)
    .fetch_optional(ex)
    .await?;
    Ok(found.is_some())
}

/// Deletes finished deliveries (and their attempts) last changed before `cutoff`.
pub async fn prune<'e>(ex: impl AnyExecutor<'e>, cutoff: Timestamp) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query("DELETE FROM webhook_deliveries WHERE status <> 'pending' AND updated_at < $1")
            .bind(cutoff)
            .execute(ex)
            .await?
            .rows_affected(),
    )
}
