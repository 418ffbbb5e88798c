//! Teams: named groups of an organization's members that hold project roles together.

use serde_json::json;

use crate::auth::Principal;
use crate::authz::Action;
use crate::db::orgs::MemberRow;
use crate::db::teams::TeamRow;
use crate::db::{self, is_unique_violation};
use crate::error::{ApiError, ApiResult};
use crate::ids::{TeamId, Timestamp, UserId};
use crate::service::ClientMeta;
use crate::service::audit::{AuditEvent, Outcome, action};
use crate::service::tenancy::{self, OrgCtx, check_name, check_slug};
use crate::state::AppState;

/// A team with its members.
#[derive(Debug, Clone)]
pub struct TeamDetail {
    pub team: TeamRow,
    pub members: Vec<MemberRow>,
}

/// The team `slug` of the caller's organization `org`, once the caller may perform `action`.
async fn find(
    state: &AppState,
    principal: &Principal,
    org: &str,
    slug: &str,
    action: Action,
) -> ApiResult<(OrgCtx, TeamRow)> {
    let ctx = tenancy::org(state, principal, org, action).await?;
    let team = db::teams::by_slug(state.db.pool(), ctx.org.id, slug)
        .await?
        .ok_or_else(|| ApiError::not_found("team"))?;
    Ok((ctx, team))
}

fn audit(
    meta: &ClientMeta,
    principal: &Principal,
    team: &TeamRow,
    what: &'static str,
) -> AuditEvent {
    AuditEvent::new(what, Outcome::Success, meta)
        .by(principal)
        .org(team.org_id)
        .target("team", team.id)
}

pub async fn create(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    org: &str,
    slug: &str,
    name: &str,
) -> ApiResult<TeamRow> {
    let ctx = tenancy::org(state, principal, org, Action::TeamsManage).await?;
    let name = check_name(name)?;
    check_slug(slug, "team")?;
    let team = TeamRow {
        id: TeamId::new(),
        org_id: ctx.org.id,
        slug: slug.to_owned(),
        name,
        created_at: Timestamp::now(),
    };
    let mut tx = state.db.begin().await?;
    if let Err(e) = db::teams::insert(&mut *tx, &team).await {
        return Err(if is_unique_violation(&e) {
            ApiError::conflict(
                "slug_taken",
                "a team with this slug already exists in the organization",
            )
        } else {
            e.into()
        });
    }
    audit(meta, principal, &team, action::TEAM_CREATED)
        .details(json!({ "slug": slug }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(team)
}

/// The teams of an organization; every member may see them.
pub async fn list(
    state: &AppState,
    principal: &Principal,
    org: &str,
    after: Option<String>,
    limit: u32,
) -> ApiResult<Vec<TeamRow>> {
    let ctx = tenancy::org(state, principal, org, Action::TeamsRead).await?;
    Ok(db::teams::list(
        state.db.pool(),
        ctx.org.id,
        after.as_deref(),
        i64::from(limit) + 1,
    )
    .await?)
}

pub async fn get(
    state: &AppState,
    principal: &Principal,
    org: &str,
    slug: &str,
) -> ApiResult<TeamDetail> {
    let (ctx, team) = find(state, principal, org, slug, Action::TeamsRead).await?;
    let members = db::teams::members(state.db.pool(), ctx.org.id, team.id).await?;
    Ok(TeamDetail { team, members })
}

pub async fn rename(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    org: &str,
    slug: &str,
    name: &str,
) -> ApiResult<TeamDetail> {
    let (ctx, mut team) = find(state, principal, org, slug, Action::TeamsManage).await?;
    let name = check_name(name)?;
    let mut tx = state.db.begin().await?;
    db::teams::rename(&mut *tx, ctx.org.id, team.id, &name).await?;
    audit(meta, principal, &team, action::TEAM_UPDATED)
        .record(&mut *tx)
        .await?;
    let members = db::teams::members(&mut *tx, ctx.org.id, team.id).await?;
    tx.commit().await?;
    team.name = name;
    Ok(TeamDetail { team, members })
}

/// Deletes a team; its members lose the project roles they held through it.
pub async fn delete(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    org: &str,
    slug: &str,
) -> ApiResult<()> {
    let (ctx, team) = find(state, principal, org, slug, Action::TeamsManage).await?;
    let mut tx = state.db.begin().await?;
    db::teams::delete(&mut *tx, ctx.org.id, team.id).await?;
    audit(meta, principal, &team, action::TEAM_DELETED)
        .details(json!({ "slug": team.slug }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Puts a member of the organization in the team (nothing changes if they already are).
pub async fn add_member(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    org: &str,
    slug: &str,
    user: UserId,
) -> ApiResult<()> {
    let (ctx, team) = find(state, principal, org, slug, Action::TeamsManage).await?;
    let mut tx = state.db.begin().await?;
    if db::orgs::member(&mut *tx, ctx.org.id, user)
        .await?
        .is_none()
    {
        return Err(ApiError::not_found("member"));
    }
    if db::teams::add_member(&mut *tx, team.id, user, Timestamp::now()).await? {
        audit(meta, principal, &team, action::TEAM_MEMBER_ADDED)
            .details(json!({ "team": team.slug, "user": user }))
            .record(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

pub async fn remove_member(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    org: &str,
    slug: &str,
    user: UserId,
) -> ApiResult<()> {
    let (_, team) = find(state, principal, org, slug, Action::TeamsManage).await?;
    let mut tx = state.db.begin().await?;
    if !db::teams::remove_member(&mut *tx, team.id, user).await? {
        return Err(ApiError::not_found("member"));
    }
    audit(meta, principal, &team, action::TEAM_MEMBER_REMOVED)
        .details(json!({ "team": team.slug, "user": user }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}
