//! `/api/v1/orgs/{org}/teams`: teams and their members. Their project roles are granted under
//! `/projects/{project}/access/teams/{team}`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Principal;
use crate::db::orgs::MemberRow;
use crate::db::teams::TeamRow;
use crate::error::{ApiError, ErrorResponse};
use crate::http::{Json, Page, PageExt as _, PageParams, Query};
use crate::ids::{TeamId, Timestamp, UserId};
use crate::routes::orgs::{Member, parse_user_id};
use crate::service::teams::TeamDetail;
use crate::service::{self, ClientMeta};
use crate::state::AppState;
use coffer_client::types::formats;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_team, list_teams))
        .routes(routes!(get_team, update_team, delete_team))
        .routes(routes!(add_team_member, remove_team_member))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTeamRequest {
    /// Unique in the organization.
    #[schema(value_type = formats::Slug)]
    pub slug: String,
    #[schema(value_type = formats::Name)]
    pub name: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTeamRequest {
    #[schema(value_type = formats::Name)]
    pub name: String,
}

/// A team of an organization.
#[derive(Debug, Serialize, ToSchema)]
pub struct Team {
    pub id: TeamId,
    pub slug: String,
    pub name: String,
    pub created_at: Timestamp,
    /// Its members (`joined_at`: when they joined the team); absent from lists.
    pub members: Option<Vec<Member>>,
}

impl Team {
    fn new(t: TeamRow, members: Option<Vec<MemberRow>>) -> Self {
        Self {
            id: t.id,
            slug: t.slug,
            name: t.name,
            created_at: t.created_at,
            members: members.map(|m| m.into_iter().map(Member::from).collect()),
        }
    }
}

impl From<TeamDetail> for Team {
    fn from(d: TeamDetail) -> Self {
        Self::new(d.team, Some(d.members))
    }
}

type OrgTeam = (String, String);
type OrgTeamUser = (String, String, String);

/// Create a team (org owners and admins).
#[utoipa::path(
    post, path = "/{org}/teams", tag = "teams", security(("bearer" = [])), params(("org" = String, Path)),
    request_body = CreateTeamRequest,
    responses((status = 201, body = Team), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse), (status = 422, body = ErrorResponse))
)]
pub async fn create_team(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Path(org): Path<String>,
    Json(req): Json<CreateTeamRequest>,
) -> Result<(StatusCode, Json<Team>), ApiError> {
    let team =
        service::teams::create(&state, &meta, &principal, &org, &req.slug, &req.name).await?;
    Ok((StatusCode::CREATED, Json(Team::new(team, Some(Vec::new())))))
}

/// The teams of an organization (every member may see them).
#[utoipa::path(
    get, path = "/{org}/teams", tag = "teams", security(("bearer" = [])), params(("org" = String, Path), PageParams),
    responses((status = 200, body = Page<Team>), (status = 404, body = ErrorResponse))
)]
pub async fn list_teams(
    State(state): State<AppState>,
    principal: Principal,
    Path(org): Path<String>,
    Query(page): Query<PageParams>,
) -> Result<Json<Page<Team>>, ApiError> {
    let limit = page.limit()?;
    let rows = service::teams::list(&state, &principal, &org, page.cursor()?, limit).await?;
    Ok(Json(Page::from_rows(
        rows,
        limit,
        |t| t.slug.clone(),
        |t| Team::new(t, None),
    )))
}

/// A team and its members.
#[utoipa::path(
    get, path = "/{org}/teams/{team}", tag = "teams", security(("bearer" = [])),
    params(("org" = String, Path), ("team" = String, Path)),
    responses((status = 200, body = Team), (status = 404, body = ErrorResponse))
)]
pub async fn get_team(
    State(state): State<AppState>,
    principal: Principal,
    Path((org, team)): Path<OrgTeam>,
) -> Result<Json<Team>, ApiError> {
    Ok(Json(
        service::teams::get(&state, &principal, &org, &team)
            .await?
            .into(),
    ))
}

/// Rename a team (org owners and admins).
#[utoipa::path(
    patch, path = "/{org}/teams/{team}", tag = "teams", security(("bearer" = [])),
    params(("org" = String, Path), ("team" = String, Path)), request_body = UpdateTeamRequest,
    responses((status = 200, body = Team), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse), (status = 422, body = ErrorResponse))
)]
pub async fn update_team(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Path((org, team)): Path<OrgTeam>,
    Json(req): Json<UpdateTeamRequest>,
) -> Result<Json<Team>, ApiError> {
    Ok(Json(
        service::teams::rename(&state, &meta, &principal, &org, &team, &req.name)
            .await?
            .into(),
    ))
}

/// Delete a team; its members lose the project roles they held through it (org owners and
/// admins).
#[utoipa::path(
    delete, path = "/{org}/teams/{team}", tag = "teams", security(("bearer" = [])),
    params(("org" = String, Path), ("team" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
pub async fn delete_team(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Path((org, team)): Path<OrgTeam>,
) -> Result<StatusCode, ApiError> {
    service::teams::delete(&state, &meta, &principal, &org, &team).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Put a member of the organization in the team (org owners and admins).
#[utoipa::path(
    put, path = "/{org}/teams/{team}/members/{user_id}", tag = "teams", security(("bearer" = [])),
    params(("org" = String, Path), ("team" = String, Path), ("user_id" = UserId, Path)),
    responses((status = 204), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
pub async fn add_team_member(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Path((org, team, user)): Path<OrgTeamUser>,
) -> Result<StatusCode, ApiError> {
    let user = parse_user_id(&user)?;
    service::teams::add_member(&state, &meta, &principal, &org, &team, user).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Take a member out of the team (org owners and admins).
#[utoipa::path(
    delete, path = "/{org}/teams/{team}/members/{user_id}", tag = "teams", security(("bearer" = [])),
    params(("org" = String, Path), ("team" = String, Path), ("user_id" = UserId, Path)),
    responses((status = 204), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
pub async fn remove_team_member(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Path((org, team, user)): Path<OrgTeamUser>,
) -> Result<StatusCode, ApiError> {
    let user = parse_user_id(&user)?;
    service::teams::remove_member(&state, &meta, &principal, &org, &team, user).await?;
    Ok(StatusCode::NO_CONTENT)
}
