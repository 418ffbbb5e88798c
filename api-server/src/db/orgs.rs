//! Organizations, their members and invitations.

use sqlx::any::AnyExecutor;
use sqlx::{AnyConnection, FromRow};

use crate::ids::{InvitationId, OrgId, Timestamp, UserId};

/// An organization with the caller's role in it (`None`: not a member).
#[derive(Debug, Clone, FromRow)]
pub struct OrgRow {
    pub id: OrgId,
    pub slug: String,
    pub name: String,
    pub created_at: Timestamp,
    pub role: Option<String>,
}

/// A member with their account.
#[derive(Debug, Clone, FromRow)]
pub struct MemberRow {
    pub user_id: UserId,
    pub email: String,
    pub name: String,
    pub role: String,
    pub created_at: Timestamp,
}

/// An invitation (without its token hash).
#[derive(Debug, Clone, FromRow)]
pub struct InvitationRow {
    pub id: InvitationId,
    pub org_id: OrgId,
    pub email: String,
    pub role: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub accepted_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
}

pub async fn insert<'e>(
    ex: impl AnyExecutor<'e>,
    id: OrgId,
    slug: &str,
    name: &str,
    now: Timestamp,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO organizations (id, slug, name, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)",
    )
    .bind(id)
    .bind(slug)
    .bind(name)
    .bind(now)
    .execute(ex)
    .await?;
    Ok(())
}

/// The organization with this slug, and `user`'s role in it.
pub async fn by_slug<'e>(
    ex: impl AnyExecutor<'e>,
    slug: &str,
    user: Option<UserId>,
) -> Result<Option<OrgRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT o.id, o.slug, o.name, o.created_at, m.role FROM organizations o \
         LEFT JOIN org_members m ON m.org_id = o.id AND m.user_id = $2 WHERE o.slug = $1",
    )
    .bind(slug)
    .bind(user)
    .fetch_optional(ex)
    .await
}

/// The organization with this id, and `user`'s role in it.
pub async fn by_id<'e>(
    ex: impl AnyExecutor<'e>,
    id: OrgId,
    user: UserId,
) -> Result<Option<OrgRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT o.id, o.slug, o.name, o.created_at, m.role FROM organizations o \
         LEFT JOIN org_members m ON m.org_id = o.id AND m.user_id = $2 WHERE o.id = $1",
    )
    .bind(id)
    .bind(user)
    .fetch_optional(ex)
    .await
}

/// The organizations `user` belongs to, by slug, after `after`.
pub async fn list_for_user<'e>(
    ex: impl AnyExecutor<'e>,
    user: UserId,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<OrgRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT o.id, o.slug, o.name, o.created_at, m.role FROM organizations o \
         JOIN org_members m ON m.org_id = o.id AND m.user_id = $1 \
         WHERE ($2 IS NULL OR o.slug > $2) ORDER BY o.slug LIMIT $3",
    )
    .bind(user)
    .bind(after)
    .bind(limit)
    .fetch_all(ex)
    .await
}

pub async fn rename<'e>(
    ex: impl AnyExecutor<'e>,
    id: OrgId,
    name: &str,
    now: Timestamp,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE organizations SET name = $1, updated_at = $2 WHERE id = $3")
        .bind(name)
        .bind(now)
        .bind(id)
        .execute(ex)
        .await?;
    Ok(())
}

/// Deletes an organization with everything in it; its environments first, as
/// [`super::projects::delete`] explains.
pub async fn delete(conn: &mut sqlx::AnyConnection, id: OrgId) -> Result<(), sqlx::Error> {
    sqlx::query(
        "DELETE FROM environments WHERE project_id IN (SELECT id FROM projects WHERE org_id = $1)",
    )
    .bind(id)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM organizations WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub async fn upsert_member<'e>(
    ex: impl AnyExecutor<'e>,
    org: OrgId,
    user: UserId,
    role: &str,
    now: Timestamp,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO org_members (org_id, user_id, role, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (org_id, user_id) DO UPDATE SET role = excluded.role",
    )
    .bind(org)
    .bind(user)
    .bind(role)
    .bind(now)
    .execute(ex)
    .await?;
    Ok(())
}

pub async fn members<'e>(
    ex: impl AnyExecutor<'e>,
    org: OrgId,
    after: Option<UserId>,
    limit: i64,
) -> Result<Vec<MemberRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT m.user_id, u.email, u.name, m.role, m.created_at FROM org_members m \
         JOIN users u ON u.id = m.user_id WHERE m.org_id = $1 AND ($2 IS NULL OR m.user_id > $2) \
         ORDER BY m.user_id LIMIT $3",
    )
    .bind(org)
    .bind(after)
    .bind(limit)
    .fetch_all(ex)
    .await
}

pub async fn member<'e>(
    ex: impl AnyExecutor<'e>,
    org: OrgId,
    user: UserId,
) -> Result<Option<MemberRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT m.user_id, u.email, u.name, m.role, m.created_at FROM org_members m \
         JOIN users u ON u.id = m.user_id WHERE m.org_id = $1 AND m.user_id = $2",
    )
    .bind(org)
    .bind(user)
    .fetch_optional(ex)
    .await
}

/// The organization's owners, locked until the end of the transaction (on PostgreSQL `FOR
/// UPDATE`, in user order so concurrent callers cannot deadlock; on SQLite the write transaction
/// is the lock). A change that could take away the last owner takes this before reading any
/// member, so two owners demoting or removing each other at once are decided one after the other.
pub async fn lock_owners(conn: &mut AnyConnection, org: OrgId) -> Result<Vec<UserId>, sqlx::Error> {
    let sql = if super::is_postgres(conn) {
        "SELECT user_id FROM org_members WHERE org_id = $1 AND role = 'owner' ORDER BY user_id FOR UPDATE"
    } else {
        "SELECT user_id FROM org_members WHERE org_id = $1 AND role = 'owner' ORDER BY user_id"
    };
    sqlx::query_scalar(sql)
        .bind(org)
        .fetch_all(&mut *conn)
        .await
}

pub async fn set_member_role<'e>(
    ex: impl AnyExecutor<'e>,
    org: OrgId,
    user: UserId,
    role: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE org_members SET role = $1 WHERE org_id = $2 AND user_id = $3")
        .bind(role)
        .bind(org)
        .bind(user)
        .execute(ex)
        .await?;
    Ok(())
}

/// Removes a member, their project grants and team memberships in this organization.
pub async fn remove_member(
    ex: &mut AnyConnection,
    org: OrgId,
    user: UserId,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM project_grants WHERE user_id = $1 AND project_id IN (SELECT id FROM projects WHERE org_id = $2)")
        .bind(user)
        .bind(org)
        .execute(&mut *ex)
        .await?;
    sqlx::query("DELETE FROM team_members WHERE user_id = $1 AND team_id IN (SELECT id FROM teams WHERE org_id = $2)")
        .bind(user)
        .bind(org)
        .execute(&mut *ex)
        .await?;
    sqlx::query("DELETE FROM org_members WHERE org_id = $1 AND user_id = $2")
        .bind(org)
        .bind(user)
        .execute(ex)
        .await?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub async fn insert_invitation<'e>(
    ex: impl AnyExecutor<'e>,
    id: InvitationId,
    org: OrgId,
    email: &str,
    role: &str,
    token_hash: &str,
    invited_by: UserId,
    now: Timestamp,
    expires_at: Timestamp,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO invitations (id, org_id, email, role, token_hash, invited_by, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id)
    .bind(org)
    .bind(email)
    .bind(role)
    .bind(token_hash)
    .bind(invited_by)
    .bind(now)
    .bind(expires_at)
    .execute(ex)
    .await?;
    Ok(())
}

const INVITATION_COLUMNS: &str =
    "id, org_id, email, role, created_at, expires_at, accepted_at, revoked_at";

/// Pending invitations of an organization, newest first.
pub async fn pending_invitations<'e>(
    ex: impl AnyExecutor<'e>,
    org: OrgId,
    now: Timestamp,
    before: Option<InvitationId>,
    limit: i64,
) -> Result<Vec<InvitationRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {INVITATION_COLUMNS} FROM invitations WHERE org_id = $1 AND accepted_at IS NULL \
         AND revoked_at IS NULL AND expires_at > $2 AND ($3 IS NULL OR id < $3) ORDER BY id DESC LIMIT $4"
    ))
    .bind(org)
    .bind(now)
    .bind(before)
    .bind(limit)
    .fetch_all(ex)
    .await
}

pub async fn invitation_by_token_hash<'e>(
    ex: impl AnyExecutor<'e>,
    token_hash: &str,
) -> Result<Option<InvitationRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {INVITATION_COLUMNS} FROM invitations WHERE token_hash = $1"
    ))
    .bind(token_hash)
    .fetch_optional(ex)
    .await
}

/// Marks an invitation accepted; false when it was already used or revoked.
pub async fn accept_invitation<'e>(
    ex: impl AnyExecutor<'e>,
    id: InvitationId,
    user: UserId,
    now: Timestamp,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE invitations SET accepted_at = $1, accepted_by = $2 \
         WHERE id = $3 AND accepted_at IS NULL AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(user)
    .bind(id)
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn revoke_invitation<'e>(
    ex: impl AnyExecutor<'e>,
    org: OrgId,
    id: InvitationId,
    now: Timestamp,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE invitations SET revoked_at = $1 WHERE org_id = $2 AND id = $3 \
         AND accepted_at IS NULL AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(org)
    .bind(id)
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}
