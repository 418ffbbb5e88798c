//! A project's webhooks: the list, creating one (its signing secret shown once), editing,
//! enabling and disabling, rotating the secret (shown once), pinging, deleting, and a
//! webhook's delivery log with redelivery.
//!
//! Webhooks are managed by those who may update the project (project and organization
//! admins), as in the API: others are told so, and the service refuses them anyway.

use std::collections::BTreeSet;

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use coffer_client::types::{
    CreateWebhookRequest, EventType, UpdateWebhookRequest, Webhook, WebhookAttempt,
};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;

use super::{FormError, Layout, when};
use crate::authz::Action;
use crate::db;
use crate::error::ApiError;
use crate::service::dashboard::may_in_project;
use crate::service::tenancy::{self, ProjectCtx};
use crate::service::{self, ClientMeta};
use crate::state::AppState;
use crate::web::session::SignedIn;
use crate::web::{WebError, render};

/// Most webhooks listed (a project has at most 20).
const PAGE: u32 = 100;

/// Most delivery attempts read for a webhook's log.
const ATTEMPTS_READ: u32 = 100;

/// Every event type, in the order the forms offer them.
const EVENT_TYPES: &[EventType] = &[
    EventType::SecretsChanged,
    EventType::EnvironmentCreated,
    EventType::EnvironmentRenamed,
    EventType::EnvironmentDeleted,
    EventType::LeaseIssued,
    EventType::LeaseRenewed,
    EventType::LeaseRevoked,
    EventType::LeaseFailed,
];

pub fn routes() -> axum::Router<AppState> {
    let base = "/orgs/{org}/projects/{project}/webhooks";
    axum::Router::new()
        .route(base, get(list).post(create))
        .route(&format!("{base}/{{id}}"), get(show).post(update))
        .route(&format!("{base}/{{id}}/enable"), post(enable))
        .route(&format!("{base}/{{id}}/disable"), post(disable))
        .route(&format!("{base}/{{id}}/rotate-secret"), post(rotate))
        .route(&format!("{base}/{{id}}/ping"), post(ping))
        .route(&format!("{base}/{{id}}/delete"), post(delete))
        .route(
            &format!("{base}/{{id}}/deliveries/{{delivery}}/redeliver"),
            post(redeliver),
        )
}

type ProjectPath = (String, String);
type HookPath = (String, String, String);

fn list_url(org: &str, project: &str) -> String {
    format!("/orgs/{org}/projects/{project}/webhooks")
}

/// A webhook as the pages show it.
#[derive(Debug)]
pub struct HookView {
    pub id: String,
    pub url: String,
    /// `All events` or the list.
    pub events: String,
    pub environments: String,
    pub enabled: bool,
    pub consecutive_failures: i64,
    pub disabled_reason: Option<String>,
    pub previous_until: Option<String>,
    pub created: String,
}

impl HookView {
    fn of(w: &Webhook) -> Self {
        Self {
            id: w.id.clone(),
            url: w.url.clone(),
            events: w.events.as_ref().map_or_else(
                || "All events".to_owned(),
                |e| e.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", "),
            ),
            environments: w
                .environments
                .as_ref()
                .map_or_else(|| "All environments".to_owned(), |e| e.join(", ")),
            enabled: w.enabled,
            consecutive_failures: w.consecutive_failures,
            disabled_reason: w.disabled_reason.clone(),
            previous_until: w.previous_secret_expires_at.map(when),
            created: when(w.created_at),
        }
    }

    /// Enabled, but its last attempts failed.
    pub fn failing(&self) -> bool {
        self.enabled && self.consecutive_failures > 0
    }
}

/// A checkbox of a form.
#[derive(Debug)]
pub struct Choice {
    pub value: String,
    pub label: String,
    pub checked: bool,
}

/// What a webhook form was sent with (or shows): its URL and the checked filters.
#[derive(Debug, Default)]
struct HookForm {
    url: String,
    events: BTreeSet<String>,
    environments: BTreeSet<String>,
}

impl HookForm {
    fn of(w: &Webhook) -> Self {
        Self {
            url: w.url.clone(),
            events: w
                .events
                .iter()
                .flatten()
                .map(|t| t.as_str().to_owned())
                .collect(),
            environments: w.environments.iter().flatten().cloned().collect(),
        }
    }

    /// From the form's fields (`events` and `environments` repeat).
    fn parse(fields: Vec<(String, String)>) -> Self {
        let mut form = Self::default();
        for (name, value) in fields {
            match name.as_str() {
                "url" => form.url = value.trim().to_owned(),
                "events" => {
                    form.events.insert(value);
                }
                "environments" => {
                    form.environments.insert(value);
                }
                _ => {}
            }
        }
        form
    }

    /// The checked event types (none: all of them).
    fn event_types(&self) -> Result<Option<Vec<EventType>>, ApiError> {
        if self.events.is_empty() {
            return Ok(None);
        }
        self.events
            .iter()
            .map(|e| {
                e.parse::<EventType>().map_err(|()| {
                    ApiError::validation("invalid_events", format!("`{e}` is not an event type"))
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// The checked environments (none: all of them).
    fn environment_slugs(&self) -> Option<Vec<String>> {
        (!self.environments.is_empty()).then(|| self.environments.iter().cloned().collect())
    }

    fn event_choices(&self) -> Vec<Choice> {
        EVENT_TYPES
            .iter()
            .map(|t| Choice {
                value: t.as_str().to_owned(),
                label: t.as_str().to_owned(),
                checked: self.events.contains(t.as_str()),
            })
            .collect()
    }
}

/// The refusal of a webhook form, next to the field it concerns.
fn form_error(e: &ApiError) -> FormError {
    let mut error = FormError::from_api(e);
    error.field = match e.code() {
        "invalid_url" | "url_not_allowed" => Some("url"),
        "invalid_environments" | "unknown_environment" => Some("environments"),
        "invalid_events" => Some("events"),
        _ => None,
    };
    error
}

async fn env_choices(
    state: &AppState,
    ctx: &ProjectCtx,
    checked: &BTreeSet<String>,
) -> Result<Vec<Choice>, WebError> {
    Ok(db::projects::environments(state.db.pool(), ctx.project.id)
        .await
        .map_err(ApiError::from)?
        .into_iter()
        .map(|e| Choice {
            checked: checked.contains(&e.slug),
            value: e.slug,
            label: e.name,
        })
        .collect())
}

#[derive(Template)]
#[template(path = "webhooks.html")]
struct WebhooksPage {
    layout: Layout,
    org: String,
    project: String,
    project_name: String,
    may_manage: bool,
    hooks: Vec<HookView>,
    url: String,
    events: Vec<Choice>,
    environments: Vec<Choice>,
    error: FormError,
    form_action: String,
    form_submit: &'static str,
}

/// The project (which the caller may see) and whether they may manage its webhooks.
async fn project_ctx(
    state: &AppState,
    who: &SignedIn,
    org: &str,
    project: &str,
) -> Result<(ProjectCtx, bool), WebError> {
    let ctx = tenancy::project(state, &who.principal, org, project, Action::ProjectRead).await?;
    let may_manage = may_in_project(&ctx, Action::ProjectUpdate);
    Ok((ctx, may_manage))
}

async fn list_page(
    state: &AppState,
    who: &SignedIn,
    (org, project): &ProjectPath,
    form: HookForm,
    error: FormError,
) -> Result<Response, WebError> {
    let (ctx, may_manage) = project_ctx(state, who, org, project).await?;
    let hooks = if may_manage {
        service::webhooks::list(state, &who.principal, org, project, None, PAGE)
            .await?
            .iter()
            .map(HookView::of)
            .collect()
    } else {
        Vec::new()
    };
    let layout = Layout::signed_in(
        state,
        who,
        Some(&ctx.org),
        format!("{} · webhooks", ctx.project.name),
        "projects",
    )
    .await?;
    let page = render(&WebhooksPage {
        layout,
        org: org.clone(),
        project: project.clone(),
        project_name: ctx.project.name.clone(),
        may_manage,
        hooks,
        events: form.event_choices(),
        environments: env_choices(state, &ctx, &form.environments).await?,
        url: form.url,
        error,
        form_action: list_url(org, project),
        form_submit: "Create webhook",
    })?;
    // The page says who manages webhooks; the status says this caller may not.
    if may_manage {
        Ok(page)
    } else {
        Ok((StatusCode::FORBIDDEN, page).into_response())
    }
}

/// `/orgs/{org}/projects/{project}/webhooks`: the project's webhooks and a form for a new one.
pub async fn list(
    State(state): State<AppState>,
    who: SignedIn,
    Path(path): Path<ProjectPath>,
) -> Result<Response, WebError> {
    list_page(&state, &who, &path, HookForm::default(), FormError::none()).await
}

/// A delivery of the log: its newest attempt, and how many there were.
#[derive(Debug)]
pub struct DeliveryView {
    pub id: String,
    pub kind: String,
    pub event_id: Option<i64>,
    /// `succeeded`, `retrying` or `failed`.
    pub status: String,
    pub attempts: i64,
    pub response: Option<i64>,
    pub error: Option<String>,
    pub time: String,
    pub next_retry: Option<String>,
}

/// The log's attempts (newest first) as deliveries (newest first).
fn deliveries(attempts: Vec<WebhookAttempt>) -> Vec<DeliveryView> {
    let mut out: Vec<DeliveryView> = Vec::new();
    for a in attempts {
        if let Some(d) = out.iter_mut().find(|d| d.id == a.delivery_id) {
            d.attempts = d.attempts.max(a.attempt);
            continue;
        }
        out.push(DeliveryView {
            id: a.delivery_id,
            kind: a.kind,
            event_id: a.event_id,
            status: a.status,
            attempts: a.attempt,
            response: a.response_status,
            error: a.error,
            time: when(a.started_at),
            next_retry: a.next_attempt_at.map(when),
        });
    }
    out
}

/// A signing secret shown once, and why.
#[derive(Debug)]
pub struct ShownSecret {
    pub value: String,
    pub rotated: bool,
}

#[derive(Template)]
#[template(path = "webhook.html")]
struct WebhookPage {
    layout: Layout,
    org: String,
    project: String,
    project_name: String,
    base: String,
    hook: HookView,
    url: String,
    events: Vec<Choice>,
    environments: Vec<Choice>,
    error: FormError,
    secret: Option<ShownSecret>,
    queued: Option<String>,
    deliveries: Vec<DeliveryView>,
    form_action: String,
    form_submit: &'static str,
}

/// What a webhook's page shows beyond the webhook: a form sent back with its refusal, a
/// secret shown once, a delivery just queued.
#[derive(Default)]
struct Extras {
    form: Option<HookForm>,
    error: FormError,
    secret: Option<ShownSecret>,
    queued: Option<String>,
}

async fn hook_page(
    state: &AppState,
    who: &SignedIn,
    (org, project, id): &HookPath,
    extras: Extras,
) -> Result<Response, WebError> {
    let hook = service::webhooks::get(state, &who.principal, org, project, id).await?;
    // The webhook's service call decided access; this is the project for the frame.
    let (ctx, _) = project_ctx(state, who, org, project).await?;
    let attempts =
        service::webhooks::attempts(state, &who.principal, org, project, id, None, ATTEMPTS_READ)
            .await?;
    let form = extras.form.unwrap_or_else(|| HookForm::of(&hook));
    let layout = Layout::signed_in(
        state,
        who,
        Some(&ctx.org),
        format!("{} · webhook", ctx.project.name),
        "projects",
    )
    .await?;
    let base = format!("{}/{id}", list_url(org, project));
    render(&WebhookPage {
        layout,
        org: org.clone(),
        project: project.clone(),
        project_name: ctx.project.name.clone(),
        form_action: base.clone(),
        form_submit: "Save webhook",
        base,
        hook: HookView::of(&hook),
        events: form.event_choices(),
        environments: env_choices(state, &ctx, &form.environments).await?,
        url: form.url,
        error: extras.error,
        secret: extras.secret,
        queued: extras.queued,
        deliveries: deliveries(attempts.into_iter().map(|(a, _)| a).collect()),
    })
}

#[derive(Debug, Deserialize)]
pub struct ShowQuery {
    /// A delivery just queued (ping, redelivery), to say so.
    #[serde(default)]
    queued: Option<String>,
}

/// `…/webhooks/{id}`: a webhook, its settings and its delivery log.
pub async fn show(
    State(state): State<AppState>,
    who: SignedIn,
    Path(path): Path<HookPath>,
    Query(q): Query<ShowQuery>,
) -> Result<Response, WebError> {
    let queued = q.queued.filter(|d| uuid::Uuid::parse_str(d).is_ok());
    hook_page(
        &state,
        &who,
        &path,
        Extras {
            queued,
            ..Extras::default()
        },
    )
    .await
}

fn shown(secret: &SecretString, rotated: bool) -> Option<ShownSecret> {
    Some(ShownSecret {
        value: secret.expose_secret().to_owned(),
        rotated,
    })
}

/// Creates a webhook; its page answers, with the signing secret shown this once.
pub async fn create(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path(path): Path<ProjectPath>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Result<Response, WebError> {
    let (org, project) = &path;
    let form = HookForm::parse(fields);
    let created = match form.event_types() {
        Ok(events) => {
            let request = CreateWebhookRequest {
                url: form.url.clone(),
                environments: form.environment_slugs(),
                events,
                enabled: None,
            };
            service::webhooks::create(&state, &meta, &who.principal, org, project, request).await
        }
        Err(e) => Err(e),
    };
    match created {
        Ok((hook, secret)) => {
            let page = hook_page(
                &state,
                &who,
                &(org.clone(), project.clone(), hook.id),
                Extras {
                    secret: shown(&secret, false),
                    ..Extras::default()
                },
            )
            .await?;
            Ok((StatusCode::CREATED, page).into_response())
        }
        Err(e) => {
            let status = e.status();
            let page = list_page(&state, &who, &path, form, form_error(&e)).await?;
            Ok((status, page).into_response())
        }
    }
}

/// Saves a webhook's URL and filters.
pub async fn update(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path(path): Path<HookPath>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Result<Response, WebError> {
    let (org, project, id) = &path;
    let form = HookForm::parse(fields);
    let updated = match form.event_types() {
        Ok(events) => {
            let request = UpdateWebhookRequest {
                url: Some(form.url.clone()),
                environments: Some(form.environment_slugs()),
                events: Some(events),
                enabled: None,
            };
            service::webhooks::update(&state, &meta, &who.principal, org, project, id, request)
                .await
        }
        Err(e) => Err(e),
    };
    match updated {
        Ok(_) => Ok(Redirect::to(&format!("{}/{id}", list_url(org, project))).into_response()),
        Err(e) => {
            let status = e.status();
            let extras = Extras {
                error: form_error(&e),
                form: Some(form),
                ..Extras::default()
            };
            let page = hook_page(&state, &who, &path, extras).await?;
            Ok((status, page).into_response())
        }
    }
}

async fn set_enabled(
    state: &AppState,
    who: &SignedIn,
    meta: &ClientMeta,
    (org, project, id): &HookPath,
    enabled: bool,
) -> Result<Response, WebError> {
    let request = UpdateWebhookRequest {
        enabled: Some(enabled),
        ..UpdateWebhookRequest::default()
    };
    service::webhooks::update(state, meta, &who.principal, org, project, id, request).await?;
    Ok(Redirect::to(&format!("{}/{id}", list_url(org, project))).into_response())
}

/// Enables a webhook (its failure count starts again from zero).
pub async fn enable(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path(path): Path<HookPath>,
) -> Result<Response, WebError> {
    set_enabled(&state, &who, &meta, &path, true).await
}

pub async fn disable(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path(path): Path<HookPath>,
) -> Result<Response, WebError> {
    set_enabled(&state, &who, &meta, &path, false).await
}

/// Gives the webhook a new signing secret, shown this once; the previous one signs too for
/// the default overlap.
pub async fn rotate(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path(path): Path<HookPath>,
) -> Result<Response, WebError> {
    let (org, project, id) = &path;
    let (secret, _) =
        service::webhooks::rotate_secret(&state, &meta, &who.principal, org, project, id, None)
            .await?;
    hook_page(
        &state,
        &who,
        &path,
        Extras {
            secret: shown(&secret, true),
            ..Extras::default()
        },
    )
    .await
}

fn queued_url(org: &str, project: &str, id: &str, delivery: &str) -> String {
    format!(
        "{}/{id}?queued={}",
        list_url(org, project),
        crate::web::urlencode(delivery)
    )
}

/// Sends the webhook a test `ping`.
pub async fn ping(
    State(state): State<AppState>,
    who: SignedIn,
    Path((org, project, id)): Path<HookPath>,
) -> Result<Response, WebError> {
    let delivery = service::webhooks::ping(&state, &who.principal, &org, &project, &id).await?;
    Ok(Redirect::to(&queued_url(&org, &project, &id, &delivery)).into_response())
}

/// Queues a delivery again.
pub async fn redeliver(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path((org, project, id, delivery)): Path<(String, String, String, String)>,
) -> Result<Response, WebError> {
    let queued = service::webhooks::redeliver(
        &state,
        &meta,
        &who.principal,
        &org,
        &project,
        &id,
        &delivery,
    )
    .await?;
    Ok(Redirect::to(&queued_url(&org, &project, &id, &queued)).into_response())
}

/// Deletes a webhook and its queue: back to the list (htmx, after its confirmation: there).
pub async fn delete(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    headers: HeaderMap,
    Path((org, project, id)): Path<HookPath>,
) -> Result<Response, WebError> {
    service::webhooks::delete(&state, &meta, &who.principal, &org, &project, &id).await?;
    let to = list_url(&org, &project);
    if headers.contains_key("hx-request") {
        let mut response = ().into_response();
        if let Ok(v) = HeaderValue::from_str(&to) {
            response.headers_mut().insert("hx-location", v);
        }
        return Ok(response);
    }
    Ok(Redirect::to(&to).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Timestamp;

    fn attempt(delivery: &str, n: i64, status: &str) -> WebhookAttempt {
        WebhookAttempt {
            id: format!("{delivery}-{n}"),
            delivery_id: delivery.to_owned(),
            event_id: Some(7),
            kind: "secrets.changed".to_owned(),
            attempt: n,
            status: status.to_owned(),
            started_at: Timestamp(0),
            duration_ms: 3,
            response_status: Some(500),
            response_body: None,
            error: None,
            next_attempt_at: None,
        }
    }

    #[test]
    fn attempts_are_shown_as_deliveries_with_their_newest_attempt() {
        let log = vec![
            attempt("b", 1, "succeeded"),
            attempt("a", 3, "failed"),
            attempt("a", 2, "retrying"),
            attempt("a", 1, "retrying"),
        ];
        let shown = deliveries(log);
        assert_eq!(shown.len(), 2);
        assert_eq!((shown[0].id.as_str(), shown[0].attempts), ("b", 1));
        assert_eq!(
            (
                shown[1].id.as_str(),
                shown[1].attempts,
                shown[1].status.as_str()
            ),
            ("a", 3, "failed")
        );
    }

    #[test]
    fn repeated_fields_are_the_checked_filters() {
        let form = HookForm::parse(vec![
            ("csrf".into(), "t".into()),
            ("url".into(), " https://h/x ".into()),
            ("events".into(), "secrets.changed".into()),
            ("events".into(), "lease.issued".into()),
        ]);
        assert_eq!(form.url, "https://h/x");
        assert_eq!(form.event_types().ok().flatten().map(|e| e.len()), Some(2));
        assert_eq!(form.environment_slugs(), None);
        let bad = HookForm::parse(vec![("events".into(), "nope".into())]);
        assert!(bad.event_types().is_err());
    }
}
