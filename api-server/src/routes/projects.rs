//! `/api/v1/orgs/{org}/projects`: projects, who may work on them, their environments and the
//! environments' role policies.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Caller, Principal};
use crate::authz::{EnvAccess, ProjectRole};
use crate::db::projects::{EnvironmentRow, GrantRow, ProjectRow};
use crate::error::{ApiError, ErrorResponse};
use crate::http::{Json, NumberPageParams, Page, PageExt as _, PageParams, Query};
use crate::ids::{Timestamp, UserId};
use crate::routes::orgs::parse_user_id;
use crate::service::tenancy::EnvPath;
use crate::service::{self, ClientMeta};
use crate::state::AppState;

pub use coffer_client::types::{
    CreateEnvironmentRequest, CreateProjectRequest, Environment, EnvironmentDetail, Project,
    UpdateEnvironmentRequest, UpdateProjectRequest,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_project, list_projects))
        .routes(routes!(get_project, update_project, delete_project))
        .routes(routes!(list_access))
        .routes(routes!(grant_user, revoke_user))
        .routes(routes!(grant_team, revoke_team))
        .routes(routes!(create_environment, list_environments))
        .routes(routes!(
            get_environment,
            update_environment,
            delete_environment
        ))
        .routes(routes!(set_policy, clear_policy))
}

impl From<EnvironmentRow> for Environment {
    fn from(e: EnvironmentRow) -> Self {
        Self {
            id: e.id,
            slug: e.slug,
            name: e.name,
            position: e.position,
            revision: e.revision,
            created_at: e.created_at,
            updated_at: e.updated_at,
        }
    }
}

fn project_response(
    p: ProjectRow,
    role: Option<ProjectRole>,
    envs: Option<Vec<EnvironmentRow>>,
) -> Project {
    Project {
        id: p.id,
        slug: p.slug,
        name: p.name,
        created_at: p.created_at,
        updated_at: p.updated_at,
        role,
        environments: envs.map(|e| e.into_iter().map(Environment::from).collect()),
    }
}

/// A project role held by a member or a team.
#[derive(Debug, Serialize, ToSchema)]
pub struct Grant {
    /// `user` or `team`.
    pub subject_type: &'static str,
    pub subject_id: String,
    /// The member's email or the team's slug.
    pub subject_name: String,
    pub role: String,
    pub created_at: Timestamp,
}

impl From<GrantRow> for Grant {
    fn from(g: GrantRow) -> Self {
        let (subject_type, subject_id) = match (g.user_id, g.team_id) {
            (Some(u), _) => ("user", u.to_string()),
            (None, t) => ("team", t.map(|t| t.to_string()).unwrap_or_default()),
        };
        Self {
            subject_type,
            subject_id,
            subject_name: g.subject_name,
            role: g.role,
            created_at: g.created_at,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    pub role: ProjectRole,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyRequest {
    pub access: EnvAccess,
}

type OrgProject = (String, String);
type OrgProjectEnv = (String, String, String);

/// Create a project (org owners, admins and members).
#[utoipa::path(
    post, path = "/{org}/projects", tag = "projects", security(("bearer" = [])), params(("org" = String, Path)),
    request_body = CreateProjectRequest,
    responses((status = 201, body = Project), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse), (status = 422, body = ErrorResponse))
)]
pub async fn create_project(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Path(org): Path<String>,
    Json(req): Json<CreateProjectRequest>,
) -> Result<(StatusCode, Json<Project>), ApiError> {
    let (project, envs) = service::projects::create(
        &state,
        &meta,
        &principal,
        &org,
        &req.name,
        &req.slug,
        req.environments,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(project_response(
            project,
            Some(ProjectRole::Admin),
            Some(envs),
        )),
    ))
}

/// The projects of an organization the caller may see.
#[utoipa::path(
    get, path = "/{org}/projects", tag = "projects", security(("bearer" = [])), params(("org" = String, Path), PageParams),
    responses((status = 200, body = Page<Project>), (status = 404, body = ErrorResponse))
)]
pub async fn list_projects(
    State(state): State<AppState>,
    principal: Principal,
    Path(org): Path<String>,
    Query(page): Query<PageParams>,
) -> Result<Json<Page<Project>>, ApiError> {
    let limit = page.limit()?;
    let rows = service::projects::list(&state, &principal, &org, page.cursor()?, limit).await?;
    Ok(Json(Page::from_rows(
        rows,
        limit,
        |p| p.slug.clone(),
        |p| project_response(p, None, None),
    )))
}

/// A project and its environments.
#[utoipa::path(
    get, path = "/{org}/projects/{project}", tag = "projects", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path)),
    responses((status = 200, body = Project), (status = 404, body = ErrorResponse))
)]
pub async fn get_project(
    State(state): State<AppState>,
    principal: Caller,
    Path((org, project)): Path<OrgProject>,
) -> Result<Json<Project>, ApiError> {
    let (ctx, envs) = service::projects::get(&state, &principal, &org, &project).await?;
    Ok(Json(project_response(ctx.project, ctx.role, Some(envs))))
}

/// Rename a project (project admins).
#[utoipa::path(
    patch, path = "/{org}/projects/{project}", tag = "projects", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path)), request_body = UpdateProjectRequest,
    responses((status = 200, body = Project), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
pub async fn update_project(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Path((org, project)): Path<OrgProject>,
    Json(req): Json<UpdateProjectRequest>,
) -> Result<Json<Project>, ApiError> {
    let ctx =
        service::projects::rename(&state, &meta, &principal, &org, &project, &req.name).await?;
    Ok(Json(project_response(ctx.project, ctx.role, None)))
}

/// Delete a project with all its environments and secrets (org owners and admins).
#[utoipa::path(
    delete, path = "/{org}/projects/{project}", tag = "projects", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
pub async fn delete_project(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Path((org, project)): Path<OrgProject>,
) -> Result<StatusCode, ApiError> {
    service::projects::delete(&state, &meta, &principal, &org, &project).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Who holds which role on the project.
#[utoipa::path(
    get, path = "/{org}/projects/{project}/access", tag = "projects", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), NumberPageParams),
    responses((status = 200, body = Page<Grant>), (status = 404, body = ErrorResponse))
)]
pub async fn list_access(
    State(state): State<AppState>,
    principal: Principal,
    Path((org, project)): Path<OrgProject>,
    Query(page): Query<NumberPageParams>,
) -> Result<Json<Page<Grant>>, ApiError> {
    let (offset, limit) = offset_page(&page)?;
    let grants = service::projects::grants(
        &state,
        &principal,
        &org,
        &project,
        offset,
        i64::from(limit) + 1,
    )
    .await?;
    Ok(Json(offset_rows(grants, offset, limit, Grant::from)))
}

/// The offset and limit of a list paged by position (small lists with a stable order).
fn offset_page(page: &NumberPageParams) -> Result<(i64, u32), ApiError> {
    let offset: u32 = page.cursor()?.unwrap_or(0);
    Ok((i64::from(offset), page.limit()?))
}

/// A page of `rows` fetched from `offset` with `limit + 1`; the cursor is the next offset.
fn offset_rows<R, T>(rows: Vec<R>, offset: i64, limit: u32, map: impl Fn(R) -> T) -> Page<T> {
    let rows: Vec<(i64, R)> = (offset + 1..).zip(rows).collect();
    Page::from_rows(rows, limit, |(next, _)| next.to_string(), |(_, r)| map(r))
}

/// Give a member a project role (or change it).
#[utoipa::path(
    put, path = "/{org}/projects/{project}/access/users/{user_id}", tag = "projects", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), ("user_id" = UserId, Path)), request_body = GrantRequest,
    responses((status = 204), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
pub async fn grant_user(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Path((org, project, user)): Path<OrgProjectEnv>,
    Json(req): Json<GrantRequest>,
) -> Result<StatusCode, ApiError> {
    let user = parse_user_id(&user)?;
    service::projects::grant_user(&state, &meta, &principal, &org, &project, user, req.role)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Take a member's project role away.
#[utoipa::path(
    delete, path = "/{org}/projects/{project}/access/users/{user_id}", tag = "projects", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), ("user_id" = UserId, Path)),
    responses((status = 204), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
pub async fn revoke_user(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Path((org, project, user)): Path<OrgProjectEnv>,
) -> Result<StatusCode, ApiError> {
    let user = parse_user_id(&user)?;
    service::projects::revoke_user(&state, &meta, &principal, &org, &project, user).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Give a team a project role (or change it): its members hold the role too, and each member's
/// strongest role, direct or through a team, applies.
#[utoipa::path(
    put, path = "/{org}/projects/{project}/access/teams/{team}", tag = "projects", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), ("team" = String, Path)), request_body = GrantRequest,
    responses((status = 204), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
pub async fn grant_team(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Path((org, project, team)): Path<OrgProjectEnv>,
    Json(req): Json<GrantRequest>,
) -> Result<StatusCode, ApiError> {
    service::projects::grant_team(&state, &meta, &principal, &org, &project, &team, req.role)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Take a team's project role away.
#[utoipa::path(
    delete, path = "/{org}/projects/{project}/access/teams/{team}", tag = "projects", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), ("team" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
pub async fn revoke_team(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Path((org, project, team)): Path<OrgProjectEnv>,
) -> Result<StatusCode, ApiError> {
    service::projects::revoke_team(&state, &meta, &principal, &org, &project, &team).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Add an environment at the end of the project's order (project admins).
#[utoipa::path(
    post, path = "/{org}/projects/{project}/environments", tag = "projects", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path)), request_body = CreateEnvironmentRequest,
    responses((status = 201, body = Environment), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse), (status = 422, body = ErrorResponse))
)]
pub async fn create_environment(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Path((org, project)): Path<OrgProject>,
    Json(req): Json<CreateEnvironmentRequest>,
) -> Result<(StatusCode, Json<Environment>), ApiError> {
    let env = service::projects::create_environment(
        &state,
        &meta,
        &principal,
        &org,
        &project,
        &req.slug,
        req.name.as_deref(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(env.into())))
}

/// The project's environments, in order.
#[utoipa::path(
    get, path = "/{org}/projects/{project}/environments", tag = "projects", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), NumberPageParams),
    responses((status = 200, body = Page<Environment>), (status = 404, body = ErrorResponse))
)]
pub async fn list_environments(
    State(state): State<AppState>,
    principal: Caller,
    Path((org, project)): Path<OrgProject>,
    Query(page): Query<NumberPageParams>,
) -> Result<Json<Page<Environment>>, ApiError> {
    let (offset, limit) = offset_page(&page)?;
    let envs = service::projects::environments(
        &state,
        &principal,
        &org,
        &project,
        offset,
        i64::from(limit) + 1,
    )
    .await?;
    Ok(Json(offset_rows(envs, offset, limit, Environment::from)))
}

/// An environment and its role policies.
#[utoipa::path(
    get, path = "/{org}/projects/{project}/environments/{env}", tag = "projects", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), ("env" = String, Path)),
    responses((status = 200, body = EnvironmentDetail), (status = 404, body = ErrorResponse))
)]
pub async fn get_environment(
    State(state): State<AppState>,
    principal: Caller,
    Path((org, project, env)): Path<OrgProjectEnv>,
) -> Result<Json<EnvironmentDetail>, ApiError> {
    let (ctx, policies) = service::projects::get_environment(
        &state,
        &principal,
        EnvPath {
            org: &org,
            project: &project,
            env: &env,
        },
    )
    .await?;
    Ok(Json(EnvironmentDetail {
        environment: ctx.env.into(),
        policies: policies.into_iter().collect(),
    }))
}

/// Rename or move an environment (project admins).
#[utoipa::path(
    patch, path = "/{org}/projects/{project}/environments/{env}", tag = "projects", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), ("env" = String, Path)), request_body = UpdateEnvironmentRequest,
    responses((status = 200, body = Environment), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse), (status = 422, body = ErrorResponse))
)]
pub async fn update_environment(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Path((org, project, env)): Path<OrgProjectEnv>,
    Json(req): Json<UpdateEnvironmentRequest>,
) -> Result<Json<Environment>, ApiError> {
    let env = service::projects::update_environment(
        &state,
        &meta,
        &principal,
        EnvPath {
            org: &org,
            project: &project,
            env: &env,
        },
        req.name.as_deref(),
        req.position,
    )
    .await?;
    Ok(Json(env.into()))
}

/// Delete an environment and its secrets (project admins).
#[utoipa::path(
    delete, path = "/{org}/projects/{project}/environments/{env}", tag = "projects", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), ("env" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
pub async fn delete_environment(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Path((org, project, env)): Path<OrgProjectEnv>,
) -> Result<StatusCode, ApiError> {
    service::projects::delete_environment(
        &state,
        &meta,
        &principal,
        EnvPath {
            org: &org,
            project: &project,
            env: &env,
        },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn parse_role(role: &str) -> Result<ProjectRole, ApiError> {
    role.parse()
        .map_err(|e: String| ApiError::validation("invalid_role", format!("role {e}")))
}

/// Set what a project role may do in this environment (e.g. developers: `read` in production).
#[utoipa::path(
    put, path = "/{org}/projects/{project}/environments/{env}/policies/{role}", tag = "projects", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), ("env" = String, Path), ("role" = ProjectRole, Path)),
    request_body = PolicyRequest,
    responses((status = 204), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse), (status = 422, body = ErrorResponse))
)]
pub async fn set_policy(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Path((org, project, env, role)): Path<(String, String, String, String)>,
    Json(req): Json<PolicyRequest>,
) -> Result<StatusCode, ApiError> {
    let role = parse_role(&role)?;
    service::projects::set_policy(
        &state,
        &meta,
        &principal,
        EnvPath {
            org: &org,
            project: &project,
            env: &env,
        },
        role,
        Some(req.access),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Return a project role to its default access in this environment.
#[utoipa::path(
    delete, path = "/{org}/projects/{project}/environments/{env}/policies/{role}", tag = "projects", security(("bearer" = [])),
    params(("org" = String, Path), ("project" = String, Path), ("env" = String, Path), ("role" = ProjectRole, Path)),
    responses((status = 204), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
pub async fn clear_policy(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Path((org, project, env, role)): Path<(String, String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let role = parse_role(&role)?;
    service::projects::set_policy(
        &state,
        &meta,
        &principal,
        EnvPath {
            org: &org,
            project: &project,
            env: &env,
        },
        role,
        None,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
