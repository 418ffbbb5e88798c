//! Teams of an organization and their members.

use sqlx::FromRow;
use sqlx::any::AnyExecutor;

use crate::db::orgs::MemberRow;
use crate::ids::{OrgId, TeamId, Timestamp, UserId};

#[derive(Debug, Clone, FromRow)]
pub struct TeamRow {
    pub id: TeamId,
    pub org_id: OrgId,
    pub slug: String,
    pub name: String,
    pub created_at: Timestamp,
}

const TEAM_COLUMNS: &str = "id, org_id, slug, name, created_at";

pub async fn insert<'e>(ex: impl AnyExecutor<'e>, t: &TeamRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO teams (id, org_id, slug, name, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(t.id)
    .bind(t.org_id)
    .bind(&t.slug)
    .bind(&t.name)
    .bind(t.created_at)
    .execute(ex)
    .await?;
    Ok(())
}

pub async fn by_slug<'e>(
    ex: impl AnyExecutor<'e>,
    org: OrgId,
    slug: &str,
) -> Result<Option<TeamRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {TEAM_COLUMNS} FROM teams WHERE org_id = $1 AND slug = $2"
    ))
    .bind(org)
    .bind(slug)
    .fetch_optional(ex)
    .await
}

/// Teams of an organization by slug, after `after`.
pub async fn list<'e>(
    ex: impl AnyExecutor<'e>,
    org: OrgId,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<TeamRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {TEAM_COLUMNS} FROM teams WHERE org_id = $1 AND ($2 IS NULL OR slug > $2) \
         ORDER BY slug LIMIT $3"
    ))
    .bind(org)
    .bind(after)
    .bind(limit)
    .fetch_all(ex)
    .await
}

pub async fn rename<'e>(
    ex: impl AnyExecutor<'e>,
    org: OrgId,
    id: TeamId,
    name: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE teams SET name = $1 WHERE org_id = $2 AND id = $3")
        .bind(name)
        .bind(org)
        .bind(id)
        .execute(ex)
        .await?;
    Ok(())
}

/// Deletes a team; its memberships and project grants go with it (foreign-key cascade).
pub async fn delete<'e>(
    ex: impl AnyExecutor<'e>,
    org: OrgId,
    id: TeamId,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM teams WHERE org_id = $1 AND id = $2")
        .bind(org)
        .bind(id)
        .execute(ex)
        .await?;
    Ok(())
}

/// The members of a team with their organization role; `created_at` is when they joined the team.
pub async fn members<'e>(
    ex: impl AnyExecutor<'e>,
    org: OrgId,
    team: TeamId,
) -> Result<Vec<MemberRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT tm.user_id, u.email, u.name, m.role, tm.created_at FROM team_members tm \
         JOIN org_members m ON m.user_id = tm.user_id AND m.org_id = $1 \
         JOIN users u ON u.id = tm.user_id WHERE tm.team_id = $2 ORDER BY u.email, tm.user_id",
    )
    .bind(org)
    .bind(team)
    .fetch_all(ex)
    .await
}

/// Adds `user` to a team; false when they already were in it.
pub async fn add_member<'e>(
    ex: impl AnyExecutor<'e>,
    team: TeamId,
    user: UserId,
    now: Timestamp,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO team_members (team_id, user_id, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (team_id, user_id) DO NOTHING",
    )
    .bind(team)
    .bind(user)
    .bind(now)
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Takes `user` out of a team; false when they were not in it.
pub async fn remove_member<'e>(
    ex: impl AnyExecutor<'e>,
    team: TeamId,
    user: UserId,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM team_members WHERE team_id = $1 AND user_id = $2")
        .bind(team)
        .bind(user)
        .execute(ex)
        .await?;
    Ok(done.rows_affected() == 1)
}
