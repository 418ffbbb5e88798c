//! Organizations, members and invitations.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use crate::auth::Principal;
use crate::auth::tokens;
use crate::authz::{Action, OrgRole};
use crate::db::cache::Change;
use crate::db::orgs::{InvitationRow, MemberRow, OrgRow};
use crate::db::{self, is_unique_violation};
use crate::error::{ApiError, ApiResult};
use crate::ids::{InvitationId, OrgId, Timestamp, UserId};
use crate::service::ClientMeta;
use crate::service::audit::{AuditEvent, Outcome, action};
use crate::service::auth::normalize_email;
use crate::service::tenancy::{self, OrgCtx, check_name, check_slug};
use crate::state::AppState;

/// How long an invitation can be accepted.
pub const INVITATION_TTL: Duration = Duration::from_secs(7 * 86_400);
/// Prefix of invitation tokens.
pub const INVITATION_PREFIX: &str = "cfi_";

pub async fn create(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    name: &str,
    slug: &str,
) -> ApiResult<OrgCtx> {
    let name = check_name(name)?;
    check_slug(slug, "organization")?;
    let now = Timestamp::now();
    let id = OrgId::new();
    let mut tx = state.db.begin().await?;
    if let Err(e) = db::orgs::insert(&mut *tx, id, slug, &name, now).await {
        return Err(if is_unique_violation(&e) {
            ApiError::conflict(
                "slug_taken",
                "an organization with this slug already exists",
            )
        } else {
            e.into()
        });
    }
    db::orgs::upsert_member(
        &mut *tx,
        id,
        principal.user_id,
        OrgRole::Owner.as_str(),
        now,
    )
    .await?;
    AuditEvent::new(action::ORG_CREATED, Outcome::Success, meta)
        .by(principal)
        .org(id)
        .target("org", id)
        .details(json!({ "slug": slug }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    let org = OrgRow {
        id,
        slug: slug.to_owned(),
        name,
        created_at: now,
        role: Some("owner".into()),
    };
    Ok(OrgCtx {
        org,
        role: Some(OrgRole::Owner),
    })
}

pub async fn list(
    state: &AppState,
    principal: &Principal,
    after: Option<String>,
    limit: u32,
) -> ApiResult<Vec<OrgRow>> {
    Ok(db::orgs::list_for_user(
        state.db.pool(),
        principal.user_id,
        after.as_deref(),
        i64::from(limit) + 1,
    )
    .await?)
}

pub async fn rename(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    slug: &str,
    name: &str,
) -> ApiResult<OrgCtx> {
    let mut ctx = tenancy::org(state, principal, slug, Action::OrgUpdate).await?;
    let name = check_name(name)?;
    let mut tx = state.db.begin().await?;
    db::orgs::rename(&mut *tx, ctx.org.id, &name, Timestamp::now()).await?;
    AuditEvent::new(action::ORG_UPDATED, Outcome::Success, meta)
        .by(principal)
        .org(ctx.org.id)
        .target("org", ctx.org.id)
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    ctx.org.name = name;
    Ok(ctx)
}

/// Deletes the organization and everything in it; `confirm` must repeat its slug.
pub async fn delete(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    slug: &str,
    confirm: Option<&str>,
) -> ApiResult<()> {
    let ctx = tenancy::org(state, principal, slug, Action::OrgDelete).await?;
    if confirm != Some(ctx.org.slug.as_str()) {
        return Err(ApiError::validation(
            "confirmation_required",
            "deleting an organization removes everything in it: repeat its slug as `?confirm=<slug>`",
        ));
    }
    let mut tx = state.db.begin().await?;
    crate::service::dynamic::refuse_if_any(
        &mut *tx,
        db::dynamic::Scope::Org(ctx.org.id),
        "organization",
    )
    .await?;
    tx.changed(Change::Everything);
    db::orgs::delete(&mut tx, ctx.org.id).await?;
    AuditEvent::new(action::ORG_DELETED, Outcome::Success, meta)
        .by(principal)
        .org(ctx.org.id)
        .target("org", ctx.org.id)
        .details(json!({ "slug": ctx.org.slug }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

pub async fn members(
    state: &AppState,
    principal: &Principal,
    slug: &str,
    after: Option<UserId>,
    limit: u32,
) -> ApiResult<Vec<MemberRow>> {
    let ctx = tenancy::org(state, principal, slug, Action::MembersRead).await?;
    Ok(db::orgs::members(state.db.pool(), ctx.org.id, after, i64::from(limit) + 1).await?)
}

/// True when the caller acts as an owner and still is one under the owner lock: an owner that
/// a concurrent change demoted or removed has lost the right.
fn still_owner(ctx: &OrgCtx, locked_owners: &[UserId], caller: UserId) -> bool {
    ctx.role == Some(OrgRole::Owner) && locked_owners.contains(&caller)
}

/// True when an owner other than `user` stays, among the locked owners (which nobody else can
/// change before this transaction ends).
fn other_owner(locked_owners: &[UserId], user: UserId) -> bool {
    locked_owners.iter().any(|owner| *owner != user)
}

/// Changes a member's role. Only owners grant or take away ownership; the last owner stays.
pub async fn change_role(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    slug: &str,
    user: UserId,
    role: OrgRole,
) -> ApiResult<MemberRow> {
    let ctx = tenancy::org(state, principal, slug, Action::MembersManage).await?;
    let mut tx = state.db.begin().await?;
    // The owners first, then the member: what is checked below is what commits.
    let owners = db::orgs::lock_owners(&mut tx, ctx.org.id).await?;
    let mut member = db::orgs::member(&mut *tx, ctx.org.id, user)
        .await?
        .ok_or_else(|| ApiError::not_found("member"))?;
    let current: OrgRole = member
        .role
        .parse()
        .map_err(|e: String| ApiError::internal(anyhow::anyhow!(e)))?;
    if (current == OrgRole::Owner || role == OrgRole::Owner)
        && !still_owner(&ctx, &owners, principal.user_id)
    {
        return Err(ApiError::forbidden(
            "forbidden",
            "only an owner can grant or take away the owner role",
        ));
    }
    if current == OrgRole::Owner && role != OrgRole::Owner && !other_owner(&owners, user) {
        return Err(ApiError::conflict(
            "last_owner",
            "the last owner cannot be demoted; make someone else owner first",
        ));
    }
    db::orgs::set_member_role(&mut *tx, ctx.org.id, user, role.as_str()).await?;
    AuditEvent::new(action::MEMBER_ROLE_CHANGED, Outcome::Success, meta)
        .by(principal)
        .org(ctx.org.id)
        .target("user", user)
        .details(json!({ "from": current.as_str(), "to": role.as_str() }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    member.role = role.as_str().to_owned();
    Ok(member)
}

/// Removes a member (or, for the caller themselves, leaves). The last owner cannot go.
pub async fn remove_member(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    slug: &str,
    user: UserId,
) -> ApiResult<()> {
    let leaving = user == principal.user_id;
    let action = if leaving {
        Action::OrgRead
    } else {
        Action::MembersManage
    };
    let ctx = tenancy::org(state, principal, slug, action).await?;
    let mut tx = state.db.begin().await?;
    // The owners first, then the member: what is checked below is what commits.
    let owners = db::orgs::lock_owners(&mut tx, ctx.org.id).await?;
    let member = db::orgs::member(&mut *tx, ctx.org.id, user)
        .await?
        .ok_or_else(|| ApiError::not_found("member"))?;
    if member.role == OrgRole::Owner.as_str() {
        if !leaving && !still_owner(&ctx, &owners, principal.user_id) {
            return Err(ApiError::forbidden(
                "forbidden",
                "only an owner can remove an owner",
            ));
        }
        if !other_owner(&owners, user) {
            return Err(ApiError::conflict(
                "last_owner",
                "the last owner cannot leave or be removed; make someone else owner first",
            ));
        }
    }
    db::orgs::remove_member(&mut tx, ctx.org.id, user).await?;
    AuditEvent::new(action::MEMBER_REMOVED, Outcome::Success, meta)
        .by(principal)
        .org(ctx.org.id)
        .target("user", user)
        .details(json!({ "left": leaving }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// An invitation and its single-use token, shown this once.
#[derive(Debug)]
pub struct IssuedInvitation {
    pub invitation: InvitationRow,
    pub token: SecretString,
}

pub async fn invite(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    slug: &str,
    email: &str,
    role: OrgRole,
) -> ApiResult<IssuedInvitation> {
    let ctx = tenancy::org(state, principal, slug, Action::MembersManage).await?;
    if role == OrgRole::Owner && ctx.role != Some(OrgRole::Owner) {
        return Err(ApiError::forbidden(
            "forbidden",
            "only an owner can invite an owner",
        ));
    }
    let email = normalize_email(email)?;
    let now = Timestamp::now();
    let token = tokens::generate(INVITATION_PREFIX);
    let invitation = InvitationRow {
        id: InvitationId::new(),
        org_id: ctx.org.id,
        email,
        role: role.as_str().to_owned(),
        created_at: now,
        expires_at: now.plus(INVITATION_TTL),
        accepted_at: None,
        revoked_at: None,
    };
    let mut tx = state.db.begin().await?;
    db::orgs::insert_invitation(
        &mut *tx,
        invitation.id,
        ctx.org.id,
        &invitation.email,
        &invitation.role,
        &tokens::hash(token.expose_secret()),
        principal.user_id,
        now,
        invitation.expires_at,
    )
    .await?;
    AuditEvent::new(action::INVITATION_CREATED, Outcome::Success, meta)
        .by(principal)
        .org(ctx.org.id)
        .target("invitation", invitation.id)
        .details(json!({ "email": invitation.email, "role": invitation.role }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(IssuedInvitation { invitation, token })
}

pub async fn invitations(
    state: &AppState,
    principal: &Principal,
    slug: &str,
    before: Option<InvitationId>,
    limit: u32,
) -> ApiResult<Vec<InvitationRow>> {
    let ctx = tenancy::org(state, principal, slug, Action::MembersManage).await?;
    Ok(db::orgs::pending_invitations(
        state.db.pool(),
        ctx.org.id,
        Timestamp::now(),
        before,
        i64::from(limit) + 1,
    )
    .await?)
}

pub async fn revoke_invitation(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    slug: &str,
    id: InvitationId,
) -> ApiResult<()> {
    let ctx = tenancy::org(state, principal, slug, Action::MembersManage).await?;
    let mut tx = state.db.begin().await?;
    if !db::orgs::revoke_invitation(&mut *tx, ctx.org.id, id, Timestamp::now()).await? {
        return Err(ApiError::not_found("invitation"));
    }
    AuditEvent::new(action::INVITATION_REVOKED, Outcome::Success, meta)
        .by(principal)
        .org(ctx.org.id)
        .target("invitation", id)
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Accepts an invitation addressed to the caller's email: they join with its role.
pub async fn accept(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    token: &str,
) -> ApiResult<OrgCtx> {
    // Any failure looks the same: the token is not one this caller can use.
    let unusable = || ApiError::not_found("invitation");
    let user = db::users::by_id(state.db.pool(), principal.user_id)
        .await?
        .ok_or_else(unusable)?;
    let now = Timestamp::now();
    let mut tx = state.db.begin().await?;
    let invitation = db::orgs::invitation_by_token_hash(&mut *tx, &tokens::hash(token))
        .await?
        .ok_or_else(unusable)?;
    if invitation.email != user.email || invitation.expires_at <= now {
        return Err(unusable());
    }
    if !db::orgs::accept_invitation(&mut *tx, invitation.id, user.id, now).await? {
        return Err(unusable());
    }
    let existing = db::orgs::member(&mut *tx, invitation.org_id, user.id).await?;
    let role: OrgRole = invitation
        .role
        .parse()
        .map_err(|e: String| ApiError::internal(anyhow::anyhow!(e)))?;
    // An invitation never lowers an existing member's role.
    let keep = existing
        .as_ref()
        .and_then(|m| m.role.parse::<OrgRole>().ok())
        .filter(|r| *r > role);
    let effective = keep.unwrap_or(role);
    db::orgs::upsert_member(
        &mut *tx,
        invitation.org_id,
        user.id,
        effective.as_str(),
        now,
    )
    .await?;
    AuditEvent::new(action::INVITATION_ACCEPTED, Outcome::Success, meta)
        .by(principal)
        .org(invitation.org_id)
        .target("invitation", invitation.id)
        .details(json!({ "role": effective.as_str() }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    let org = db::orgs::by_id(state.db.pool(), invitation.org_id, user.id)
        .await?
        .ok_or_else(unusable)?;
    Ok(OrgCtx {
        role: Some(effective),
        org,
    })
}
