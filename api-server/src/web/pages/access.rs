//! A project's Access tab: who holds which project role, directly or through a team. Those
//! allowed to manage the project's access (project admins, the organization's owners and
//! admins) grant, change and take away roles; others see the list read-only.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;

use super::api_keys::{back_to, refusal};
use super::{FormError, Layout, when};
use crate::authz::{Action, OrgRole, ProjectRole};
use crate::error::ApiError;
use crate::routes::orgs::parse_user_id;
use crate::service::dashboard::may_in_project;
use crate::service::{self, ClientMeta, tenancy};
use crate::state::AppState;
use crate::web::session::SignedIn;
use crate::web::{WebError, render};

/// Most grants, members and teams the page lists.
const PAGE: u32 = 500;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/orgs/{org}/projects/{project}/access", get(page))
        .route(
            "/orgs/{org}/projects/{project}/access/users",
            post(grant_user),
        )
        .route(
            "/orgs/{org}/projects/{project}/access/users/{user}/revoke",
            post(revoke_user),
        )
        .route(
            "/orgs/{org}/projects/{project}/access/teams",
            post(grant_team),
        )
        .route(
            "/orgs/{org}/projects/{project}/access/teams/{team}/revoke",
            post(revoke_team),
        )
}

/// The project roles, weakest first, with what each may do.
pub const ROLES: &[(&str, &str)] = &[
    ("viewer", "reads secrets"),
    ("developer", "reads and writes secrets"),
    (
        "admin",
        "also manages the project, its environments and who has access",
    ),
];

/// One grant: to a member (`user` is their id) or to a team (`team` is its slug).
#[derive(Debug)]
pub struct GrantView {
    pub user: Option<String>,
    pub team: Option<String>,
    pub name: String,
    pub detail: String,
    pub role: String,
    pub since: String,
}

/// A member or team the grant forms offer.
#[derive(Debug)]
pub struct Choice {
    pub value: String,
    pub label: String,
}

/// What a grant form holds, kept when it is refused.
#[derive(Debug, Default, Deserialize)]
pub struct GrantForm {
    #[serde(default)]
    user: String,
    #[serde(default)]
    team: String,
    #[serde(default)]
    role: String,
}

#[derive(Template)]
#[template(path = "access.html")]
struct AccessPage {
    layout: Layout,
    org: String,
    project: String,
    project_name: String,
    grants: Vec<GrantView>,
    /// The organization's owners and admins: they manage every project.
    admins: Vec<String>,
    may_manage: bool,
    members: Vec<Choice>,
    teams: Vec<Choice>,
    roles: &'static [(&'static str, &'static str)],
    form: GrantForm,
    user_error: FormError,
    team_error: FormError,
}

/// Which grant form was refused.
#[derive(Debug)]
enum Refused {
    Nothing,
    User(FormError),
    Team(FormError),
}

async fn access_page(
    state: &AppState,
    who: &SignedIn,
    (org, project): (&str, &str),
    form: GrantForm,
    refused: Refused,
) -> Result<Response, WebError> {
    let ctx = tenancy::project(state, &who.principal, org, project, Action::ProjectRead).await?;
    let members = service::orgs::members(state, &who.principal, org, None, PAGE).await?;
    let teams = service::teams::list(state, &who.principal, org, None, PAGE).await?;
    let grants = service::projects::grants(state, &who.principal, org, project, 0, i64::from(PAGE))
        .await?
        .into_iter()
        .map(|g| {
            let member = g
                .user_id
                .as_ref()
                .and_then(|id| members.iter().find(|m| m.user_id == *id));
            let team = g
                .team_id
                .as_ref()
                .and_then(|id| teams.iter().find(|t| t.id == *id));
            let (name, detail) = match (member, team) {
                (Some(m), _) => (m.name.clone(), m.email.clone()),
                (None, Some(t)) => (t.name.clone(), format!("team {}", t.slug)),
                (None, None) => (g.subject_name.clone(), String::new()),
            };
            GrantView {
                user: g.user_id.as_ref().map(ToString::to_string),
                team: team.map(|t| t.slug.clone()),
                name,
                detail,
                role: g.role,
                since: when(g.created_at),
            }
        })
        .collect();
    let is_admin = |role: &str| role.parse::<OrgRole>().is_ok_and(|r| r >= OrgRole::Admin);
    let admins = members
        .iter()
        .filter(|m| is_admin(&m.role))
        .map(|m| format!("{} ({})", m.name, m.role))
        .collect();
    let may_manage = may_in_project(&ctx, Action::ProjectAccessManage);
    let (member_choices, team_choices) = if may_manage {
        (
            members
                .iter()
                .filter(|m| !is_admin(&m.role))
                .map(|m| Choice {
                    value: m.user_id.to_string(),
                    label: format!("{} <{}>", m.name, m.email),
                })
                .collect(),
            teams
                .iter()
                .map(|t| Choice {
                    value: t.slug.clone(),
                    label: t.name.clone(),
                })
                .collect(),
        )
    } else {
        (Vec::new(), Vec::new())
    };
    let (user_error, team_error) = match refused {
        Refused::Nothing => (FormError::none(), FormError::none()),
        Refused::User(e) => (e, FormError::none()),
        Refused::Team(e) => (FormError::none(), e),
    };
    let layout = Layout::signed_in(
        state,
        who,
        Some(&ctx.org),
        format!("{} · Access", ctx.project.name),
        "projects",
    )
    .await?;
    render(&AccessPage {
        layout,
        org: ctx.org.org.slug.clone(),
        project: ctx.project.slug.clone(),
        project_name: ctx.project.name.clone(),
        grants,
        admins,
        may_manage,
        members: member_choices,
        teams: team_choices,
        roles: ROLES,
        form,
        user_error,
        team_error,
    })
}

type ProjectPath = (String, String);

/// `/orgs/{org}/projects/{project}/access`
pub async fn page(
    State(state): State<AppState>,
    who: SignedIn,
    Path((org, project)): Path<ProjectPath>,
) -> Result<Response, WebError> {
    access_page(
        &state,
        &who,
        (&org, &project),
        GrantForm::default(),
        Refused::Nothing,
    )
    .await
}

fn parse_role(role: &str) -> Result<ProjectRole, ApiError> {
    role.trim()
        .parse()
        .map_err(|e: String| ApiError::validation("invalid_role", format!("role {e}")))
}

fn url(org: &str, project: &str) -> String {
    format!("/orgs/{org}/projects/{project}/access")
}

/// After a grant form: back to the page, or the page again with the refusal beside its field
/// (a refusal of the page itself, 403 or 404, is an error page).
async fn answer(
    state: &AppState,
    who: &SignedIn,
    (org, project): (&str, &str),
    form: GrantForm,
    result: Result<(), ApiError>,
    subject: &'static str,
) -> Result<Response, WebError> {
    let e = match result {
        Ok(()) => return Ok(Redirect::to(&url(org, project)).into_response()),
        Err(e) => e,
    };
    let about_form = match &e {
        ApiError::Validation { .. } => true,
        ApiError::NotFound { what } => *what == "member" || *what == "team",
        _ => false,
    };
    if !about_form {
        return Err(e.into());
    }
    let mut error = refusal(&e, &[]);
    if error.field != Some("role") {
        error.field = Some(subject);
    }
    let refused = if subject == "user" {
        Refused::User(error)
    } else {
        Refused::Team(error)
    };
    let page = access_page(state, who, (org, project), form, refused).await?;
    Ok((e.status(), page).into_response())
}

/// Gives a member a role on the project, or changes it.
pub async fn grant_user(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path((org, project)): Path<ProjectPath>,
    Form(form): Form<GrantForm>,
) -> Result<Response, WebError> {
    // Refused (403, 404) before the form is looked at, for those who may not manage access.
    tenancy::project(
        &state,
        &who.principal,
        &org,
        &project,
        Action::ProjectAccessManage,
    )
    .await?;
    let result = async {
        let user = parse_user_id(form.user.trim())?;
        let role = parse_role(&form.role)?;
        service::projects::grant_user(&state, &meta, &who.principal, &org, &project, user, role)
            .await
    }
    .await;
    answer(&state, &who, (&org, &project), form, result, "user").await
}

/// Gives a team a role on the project, or changes it.
pub async fn grant_team(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path((org, project)): Path<ProjectPath>,
    Form(form): Form<GrantForm>,
) -> Result<Response, WebError> {
    tenancy::project(
        &state,
        &who.principal,
        &org,
        &project,
        Action::ProjectAccessManage,
    )
    .await?;
    let result = async {
        let role = parse_role(&form.role)?;
        let team = form.team.trim();
        if team.is_empty() {
            return Err(ApiError::not_found("team"));
        }
        service::projects::grant_team(&state, &meta, &who.principal, &org, &project, team, role)
            .await
    }
    .await;
    answer(&state, &who, (&org, &project), form, result, "team").await
}

pub async fn revoke_user(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    headers: HeaderMap,
    Path((org, project, user)): Path<(String, String, String)>,
) -> Result<Response, WebError> {
    let user = parse_user_id(&user)?;
    service::projects::revoke_user(&state, &meta, &who.principal, &org, &project, user).await?;
    Ok(back_to(&url(&org, &project), &headers))
}

pub async fn revoke_team(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    headers: HeaderMap,
    Path((org, project, team)): Path<(String, String, String)>,
) -> Result<Response, WebError> {
    service::projects::revoke_team(&state, &meta, &who.principal, &org, &project, &team).await?;
    Ok(back_to(&url(&org, &project), &headers))
}
