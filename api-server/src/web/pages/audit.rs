//! An organization's audit log (owners and admins): filters, pages, and a live view fed by
//! the audit stream (server-sent events) while the page is open.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::get;
use axum_extra::extract::cookie::CookieJar;
use secrecy::SecretString;
use serde::Deserialize;

use super::{Layout, when};
use crate::authz::Action;
use crate::db::audit::AuditRow;
use crate::error::ApiError;
use crate::ids::{AuditEventId, Timestamp};
use crate::service::audit::{Emails, OrgAuditQuery, Render, StreamCredential};
use crate::service::{self, tenancy};
use crate::state::AppState;
use crate::web::session::SignedIn;
use crate::web::{WebError, render, urlencode};

pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/orgs/{org}/audit", get(page))
        .route("/orgs/{org}/audit/stream", get(stream))
}

/// Events per page.
const PAGE: u32 = 100;

/// An event as a line of the log.
#[derive(Debug)]
pub struct EventView {
    pub id: String,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub outcome: String,
    pub target: String,
    pub ip: String,
    pub details: String,
}

fn short(id: &str) -> String {
    let tail: String = id
        .chars()
        .rev()
        .take(8)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("…{tail}")
}

fn view(row: &AuditRow, emails: &Emails) -> EventView {
    let actor = match (
        row.actor_type.as_str(),
        row.user_id,
        row.actor_id.as_deref(),
    ) {
        ("user", Some(user), _) if emails.contains_key(&user) => emails[&user].clone(),
        (kind, _, Some(id)) => format!("{} {}", kind.replace('_', " "), short(id)),
        (kind, _, None) => kind.replace('_', " "),
    };
    EventView {
        id: row.id.to_string(),
        at: when(row.occurred_at),
        actor,
        action: row.action.clone(),
        outcome: row.outcome.clone(),
        target: match (&row.target_type, &row.target_id) {
            (Some(t), Some(id)) => format!("{t} {}", short(id)),
            (Some(t), None) => t.clone(),
            _ => String::new(),
        },
        ip: row.client_ip.clone().unwrap_or_default(),
        details: row.details.clone().unwrap_or_default(),
    }
}

#[derive(Template)]
#[template(path = "fragments/audit_row.html")]
struct RowFragment<'a> {
    e: &'a EventView,
}

/// A stream frame: the event as the line the page shows.
fn render_row(row: &AuditRow, emails: &Emails) -> String {
    RowFragment {
        e: &view(row, emails),
    }
    .render()
    .unwrap_or_default()
}

#[derive(Debug, Default, Deserialize)]
pub struct Filters {
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    actor: Option<String>,
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    environment: Option<String>,
    /// `YYYY-MM-DD`, from the start of that day (UTC).
    #[serde(default)]
    since: Option<String>,
    /// `YYYY-MM-DD`, to the end of that day (UTC).
    #[serde(default)]
    until: Option<String>,
    /// Older than this event.
    #[serde(default)]
    before: Option<String>,
}

fn non_empty(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

fn day(text: &Option<String>, end: bool) -> Result<Option<Timestamp>, ApiError> {
    let Some(text) = non_empty(text) else {
        return Ok(None);
    };
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let date = time::Date::parse(&text, &format)
        .map_err(|_| ApiError::bad_request("invalid_query", "dates are written YYYY-MM-DD"))?;
    let start = Timestamp::from(date.midnight().assume_utc());
    Ok(Some(if end {
        start.plus(std::time::Duration::from_secs(86_400))
    } else {
        start
    }))
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    layout: Layout,
    org: String,
    events: Vec<EventView>,
    action: String,
    actor: String,
    project: String,
    environment: String,
    since: String,
    until: String,
    filtered: bool,
    older: Option<String>,
}

/// `/orgs/{org}/audit`
pub async fn page(
    State(state): State<AppState>,
    who: SignedIn,
    Path(org): Path<String>,
    Query(f): Query<Filters>,
) -> Result<Response, WebError> {
    let ctx = tenancy::org(&state, &who.principal, &org, Action::OrgAuditRead).await?;
    let query = OrgAuditQuery {
        actor: non_empty(&f.actor),
        action: non_empty(&f.action),
        project: non_empty(&f.project),
        environment: non_empty(&f.environment),
        since: day(&f.since, false)?,
        until: day(&f.until, true)?,
    };
    let before = non_empty(&f.before)
        .map(|b| {
            b.parse::<AuditEventId>()
                .map_err(|_| ApiError::bad_request("invalid_query", "no such page"))
        })
        .transpose()?;
    let mut rows =
        service::audit::list_for_org(&state, &who.principal, &org, &query, before, PAGE).await?;
    let more = rows.len() > PAGE as usize;
    rows.truncate(PAGE as usize);
    let mut emails = Emails::new();
    for user in rows.iter().filter_map(|r| r.user_id) {
        if let std::collections::hash_map::Entry::Vacant(slot) = emails.entry(user)
            && let Some(u) = crate::db::users::by_id(state.db.pool(), user)
                .await
                .map_err(ApiError::from)?
        {
            slot.insert(u.email);
        }
    }
    let events: Vec<EventView> = rows.iter().map(|r| view(r, &emails)).collect();
    let filtered = query.actor.is_some()
        || query.action.is_some()
        || query.project.is_some()
        || query.since.is_some()
        || query.until.is_some()
        || before.is_some();
    let older = more.then(|| {
        let last = events.last().map(|e| e.id.clone()).unwrap_or_default();
        let keep = |name: &str, v: &Option<String>| {
            non_empty(v)
                .map(|v| format!("&{name}={}", urlencode(&v)))
                .unwrap_or_default()
        };
        format!(
            "?before={last}{}{}{}{}{}{}",
            keep("action", &f.action),
            keep("actor", &f.actor),
            keep("project", &f.project),
            keep("environment", &f.environment),
            keep("since", &f.since),
            keep("until", &f.until)
        )
    });
    let layout = Layout::signed_in(&state, &who, Some(&ctx), "Audit log", "audit").await?;
    render(&AuditPage {
        layout,
        org,
        events,
        action: non_empty(&f.action).unwrap_or_default(),
        actor: non_empty(&f.actor).unwrap_or_default(),
        project: non_empty(&f.project).unwrap_or_default(),
        environment: non_empty(&f.environment).unwrap_or_default(),
        since: non_empty(&f.since).unwrap_or_default(),
        until: non_empty(&f.until).unwrap_or_default(),
        filtered,
        older,
    })
}

/// `/orgs/{org}/audit/stream`: new events as they are stored, each as a line of the table
/// (`event: audit`). The session is checked again whenever sessions end.
pub async fn stream(
    State(state): State<AppState>,
    who: SignedIn,
    jar: CookieJar,
    Path(org): Path<String>,
) -> Result<Response, WebError> {
    let cookie = jar
        .get(who.cookies.session)
        .map(|c| SecretString::from(c.value().to_owned()))
        .ok_or(WebError::SignIn { next: None })?;
    let frames = service::audit::open_org_feed(
        &state,
        who.principal,
        StreamCredential::Dashboard(cookie),
        org,
        None,
        Render::WithEmails(render_row),
    )
    .await?;
    Ok(crate::routes::events::sse(frames))
}
