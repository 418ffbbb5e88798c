//! An organization's projects: the list, creating, renaming and deleting one.

use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::{FormError, Layout};
use crate::authz::Action;
use crate::service::{self, ClientMeta, tenancy};
use crate::state::AppState;
use crate::web::session::SignedIn;
use crate::web::{WebError, render};

/// Most projects one page lists.
const PAGE: u32 = 200;

#[derive(Debug)]
pub struct ProjectView {
    pub slug: String,
    pub name: String,
}

#[derive(Template)]
#[template(path = "projects.html")]
struct ProjectsPage {
    layout: Layout,
    projects: Vec<ProjectView>,
    may_create: bool,
    name: String,
    slug: String,
    error: FormError,
}

async fn page(
    state: &AppState,
    who: &SignedIn,
    org: &str,
    name: String,
    slug: String,
    error: FormError,
) -> Result<Response, WebError> {
    let ctx = tenancy::org(state, &who.principal, org, Action::OrgRead).await?;
    let projects = service::projects::list(state, &who.principal, org, None, PAGE)
        .await?
        .into_iter()
        .map(|p| ProjectView {
            slug: p.slug,
            name: p.name,
        })
        .collect();
    let may_create = crate::authz::decide(
        &crate::authz::Standing {
            org_role: ctx.role,
            ..Default::default()
        },
        Action::ProjectCreate,
    ) == crate::authz::Decision::Allow;
    let layout = Layout::signed_in(state, who, Some(&ctx), &ctx.org.name, "projects").await?;
    render(&ProjectsPage {
        layout,
        projects,
        may_create,
        name,
        slug,
        error,
    })
}

pub async fn list(
    State(state): State<AppState>,
    who: SignedIn,
    Path(org): Path<String>,
) -> Result<Response, WebError> {
    page(
        &state,
        &who,
        &org,
        String::new(),
        String::new(),
        FormError::none(),
    )
    .await
}

#[derive(Deserialize)]
pub struct CreateForm {
    name: String,
    slug: String,
}

pub async fn create(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path(org): Path<String>,
    Form(form): Form<CreateForm>,
) -> Result<Response, WebError> {
    match service::projects::create(
        &state,
        &meta,
        &who.principal,
        &org,
        &form.name,
        &form.slug,
        None,
    )
    .await
    {
        Ok((project, _)) => {
            Ok(Redirect::to(&format!("/orgs/{org}/projects/{}", project.slug)).into_response())
        }
        Err(e) => {
            let status = e.status();
            let page = page(
                &state,
                &who,
                &org,
                form.name,
                form.slug,
                FormError::from_api(&e),
            )
            .await?;
            Ok((status, page).into_response())
        }
    }
}

#[derive(Deserialize)]
pub struct RenameForm {
    name: String,
}

pub async fn rename(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path((org, project)): Path<(String, String)>,
    Form(form): Form<RenameForm>,
) -> Result<Response, WebError> {
    service::projects::rename(&state, &meta, &who.principal, &org, &project, &form.name).await?;
    Ok(Redirect::to(&format!("/orgs/{org}/projects/{project}")).into_response())
}

#[derive(Deserialize)]
pub struct DeleteForm {
    /// The project's slug, typed again.
    confirm: String,
}

/// Deletes a project once its slug is typed again.
pub async fn delete(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path((org, project)): Path<(String, String)>,
    Form(form): Form<DeleteForm>,
) -> Result<Response, WebError> {
    if form.confirm.trim() != project {
        return Err(WebError::Api(crate::error::ApiError::validation(
            "confirmation_mismatch",
            "type the project's slug to confirm its deletion",
        )));
    }
    service::projects::delete(&state, &meta, &who.principal, &org, &project).await?;
    Ok(Redirect::to(&format!("/orgs/{org}")).into_response())
}
