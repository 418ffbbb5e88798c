//! Audit events: who did what, from where, with what outcome. Never a password, token or value.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::any::AnyExecutor;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::auth::{Principal, Subject};
use crate::db;
use crate::db::Db;
use crate::db::audit::AuditRow;
use crate::error::{ApiError, ApiResult};
use crate::ids::{AuditEventId, Timestamp, UserId};
use crate::service::ClientMeta;

/// The actions recorded.
pub mod action {
    pub const REGISTER: &str = "auth.register";
    pub const LOGIN: &str = "auth.login";
    pub const REFRESH: &str = "auth.refresh";
    pub const REFRESH_REUSE_DETECTED: &str = "auth.refresh_reuse_detected";
    pub const LOGOUT: &str = "auth.logout";
    pub const PASSWORD_CHANGED: &str = "auth.password_changed";
    pub const RATE_LIMITED: &str = "auth.rate_limited";
    pub const API_KEY_CREATED: &str = "api_key.created";
    pub const API_KEY_ROTATED: &str = "api_key.rotated";
    pub const API_KEY_REVOKED: &str = "api_key.revoked";
    pub const SERVICE_TOKEN_CREATED: &str = "service_token.created";
    pub const SERVICE_TOKEN_ROTATED: &str = "service_token.rotated";
    pub const SERVICE_TOKEN_REVOKED: &str = "service_token.revoked";
    pub const ORG_CREATED: &str = "org.created";
    pub const ORG_UPDATED: &str = "org.updated";
    pub const ORG_DELETED: &str = "org.deleted";
    pub const MEMBER_ADDED: &str = "member.added";
    pub const MEMBER_ROLE_CHANGED: &str = "member.role_changed";
    pub const MEMBER_REMOVED: &str = "member.removed";
    pub const INVITATION_CREATED: &str = "invitation.created";
    pub const INVITATION_REVOKED: &str = "invitation.revoked";
    pub const INVITATION_ACCEPTED: &str = "invitation.accepted";
    pub const TEAM_CREATED: &str = "team.created";
    pub const TEAM_UPDATED: &str = "team.updated";
    pub const TEAM_DELETED: &str = "team.deleted";
    pub const TEAM_MEMBER_ADDED: &str = "team.member_added";
    pub const TEAM_MEMBER_REMOVED: &str = "team.member_removed";
    pub const PROJECT_CREATED: &str = "project.created";
    pub const PROJECT_UPDATED: &str = "project.updated";
    pub const PROJECT_DELETED: &str = "project.deleted";
    pub const PROJECT_ACCESS_GRANTED: &str = "project.access_granted";
    pub const PROJECT_ACCESS_REVOKED: &str = "project.access_revoked";
    pub const ENVIRONMENT_CREATED: &str = "environment.created";
    pub const ENVIRONMENT_UPDATED: &str = "environment.updated";
    pub const ENVIRONMENT_DELETED: &str = "environment.deleted";
    pub const ENVIRONMENT_POLICY_SET: &str = "environment.policy_set";
}

/// Whether the action succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    Denied,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Denied => "denied",
        }
    }
}

/// An event being built; `record` stores it (inside the caller's transaction when given one).
#[derive(Debug, Clone)]
pub struct AuditEvent {
    row: AuditRow,
}

impl AuditEvent {
    pub fn new(action: &'static str, outcome: Outcome, meta: &ClientMeta) -> Self {
        Self {
            row: AuditRow {
                id: AuditEventId::new(),
                occurred_at: Timestamp::now(),
                user_id: None,
                actor_type: "anonymous".into(),
                actor_id: None,
                action: action.into(),
                outcome: outcome.as_str().into(),
                target_type: None,
                target_id: None,
                client_ip: meta.ip.clone(),
                user_agent: meta.user_agent.clone(),
                details: None,
                org_id: None,
                project_id: None,
                environment_id: None,
            },
        }
    }

    /// The user the event belongs to (whose audit log shows it), acting themselves.
    pub fn by_user(mut self, user: UserId) -> Self {
        self.row.user_id = Some(user);
        self.row.actor_type = "user".into();
        self.row.actor_id = Some(user.to_string());
        self
    }

    /// The user the event concerns, when nobody authenticated (a failed login).
    pub fn about_user(mut self, user: Option<UserId>) -> Self {
        self.row.user_id = user;
        self
    }

    pub fn by(mut self, principal: &impl Subject) -> Self {
        let (kind, id) = principal.actor();
        self.row.user_id = principal.user();
        self.row.actor_type = kind.into();
        self.row.actor_id = Some(id);
        self
    }

    pub fn target(mut self, kind: &str, id: impl ToString) -> Self {
        self.row.target_type = Some(kind.into());
        self.row.target_id = Some(id.to_string());
        self
    }

    /// The organization (and project, environment) the event happened in.
    pub fn org(mut self, id: impl ToString) -> Self {
        self.row.org_id = Some(id.to_string());
        self
    }

    pub fn project(mut self, id: impl ToString) -> Self {
        self.row.project_id = Some(id.to_string());
        self
    }

    pub fn environment(mut self, id: impl ToString) -> Self {
        self.row.environment_id = Some(id.to_string());
        self
    }

    /// Non-secret context (a reason, a limit's name).
    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.row.details = Some(details.to_string());
        self
    }

    /// The row this event is stored as.
    pub fn row(&self) -> &AuditRow {
        &self.row
    }

    /// Stores the event on its own, outside any transaction (in this process's write order).
    pub async fn commit(self, db: &Db) -> Result<(), sqlx::Error> {
        let _turn = db.write_turn().await;
        self.record(db.pool()).await
    }

    /// Stores the event with `ex`: inside the caller's transaction, with the change it audits.
    /// Standalone events of reads go through [`AuditWriter::record`] instead.
    pub async fn record<'e>(self, ex: impl AnyExecutor<'e>) -> Result<(), sqlx::Error> {
        db::audit::insert(ex, &self.row).await
    }
}

/// Requests (each with its events) that may wait for the writer at once.
pub const AUDIT_QUEUE_LEN: usize = 1024;
/// Rows committed in one transaction at most.
pub const AUDIT_BATCH_ROWS: usize = 256;
/// How long a request waits for room in a full queue before it is answered 503.
pub const AUDIT_QUEUE_WAIT: Duration = Duration::from_secs(5);

/// Where the writer commits a batch: all rows in one transaction, or none.
pub trait AuditSink: Send + Sync + 'static {
    fn write(&self, rows: &[AuditRow]) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

/// Commits on the audit writer's own connection, whose commits are relaxed: a crash of the
/// process loses nothing committed; power loss may take the last [`db::WAL_SYNC_EVERY`] of them
/// on SQLite, 3 × `wal_writer_delay` on PostgreSQL (see [`Db`]).
impl AuditSink for Db {
    async fn write(&self, rows: &[AuditRow]) -> Result<(), sqlx::Error> {
        db::audit::commit_batch(self, rows).await
    }
}

/// The bounds of an [`AuditWriter`].
#[derive(Debug, Clone, Copy)]
pub struct WriterLimits {
    pub queue_len: usize,
    pub batch_rows: usize,
    pub queue_wait: Duration,
}

impl Default for WriterLimits {
    fn default() -> Self {
        Self {
            queue_len: AUDIT_QUEUE_LEN,
            batch_rows: AUDIT_BATCH_ROWS,
            queue_wait: AUDIT_QUEUE_WAIT,
        }
    }
}

type BatchOutcome = Result<(), Arc<sqlx::Error>>;

/// One request's events and where to send the outcome of their commit.
struct Job {
    rows: Vec<AuditRow>,
    reply: oneshot::Sender<BatchOutcome>,
}

/// Group commit of the audit events of reads: a request hands its events to one writer task
/// and waits; the writer commits everything queued meanwhile (up to a batch cap) in one
/// transaction and answers each request with that transaction's outcome. On SQLite this turns
/// a write-lock acquisition and a WAL commit per read into one per batch.
///
/// Fails closed: a request is told its events are stored only after their transaction
/// committed, and a failed batch fails every request in it. A full queue makes requests wait
/// (up to a bound, then 503); no event is ever dropped.
pub struct AuditWriter {
    queue: mpsc::Sender<Job>,
    queue_wait: Duration,
    stop: Mutex<Option<(oneshot::Sender<()>, JoinHandle<()>)>>,
}

impl std::fmt::Debug for AuditWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditWriter")
            .field(
                "queued",
                &(self.queue.max_capacity() - self.queue.capacity()),
            )
            .finish_non_exhaustive()
    }
}

impl AuditWriter {
    /// Starts the writer task (on the current Tokio runtime).
    pub fn start(sink: impl AuditSink, limits: WriterLimits) -> Self {
        let (queue, jobs) = mpsc::channel(limits.queue_len.max(1));
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(sink, jobs, stopped, limits.batch_rows.max(1)));
        Self {
            queue,
            queue_wait: limits.queue_wait,
            stop: Mutex::new(Some((stop, task))),
        }
    }

    /// Stores `events` together, returning once they are committed (or refused).
    pub async fn record(&self, events: Vec<AuditEvent>) -> ApiResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        let busy = || ApiError::Unavailable {
            message: "the audit log is busy; try again".into(),
            retry_after: Some(Duration::from_secs(1)),
        };
        let permit = match tokio::time::timeout(self.queue_wait, self.queue.reserve()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => {
                return Err(ApiError::Unavailable {
                    message: "the server is shutting down".into(),
                    retry_after: Some(Duration::from_secs(1)),
                });
            }
            Err(_) => return Err(busy()),
        };
        let (reply, outcome) = oneshot::channel();
        permit.send(Job {
            rows: events.into_iter().map(|e| e.row).collect(),
            reply,
        });
        match outcome.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if matches!(*e, sqlx::Error::PoolTimedOut) => Err(ApiError::Unavailable {
                message: "the database is busy; try again".into(),
                retry_after: Some(Duration::from_secs(1)),
            }),
            Ok(Err(e)) => Err(ApiError::internal(anyhow::anyhow!(
                "cannot store audit events: {e}"
            ))),
            Err(_) => Err(ApiError::internal(anyhow::anyhow!(
                "the audit writer stopped"
            ))),
        }
    }

    /// Stops taking events, commits every queued one and waits for the writer to finish.
    pub async fn shutdown(&self) {
        let stop = self.stop.lock().ok().and_then(|mut s| s.take());
        if let Some((stop, task)) = stop {
            let _ = stop.send(());
            if let Err(e) = task.await {
                tracing::error!(error = %e, "the audit writer ended abnormally");
            }
        }
    }
}

/// The writer task: batch, commit, answer; until stopped (then drains the queue) or until every
/// sender is gone.
async fn run(
    sink: impl AuditSink,
    mut jobs: mpsc::Receiver<Job>,
    mut stop: oneshot::Receiver<()>,
    batch_rows: usize,
) {
    let mut stopping = false;
    let mut carry = None;
    loop {
        let first = match carry.take() {
            Some(job) => job,
            None => tokio::select! {
                job = jobs.recv() => match job {
                    Some(job) => job,
                    None => return,
                },
                _ = &mut stop, if !stopping => {
                    // New requests are refused; those already queued are still committed.
                    stopping = true;
                    jobs.close();
                    continue;
                }
            },
        };
        let (batch, rest) = gather(first, &mut jobs, batch_rows);
        carry = rest;
        commit(&sink, batch).await;
    }
}

/// The batch that starts with `first`: further queued jobs while they fit in `batch_rows` (a
/// larger first job goes alone). A job that does not fit is returned for the next batch.
fn gather(
    first: Job,
    jobs: &mut mpsc::Receiver<Job>,
    batch_rows: usize,
) -> (Vec<Job>, Option<Job>) {
    let mut rows = first.rows.len();
    let mut batch = vec![first];
    while rows < batch_rows {
        let Ok(job) = jobs.try_recv() else { break };
        if rows + job.rows.len() > batch_rows {
            return (batch, Some(job));
        }
        rows += job.rows.len();
        batch.push(job);
    }
    (batch, None)
}

async fn commit(sink: &impl AuditSink, mut batch: Vec<Job>) {
    let rows: Vec<AuditRow> = batch
        .iter_mut()
        .flat_map(|job| std::mem::take(&mut job.rows))
        .collect();
    let outcome = sink.write(&rows).await.map_err(Arc::new);
    if let Err(e) = &outcome {
        tracing::error!(error = %e, rows = rows.len(), requests = batch.len(), "audit batch failed; its reads are refused");
    }
    for job in batch {
        // A request that went away no longer waits; its events are stored all the same.
        let _ = job.reply.send(outcome.clone());
    }
}

/// Filters of an organization's audit log, as the caller names things (slugs).
#[derive(Debug, Clone, Default)]
pub struct OrgAuditQuery {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub project: Option<String>,
    pub environment: Option<String>,
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
}

/// An organization's events, newest first; owners and admins only.
pub async fn list_for_org(
    state: &crate::state::AppState,
    principal: &Principal,
    org: &str,
    query: &OrgAuditQuery,
    before: Option<AuditEventId>,
    limit: u32,
) -> crate::error::ApiResult<Vec<AuditRow>> {
    use crate::authz::Action;
    use crate::service::tenancy;
    let ctx = tenancy::org(state, principal, org, Action::OrgAuditRead).await?;
    let mut filter = db::audit::OrgAuditFilter {
        actor_id: query.actor.clone(),
        action: query.action.clone(),
        since: query.since,
        until: query.until,
        ..Default::default()
    };
    if let Some(project) = &query.project {
        // Events of a deleted project stay filterable by nothing but time: an unknown slug
        // matches no event rather than all of them.
        let found = db::projects::by_slug(state.db.pool(), ctx.org.id, project).await?;
        filter.project_id = Some(
            found
                .as_ref()
                .map_or_else(|| "-".to_owned(), |p| p.id.to_string()),
        );
        if let (Some(env), Some(p)) = (&query.environment, &found) {
            let env = db::projects::environment(state.db.pool(), p.id, env).await?;
            filter.environment_id = Some(env.map_or_else(|| "-".to_owned(), |e| e.id.to_string()));
        }
    } else if query.environment.is_some() {
        return Err(crate::error::ApiError::bad_request(
            "invalid_query",
            "environment needs project",
        ));
    }
    Ok(db::audit::list_for_org(
        state.db.pool(),
        &ctx.org.id.to_string(),
        &filter,
        before,
        i64::from(limit) + 1,
    )
    .await?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Mutex as StdMutex;

    use tokio::sync::{Notify, Semaphore};

    use super::*;

    /// Commits batches in memory; fails a batch holding a `poison` event; optionally holds each
    /// write until the test lets it through.
    #[derive(Clone, Default)]
    struct Memory {
        committed: Arc<StdMutex<Vec<Vec<String>>>>,
        entered: Arc<Notify>,
        gate: Option<Arc<Semaphore>>,
    }

    impl AuditSink for Memory {
        async fn write(&self, rows: &[AuditRow]) -> Result<(), sqlx::Error> {
            self.entered.notify_one();
            if let Some(gate) = &self.gate {
                gate.acquire().await.expect("gate open").forget();
            }
            if rows.iter().any(|r| r.action == "poison") {
                return Err(sqlx::Error::Protocol("a row was refused".into()));
            }
            let actions = rows.iter().map(|r| r.action.clone()).collect();
            self.committed.lock().unwrap().push(actions);
            Ok(())
        }
    }

    fn event(action: &'static str) -> AuditEvent {
        AuditEvent::new(action, Outcome::Success, &ClientMeta::default())
    }

    fn job(rows: usize) -> (Job, oneshot::Receiver<BatchOutcome>) {
        let (reply, answer) = oneshot::channel();
        let rows = (0..rows).map(|_| event("read").row).collect();
        (Job { rows, reply }, answer)
    }

    /// A writer whose sink holds every batch until `gate` lets it through.
    fn gated(queue_len: usize) -> (Arc<Semaphore>, Memory, Arc<AuditWriter>) {
        let gate = Arc::new(Semaphore::new(0));
        let sink = Memory {
            gate: Some(gate.clone()),
            ..Memory::default()
        };
        let writer = Arc::new(AuditWriter::start(sink.clone(), limits(queue_len)));
        (gate, sink, writer)
    }

    /// Records the event `action` from a task of its own.
    fn spawn_record(
        writer: &Arc<AuditWriter>,
        action: &'static str,
    ) -> tokio::task::JoinHandle<ApiResult<()>> {
        let writer = writer.clone();
        tokio::spawn(async move { writer.record(vec![event(action)]).await })
    }

    fn limits(queue_len: usize) -> WriterLimits {
        WriterLimits {
            queue_len,
            batch_rows: 8,
            queue_wait: Duration::from_millis(50),
        }
    }

    #[test]
    fn a_batch_takes_queued_jobs_up_to_the_row_cap_and_keeps_the_next_one() {
        let (queue, mut jobs) = mpsc::channel(8);
        for rows in [2, 1, 3, 1] {
            assert!(queue.try_send(job(rows).0).is_ok());
        }
        let (first, _) = job(1);
        let (batch, rest) = gather(first, &mut jobs, 5);
        let sizes: Vec<usize> = batch.iter().map(|j| j.rows.len()).collect();
        assert_eq!(
            sizes,
            [1, 2, 1],
            "three more rows would pass the cap of five"
        );
        let rest = rest.expect("the job that did not fit is kept");
        assert_eq!(rest.rows.len(), 3);
        let (batch, rest) = gather(rest, &mut jobs, 5);
        assert_eq!(batch.iter().map(|j| j.rows.len()).sum::<usize>(), 4);
        assert!(rest.is_none());
    }

    #[test]
    fn a_job_larger_than_the_cap_goes_alone() {
        let (queue, mut jobs) = mpsc::channel(8);
        assert!(queue.try_send(job(1).0).is_ok());
        let (batch, rest) = gather(job(9).0, &mut jobs, 4);
        assert_eq!((batch.len(), rest.is_none()), (1, true));
        assert_eq!(
            jobs.try_recv().map(|j| j.rows.len()).ok(),
            Some(1),
            "the queued job waits for the next batch"
        );
    }

    #[tokio::test]
    async fn requests_queued_together_are_committed_in_one_transaction() {
        let sink = Memory::default();
        let writer = AuditWriter::start(sink.clone(), limits(16));
        // All four are queued before the writer task first runs (one thread, no yield between).
        let results = futures::future::join_all(
            ["a", "b", "c", "d"].map(|a| writer.record(vec![event(a), event(a)])),
        )
        .await;
        assert!(results.iter().all(Result::is_ok));
        let committed = sink.committed.lock().unwrap().clone();
        assert_eq!(committed, [["a", "a", "b", "b", "c", "c", "d", "d"]]);
    }

    #[tokio::test]
    async fn a_failed_batch_fails_every_request_in_it_and_the_writer_goes_on() {
        let sink = Memory::default();
        let writer = AuditWriter::start(sink.clone(), limits(16));
        let results = futures::future::join_all(
            ["good", "poison", "good"].map(|a| writer.record(vec![event(a)])),
        )
        .await;
        for result in &results {
            assert!(
                matches!(result, Err(ApiError::Internal(_))),
                "no request of a failed batch is told its event is stored: {result:?}"
            );
        }
        assert!(sink.committed.lock().unwrap().is_empty());
        writer.record(vec![event("later")]).await.unwrap();
        assert_eq!(*sink.committed.lock().unwrap(), [["later"]]);
    }

    #[tokio::test]
    async fn a_full_queue_makes_a_request_wait_then_refuses_it_with_503() {
        let (gate, sink, writer) = gated(1);
        let record = |action| spawn_record(&writer, action);
        let writing = record("first");
        sink.entered.notified().await;
        // The writer holds "first"; "second" takes the one place in the queue.
        let queued = record("second");
        while writer.queue.capacity() > 0 {
            tokio::task::yield_now().await;
        }
        let refused = writer.record(vec![event("third")]).await;
        assert!(
            matches!(
                refused,
                Err(ApiError::Unavailable {
                    retry_after: Some(_),
                    ..
                })
            ),
            "{refused:?}"
        );
        gate.add_permits(2);
        writing.await.unwrap().unwrap();
        queued.await.unwrap().unwrap();
        assert_eq!(*sink.committed.lock().unwrap(), [["first"], ["second"]]);
    }

    #[tokio::test]
    async fn shutdown_commits_what_is_queued_and_refuses_what_comes_after() {
        let (gate, sink, writer) = gated(4);
        let record = |action| spawn_record(&writer, action);
        let writing = record("first");
        sink.entered.notified().await;
        let queued = record("second");
        while writer.queue.capacity() == writer.queue.max_capacity() {
            tokio::task::yield_now().await;
        }
        let stopping = {
            let writer = writer.clone();
            tokio::spawn(async move { writer.shutdown().await })
        };
        gate.add_permits(2);
        stopping.await.unwrap();
        writing.await.unwrap().unwrap();
        queued.await.unwrap().unwrap();
        assert_eq!(*sink.committed.lock().unwrap(), [["first"], ["second"]]);
        let after = writer.record(vec![event("late")]).await;
        assert!(
            matches!(after, Err(ApiError::Unavailable { .. })),
            "{after:?}"
        );
    }
}
