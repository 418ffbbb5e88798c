//! Service tokens: an organization's machine identities (the operator, CI), limited to one
//! project and a set of its environments, read or read-write, expiring, rotatable, revocable.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use crate::auth::Principal;
use crate::auth::tokens::{self, API_KEY_PREFIX};
use crate::authz::Action;
use crate::db;
use crate::db::credentials::{self, Table};
use crate::db::service_tokens::{NewServiceToken, ServiceTokenRow};
use crate::error::{ApiError, ApiResult};
use crate::ids::{ServiceTokenId, Timestamp};
use crate::service::ClientMeta;
use crate::service::api_keys::{check_grace, expiry};
use crate::service::audit::{AuditEvent, Outcome, action};
use crate::service::tenancy::{self, check_name};
use crate::state::AppState;

/// A token with what it may reach, as slugs.
#[derive(Debug, Clone)]
pub struct ServiceTokenView {
    pub token: ServiceTokenRow,
    pub project: String,
    pub environments: Vec<String>,
}

/// What a new token may do.
#[derive(Debug, Clone)]
pub struct NewToken<'a> {
    pub name: &'a str,
    pub project: &'a str,
    pub environments: &'a [String],
    pub read_write: bool,
    pub expires_in_days: Option<u32>,
}

async fn view(state: &AppState, token: ServiceTokenRow) -> ApiResult<ServiceTokenView> {
    let slugs = db::service_tokens::scope_slugs(state.db.pool(), token.id).await?;
    let project = slugs.first().map(|(p, _)| p.clone()).unwrap_or_default();
    Ok(ServiceTokenView {
        token,
        project,
        environments: slugs.into_iter().map(|(_, e)| e).collect(),
    })
}

pub async fn create(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    org: &str,
    new: NewToken<'_>,
) -> ApiResult<(ServiceTokenView, SecretString)> {
    let ctx = tenancy::org(state, principal, org, Action::ServiceTokensManage).await?;
    let name = check_name(new.name)?;
    let project = db::projects::by_slug(state.db.pool(), ctx.org.id, new.project)
        .await?
        .ok_or_else(|| {
            ApiError::validation(
                "unknown_project",
                format!("no project `{}` in this organization", new.project),
            )
        })?;
    if new.environments.is_empty() {
        return Err(ApiError::validation(
            "no_environments",
            "name at least one environment",
        ));
    }
    let mut environment_ids = Vec::with_capacity(new.environments.len());
    for slug in new.environments {
        let env = db::projects::environment(state.db.pool(), project.id, slug)
            .await?
            .ok_or_else(|| {
                ApiError::validation(
                    "unknown_environment",
                    format!("no environment `{slug}` in project `{}`", project.slug),
                )
            })?;
        if !environment_ids.contains(&env.id) {
            environment_ids.push(env.id);
        }
    }
    let now = Timestamp::now();
    let expires_at = expiry(now, new.expires_in_days)?;
    let secret = tokens::generate(API_KEY_PREFIX);
    let access = if new.read_write { "read-write" } else { "read" };
    let id = ServiceTokenId::new();
    let mut tx = state.db.begin().await?;
    db::service_tokens::insert(
        &mut tx,
        &NewServiceToken {
            id,
            org_id: ctx.org.id,
            project_id: project.id,
            name: &name,
            prefix: &tokens::display_prefix(&secret),
            token_hash: &tokens::hash(secret.expose_secret()),
            access,
            created_by: principal.user_id,
            created_at: now,
            expires_at,
        },
        &environment_ids,
    )
    .await?;
    AuditEvent::new(action::SERVICE_TOKEN_CREATED, Outcome::Success, meta)
        .by(principal)
        .org(ctx.org.id)
        .project(project.id)
        .target("service_token", id)
        .details(json!({ "name": name, "access": access, "environments": new.environments }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    let row = db::service_tokens::get(state.db.pool(), ctx.org.id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("service token"))?;
    Ok((view(state, row).await?, secret))
}

pub async fn list(
    state: &AppState,
    principal: &Principal,
    org: &str,
    before: Option<ServiceTokenId>,
    limit: u32,
) -> ApiResult<Vec<ServiceTokenView>> {
    let ctx = tenancy::org(state, principal, org, Action::ServiceTokensManage).await?;
    let rows =
        db::service_tokens::list(state.db.pool(), ctx.org.id, before, i64::from(limit) + 1).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        out.push(view(state, row).await?);
    }
    Ok(out)
}

pub async fn revoke(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    org: &str,
    id: ServiceTokenId,
) -> ApiResult<()> {
    let ctx = tenancy::org(state, principal, org, Action::ServiceTokensManage).await?;
    let mut tx = state.db.begin().await?;
    if !credentials::revoke(
        &mut *tx,
        Table::ServiceTokens,
        ctx.org.id,
        id,
        Timestamp::now(),
    )
    .await?
    {
        return Err(ApiError::not_found("service token"));
    }
    AuditEvent::new(action::SERVICE_TOKEN_REVOKED, Outcome::Success, meta)
        .by(principal)
        .org(ctx.org.id)
        .target("service_token", id)
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// A new secret for the token; the old one keeps working for `grace` only.
pub async fn rotate(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    org: &str,
    id: ServiceTokenId,
    grace: Duration,
) -> ApiResult<(ServiceTokenView, SecretString)> {
    let ctx = tenancy::org(state, principal, org, Action::ServiceTokensManage).await?;
    check_grace(grace)?;
    let secret = tokens::generate(API_KEY_PREFIX);
    let now = Timestamp::now();
    let mut tx = state.db.begin().await?;
    let rotated = credentials::rotate(
        &mut *tx,
        Table::ServiceTokens,
        ctx.org.id,
        id,
        &tokens::hash(secret.expose_secret()),
        &tokens::display_prefix(&secret),
        now.plus(grace),
    )
    .await?;
    if !rotated {
        return Err(ApiError::not_found("service token"));
    }
    AuditEvent::new(action::SERVICE_TOKEN_ROTATED, Outcome::Success, meta)
        .by(principal)
        .org(ctx.org.id)
        .target("service_token", id)
        .details(json!({ "grace_period_seconds": grace.as_secs() }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    let row = db::service_tokens::get(state.db.pool(), ctx.org.id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("service token"))?;
    Ok((view(state, row).await?, secret))
}
