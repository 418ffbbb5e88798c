//! Projects, their environments, who may work on them, and per-environment policies.

use serde_json::json;

use crate::auth::{Principal, Subject};
use crate::authz::{Action, EnvAccess, OrgRole, ProjectRole};
use crate::db::cache::Change;
use crate::db::projects::{EnvironmentRow, GrantRow, ProjectRow};
use crate::db::{self, is_unique_violation};
use crate::error::{ApiError, ApiResult};
use crate::ids::{EnvironmentId, ProjectId, Timestamp, UserId};
use crate::service::ClientMeta;
use crate::service::audit::{AuditEvent, Outcome, action};
use crate::service::events;
use crate::service::tenancy::{self, EnvCtx, EnvPath, ProjectCtx, check_name, check_slug};
use crate::state::AppState;
use coffer_client::types::EventType;

/// Most environments a project may have.
pub const MAX_ENVIRONMENTS: usize = 100;

fn too_many_environments() -> ApiError {
    ApiError::validation(
        "too_many_environments",
        format!("a project has at most {MAX_ENVIRONMENTS} environments"),
    )
}

/// Environments a new project gets unless the request names others.
pub const DEFAULT_ENVIRONMENTS: [&str; 3] = ["development", "staging", "production"];

fn env_name(slug: &str) -> String {
    let mut chars = slug.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// Creates a project with its environments; a creator who is not an org admin becomes its admin.
pub async fn create(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    org_slug: &str,
    name: &str,
    slug: &str,
    environments: Option<Vec<String>>,
) -> ApiResult<(ProjectRow, Vec<EnvironmentRow>)> {
    let org = tenancy::org(state, principal, org_slug, Action::ProjectCreate).await?;
    let name = check_name(name)?;
    check_slug(slug, "project")?;
    let env_slugs = environments.unwrap_or_else(|| DEFAULT_ENVIRONMENTS.map(String::from).to_vec());
    if env_slugs.len() > MAX_ENVIRONMENTS {
        return Err(too_many_environments());
    }
    for (i, env) in env_slugs.iter().enumerate() {
        check_slug(env, "environment")?;
        if env_slugs[..i].contains(env) {
            return Err(ApiError::validation(
                "duplicate_environment",
                format!("environment `{env}` is named twice"),
            ));
        }
    }
    let now = Timestamp::now();
    let project = ProjectRow {
        id: ProjectId::new(),
        org_id: org.org.id,
        slug: slug.to_owned(),
        name,
        created_at: now,
        updated_at: now,
    };
    let mut tx = state.db.begin().await?;
    if let Err(e) = db::projects::insert(&mut *tx, &project).await {
        return Err(if is_unique_violation(&e) {
            ApiError::conflict(
                "slug_taken",
                "a project with this slug already exists in the organization",
            )
        } else {
            e.into()
        });
    }
    let mut envs = Vec::with_capacity(env_slugs.len());
    for (position, env) in env_slugs.iter().enumerate() {
        let row = EnvironmentRow {
            id: EnvironmentId::new(),
            project_id: project.id,
            slug: env.clone(),
            name: env_name(env),
            position: i64::try_from(position).unwrap_or(i64::MAX),
            revision: 0,
            created_at: now,
            updated_at: now,
        };
        db::projects::insert_environment(&mut *tx, &row).await?;
        envs.push(row);
    }
    let ctx = ProjectCtx {
        org: org.clone(),
        project: project.clone(),
        role: Some(ProjectRole::Admin),
    };
    let actor = events::actor(principal);
    for env in &envs {
        events::environment_changed(
            &mut tx,
            &ctx,
            env,
            EventType::EnvironmentCreated,
            &actor,
            now,
        )
        .await?;
    }
    crate::service::secrets::create_dek(state, &mut tx, org.org.id, project.id, 1).await?;
    if org.role < Some(OrgRole::Admin) {
        db::projects::grant_user(
            &mut *tx,
            project.id,
            principal.user_id,
            ProjectRole::Admin.as_str(),
            now,
        )
        .await?;
    }
    AuditEvent::new(action::PROJECT_CREATED, Outcome::Success, meta)
        .by(principal)
        .org(org.org.id)
        .project(project.id)
        .target("project", project.id)
        .details(json!({ "slug": slug, "environments": env_slugs }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((project, envs))
}

/// The projects of an organization the caller may see.
pub async fn list(
    state: &AppState,
    principal: &Principal,
    org_slug: &str,
    after: Option<String>,
    limit: u32,
) -> ApiResult<Vec<ProjectRow>> {
    let org = tenancy::org(state, principal, org_slug, Action::OrgRead).await?;
    let visible_to = (org.role < Some(OrgRole::Admin)).then_some(principal.user_id);
    Ok(db::projects::list(
        state.db.pool(),
        org.org.id,
        visible_to,
        after.as_deref(),
        i64::from(limit) + 1,
    )
    .await?)
}

pub async fn get(
    state: &AppState,
    principal: &(impl Subject + Sync),
    org: &str,
    project: &str,
) -> ApiResult<(ProjectCtx, Vec<EnvironmentRow>)> {
    let ctx = tenancy::project(state, principal, org, project, Action::ProjectRead).await?;
    let envs = db::projects::environments(state.db.pool(), ctx.project.id).await?;
    Ok((ctx, envs))
}

pub async fn rename(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    org: &str,
    project: &str,
    name: &str,
) -> ApiResult<ProjectCtx> {
    let mut ctx = tenancy::project(state, principal, org, project, Action::ProjectUpdate).await?;
    let name = check_name(name)?;
    let now = Timestamp::now();
    let mut tx = state.db.begin().await?;
    db::projects::update(&mut *tx, ctx.project.id, &name, now).await?;
    audit(meta, principal, &ctx, action::PROJECT_UPDATED)
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    ctx.project.name = name;
    ctx.project.updated_at = now;
    Ok(ctx)
}

fn audit(
    meta: &ClientMeta,
    principal: &Principal,
    ctx: &ProjectCtx,
    what: &'static str,
) -> AuditEvent {
    AuditEvent::new(what, Outcome::Success, meta)
        .by(principal)
        .org(ctx.org.org.id)
        .project(ctx.project.id)
        .target("project", ctx.project.id)
}

pub async fn delete(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    org: &str,
    project: &str,
) -> ApiResult<()> {
    let ctx = tenancy::project(state, principal, org, project, Action::ProjectDelete).await?;
    let mut tx = state.db.begin().await?;
    crate::service::dynamic::refuse_if_any(
        &mut *tx,
        db::dynamic::Scope::Project(ctx.project.id),
        "project",
    )
    .await?;
    tx.changed(Change::Everything);
    events::project_deleted(&mut tx, &ctx, &events::actor(principal), Timestamp::now()).await?;
    db::projects::delete(&mut tx, ctx.project.id).await?;
    audit(meta, principal, &ctx, action::PROJECT_DELETED)
        .details(json!({ "slug": ctx.project.slug }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

pub async fn create_environment(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    org: &str,
    project: &str,
    slug: &str,
    name: Option<&str>,
) -> ApiResult<EnvironmentRow> {
    let ctx = tenancy::project(state, principal, org, project, Action::EnvironmentsManage).await?;
    check_slug(slug, "environment")?;
    let name = match name {
        Some(n) => check_name(n)?,
        None => env_name(slug),
    };
    let now = Timestamp::now();
    let mut tx = state.db.begin().await?;
    let existing = db::projects::environments(&mut *tx, ctx.project.id).await?;
    if existing.len() >= MAX_ENVIRONMENTS {
        return Err(too_many_environments());
    }
    let position = existing.iter().map(|e| e.position + 1).max().unwrap_or(0);
    let env = EnvironmentRow {
        id: EnvironmentId::new(),
        project_id: ctx.project.id,
        slug: slug.to_owned(),
        name,
        position,
        revision: 0,
        created_at: now,
        updated_at: now,
    };
    if let Err(e) = db::projects::insert_environment(&mut *tx, &env).await {
        return Err(if is_unique_violation(&e) {
            ApiError::conflict(
                "slug_taken",
                "an environment with this slug already exists in the project",
            )
        } else {
            e.into()
        });
    }
    audit(meta, principal, &ctx, action::ENVIRONMENT_CREATED)
        .environment(env.id)
        .details(json!({ "slug": slug }))
        .record(&mut *tx)
        .await?;
    let actor = events::actor(principal);
    events::environment_changed(
        &mut tx,
        &ctx,
        &env,
        EventType::EnvironmentCreated,
        &actor,
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(env)
}

/// Renames and/or moves an environment (`position`: its new index in the project's order).
pub async fn update_environment(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    at: EnvPath<'_>,
    name: Option<&str>,
    position: Option<u32>,
) -> ApiResult<EnvironmentRow> {
    let env = at.env;
    let ctx = tenancy::project(
        state,
        principal,
        at.org,
        at.project,
        Action::EnvironmentsManage,
    )
    .await?;
    let now = Timestamp::now();
    let mut tx = state.db.begin().await?;
    let mut envs = db::projects::environments(&mut *tx, ctx.project.id).await?;
    let index = envs
        .iter()
        .position(|e| e.slug == env)
        .ok_or_else(|| ApiError::not_found("environment"))?;
    let mut moved = envs.remove(index);
    let mut renamed = false;
    if let Some(name) = name {
        let name = check_name(name)?;
        renamed = name != moved.name;
        moved.name = name;
    }
    let target = position.map_or(index, |p| (p as usize).min(envs.len()));
    envs.insert(target, moved);
    for (i, e) in envs.iter_mut().enumerate() {
        let i = i64::try_from(i).unwrap_or(i64::MAX);
        if e.position != i || e.slug == env {
            e.position = i;
            if e.slug == env {
                e.updated_at = now;
            }
            db::projects::update_environment(&mut *tx, e.id, &e.name, e.position, e.updated_at)
                .await?;
        }
    }
    let updated = envs.swap_remove(target);
    audit(meta, principal, &ctx, action::ENVIRONMENT_UPDATED)
        .environment(updated.id)
        .record(&mut *tx)
        .await?;
    if renamed {
        let actor = events::actor(principal);
        events::environment_changed(
            &mut tx,
            &ctx,
            &updated,
            EventType::EnvironmentRenamed,
            &actor,
            now,
        )
        .await?;
    }
    tx.commit().await?;
    Ok(updated)
}

pub async fn get_environment(
    state: &AppState,
    principal: &(impl Subject + Sync),
    at: EnvPath<'_>,
) -> ApiResult<(EnvCtx, Vec<(String, String)>)> {
    let mut ctx = tenancy::environment(state, principal, at, Action::ProjectRead).await?;
    // The standing may be remembered: the revision shown must be the database's.
    ctx.env = db::projects::environment(state.db.pool(), ctx.project.project.id, &ctx.env.slug)
        .await?
        .ok_or_else(|| ApiError::not_found("environment"))?;
    let policies = db::projects::policies(state.db.pool(), ctx.env.id).await?;
    Ok((ctx, policies))
}

pub async fn delete_environment(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    at: EnvPath<'_>,
) -> ApiResult<()> {
    let ctx = tenancy::environment(state, principal, at, Action::EnvironmentsManage).await?;
    let mut tx = state.db.begin().await?;
    crate::service::dynamic::refuse_if_any(
        &mut *tx,
        db::dynamic::Scope::Environment(ctx.env.id),
        "environment",
    )
    .await?;
    tx.changed(Change::Environment {
        org: ctx.project.org.org.id,
        env: ctx.env.id,
    });
    let revision = db::projects::delete_environment(&mut *tx, ctx.env.id)
        .await?
        .ok_or_else(|| ApiError::not_found("environment"))?;
    audit(meta, principal, &ctx.project, action::ENVIRONMENT_DELETED)
        .environment(ctx.env.id)
        .details(json!({ "slug": ctx.env.slug }))
        .record(&mut *tx)
        .await?;
    let deleted = EnvironmentRow {
        revision,
        ..ctx.env.clone()
    };
    let actor = events::actor(principal);
    events::environment_changed(
        &mut tx,
        &ctx.project,
        &deleted,
        EventType::EnvironmentDeleted,
        &actor,
        Timestamp::now(),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Sets (or with `None` clears) what `role` may do in one environment.
pub async fn set_policy(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    at: EnvPath<'_>,
    role: ProjectRole,
    access: Option<EnvAccess>,
) -> ApiResult<()> {
    let ctx = tenancy::environment(state, principal, at, Action::EnvironmentsManage).await?;
    let mut tx = state.db.begin().await?;
    db::projects::set_policy(
        &mut *tx,
        ctx.env.id,
        role.as_str(),
        access.map(EnvAccess::as_str),
    )
    .await?;
    audit(
        meta,
        principal,
        &ctx.project,
        action::ENVIRONMENT_POLICY_SET,
    )
    .environment(ctx.env.id)
    .details(json!({ "role": role.as_str(), "access": access.map(EnvAccess::as_str) }))
    .record(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A page of the project's grants: `limit` after the first `offset`.
pub async fn grants(
    state: &AppState,
    principal: &Principal,
    org: &str,
    project: &str,
    offset: i64,
    limit: i64,
) -> ApiResult<Vec<GrantRow>> {
    let ctx = tenancy::project(state, principal, org, project, Action::ProjectRead).await?;
    Ok(db::projects::grants(state.db.pool(), ctx.project.id, offset, limit).await?)
}

/// A page of the project's environments, in order: `limit` after the first `offset`.
pub async fn environments(
    state: &AppState,
    principal: &(impl Subject + Sync),
    org: &str,
    project: &str,
    offset: i64,
    limit: i64,
) -> ApiResult<Vec<EnvironmentRow>> {
    let ctx = tenancy::project(state, principal, org, project, Action::ProjectRead).await?;
    Ok(db::projects::environments_page(state.db.pool(), ctx.project.id, offset, limit).await?)
}

/// Gives an organization member a project role (or changes it).
pub async fn grant_user(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    org: &str,
    project: &str,
    user: UserId,
    role: ProjectRole,
) -> ApiResult<()> {
    let ctx = tenancy::project(state, principal, org, project, Action::ProjectAccessManage).await?;
    let mut tx = state.db.begin().await?;
    if db::orgs::member(&mut *tx, ctx.org.org.id, user)
        .await?
        .is_none()
    {
        return Err(ApiError::not_found("member"));
    }
    db::projects::grant_user(
        &mut *tx,
        ctx.project.id,
        user,
        role.as_str(),
        Timestamp::now(),
    )
    .await?;
    audit(meta, principal, &ctx, action::PROJECT_ACCESS_GRANTED)
        .details(json!({ "user": user, "role": role.as_str() }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

pub async fn revoke_user(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    org: &str,
    project: &str,
    user: UserId,
) -> ApiResult<()> {
    let ctx = tenancy::project(state, principal, org, project, Action::ProjectAccessManage).await?;
    let mut tx = state.db.begin().await?;
    if !db::projects::revoke_user(&mut *tx, ctx.project.id, user).await? {
        return Err(ApiError::not_found("grant"));
    }
    audit(meta, principal, &ctx, action::PROJECT_ACCESS_REVOKED)
        .details(json!({ "user": user }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Gives a team of the organization a project role (or changes it); its members hold it too.
pub async fn grant_team(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    org: &str,
    project: &str,
    team: &str,
    role: ProjectRole,
) -> ApiResult<()> {
    let ctx = tenancy::project(state, principal, org, project, Action::ProjectAccessManage).await?;
    let mut tx = state.db.begin().await?;
    let team = db::teams::by_slug(&mut *tx, ctx.org.org.id, team)
        .await?
        .ok_or_else(|| ApiError::not_found("team"))?;
    db::projects::grant_team(
        &mut *tx,
        ctx.project.id,
        team.id,
        role.as_str(),
        Timestamp::now(),
    )
    .await?;
    audit(meta, principal, &ctx, action::PROJECT_ACCESS_GRANTED)
        .details(json!({ "team": team.slug, "role": role.as_str() }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

pub async fn revoke_team(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    org: &str,
    project: &str,
    team: &str,
) -> ApiResult<()> {
    let ctx = tenancy::project(state, principal, org, project, Action::ProjectAccessManage).await?;
    let mut tx = state.db.begin().await?;
    let team = db::teams::by_slug(&mut *tx, ctx.org.org.id, team)
        .await?
        .ok_or_else(|| ApiError::not_found("team"))?;
    let role = db::projects::revoke_team(&mut *tx, ctx.project.id, team.id)
        .await?
        .ok_or_else(|| ApiError::not_found("grant"))?;
    audit(meta, principal, &ctx, action::PROJECT_ACCESS_REVOKED)
        .details(json!({ "team": team.slug, "role": role }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}
