//! Password reset without email: an organization's owner or admin (or the server's
//! administrator, `coffer-server admin reset-password`) gets a one-time link for a member and
//! hands it over; whoever opens it sets a new password, and every session of the account ends.
//!
//! A link is `<public URL>/reset-password/<token>`: the token travels in the path, never in a
//! query string, and request logs name the route template, never the path. A user has one link
//! at most (a new one replaces it), stored as its token's SHA-256.
//!
//! Whoever issues a link can take over the account, so an issuer must have authority over the
//! user in every organization the user belongs to (an owner there, or an admin of a user who is
//! not an owner), when the link is issued and again when it is used.

use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use crate::auth::Principal;
use crate::auth::password::check_password_policy;
use crate::auth::rate_limit::Limit;
use crate::auth::tokens::{self, PASSWORD_RESET_PREFIX};
use crate::authz::{Action, OrgRole};
use crate::db;
use crate::db::cache::Change;
use crate::db::password_resets::PasswordResetRow;
use crate::error::{ApiError, ApiResult};
use crate::ids::{Timestamp, UserId};
use crate::service::ClientMeta;
use crate::service::audit::{AuditEvent, Outcome, action};
use crate::service::auth::{normalize_email, rate_limit};
use crate::service::tenancy;
use crate::state::AppState;

/// The path under the public URL at which a link's page is served, followed by `/<token>`.
pub const LINK_PATH: &str = "/reset-password";

/// A new reset link's token, shown this once.
#[derive(Debug)]
pub struct IssuedReset {
    /// Whose password it resets.
    pub user_id: UserId,
    pub token: SecretString,
    pub expires_at: Timestamp,
}

impl IssuedReset {
    /// The link to hand over (see [`link`]).
    pub fn link(&self, state: &AppState) -> SecretString {
        link(state, &self.token)
    }
}

/// The link that opens the reset page for `token`: `<public URL>/reset-password/<token>`.
/// It holds the token, so it is a secret too.
pub fn link(state: &AppState, token: &SecretString) -> SecretString {
    SecretString::from(format!(
        "{}{LINK_PATH}/{}",
        state.config.public_url(),
        token.expose_secret()
    ))
}

/// Issues a link for member `user` of organization `org_slug`, replacing any earlier one. Owners
/// and admins only, from a login session; an admin not for an owner; nobody for themselves (they
/// change their password instead); nobody for a user who also belongs to an organization where
/// they have no such authority.
pub async fn issue(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    org_slug: &str,
    user: UserId,
) -> ApiResult<IssuedReset> {
    let ctx = tenancy::org(state, principal, org_slug, Action::MembersManage).await?;
    principal.require_session("issuing a password-reset link")?;
    let member = db::orgs::member(state.db.pool(), ctx.org.id, user)
        .await?
        .ok_or_else(|| ApiError::not_found("member"))?;
    if user == principal.user_id {
        return Err(ApiError::forbidden(
            "own_account",
            "a reset link is for someone else's account: change your own password instead",
        ));
    }
    if member.role == OrgRole::Owner.as_str() && ctx.role != Some(OrgRole::Owner) {
        return Err(ApiError::forbidden(
            "forbidden",
            "only an owner can issue a password-reset link for an owner",
        ));
    }
    if db::password_resets::orgs_beyond_issuer(state.db.pool(), principal.user_id, user).await? > 0
    {
        return Err(ApiError::forbidden(
            "member_of_other_organization",
            "this user also belongs to an organization where you are not an owner (or an admin \
             of a non-owner); an owner there, or the server's administrator, can reset it",
        ));
    }

    let token = tokens::generate(PASSWORD_RESET_PREFIX);
    let now = Timestamp::now();
    let expires_at = now.plus(state.config.password_reset_ttl());
    let mut tx = state.db.begin().await?;
    db::password_resets::replace(
        &mut *tx,
        user,
        &tokens::hash(token.expose_secret()),
        Some(principal.user_id),
        Some(ctx.org.id),
        now,
        expires_at,
    )
    .await?;
    AuditEvent::new(action::PASSWORD_RESET_ISSUED, Outcome::Success, meta)
        .by(principal)
        .org(ctx.org.id)
        .target("user", user)
        .details(json!({ "expires_at": expires_at }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(IssuedReset {
        user_id: user,
        token,
        expires_at,
    })
}

/// Issues a link for the account with `email`, as the server's administrator (audited with the
/// actor `system`), replacing any earlier one. An unknown email is a 404 `user`.
pub async fn issue_for_email_as_system(state: &AppState, email: &str) -> ApiResult<IssuedReset> {
    let email = normalize_email(email)?;
    let user = db::users::by_email(state.db.pool(), &email)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    let token = tokens::generate(PASSWORD_RESET_PREFIX);
    let now = Timestamp::now();
    let expires_at = now.plus(state.config.password_reset_ttl());
    let mut tx = state.db.begin().await?;
    db::password_resets::replace(
        &mut *tx,
        user.id,
        &tokens::hash(token.expose_secret()),
        None,
        None,
        now,
        expires_at,
    )
    .await?;
    AuditEvent::system(action::PASSWORD_RESET_ISSUED, Outcome::Success)
        .about_user(Some(user.id))
        .target("user", user.id)
        .details(json!({ "expires_at": expires_at }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(IssuedReset {
        user_id: user.id,
        token,
        expires_at,
    })
}

/// Whether the one who issued `link` may still reset its user's password: the server's
/// administrator always; a user while the account is still a member of the organization the
/// link was issued in and they still have authority over it everywhere.
async fn issuer_still_entitled(state: &AppState, link: &PasswordResetRow) -> ApiResult<bool> {
    let (Some(issuer), Some(org)) = (link.created_by, link.org_id) else {
        return Ok(link.created_by.is_none());
    };
    if db::orgs::member(state.db.pool(), org, link.user_id)
        .await?
        .is_none()
    {
        return Ok(false);
    }
    Ok(db::password_resets::orgs_beyond_issuer(state.db.pool(), issuer, link.user_id).await? == 0)
}

/// Audits a refused redemption and answers it: whatever the reason, the same 401.
async fn refused(
    state: &AppState,
    meta: &ClientMeta,
    link: Option<&PasswordResetRow>,
    reason: &str,
) -> ApiError {
    let mut event = AuditEvent::new(action::PASSWORD_RESET, Outcome::Failure, meta)
        .about_user(link.map(|l| l.user_id))
        .details(json!({ "reason": reason }));
    if let Some(link) = link {
        event = event.target("user", link.user_id);
        if let Some(org) = link.org_id {
            event = event.org(org);
        }
    }
    if let Err(e) = event.commit(&state.db).await {
        return e.into();
    }
    ApiError::unauthorized(
        "invalid_reset_token",
        "this password-reset link is invalid, expired or already used: ask for a new one",
    )
}

/// Sets a new password with a reset token: the token is spent with the new password's hash in
/// one transaction, and every session of the user ends. The new password must pass the policy
/// of registration (a refusal leaves the token usable). Rate-limited per client address.
pub async fn redeem(
    state: &AppState,
    meta: &ClientMeta,
    token: &SecretString,
    new_password: &SecretString,
) -> ApiResult<()> {
    rate_limit(state, Limit::PasswordResetPerIp, meta.ip_key(), None, meta).await?;
    let token_hash = tokens::hash(token.expose_secret());
    let found = db::password_resets::by_token_hash(state.db.pool(), &token_hash).await?;
    let Some(link) = found else {
        return Err(refused(state, meta, None, "unknown_token").await);
    };
    if link.used_at.is_some() {
        return Err(refused(state, meta, Some(&link), "used").await);
    }
    if link.expires_at <= Timestamp::now() {
        return Err(refused(state, meta, Some(&link), "expired").await);
    }
    if !issuer_still_entitled(state, &link).await? {
        return Err(refused(state, meta, Some(&link), "issuer_no_longer_entitled").await);
    }
    let user = db::users::by_id(state.db.pool(), link.user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    check_password_policy(new_password, &[&user.email, &user.name])?;
    let password_hash = state.passwords.hash(new_password).await?;

    let now = Timestamp::now();
    let mut tx = state.db.begin().await?;
    if !db::password_resets::claim(&mut *tx, &token_hash, now).await? {
        // Used, replaced or expired since it was read.
        drop(tx);
        return Err(refused(state, meta, Some(&link), "no_longer_valid").await);
    }
    db::users::set_password_hash(&mut *tx, user.id, &password_hash, now).await?;
    let ended =
        db::sessions::revoke_other_sessions(&mut *tx, user.id, None, "password_reset", now).await?;
    for id in &ended {
        tx.changed(Change::Session(*id));
    }
    let issued_by = link
        .created_by
        .map_or_else(|| "system".to_owned(), |u| u.to_string());
    let mut event = AuditEvent::new(action::PASSWORD_RESET, Outcome::Success, meta)
        .about_user(Some(user.id))
        .target("user", user.id)
        .details(json!({ "sessions_ended": ended.len(), "issued_by": issued_by }));
    if let Some(org) = link.org_id {
        event = event.org(org);
    }
    event.record(&mut *tx).await?;
    tx.commit().await?;
    for id in &ended {
        state.forget_session(*id);
    }
    Ok(())
}
