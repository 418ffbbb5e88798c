//! An organization's teams: the list, a team's members. Owners and admins create, rename and
//! delete teams and choose their members among the organization's; members and viewers see
//! them read-only.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;

use super::api_keys::{back_to, refusal};
use super::{FormError, Layout, when};
use crate::authz::{self, Action, Decision, Standing};
use crate::error::ApiError;
use crate::routes::orgs::parse_user_id;
use crate::service::tenancy::{self, OrgCtx};
use crate::service::{self, ClientMeta};
use crate::state::AppState;
use crate::web::session::SignedIn;
use crate::web::{WebError, render};

/// Most teams, and organization members, a page lists.
const PAGE: u32 = 500;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/orgs/{org}/teams", get(list).post(create))
        .route("/orgs/{org}/teams/{team}", get(detail))
        .route("/orgs/{org}/teams/{team}/rename", post(rename))
        .route("/orgs/{org}/teams/{team}/delete", post(delete))
        .route("/orgs/{org}/teams/{team}/members", post(add_member))
        .route(
            "/orgs/{org}/teams/{team}/members/{user}/remove",
            post(remove_member),
        )
}

/// Whether the caller of `ctx` may do `action` in its organization.
pub fn may_in_org(ctx: &OrgCtx, action: Action) -> bool {
    let standing = Standing {
        org_role: ctx.role,
        ..Standing::default()
    };
    authz::decide(&standing, action) == Decision::Allow
}

#[derive(Debug)]
pub struct TeamView {
    pub slug: String,
    pub name: String,
    pub members: usize,
    pub created: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct CreateForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    slug: String,
}

#[derive(Template)]
#[template(path = "teams.html")]
struct TeamsPage {
    layout: Layout,
    org: String,
    teams: Vec<TeamView>,
    may_manage: bool,
    form: CreateForm,
    error: FormError,
}

async fn list_page(
    state: &AppState,
    who: &SignedIn,
    org: &str,
    form: CreateForm,
    error: FormError,
) -> Result<Response, WebError> {
    let ctx = tenancy::org(state, &who.principal, org, Action::TeamsRead).await?;
    let mut teams = Vec::new();
    for team in service::teams::list(state, &who.principal, org, None, PAGE)
        .await?
        .into_iter()
        .take(PAGE as usize)
    {
        let detail = service::teams::get(state, &who.principal, org, &team.slug).await?;
        teams.push(TeamView {
            members: detail.members.len(),
            created: when(team.created_at),
            slug: team.slug,
            name: team.name,
        });
    }
    let layout = Layout::signed_in(state, who, Some(&ctx), "Teams", "teams").await?;
    render(&TeamsPage {
        layout,
        org: ctx.org.slug.clone(),
        may_manage: may_in_org(&ctx, Action::TeamsManage),
        teams,
        form,
        error,
    })
}

/// `/orgs/{org}/teams`
pub async fn list(
    State(state): State<AppState>,
    who: SignedIn,
    Path(org): Path<String>,
) -> Result<Response, WebError> {
    list_page(&state, &who, &org, CreateForm::default(), FormError::none()).await
}

pub async fn create(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path(org): Path<String>,
    Form(form): Form<CreateForm>,
) -> Result<Response, WebError> {
    let slug = form.slug.trim();
    match service::teams::create(&state, &meta, &who.principal, &org, slug, &form.name).await {
        Ok(team) => Ok(Redirect::to(&format!("/orgs/{org}/teams/{}", team.slug)).into_response()),
        Err(e @ (ApiError::Validation { .. } | ApiError::Conflict { .. })) => {
            let status = e.status();
            let page = list_page(&state, &who, &org, form, refusal(&e, &[])).await?;
            Ok((status, page).into_response())
        }
        // Not a matter of the form (403, 404): an error page.
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug)]
pub struct MemberView {
    pub id: String,
    pub name: String,
    pub email: String,
    pub role: String,
    pub joined: String,
}

#[derive(Debug)]
pub struct CandidateView {
    pub id: String,
    pub label: String,
}

#[derive(Template)]
#[template(path = "team.html")]
struct TeamPage {
    layout: Layout,
    org: String,
    slug: String,
    name: String,
    members: Vec<MemberView>,
    /// Members of the organization not in the team.
    candidates: Vec<CandidateView>,
    may_manage: bool,
    rename_error: FormError,
    add_error: FormError,
    /// The name typed in the rename form.
    new_name: String,
}

/// The refusal of one of a team page's forms.
#[derive(Debug)]
enum Refused {
    Nothing,
    Rename(FormError),
    Add(FormError),
}

async fn team_page(
    state: &AppState,
    who: &SignedIn,
    (org, team): (&str, &str),
    refused: Refused,
    new_name: Option<String>,
) -> Result<Response, WebError> {
    let ctx = tenancy::org(state, &who.principal, org, Action::TeamsRead).await?;
    let detail = service::teams::get(state, &who.principal, org, team).await?;
    let may_manage = may_in_org(&ctx, Action::TeamsManage);
    let candidates = if may_manage {
        service::orgs::members(state, &who.principal, org, None, PAGE)
            .await?
            .into_iter()
            .filter(|m| !detail.members.iter().any(|t| t.user_id == m.user_id))
            .map(|m| CandidateView {
                id: m.user_id.to_string(),
                label: format!("{} <{}>", m.name, m.email),
            })
            .collect()
    } else {
        Vec::new()
    };
    let members = detail
        .members
        .into_iter()
        .map(|m| MemberView {
            id: m.user_id.to_string(),
            name: m.name,
            email: m.email,
            role: m.role,
            joined: when(m.created_at),
        })
        .collect();
    let (rename_error, add_error) = match refused {
        Refused::Nothing => (FormError::none(), FormError::none()),
        Refused::Rename(e) => (e, FormError::none()),
        Refused::Add(e) => (FormError::none(), e),
    };
    let layout = Layout::signed_in(
        state,
        who,
        Some(&ctx),
        format!("{} · Teams", detail.team.name),
        "teams",
    )
    .await?;
    render(&TeamPage {
        layout,
        org: ctx.org.slug.clone(),
        new_name: new_name.unwrap_or_else(|| detail.team.name.clone()),
        slug: detail.team.slug,
        name: detail.team.name,
        members,
        candidates,
        may_manage,
        rename_error,
        add_error,
    })
}

type TeamPath = (String, String);

/// `/orgs/{org}/teams/{team}`
pub async fn detail(
    State(state): State<AppState>,
    who: SignedIn,
    Path((org, team)): Path<TeamPath>,
) -> Result<Response, WebError> {
    team_page(&state, &who, (&org, &team), Refused::Nothing, None).await
}

#[derive(Debug, Deserialize)]
pub struct RenameForm {
    #[serde(default)]
    name: String,
}

pub async fn rename(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path((org, team)): Path<TeamPath>,
    Form(form): Form<RenameForm>,
) -> Result<Response, WebError> {
    match service::teams::rename(&state, &meta, &who.principal, &org, &team, &form.name).await {
        Ok(_) => Ok(Redirect::to(&format!("/orgs/{org}/teams/{team}")).into_response()),
        Err(e @ ApiError::Validation { .. }) => {
            let refused = Refused::Rename(refusal(&e, &[]));
            let page = team_page(&state, &who, (&org, &team), refused, Some(form.name)).await?;
            Ok((e.status(), page).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn delete(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    headers: HeaderMap,
    Path((org, team)): Path<TeamPath>,
) -> Result<Response, WebError> {
    service::teams::delete(&state, &meta, &who.principal, &org, &team).await?;
    Ok(back_to(&format!("/orgs/{org}/teams"), &headers))
}

#[derive(Debug, Deserialize)]
pub struct AddForm {
    #[serde(default)]
    user: String,
}

pub async fn add_member(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path((org, team)): Path<TeamPath>,
    Form(form): Form<AddForm>,
) -> Result<Response, WebError> {
    let added = match parse_user_id(form.user.trim()) {
        Ok(user) => {
            service::teams::add_member(&state, &meta, &who.principal, &org, &team, user).await
        }
        Err(e) => Err(e),
    };
    match added {
        Ok(()) => Ok(Redirect::to(&format!("/orgs/{org}/teams/{team}")).into_response()),
        // A member that is not (or no longer) in the organization: said next to the field.
        Err(e @ ApiError::NotFound { what: "member" }) => {
            let mut error = refusal(&e, &[]);
            error.field = Some("user");
            let page = team_page(&state, &who, (&org, &team), Refused::Add(error), None).await?;
            Ok((e.status(), page).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn remove_member(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    headers: HeaderMap,
    Path((org, team, user)): Path<(String, String, String)>,
) -> Result<Response, WebError> {
    let user = parse_user_id(&user)?;
    service::teams::remove_member(&state, &meta, &who.principal, &org, &team, user).await?;
    Ok(back_to(&format!("/orgs/{org}/teams/{team}"), &headers))
}
