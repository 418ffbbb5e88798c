//! Projects, environments, project grants and environment policies.

use sqlx::FromRow;
use sqlx::any::AnyExecutor;

use crate::db::orgs::OrgRow;
use crate::ids::{EnvironmentId, OrgId, ProjectId, TeamId, Timestamp, UserId};

#[derive(Debug, Clone, FromRow)]
pub struct ProjectRow {
    pub id: ProjectId,
    pub org_id: OrgId,
    pub slug: String,
    pub name: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, FromRow)]
pub struct EnvironmentRow {
    pub id: EnvironmentId,
    pub project_id: ProjectId,
    pub slug: String,
    pub name: String,
    pub position: i64,
    pub revision: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A project role granted to a member (`user_id`) or a team (`team_id`).
#[derive(Debug, Clone, FromRow)]
pub struct GrantRow {
    pub user_id: Option<UserId>,
    pub team_id: Option<TeamId>,
    pub subject_name: String,
    pub role: String,
    pub created_at: Timestamp,
}

/// One row of [`standing`]: the organization with the caller's role in it, the project and
/// environment if they exist there, and one project grant the caller holds (directly or through
/// a team) with the environment's policy for that grant's role.
#[derive(Debug, Clone, FromRow)]
pub struct StandingRow {
    pub org_id: OrgId,
    pub org_slug: String,
    pub org_name: String,
    pub org_created_at: Timestamp,
    pub org_role: Option<String>,
    pub project_id: Option<ProjectId>,
    pub project_slug: Option<String>,
    pub project_name: Option<String>,
    pub project_created_at: Option<Timestamp>,
    pub project_updated_at: Option<Timestamp>,
    pub env_id: Option<EnvironmentId>,
    pub env_slug: Option<String>,
    pub env_name: Option<String>,
    pub env_position: Option<i64>,
    pub env_revision: Option<i64>,
    pub env_created_at: Option<Timestamp>,
    pub env_updated_at: Option<Timestamp>,
    pub grant_role: Option<String>,
    pub policy: Option<String>,
}

impl StandingRow {
    pub fn org(&self) -> OrgRow {
        OrgRow {
            id: self.org_id,
            slug: self.org_slug.clone(),
            name: self.org_name.clone(),
            created_at: self.org_created_at,
            role: self.org_role.clone(),
        }
    }

    /// The project, when the organization has one of the slug asked for.
    pub fn project(&self) -> Option<ProjectRow> {
        Some(ProjectRow {
            id: self.project_id?,
            org_id: self.org_id,
            slug: self.project_slug.clone()?,
            name: self.project_name.clone()?,
            created_at: self.project_created_at?,
            updated_at: self.project_updated_at?,
        })
    }

    /// The environment, when the project has one of the slug asked for.
    pub fn environment(&self) -> Option<EnvironmentRow> {
        Some(EnvironmentRow {
            id: self.env_id?,
            project_id: self.project_id?,
            slug: self.env_slug.clone()?,
            name: self.env_name.clone()?,
            position: self.env_position?,
            revision: self.env_revision?,
            created_at: self.env_created_at?,
            updated_at: self.env_updated_at?,
        })
    }
}

/// Everything that decides what `user` (or, with `None`, a service token) may do at
/// `org/project[/env]`, in one query: no rows when there is no such organization, otherwise one
/// row per project grant the user holds there (at least one row; grant columns `NULL` when none,
/// and project or environment columns `NULL` when they do not exist in that organization or
/// project). Grants are read only for members of the organization.
pub async fn standing<'e>(
    ex: impl AnyExecutor<'e>,
    org_slug: &str,
    user: Option<UserId>,
    project_slug: &str,
    env_slug: Option<&str>,
) -> Result<Vec<StandingRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT o.id AS org_id, o.slug AS org_slug, o.name AS org_name, \
                o.created_at AS org_created_at, m.role AS org_role, \
                p.id AS project_id, p.slug AS project_slug, p.name AS project_name, \
                p.created_at AS project_created_at, p.updated_at AS project_updated_at, \
                e.id AS env_id, e.slug AS env_slug, e.name AS env_name, \
                e.position AS env_position, e.revision AS env_revision, \
                e.created_at AS env_created_at, e.updated_at AS env_updated_at, \
                g.role AS grant_role, ep.access AS policy \
         FROM organizations o \
         LEFT JOIN org_members m ON m.org_id = o.id AND m.user_id = $2 \
         LEFT JOIN projects p ON p.org_id = o.id AND p.slug = $3 \
         LEFT JOIN environments e ON e.project_id = p.id AND e.slug = $4 \
         LEFT JOIN project_grants g ON g.project_id = p.id AND m.role IS NOT NULL AND \
              (g.user_id = $2 OR g.team_id IN (SELECT team_id FROM team_members WHERE user_id = $2)) \
         LEFT JOIN environment_policies ep ON ep.environment_id = e.id AND ep.role = g.role \
         WHERE o.slug = $1",
    )
    .bind(org_slug)
    .bind(user)
    .bind(project_slug)
    .bind(env_slug)
    .fetch_all(ex)
    .await
}

const PROJECT_COLUMNS: &str = "id, org_id, slug, name, created_at, updated_at";
const ENV_COLUMNS: &str = "id, project_id, slug, name, position, revision, created_at, updated_at";

pub async fn insert<'e>(ex: impl AnyExecutor<'e>, p: &ProjectRow) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO projects (id, org_id, slug, name, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(p.id)
        .bind(p.org_id)
        .bind(&p.slug)
        .bind(&p.name)
        .bind(p.created_at)
        .bind(p.updated_at)
        .execute(ex)
        .await?;
    Ok(())
}

pub async fn by_slug<'e>(
    ex: impl AnyExecutor<'e>,
    org: OrgId,
    slug: &str,
) -> Result<Option<ProjectRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {PROJECT_COLUMNS} FROM projects WHERE org_id = $1 AND slug = $2"
    ))
    .bind(org)
    .bind(slug)
    .fetch_optional(ex)
    .await
}

/// Projects of an organization by slug; with `visible_to`, only those the user holds a grant
/// on, directly or through a team.
pub async fn list<'e>(
    ex: impl AnyExecutor<'e>,
    org: OrgId,
    visible_to: Option<UserId>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<ProjectRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {PROJECT_COLUMNS} FROM projects p WHERE org_id = $1 AND ($2 IS NULL OR slug > $2) \
         AND ($3 IS NULL OR EXISTS (SELECT 1 FROM project_grants g WHERE g.project_id = p.id AND \
              (g.user_id = $3 OR g.team_id IN (SELECT team_id FROM team_members WHERE user_id = $3)))) \
         ORDER BY slug LIMIT $4"
    ))
    .bind(org)
    .bind(after)
    .bind(visible_to)
    .bind(limit)
    .fetch_all(ex)
    .await
}

pub async fn update<'e>(
    ex: impl AnyExecutor<'e>,
    id: ProjectId,
    name: &str,
    now: Timestamp,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE projects SET name = $1, updated_at = $2 WHERE id = $3")
        .bind(name)
        .bind(now)
        .bind(id)
        .execute(ex)
        .await?;
    Ok(())
}

/// Deletes a project with everything in it. Its environments (with their secrets) go first:
/// PostgreSQL may check that no secret version still uses a DEK before the cascade from the
/// project has removed the versions, and refuse.
pub async fn delete(conn: &mut sqlx::AnyConnection, id: ProjectId) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM environments WHERE project_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM projects WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// A page of the project's grants, oldest first: `limit` of them after the first `offset`.
pub async fn grants<'e>(
    ex: impl AnyExecutor<'e>,
    project: ProjectId,
    offset: i64,
    limit: i64,
) -> Result<Vec<GrantRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT g.user_id, g.team_id, COALESCE(u.email, t.slug) AS subject_name, g.role, g.created_at \
         FROM project_grants g LEFT JOIN users u ON u.id = g.user_id LEFT JOIN teams t ON t.id = g.team_id \
         WHERE g.project_id = $1 ORDER BY g.created_at, g.id LIMIT $2 OFFSET $3",
    )
    .bind(project)
    .bind(limit)
    .bind(offset)
    .fetch_all(ex)
    .await
}

pub async fn grant_user<'e>(
    ex: impl AnyExecutor<'e>,
    project: ProjectId,
    user: UserId,
    role: &str,
    now: Timestamp,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO project_grants (id, project_id, user_id, role, created_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (project_id, user_id) DO UPDATE SET role = excluded.role",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(project)
    .bind(user)
    .bind(role)
    .bind(now)
    .execute(ex)
    .await?;
    Ok(())
}

pub async fn revoke_user<'e>(
    ex: impl AnyExecutor<'e>,
    project: ProjectId,
    user: UserId,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM project_grants WHERE project_id = $1 AND user_id = $2")
        .bind(project)
        .bind(user)
        .execute(ex)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn grant_team<'e>(
    ex: impl AnyExecutor<'e>,
    project: ProjectId,
    team: TeamId,
    role: &str,
    now: Timestamp,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO project_grants (id, project_id, team_id, role, created_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (project_id, team_id) DO UPDATE SET role = excluded.role",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(project)
    .bind(team)
    .bind(role)
    .bind(now)
    .execute(ex)
    .await?;
    Ok(())
}

/// Takes a team's project role away and returns it; `None` when the team held none.
pub async fn revoke_team<'e>(
    ex: impl AnyExecutor<'e>,
    project: ProjectId,
    team: TeamId,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "DELETE FROM project_grants WHERE project_id = $1 AND team_id = $2 RETURNING role",
    )
    .bind(project)
    .bind(team)
    .fetch_optional(ex)
    .await
}

pub async fn insert_environment<'e>(
    ex: impl AnyExecutor<'e>,
    e: &EnvironmentRow,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO environments (id, project_id, slug, name, position, revision, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(e.id)
    .bind(e.project_id)
    .bind(&e.slug)
    .bind(&e.name)
    .bind(e.position)
    .bind(e.revision)
    .bind(e.created_at)
    .bind(e.updated_at)
    .execute(ex)
    .await?;
    Ok(())
}

pub async fn environments<'e>(
    ex: impl AnyExecutor<'e>,
    project: ProjectId,
) -> Result<Vec<EnvironmentRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {ENV_COLUMNS} FROM environments WHERE project_id = $1 ORDER BY position, slug"
    ))
    .bind(project)
    .fetch_all(ex)
    .await
}

/// A page of the project's environments, in order: `limit` of them after the first `offset`.
pub async fn environments_page<'e>(
    ex: impl AnyExecutor<'e>,
    project: ProjectId,
    offset: i64,
    limit: i64,
) -> Result<Vec<EnvironmentRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {ENV_COLUMNS} FROM environments WHERE project_id = $1 ORDER BY position, slug \
         LIMIT $2 OFFSET $3"
    ))
    .bind(project)
    .bind(limit)
    .bind(offset)
    .fetch_all(ex)
    .await
}

pub async fn environment<'e>(
    ex: impl AnyExecutor<'e>,
    project: ProjectId,
    slug: &str,
) -> Result<Option<EnvironmentRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {ENV_COLUMNS} FROM environments WHERE project_id = $1 AND slug = $2"
    ))
    .bind(project)
    .bind(slug)
    .fetch_optional(ex)
    .await
}

pub async fn update_environment<'e>(
    ex: impl AnyExecutor<'e>,
    id: EnvironmentId,
    name: &str,
    position: i64,
    now: Timestamp,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE environments SET name = $1, position = $2, updated_at = $3 WHERE id = $4")
        .bind(name)
        .bind(position)
        .bind(now)
        .bind(id)
        .execute(ex)
        .await?;
    Ok(())
}

/// Deletes an environment; its last revision, `None` when it was already gone.
pub async fn delete_environment<'e>(
    ex: impl AnyExecutor<'e>,
    id: EnvironmentId,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("DELETE FROM environments WHERE id = $1 RETURNING revision")
        .bind(id)
        .fetch_optional(ex)
        .await
}

/// Every policy of an environment as (role, access).
pub async fn policies<'e>(
    ex: impl AnyExecutor<'e>,
    env: EnvironmentId,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT role, access FROM environment_policies WHERE environment_id = $1 ORDER BY role",
    )
    .bind(env)
    .fetch_all(ex)
    .await
}

pub async fn set_policy<'e>(
    ex: impl AnyExecutor<'e>,
    env: EnvironmentId,
    role: &str,
    access: Option<&str>,
) -> Result<(), sqlx::Error> {
    match access {
        Some(access) => {
            sqlx::query(
                "INSERT INTO environment_policies (environment_id, role, access) VALUES ($1, $2, $3) \
                 ON CONFLICT (environment_id, role) DO UPDATE SET access = excluded.access",
            )
            .bind(env)
            .bind(role)
            .bind(access)
            .execute(ex)
            .await?;
        }
        None => {
            sqlx::query("DELETE FROM environment_policies WHERE environment_id = $1 AND role = $2")
                .bind(env)
                .bind(role)
                .execute(ex)
                .await?;
        }
    }
    Ok(())
}
