//! `/api/v1/orgs`: organizations, members (and their password-reset links), invitations; `/api/v1/invitations/{token}/accept`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Caller, Principal};
use crate::authz::OrgRole;
use crate::db::orgs::{InvitationRow, MemberRow};
use crate::error::{ApiError, ErrorResponse};
use crate::http::{IdPageParams, Json, Page, PageExt as _, PageParams, Query, Revealed};
use crate::ids::{InvitationId, OrgId, Timestamp, UserId};
use crate::service::tenancy::OrgCtx;
use crate::service::{self, ClientMeta};
use crate::state::AppState;
use coffer_client::types::formats;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_org, list_orgs))
        .routes(routes!(get_org, update_org, delete_org))
        .routes(routes!(list_members))
        .routes(routes!(update_member, remove_member))
        .routes(routes!(issue_password_reset))
        .routes(routes!(create_invitation, list_invitations))
        .routes(routes!(revoke_invitation))
}

pub fn invitations_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(accept_invitation))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrgRequest {
    #[schema(value_type = formats::Name)]
    pub name: String,
    /// Unique.
    #[schema(value_type = formats::Slug)]
    pub slug: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateOrgRequest {
    #[schema(value_type = formats::Name)]
    pub name: String,
}

/// An organization, with the caller's role in it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Org {
    pub id: OrgId,
    pub slug: String,
    pub name: String,
    pub created_at: Timestamp,
    pub role: Option<OrgRole>,
}

impl From<OrgCtx> for Org {
    fn from(c: OrgCtx) -> Self {
        Self {
            id: c.org.id,
            slug: c.org.slug,
            name: c.org.name,
            created_at: c.org.created_at,
            role: c.role,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteOrgParams {
    /// The organization's slug, repeated to confirm.
    pub confirm: Option<String>,
}

/// A member of an organization.
#[derive(Debug, Serialize, ToSchema)]
pub struct Member {
    pub user_id: UserId,
    pub email: String,
    pub name: String,
    pub role: String,
    pub joined_at: Timestamp,
}

impl From<MemberRow> for Member {
    fn from(m: MemberRow) -> Self {
        Self {
            user_id: m.user_id,
            email: m.email,
            name: m.name,
            role: m.role,
            joined_at: m.created_at,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMemberRequest {
    pub role: OrgRole,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInvitationRequest {
    #[schema(value_type = formats::Email)]
    pub email: String,
    pub role: OrgRole,
}

/// A pending invitation.
#[derive(Debug, Serialize, ToSchema)]
pub struct Invitation {
    pub id: InvitationId,
    pub email: String,
    pub role: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

impl From<InvitationRow> for Invitation {
    fn from(i: InvitationRow) -> Self {
        Self {
            id: i.id,
            email: i.email,
            role: i.role,
            created_at: i.created_at,
            expires_at: i.expires_at,
        }
    }
}

/// A new invitation with its single-use token: send it to the invitee, it is not shown again.
#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedInvitation {
    #[serde(flatten)]
    pub invitation: Invitation,
    pub token: Revealed,
}

/// A one-time password-reset link for a member, shown this once: hand it to them.
#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedPasswordReset {
    /// The token (`cfp_…`), also the link's last path segment.
    pub token: Revealed,
    /// `<public URL>/reset-password/<token>`: the page where the member sets a new password.
    pub url: Revealed,
    /// After this the link no longer works; it also stops working once used or when a new one
    /// is issued for the member.
    pub expires_at: Timestamp,
}

pub(crate) fn parse_user_id(id: &str) -> Result<UserId, ApiError> {
    id.parse().map_err(|_| ApiError::not_found("member"))
}

/// Create an organization; the caller becomes its owner.
#[utoipa::path(
    post, path = "", tag = "orgs", security(("bearer" = [])), request_body = CreateOrgRequest,
    responses((status = 201, body = Org), (status = 409, body = ErrorResponse), (status = 422, body = ErrorResponse))
)]
pub async fn create_org(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Json(req): Json<CreateOrgRequest>,
) -> Result<(StatusCode, Json<Org>), ApiError> {
    let ctx = service::orgs::create(&state, &meta, &principal, &req.name, &req.slug).await?;
    Ok((StatusCode::CREATED, Json(ctx.into())))
}

/// The organizations the caller belongs to.
#[utoipa::path(
    get, path = "", tag = "orgs", security(("bearer" = [])), params(PageParams),
    responses((status = 200, body = Page<Org>))
)]
pub async fn list_orgs(
    State(state): State<AppState>,
    principal: Principal,
    Query(page): Query<PageParams>,
) -> Result<Json<Page<Org>>, ApiError> {
    let limit = page.limit()?;
    let rows = service::orgs::list(&state, &principal, page.cursor()?, limit).await?;
    Ok(Json(Page::from_rows(
        rows,
        limit,
        |o| o.slug.clone(),
        |o| {
            let role = o.role.as_deref().and_then(|r| r.parse().ok());
            Org::from(OrgCtx { org: o, role })
        },
    )))
}

/// One organization.
#[utoipa::path(
    get, path = "/{org}", tag = "orgs", security(("bearer" = [])), params(("org" = String, Path)),
    responses((status = 200, body = Org), (status = 404, body = ErrorResponse))
)]
pub async fn get_org(
    State(state): State<AppState>,
    principal: Caller,
    Path(org): Path<String>,
) -> Result<Json<Org>, ApiError> {
    let ctx =
        service::tenancy::org(&state, &principal, &org, crate::authz::Action::OrgRead).await?;
    Ok(Json(ctx.into()))
}

/// Rename an organization (owners and admins).
#[utoipa::path(
    patch, path = "/{org}", tag = "orgs", security(("bearer" = [])), params(("org" = String, Path)),
    request_body = UpdateOrgRequest,
    responses((status = 200, body = Org), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
pub async fn update_org(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Path(org): Path<String>,
    Json(req): Json<UpdateOrgRequest>,
) -> Result<Json<Org>, ApiError> {
    Ok(Json(
        service::orgs::rename(&state, &meta, &principal, &org, &req.name)
            .await?
            .into(),
    ))
}

/// Delete an organization and everything in it (owners only; `?confirm=<slug>`).
#[utoipa::path(
    delete, path = "/{org}", tag = "orgs", security(("bearer" = [])), params(("org" = String, Path), DeleteOrgParams),
    responses((status = 204), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse), (status = 422, body = ErrorResponse))
)]
pub async fn delete_org(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Path(org): Path<String>,
    Query(params): Query<DeleteOrgParams>,
) -> Result<StatusCode, ApiError> {
    service::orgs::delete(&state, &meta, &principal, &org, params.confirm.as_deref()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The members of an organization.
#[utoipa::path(
    get, path = "/{org}/members", tag = "orgs", security(("bearer" = [])), params(("org" = String, Path), IdPageParams),
    responses((status = 200, body = Page<Member>), (status = 404, body = ErrorResponse))
)]
pub async fn list_members(
    State(state): State<AppState>,
    principal: Principal,
    Path(org): Path<String>,
    Query(page): Query<IdPageParams>,
) -> Result<Json<Page<Member>>, ApiError> {
    let limit = page.limit()?;
    let rows = service::orgs::members(&state, &principal, &org, page.cursor()?, limit).await?;
    Ok(Json(Page::from_rows(
        rows,
        limit,
        |m| m.user_id.to_string(),
        Member::from,
    )))
}

/// Change a member's role. Only owners grant or take away ownership; the last owner stays.
#[utoipa::path(
    patch, path = "/{org}/members/{user_id}", tag = "orgs", security(("bearer" = [])),
    params(("org" = String, Path), ("user_id" = UserId, Path)), request_body = UpdateMemberRequest,
    responses((status = 200, body = Member), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse))
)]
pub async fn update_member(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Path((org, user)): Path<(String, String)>,
    Json(req): Json<UpdateMemberRequest>,
) -> Result<Json<Member>, ApiError> {
    let user = parse_user_id(&user)?;
    Ok(Json(
        service::orgs::change_role(&state, &meta, &principal, &org, user, req.role)
            .await?
            .into(),
    ))
}

/// Remove a member; a member removing themselves leaves the organization.
#[utoipa::path(
    delete, path = "/{org}/members/{user_id}", tag = "orgs", security(("bearer" = [])),
    params(("org" = String, Path), ("user_id" = UserId, Path)),
    responses((status = 204), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse))
)]
pub async fn remove_member(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Path((org, user)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let user = parse_user_id(&user)?;
    service::orgs::remove_member(&state, &meta, &principal, &org, user).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Issue a one-time link with which a member sets a new password (owners and admins, from a
/// login session); an earlier link for the member stops working. Not for an owner unless the
/// caller is one, not for the caller themselves, and not for a member who also belongs to an
/// organization where the caller is neither an owner nor an admin of a non-owner.
#[utoipa::path(
    post, path = "/{org}/members/{user_id}/password-reset", tag = "orgs", security(("bearer" = [])),
    params(("org" = String, Path), ("user_id" = UserId, Path)),
    responses(
        (status = 201, body = IssuedPasswordReset),
        (status = 403, description = "not an owner or admin, an owner's or the caller's own account, a member of another organization, or not a login session", body = ErrorResponse),
        (status = 404, body = ErrorResponse),
    )
)]
pub async fn issue_password_reset(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Path((org, user)): Path<(String, String)>,
) -> Result<(StatusCode, Json<IssuedPasswordReset>), ApiError> {
    let user = parse_user_id(&user)?;
    let issued = service::password_reset::issue(&state, &meta, &principal, &org, user).await?;
    Ok((
        StatusCode::CREATED,
        Json(IssuedPasswordReset {
            url: Revealed(issued.link(&state)),
            token: Revealed(issued.token),
            expires_at: issued.expires_at,
        }),
    ))
}

/// Invite someone by email; the answer carries the single-use token to give them.
#[utoipa::path(
    post, path = "/{org}/invitations", tag = "orgs", security(("bearer" = [])), params(("org" = String, Path)),
    request_body = CreateInvitationRequest,
    responses((status = 201, body = IssuedInvitation), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse), (status = 422, body = ErrorResponse))
)]
pub async fn create_invitation(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Path(org): Path<String>,
    Json(req): Json<CreateInvitationRequest>,
) -> Result<(StatusCode, Json<IssuedInvitation>), ApiError> {
    let issued =
        service::orgs::invite(&state, &meta, &principal, &org, &req.email, req.role).await?;
    Ok((
        StatusCode::CREATED,
        Json(IssuedInvitation {
            invitation: issued.invitation.into(),
            token: Revealed(issued.token),
        }),
    ))
}

/// Pending invitations.
#[utoipa::path(
    get, path = "/{org}/invitations", tag = "orgs", security(("bearer" = [])), params(("org" = String, Path), IdPageParams),
    responses((status = 200, body = Page<Invitation>), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
pub async fn list_invitations(
    State(state): State<AppState>,
    principal: Principal,
    Path(org): Path<String>,
    Query(page): Query<IdPageParams>,
) -> Result<Json<Page<Invitation>>, ApiError> {
    let limit = page.limit()?;
    let rows = service::orgs::invitations(&state, &principal, &org, page.cursor()?, limit).await?;
    Ok(Json(Page::from_rows(
        rows,
        limit,
        |i| i.id.to_string(),
        Invitation::from,
    )))
}

/// Withdraw a pending invitation.
#[utoipa::path(
    delete, path = "/{org}/invitations/{id}", tag = "orgs", security(("bearer" = [])),
    params(("org" = String, Path), ("id" = InvitationId, Path)),
    responses((status = 204), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse))
)]
pub async fn revoke_invitation(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Path((org, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let id = id.parse().map_err(|_| ApiError::not_found("invitation"))?;
    service::orgs::revoke_invitation(&state, &meta, &principal, &org, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Accept an invitation sent to the caller's email address.
#[utoipa::path(
    post, path = "/{token}/accept", tag = "orgs", security(("bearer" = [])), params(("token" = String, Path)),
    responses((status = 200, body = Org), (status = 404, body = ErrorResponse))
)]
pub async fn accept_invitation(
    State(state): State<AppState>,
    meta: ClientMeta,
    principal: Principal,
    Path(token): Path<String>,
) -> Result<Json<Org>, ApiError> {
    Ok(Json(
        service::orgs::accept(&state, &meta, &principal, &token)
            .await?
            .into(),
    ))
}
