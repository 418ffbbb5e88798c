//! A project's environments: add, rename, reorder, delete, and what each project role may do
//! with each environment's secrets (its policies).

use std::str::FromStr as _;

use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::{FormError, Layout};
use crate::authz::{Action, EnvAccess, ProjectRole};
use crate::error::ApiError;
use crate::service::dashboard::may_in_project;
use crate::service::tenancy::EnvPath;
use crate::service::{self, ClientMeta};
use crate::state::AppState;
use crate::web::session::SignedIn;
use crate::web::{WebError, render};

pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route(
            "/orgs/{org}/projects/{project}/environments",
            get(page).post(create),
        )
        .route(
            "/orgs/{org}/projects/{project}/environments/{env}",
            post(update),
        )
        .route(
            "/orgs/{org}/projects/{project}/environments/{env}/delete",
            post(delete),
        )
        .route(
            "/orgs/{org}/projects/{project}/environments/{env}/policies",
            post(policies),
        )
}

/// Most environments listed (a project has at most a few dozen).
const PAGE: i64 = 100;

#[derive(Debug)]
pub struct PolicyView {
    pub role: &'static str,
    /// `default`, `none`, `read` or `read-write`.
    pub access: String,
    pub default: &'static str,
}

#[derive(Debug)]
pub struct EnvView {
    pub slug: String,
    pub name: String,
    pub first: bool,
    pub last: bool,
    pub position: usize,
    pub policies: Vec<PolicyView>,
}

#[derive(Template)]
#[template(path = "environments.html")]
struct EnvironmentsPage {
    layout: Layout,
    org: String,
    project: String,
    project_name: String,
    envs: Vec<EnvView>,
    may_manage: bool,
    slug: String,
    name: String,
    error: FormError,
}

async fn environments_page(
    state: &AppState,
    who: &SignedIn,
    org: &str,
    project: &str,
    (slug, name): (String, String),
    error: FormError,
) -> Result<Response, WebError> {
    let (ctx, _) = service::projects::get(state, &who.principal, org, project).await?;
    let rows =
        service::projects::environments(state, &who.principal, org, project, 0, PAGE).await?;
    let count = rows.len();
    let mut envs = Vec::with_capacity(count);
    for (i, e) in rows.into_iter().enumerate() {
        let at = EnvPath {
            org,
            project,
            env: &e.slug,
        };
        let (_, set) = service::projects::get_environment(state, &who.principal, at).await?;
        let policies = ProjectRole::ALL
            .iter()
            .rev()
            .map(|role| PolicyView {
                role: role.as_str(),
                access: set
                    .iter()
                    .find(|(r, _)| r == role.as_str())
                    .map_or_else(|| "default".to_owned(), |(_, a)| a.clone()),
                default: role.default_access().as_str(),
            })
            .collect();
        envs.push(EnvView {
            slug: e.slug,
            name: e.name,
            first: i == 0,
            last: i + 1 == count,
            position: i,
            policies,
        });
    }
    let layout = Layout::signed_in(
        state,
        who,
        Some(&ctx.org),
        format!("Environments · {}", ctx.project.name),
        "projects",
    )
    .await?;
    render(&EnvironmentsPage {
        layout,
        may_manage: may_in_project(&ctx, Action::EnvironmentsManage),
        org: org.to_owned(),
        project: project.to_owned(),
        project_name: ctx.project.name.clone(),
        envs,
        slug,
        name,
        error,
    })
}

/// `/orgs/{org}/projects/{project}/environments`
pub async fn page(
    State(state): State<AppState>,
    who: SignedIn,
    Path((org, project)): Path<(String, String)>,
) -> Result<Response, WebError> {
    environments_page(
        &state,
        &who,
        &org,
        &project,
        Default::default(),
        FormError::none(),
    )
    .await
}

#[derive(Deserialize)]
pub struct CreateForm {
    slug: String,
    #[serde(default)]
    name: String,
}

pub async fn create(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path((org, project)): Path<(String, String)>,
    Form(form): Form<CreateForm>,
) -> Result<Response, WebError> {
    let name = Some(form.name.trim()).filter(|n| !n.is_empty());
    match service::projects::create_environment(
        &state,
        &meta,
        &who.principal,
        &org,
        &project,
        &form.slug,
        name,
    )
    .await
    {
        Ok(_) => Ok(
            Redirect::to(&format!("/orgs/{org}/projects/{project}/environments")).into_response(),
        ),
        Err(e) => {
            let status = e.status();
            let page = environments_page(
                &state,
                &who,
                &org,
                &project,
                (form.slug, form.name),
                FormError::from_api(&e),
            )
            .await?;
            Ok((status, page).into_response())
        }
    }
}

#[derive(Deserialize)]
pub struct UpdateForm {
    #[serde(default)]
    name: Option<String>,
    /// The new position (0 first).
    #[serde(default)]
    position: Option<u32>,
}

/// Renames an environment or moves it.
pub async fn update(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path((org, project, env)): Path<(String, String, String)>,
    Form(form): Form<UpdateForm>,
) -> Result<Response, WebError> {
    let at = EnvPath {
        org: &org,
        project: &project,
        env: &env,
    };
    service::projects::update_environment(
        &state,
        &meta,
        &who.principal,
        at,
        form.name.as_deref(),
        form.position,
    )
    .await?;
    Ok(Redirect::to(&format!("/orgs/{org}/projects/{project}/environments")).into_response())
}

#[derive(Deserialize)]
pub struct DeleteForm {
    confirm: String,
}

/// Deletes an environment with its secrets once its slug is typed again.
pub async fn delete(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path((org, project, env)): Path<(String, String, String)>,
    Form(form): Form<DeleteForm>,
) -> Result<Response, WebError> {
    if form.confirm.trim() != env {
        return Err(ApiError::validation(
            "confirmation_mismatch",
            "type the environment's slug to confirm its deletion",
        )
        .into());
    }
    let at = EnvPath {
        org: &org,
        project: &project,
        env: &env,
    };
    service::projects::delete_environment(&state, &meta, &who.principal, at).await?;
    Ok(Redirect::to(&format!("/orgs/{org}/projects/{project}/environments")).into_response())
}

/// Sets the environment's policy of each project role (`default` clears it).
pub async fn policies(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path((org, project, env)): Path<(String, String, String)>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Result<Response, WebError> {
    let at = EnvPath {
        org: &org,
        project: &project,
        env: &env,
    };
    let policies: Vec<&(String, String)> = fields.iter().filter(|(k, _)| k != "csrf").collect();
    if policies.len() > ProjectRole::ALL.len() {
        return Err(
            ApiError::validation("too_many_fields", "one policy per project role at most").into(),
        );
    }
    for (name, value) in policies {
        let role = ProjectRole::from_str(name)
            .map_err(|_| ApiError::validation("invalid_role", "unknown project role"))?;
        let access = match value.as_str() {
            "default" => None,
            other => Some(
                EnvAccess::from_str(other)
                    .map_err(|_| ApiError::validation("invalid_access", "unknown access"))?,
            ),
        };
        service::projects::set_policy(&state, &meta, &who.principal, at, role, access).await?;
    }
    Ok(Redirect::to(&format!("/orgs/{org}/projects/{project}/environments")).into_response())
}
