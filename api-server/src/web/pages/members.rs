//! An organization's members and invitations: roles, removal, invitation links, and one-time
//! password-reset links that owners and admins hand to a member who forgot theirs.

use std::str::FromStr as _;

use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use secrecy::ExposeSecret as _;
use serde::Deserialize;

use super::{FormError, Layout, when};
use crate::authz::{Action, Decision, OrgRole, Standing, decide};
use crate::error::ApiError;
use crate::ids::{InvitationId, UserId};
use crate::service::{self, ClientMeta, tenancy};
use crate::state::AppState;
use crate::web::session::SignedIn;
use crate::web::{WebError, render};

pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/orgs/{org}/members", get(page))
        .route("/orgs/{org}/members/{user}/role", post(change_role))
        .route("/orgs/{org}/members/{user}/remove", post(remove))
        .route("/orgs/{org}/members/{user}/reset-link", post(reset_link))
        .route("/orgs/{org}/invitations", post(invite))
        .route(
            "/orgs/{org}/invitations/{id}/revoke",
            post(revoke_invitation),
        )
}

/// Most members and invitations listed.
const PAGE: u32 = 500;

#[derive(Debug)]
pub struct MemberView {
    pub id: String,
    pub name: String,
    pub email: String,
    pub role: String,
    pub joined: String,
    pub me: bool,
}

#[derive(Debug)]
pub struct InvitationView {
    pub id: String,
    pub email: String,
    pub role: String,
    pub expires: String,
}

/// A link shown once: an invitation's or a password reset's.
#[derive(Debug)]
pub struct IssuedLink {
    pub what: &'static str,
    pub to: String,
    pub url: String,
    pub expires: String,
}

#[derive(Template)]
#[template(path = "members.html")]
struct MembersPage {
    layout: Layout,
    org: String,
    members: Vec<MemberView>,
    invitations: Vec<InvitationView>,
    may_manage: bool,
    may_manage_owners: bool,
    roles: Vec<&'static str>,
    issued: Option<IssuedLink>,
    email: String,
    error: FormError,
}

async fn members_page(
    state: &AppState,
    who: &SignedIn,
    org: &str,
    issued: Option<IssuedLink>,
    email: String,
    error: FormError,
) -> Result<Response, WebError> {
    let ctx = tenancy::org(state, &who.principal, org, Action::MembersRead).await?;
    let standing = Standing {
        org_role: ctx.role,
        ..Default::default()
    };
    let may_manage = decide(&standing, Action::MembersManage) == Decision::Allow;
    let may_manage_owners = decide(&standing, Action::OwnersManage) == Decision::Allow;
    let members = service::orgs::members(state, &who.principal, org, None, PAGE)
        .await?
        .into_iter()
        .map(|m| MemberView {
            id: m.user_id.to_string(),
            me: m.user_id == who.principal.user_id,
            name: m.name,
            email: m.email,
            role: m.role,
            joined: when(m.created_at),
        })
        .collect();
    let invitations = if may_manage {
        service::orgs::invitations(state, &who.principal, org, None, PAGE)
            .await?
            .into_iter()
            .filter(|i| i.accepted_at.is_none() && i.revoked_at.is_none())
            .map(|i| InvitationView {
                id: i.id.to_string(),
                email: i.email,
                role: i.role,
                expires: when(i.expires_at),
            })
            .collect()
    } else {
        Vec::new()
    };
    let roles = OrgRole::ALL
        .iter()
        .rev()
        .filter(|r| may_manage_owners || **r != OrgRole::Owner)
        .map(|r| r.as_str())
        .collect();
    let layout = Layout::signed_in(state, who, Some(&ctx), "Members", "members").await?;
    render(&MembersPage {
        layout,
        org: org.to_owned(),
        members,
        invitations,
        may_manage,
        may_manage_owners,
        roles,
        issued,
        email,
        error,
    })
}

/// `/orgs/{org}/members`
pub async fn page(
    State(state): State<AppState>,
    who: SignedIn,
    Path(org): Path<String>,
) -> Result<Response, WebError> {
    members_page(&state, &who, &org, None, String::new(), FormError::none()).await
}

fn user_id(text: &str) -> Result<UserId, ApiError> {
    text.parse().map_err(|_| ApiError::not_found("member"))
}

fn role(text: &str) -> Result<OrgRole, ApiError> {
    OrgRole::from_str(text).map_err(|_| ApiError::validation("invalid_role", "unknown role"))
}

#[derive(Deserialize)]
pub struct RoleForm {
    role: String,
}

pub async fn change_role(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path((org, user)): Path<(String, String)>,
    Form(form): Form<RoleForm>,
) -> Result<Response, WebError> {
    service::orgs::change_role(
        &state,
        &meta,
        &who.principal,
        &org,
        user_id(&user)?,
        role(&form.role)?,
    )
    .await?;
    Ok(Redirect::to(&format!("/orgs/{org}/members")).into_response())
}

/// Removes a member (or, for oneself, leaves the organization).
pub async fn remove(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path((org, user)): Path<(String, String)>,
) -> Result<Response, WebError> {
    let user = user_id(&user)?;
    service::orgs::remove_member(&state, &meta, &who.principal, &org, user).await?;
    if user == who.principal.user_id {
        return Ok(Redirect::to("/").into_response());
    }
    Ok(Redirect::to(&format!("/orgs/{org}/members")).into_response())
}

/// A one-time password-reset link for a member, shown once.
pub async fn reset_link(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path((org, user)): Path<(String, String)>,
) -> Result<Response, WebError> {
    let user = user_id(&user)?;
    let issued = service::password_reset::issue(&state, &meta, &who.principal, &org, user).await?;
    let email = service::orgs::members(&state, &who.principal, &org, None, PAGE)
        .await?
        .into_iter()
        .find(|m| m.user_id == user)
        .map(|m| m.email)
        .unwrap_or_default();
    let link = IssuedLink {
        what: "Password-reset link",
        to: email,
        url: issued.link(&state).expose_secret().to_owned(),
        expires: when(issued.expires_at),
    };
    members_page(
        &state,
        &who,
        &org,
        Some(link),
        String::new(),
        FormError::none(),
    )
    .await
}

#[derive(Deserialize)]
pub struct InviteForm {
    email: String,
    role: String,
}

/// Invites someone by email: the invitation link is shown once, to be sent to them.
pub async fn invite(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path(org): Path<String>,
    Form(form): Form<InviteForm>,
) -> Result<Response, WebError> {
    let result = match role(&form.role) {
        Ok(r) => service::orgs::invite(&state, &meta, &who.principal, &org, &form.email, r).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(issued) => {
            let link = IssuedLink {
                what: "Invitation link",
                to: issued.invitation.email.clone(),
                url: format!(
                    "{}/invitations/{}",
                    state.config.public_url(),
                    issued.token.expose_secret()
                ),
                expires: when(issued.invitation.expires_at),
            };
            members_page(
                &state,
                &who,
                &org,
                Some(link),
                String::new(),
                FormError::none(),
            )
            .await
        }
        Err(e) => {
            let status = e.status();
            let page = members_page(
                &state,
                &who,
                &org,
                None,
                form.email,
                FormError::from_api(&e),
            )
            .await?;
            Ok((status, page).into_response())
        }
    }
}

pub async fn revoke_invitation(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path((org, id)): Path<(String, String)>,
) -> Result<Response, WebError> {
    let id: InvitationId = id.parse().map_err(|_| ApiError::not_found("invitation"))?;
    service::orgs::revoke_invitation(&state, &meta, &who.principal, &org, id).await?;
    Ok(Redirect::to(&format!("/orgs/{org}/members")).into_response())
}
