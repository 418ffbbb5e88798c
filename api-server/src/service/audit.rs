//! Audit events: who did what, from where, with what outcome. Never a password, token or value.

use sqlx::any::AnyExecutor;

use crate::auth::{Principal, Subject};
use crate::db;
use crate::db::Db;
use crate::db::audit::AuditRow;
use crate::ids::{AuditEventId, Timestamp, UserId};
use crate::service::ClientMeta;

/// The actions recorded.
pub mod action {
    pub const REGISTER: &str = "auth.register";
    pub const LOGIN: &str = "auth.login";
    pub const REFRESH: &str = "auth.refresh";
    pub const REFRESH_REUSE_DETECTED: &str = "auth.refresh_reuse_detected";
    pub const LOGOUT: &str = "auth.logout";
    pub const SESSIONS_ENDED: &str = "auth.sessions_ended";
    pub const PROFILE_UPDATED: &str = "auth.profile_updated";
    pub const PASSWORD_CHANGED: &str = "auth.password_changed";
    pub const PASSWORD_RESET_ISSUED: &str = "password.reset_issued";
    pub const PASSWORD_RESET: &str = "password.reset";
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

    /// An event of the server's own doing (no request behind it): its actor is `system`.
    pub fn system(action: &'static str, outcome: Outcome) -> Self {
        let mut event = Self::new(action, outcome, &ClientMeta::default());
        event.row.actor_type = "system".into();
        event
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

    /// Details, when there are any.
    pub fn details_if(self, details: Option<serde_json::Value>) -> Self {
        match details {
            Some(details) => self.details(details),
            None => self,
        }
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
    /// The events of reads go through [`crate::service::audit_journal::AuditWriter::record`]
    /// instead.
    pub async fn record<'e>(self, ex: impl AnyExecutor<'e>) -> Result<(), sqlx::Error> {
        db::audit::insert(ex, &self.row).await
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
    state.audit.flush().await?;
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

/// What a live stream authenticates with again from time to time (a credential revoked
/// meanwhile ends it): the API's bearer token, or the dashboard's session cookie.
#[derive(Debug)]
pub enum StreamCredential {
    Bearer(secrecy::SecretString),
    Dashboard(secrecy::SecretString),
}

/// Users' emails by id.
pub type Emails = std::collections::HashMap<UserId, String>;

/// How a live audit stream writes each event.
#[derive(Debug, Clone, Copy)]
pub enum Render {
    Plain(fn(&AuditRow) -> String),
    /// Given the emails of the users acting (one lookup per user and batch).
    WithEmails(fn(&AuditRow, &Emails) -> String),
}

/// How often the live audit stream reads the organization's feed when nothing woke it.
pub const FEED_POLL_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// An organization's live audit stream (owners and admins): every event stored after `after`
/// (or from now), each rendered by `render`, resumable by its SSE id (a [`FeedPosition`]).
/// [`Render::WithEmails`] is given the emails of the users acting in each batch of events.
pub async fn open_org_feed(
    state: &crate::state::AppState,
    principal: Principal,
    token: StreamCredential,
    org: String,
    after: Option<db::audit::FeedPosition>,
    render: Render,
) -> crate::error::ApiResult<tokio::sync::mpsc::Receiver<crate::service::events::Frame>> {
    use crate::authz::Action;
    use crate::service::tenancy;
    let ctx = tenancy::org(state, &principal, &org, Action::OrgAuditRead).await?;
    let (kind, id) = principal.actor();
    let slot = state
        .event_streams
        .take(state, ctx.org.id, format!("{kind}:{id}"))?;
    let wakes = state.db.event_wakes();
    let changes = crate::service::events::Changes::new(state);
    let org_id = ctx.org.id.to_string();
    let (cursor, opened) = match after {
        Some(after) => (after, None),
        None => {
            let mut conn = state.db.pool().acquire().await?;
            db::audit::feed_start(&mut conn, &org_id).await?
        }
    };
    let feed = OrgFeed {
        state: state.clone(),
        principal,
        token,
        org,
        org_id,
        cursor,
        opened,
        render,
        _slot: slot,
    };
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    tokio::spawn(crate::service::events::run_feed(
        feed, sender, wakes, changes,
    ));
    Ok(receiver)
}

/// The source of a live audit stream.
struct OrgFeed {
    state: crate::state::AppState,
    principal: Principal,
    token: StreamCredential,
    org: String,
    org_id: String,
    cursor: db::audit::FeedPosition,
    /// The snapshot a stream that started "now" skips the events of (see `feed_start`).
    opened: Option<String>,
    render: Render,
    _slot: crate::service::events::Slot,
}

impl crate::service::events::Feed for OrgFeed {
    async fn deliver(
        &mut self,
        sender: &tokio::sync::mpsc::Sender<crate::service::events::Frame>,
    ) -> Result<(), crate::service::events::End> {
        use crate::service::events::{End, Frame};
        const PAGE: i64 = 200;
        loop {
            let rows = {
                let mut conn = self.state.db.pool().acquire().await?;
                db::audit::feed_after(
                    &mut conn,
                    &self.org_id,
                    self.cursor,
                    self.opened.as_deref(),
                    PAGE,
                )
                .await?
            };
            let full = rows.len() as i64 == PAGE;
            let mut emails = Emails::new();
            if let Render::WithEmails(_) = self.render {
                for user in rows.iter().filter_map(|r| r.row.user_id) {
                    if let std::collections::hash_map::Entry::Vacant(slot) = emails.entry(user)
                        && let Some(found) = db::users::by_id(self.state.db.pool(), user).await?
                    {
                        slot.insert(found.email);
                    }
                }
            }
            for row in rows {
                self.cursor = db::audit::FeedPosition(row.feed_a, row.feed_b);
                let data = match self.render {
                    Render::Plain(render) => render(&row.row),
                    Render::WithEmails(render) => render(&row.row, &emails),
                };
                let frame = Frame {
                    id: self.cursor.to_string(),
                    event: "audit",
                    data,
                };
                sender.send(frame).await.map_err(|_| End::Done)?;
            }
            if !full {
                return Ok(());
            }
        }
    }

    async fn recheck(&mut self) -> Result<(), crate::service::events::End> {
        use secrecy::ExposeSecret as _;
        let principal = match &self.token {
            StreamCredential::Bearer(token) => {
                let caller = crate::auth::Caller::authenticate(
                    &self.state,
                    token.expose_secret(),
                    &axum::http::Method::GET,
                )
                .await?;
                let crate::auth::Caller::User(principal) = caller else {
                    return Err(crate::error::ApiError::not_found("organization").into());
                };
                principal
            }
            StreamCredential::Dashboard(cookie) => {
                crate::service::auth::dashboard_session(&self.state, cookie.expose_secret())
                    .await?
                    .ok_or_else(|| {
                        crate::error::ApiError::unauthorized(
                            "session_ended",
                            "the session has ended; sign in again",
                        )
                    })?
            }
        };
        if principal.actor() != self.principal.actor() {
            return Err(crate::error::ApiError::unauthorized(
                "invalid_token",
                "the token is invalid, expired or revoked",
            )
            .into());
        }
        crate::service::tenancy::org(
            &self.state,
            &principal,
            &self.org,
            crate::authz::Action::OrgAuditRead,
        )
        .await?;
        self.principal = principal;
        Ok(())
    }

    fn woken_by(&self, _: db::events::Wake) -> bool {
        true
    }

    fn poll_every(&self) -> std::time::Duration {
        FEED_POLL_EVERY
    }

    fn state(&self) -> &crate::state::AppState {
        &self.state
    }

    fn about(&self) -> String {
        format!("the audit feed of organization {}", self.org_id)
    }
}
