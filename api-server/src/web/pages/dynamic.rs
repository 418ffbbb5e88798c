//! An environment's dynamic secrets: configuring one (PostgreSQL), its leases, issuing a lease
//! (its credentials shown once), revoking one or all of them.
//!
//! The administrator's connection URL is write-only: the forms never hold a stored one (an
//! edit without a new URL keeps it), and one refused is not sent back either. As in the API,
//! project admins configure dynamic secrets, readers of the environment's secrets issue
//! leases and revoke their own, writers revoke any.

use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use coffer_client::types::{
    CreateDynamicSecretRequest, DynamicConnection, DynamicEngine, DynamicSecret, IssueLeaseRequest,
    IssuedLease, Lease, LeaseState, Revealed, UpdateDynamicSecretRequest,
};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;

use super::{FormError, Layout, when};
use crate::auth::Caller;
use crate::authz::Action;
use crate::error::ApiError;
use crate::service::dashboard::may_in_env;
use crate::service::tenancy::{self, EnvPath};
use crate::service::{self, ClientMeta};
use crate::state::AppState;
use crate::web::session::SignedIn;
use crate::web::{WebError, render};

/// Most dynamic secrets listed (an environment has at most 20).
const LISTED: u32 = 50;

/// Newest leases listed per dynamic secret.
const LEASES_LISTED: u32 = 50;

/// What a new dynamic secret's form starts with.
const DEFAULT_TTL: &str = "3600";
const DEFAULT_MAX_TTL: &str = "86400";

pub fn routes() -> axum::Router<AppState> {
    let base = "/orgs/{org}/projects/{project}/envs/{env}/dynamic";
    axum::Router::new()
        .route(base, get(page).post(create))
        .route(&format!("{base}/{{name}}"), post(update))
        .route(&format!("{base}/{{name}}/delete"), post(delete))
        .route(&format!("{base}/{{name}}/leases"), post(issue))
        .route(&format!("{base}/{{name}}/revoke-all"), post(revoke_all))
        .route(
            &format!("{base}/{{name}}/leases/{{id}}/revoke"),
            post(revoke),
        )
}

type EnvParts = (String, String, String);
type NameParts = (String, String, String, String);

fn caller(who: &SignedIn) -> Caller {
    Caller::User(who.principal)
}

fn at((org, project, env): &EnvParts) -> EnvPath<'_> {
    EnvPath { org, project, env }
}

fn env_url((org, project, env): &EnvParts) -> String {
    format!("/orgs/{org}/projects/{project}/envs/{env}")
}

fn page_url(path: &EnvParts) -> String {
    format!("{}/dynamic", env_url(path))
}

fn split(parts: NameParts) -> (EnvParts, String) {
    let (org, project, env, name) = parts;
    ((org, project, env), name)
}

/// A form of a dynamic secret as sent (or as shown: never with a connection URL).
#[derive(Debug, Default, Deserialize)]
pub struct DynFields {
    #[serde(default)]
    name: String,
    /// Write-only: required for a new dynamic secret, blank to keep the stored one.
    #[serde(default)]
    connection_url: Option<SecretString>,
    #[serde(default)]
    grants: String,
    #[serde(default)]
    default_ttl: String,
    #[serde(default)]
    max_ttl: String,
    #[serde(default)]
    username_template: String,
    #[serde(default)]
    creation_statements: String,
    #[serde(default)]
    revocation_statements: String,
}

/// The values a form shows (everything but the connection URL).
#[derive(Debug, Default)]
pub struct DynForm {
    pub name: String,
    pub grants: String,
    pub default_ttl: String,
    pub max_ttl: String,
    pub username_template: String,
    pub creation_statements: String,
    pub revocation_statements: String,
}

impl DynForm {
    fn new_secret() -> Self {
        Self {
            default_ttl: DEFAULT_TTL.to_owned(),
            max_ttl: DEFAULT_MAX_TTL.to_owned(),
            ..Self::default()
        }
    }

    fn of(d: &DynamicSecret) -> Self {
        Self {
            name: d.name.clone(),
            grants: d.grants.join("\n"),
            default_ttl: d.default_ttl.to_string(),
            max_ttl: d.max_ttl.to_string(),
            username_template: d.username_template.clone(),
            creation_statements: d.creation_statements.join("\n"),
            revocation_statements: d.revocation_statements.join("\n"),
        }
    }

    fn sent(f: &DynFields) -> Self {
        Self {
            name: f.name.trim().to_owned(),
            grants: f.grants.clone(),
            default_ttl: f.default_ttl.trim().to_owned(),
            max_ttl: f.max_ttl.trim().to_owned(),
            username_template: f.username_template.trim().to_owned(),
            creation_statements: f.creation_statements.clone(),
            revocation_statements: f.revocation_statements.clone(),
        }
    }
}

/// The non-blank lines of a text area, trimmed.
fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The lines of `text` when there are any.
fn some_lines(text: &str) -> Option<Vec<String>> {
    Some(lines(text)).filter(|l| !l.is_empty())
}

/// A refusal, with the field it concerns when the page knows better than the code says.
struct Refusal {
    error: ApiError,
    field: Option<&'static str>,
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Self {
        Self { error, field: None }
    }
}

impl Refusal {
    fn form_error(&self) -> FormError {
        let e = &self.error;
        let mut error = FormError::from_api(e);
        error.field = self.field.or(match e.code() {
            "invalid_slug" | "dynamic_secret_exists" => Some("name"),
            "invalid_connection_url"
            | "connection_failed"
            | "connection_refused"
            | "connection_not_allowed"
            | "insufficient_privilege" => Some("connection_url"),
            "invalid_grants" => Some("grants"),
            "invalid_username_template" => Some("username_template"),
            "invalid_ttl" => Some("default_ttl"),
            "invalid_statements" if e.to_string().contains("revocation") => {
                Some("revocation_statements")
            }
            "invalid_statements" => Some("creation_statements"),
            _ => None,
        });
        error
    }
}

/// Seconds typed in `field`.
fn seconds(text: &str, field: &'static str) -> Result<u64, Refusal> {
    text.trim().parse::<u64>().map_err(|_| Refusal {
        error: ApiError::validation("invalid_ttl", "a number of seconds, such as 3600"),
        field: Some(field),
    })
}

/// A lease as the page lists it.
#[derive(Debug)]
pub struct LeaseView {
    pub id: String,
    pub username: String,
    pub state: &'static str,
    pub issued: String,
    pub expires: String,
    pub last_error: Option<String>,
    /// Revocable now (active, or being revoked) by this user.
    pub may_revoke: bool,
}

/// A dynamic secret with its leases and its edit form.
#[derive(Debug)]
pub struct DynView {
    pub name: String,
    pub engine: &'static str,
    pub grants: Vec<String>,
    pub default_ttl: u64,
    pub max_ttl: u64,
    pub live_leases: i64,
    pub updated: String,
    pub leases: Vec<LeaseView>,
    /// More leases than listed.
    pub more_leases: bool,
    /// Its settings form, rendered.
    pub form_html: String,
    pub error: FormError,
    pub lease_error: FormError,
}

/// Credentials just issued: shown this once.
#[derive(Debug)]
pub struct IssuedView {
    pub name: String,
    pub id: String,
    pub username: String,
    pub password: String,
    pub connection_url: String,
    pub expires: String,
}

impl IssuedView {
    fn of(name: &str, lease: &IssuedLease) -> Self {
        Self {
            name: name.to_owned(),
            id: lease.id.clone(),
            username: lease.username.clone(),
            password: lease.password.expose().to_owned(),
            connection_url: lease.connection_url.expose().to_owned(),
            expires: when(lease.expires_at),
        }
    }
}

#[derive(Template)]
#[template(path = "dynamic.html")]
struct DynamicPage {
    layout: Layout,
    org: String,
    project: String,
    project_name: String,
    env_name: String,
    env_base: String,
    base: String,
    secrets: Vec<DynView>,
    may_manage: bool,
    may_write: bool,
    /// The new dynamic secret's form, rendered.
    form_html: String,
    issued: Option<IssuedView>,
}

/// A dynamic secret's form: a new one's, or the settings of one.
#[derive(Template)]
#[template(path = "fragments/dynamic_form.html")]
struct FormFragment<'a> {
    csrf: &'a str,
    action: String,
    /// Of the ids of its error messages.
    prefix: String,
    is_new: bool,
    f: &'a DynForm,
    error: &'a FormError,
    submit: &'static str,
}

/// What the page shows beyond the environment's dynamic secrets.
#[derive(Default)]
struct Extras {
    /// The new dynamic secret's form, sent back with its refusal.
    create: Option<(DynForm, FormError)>,
    /// A dynamic secret's edit form sent back with its refusal.
    edit: Option<(String, DynForm, FormError)>,
    /// A lease refused for a dynamic secret.
    lease_error: Option<(String, FormError)>,
    issued: Option<IssuedView>,
}

fn lease_view(lease: Lease, me: &(&str, String), may_write: bool) -> LeaseView {
    let mine = lease.issued_by.kind == me.0 && lease.issued_by.id.as_deref() == Some(&me.1);
    let live = matches!(lease.state, LeaseState::Active | LeaseState::Revoking);
    LeaseView {
        may_revoke: live && (may_write || mine),
        id: lease.id,
        username: lease.username,
        state: lease.state.as_str(),
        issued: when(lease.issued_at),
        expires: when(lease.expires_at),
        last_error: lease.last_error,
    }
}

async fn dynamic_page(
    state: &AppState,
    who: &SignedIn,
    path: &EnvParts,
    mut extras: Extras,
) -> Result<Response, WebError> {
    let who_calls = caller(who);
    let ctx = tenancy::environment(state, &who_calls, at(path), Action::SecretsRead).await?;
    let may_manage = may_in_env(&ctx, Action::EnvironmentsManage);
    let may_write = may_in_env(&ctx, Action::SecretsWrite);
    let me = who.principal.actor();
    let listed = service::dynamic::list(state, &who_calls, at(path), None, LISTED).await?;
    let mut secrets = Vec::with_capacity(listed.len());
    for d in listed {
        let mut leases = service::dynamic::list_leases(
            state,
            &who_calls,
            at(path),
            &d.name,
            None,
            LEASES_LISTED,
        )
        .await?;
        let more_leases = leases.len() > LEASES_LISTED as usize;
        leases.truncate(LEASES_LISTED as usize);
        let (form, error) = match extras.edit.take() {
            Some((name, form, error)) if name == d.name => (form, error),
            other => {
                extras.edit = other;
                (DynForm::of(&d), FormError::none())
            }
        };
        let lease_error = match extras.lease_error.take() {
            Some((name, error)) if name == d.name => error,
            other => {
                extras.lease_error = other;
                FormError::none()
            }
        };
        secrets.push(DynView {
            engine: d.engine.as_str(),
            grants: d.grants.clone(),
            default_ttl: d.default_ttl,
            max_ttl: d.max_ttl,
            live_leases: d.live_leases,
            updated: when(d.updated_at),
            leases: leases
                .into_iter()
                .map(|l| lease_view(l, &me, may_write))
                .collect(),
            more_leases,
            form_html: FormFragment {
                csrf: &who.csrf,
                action: format!("{}/{}", page_url(path), d.name),
                prefix: format!("dyn-{}", d.name),
                is_new: false,
                f: &form,
                error: &error,
                submit: "Save settings",
            }
            .render()?,
            error,
            lease_error,
            name: d.name,
        });
    }
    let (form, error) = extras
        .create
        .unwrap_or_else(|| (DynForm::new_secret(), FormError::none()));
    let layout = Layout::signed_in(
        state,
        who,
        Some(&ctx.project.org),
        format!(
            "{} · {} · dynamic secrets",
            ctx.project.project.name, ctx.env.name
        ),
        "projects",
    )
    .await?;
    render(&DynamicPage {
        layout,
        org: path.0.clone(),
        project: path.1.clone(),
        project_name: ctx.project.project.name.clone(),
        env_name: ctx.env.name.clone(),
        env_base: env_url(path),
        base: page_url(path),
        secrets,
        may_manage,
        may_write,
        form_html: FormFragment {
            csrf: &who.csrf,
            action: page_url(path),
            prefix: "new-dynamic".to_owned(),
            is_new: true,
            f: &form,
            error: &error,
            submit: "Create dynamic secret",
        }
        .render()?,
        issued: extras.issued,
    })
}

/// `…/envs/{env}/dynamic`: the environment's dynamic secrets and their leases.
pub async fn page(
    State(state): State<AppState>,
    who: SignedIn,
    Path(path): Path<EnvParts>,
) -> Result<Response, WebError> {
    dynamic_page(&state, &who, &path, Extras::default()).await
}

fn create_request(f: DynFields) -> Result<CreateDynamicSecretRequest, Refusal> {
    let default_ttl = seconds(&f.default_ttl, "default_ttl")?;
    let max_ttl = seconds(&f.max_ttl, "max_ttl")?;
    let url = f
        .connection_url
        .filter(|u| !u.expose_secret().trim().is_empty())
        .ok_or_else(|| Refusal {
            error: ApiError::validation(
                "invalid_connection_url",
                "the administrator's connection URL is required",
            ),
            field: Some("connection_url"),
        })?;
    Ok(CreateDynamicSecretRequest {
        name: f.name.trim().to_owned(),
        engine: DynamicEngine::Postgresql,
        connection: DynamicConnection { url: Revealed(url) },
        creation_statements: some_lines(&f.creation_statements),
        revocation_statements: some_lines(&f.revocation_statements),
        renew_statements: None,
        grants: some_lines(&f.grants),
        username_template: Some(f.username_template.trim().to_owned()).filter(|t| !t.is_empty()),
        password_policy: None,
        default_ttl,
        max_ttl,
    })
}

/// Configures a dynamic secret (its connection is checked first).
pub async fn create(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path(path): Path<EnvParts>,
    Form(fields): Form<DynFields>,
) -> Result<Response, WebError> {
    let shown = DynForm::sent(&fields);
    let result = match create_request(fields) {
        Ok(request) => service::dynamic::create(&state, &meta, &who.principal, at(&path), request)
            .await
            .map_err(Refusal::from),
        Err(refusal) => Err(refusal),
    };
    match result {
        Ok(_) => Ok(Redirect::to(&page_url(&path)).into_response()),
        Err(refusal) => {
            let status = refusal.error.status();
            let extras = Extras {
                create: Some((shown, refusal.form_error())),
                ..Extras::default()
            };
            let page = dynamic_page(&state, &who, &path, extras).await?;
            Ok((status, page).into_response())
        }
    }
}

/// What an edit changes: only what differs from `current` (statements left blank stay).
fn update_request(
    f: DynFields,
    current: &DynamicSecret,
) -> Result<UpdateDynamicSecretRequest, Refusal> {
    let default_ttl = seconds(&f.default_ttl, "default_ttl")?;
    let max_ttl = seconds(&f.max_ttl, "max_ttl")?;
    let changed = |text: &str, now: &[String]| some_lines(text).filter(|l| l != now);
    let grants = lines(&f.grants);
    let template = f.username_template.trim();
    Ok(UpdateDynamicSecretRequest {
        connection: f
            .connection_url
            .filter(|u| !u.expose_secret().trim().is_empty())
            .map(|url| DynamicConnection { url: Revealed(url) }),
        creation_statements: changed(&f.creation_statements, &current.creation_statements),
        revocation_statements: changed(&f.revocation_statements, &current.revocation_statements),
        renew_statements: None,
        grants: (grants != current.grants).then_some(grants),
        username_template: (!template.is_empty() && template != current.username_template)
            .then(|| template.to_owned()),
        password_policy: None,
        default_ttl: Some(default_ttl),
        max_ttl: Some(max_ttl),
    })
}

/// Changes a dynamic secret; a new connection URL is checked first, a blank one keeps it.
pub async fn update(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path(parts): Path<NameParts>,
    Form(fields): Form<DynFields>,
) -> Result<Response, WebError> {
    let (path, name) = split(parts);
    let current = service::dynamic::get(&state, &caller(&who), at(&path), &name).await?;
    let mut shown = DynForm::sent(&fields);
    shown.name.clone_from(&name);
    let result = match update_request(fields, &current) {
        Ok(request) => {
            service::dynamic::update(&state, &meta, &who.principal, at(&path), &name, request)
                .await
                .map_err(Refusal::from)
        }
        Err(refusal) => Err(refusal),
    };
    match result {
        Ok(_) => Ok(Redirect::to(&page_url(&path)).into_response()),
        Err(refusal) => {
            let status = refusal.error.status();
            let extras = Extras {
                edit: Some((name, shown, refusal.form_error())),
                ..Extras::default()
            };
            let page = dynamic_page(&state, &who, &path, extras).await?;
            Ok((status, page).into_response())
        }
    }
}

/// Revokes every lease of a dynamic secret, then deletes it.
pub async fn delete(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path(parts): Path<NameParts>,
) -> Result<Response, WebError> {
    let (path, name) = split(parts);
    service::dynamic::delete(&state, &meta, &who.principal, at(&path), &name).await?;
    Ok(Redirect::to(&page_url(&path)).into_response())
}

#[derive(Debug, Deserialize)]
pub struct IssueForm {
    /// Seconds; blank: the dynamic secret's default.
    #[serde(default)]
    ttl: String,
}

/// Issues a lease: the page answers with its credentials, shown this once.
pub async fn issue(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path(parts): Path<NameParts>,
    Form(form): Form<IssueForm>,
) -> Result<Response, WebError> {
    let (path, name) = split(parts);
    let ttl = match form.ttl.trim() {
        "" => Ok(None),
        text => seconds(text, "ttl").map(Some),
    };
    let result = match ttl {
        Ok(ttl) => service::dynamic::issue(
            &state,
            &meta,
            &caller(&who),
            at(&path),
            &name,
            IssueLeaseRequest { ttl },
            None,
        )
        .await
        .map_err(|error| Refusal {
            field: (error.code() == "invalid_ttl").then_some("ttl"),
            error,
        }),
        Err(refusal) => Err(refusal),
    };
    match result {
        Ok(issued) => {
            let extras = Extras {
                issued: Some(IssuedView::of(&name, &issued.lease)),
                ..Extras::default()
            };
            let page = dynamic_page(&state, &who, &path, extras).await?;
            Ok((StatusCode::CREATED, page).into_response())
        }
        Err(refusal) => {
            let status = refusal.error.status();
            let extras = Extras {
                lease_error: Some((name, refusal.form_error())),
                ..Extras::default()
            };
            let page = dynamic_page(&state, &who, &path, extras).await?;
            Ok((status, page).into_response())
        }
    }
}

/// Revokes one lease.
pub async fn revoke(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path((org, project, env, name, id)): Path<(String, String, String, String, String)>,
) -> Result<Response, WebError> {
    let path = (org, project, env);
    service::dynamic::revoke(&state, &meta, &caller(&who), at(&path), &name, &id).await?;
    Ok(Redirect::to(&page_url(&path)).into_response())
}

/// Revokes every lease of a dynamic secret.
pub async fn revoke_all(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path(parts): Path<NameParts>,
) -> Result<Response, WebError> {
    let (path, name) = split(parts);
    service::dynamic::revoke_all(&state, &meta, &caller(&who), at(&path), &name).await?;
    Ok(Redirect::to(&page_url(&path)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Timestamp;

    fn current() -> DynamicSecret {
        DynamicSecret {
            id: "d".into(),
            name: "app".into(),
            engine: DynamicEngine::Postgresql,
            environment: "development".into(),
            creation_statements: vec!["CREATE ROLE x".into()],
            revocation_statements: vec!["DROP ROLE x".into()],
            renew_statements: vec![],
            grants: vec!["SELECT ON ALL TABLES IN SCHEMA public".into()],
            username_template: "coffer_{{secret}}_{{random}}".into(),
            password_length: 32,
            password_alphabet: "abc".into(),
            default_ttl: 60,
            max_ttl: 120,
            live_leases: 0,
            created_at: Timestamp(0),
            updated_at: Timestamp(0),
        }
    }

    #[test]
    fn an_edit_sends_only_what_changed_and_a_blank_url_keeps_the_stored_one() {
        let now = current();
        let mut fields = DynFields {
            connection_url: Some(SecretString::from(" ".to_owned())),
            default_ttl: "30".into(),
            max_ttl: "120".into(),
            ..DynFields::default()
        };
        fields.grants.clone_from(&now.grants[0]);
        fields.creation_statements = "CREATE ROLE x\n".into();
        fields.username_template.clone_from(&now.username_template);
        let request = update_request(fields, &now).unwrap_or_default();
        assert!(request.connection.is_none());
        assert!(request.grants.is_none() && request.creation_statements.is_none());
        assert!(request.revocation_statements.is_none() && request.username_template.is_none());
        assert_eq!(
            (request.default_ttl, request.max_ttl),
            (Some(30), Some(120))
        );
    }

    #[test]
    fn seconds_are_whole_numbers_said_next_to_their_field() {
        let refused = seconds("1.5", "max_ttl").err().map(|r| r.form_error());
        assert!(refused.is_some_and(|e| e.on("max_ttl")));
        assert_eq!(lines(" a \n\n b"), ["a", "b"]);
    }
}
