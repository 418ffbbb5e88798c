//! Resolving `{org}`, `{project}` and `{env}` for a caller, through the one policy function.
//!
//! Every tenant-scoped operation starts here: the caller's standing is loaded with the resource,
//! [`authz::decide`] is asked, and a hidden resource is answered exactly like a missing one.

use std::sync::Arc;

use crate::access::StandingKey;
use crate::auth::Subject;
use crate::authz::{self, Action, Decision, EnvAccess, OrgRole, ProjectRole, Standing, TokenScope};
use crate::db;
use crate::db::orgs::OrgRow;
use crate::db::projects::{EnvironmentRow, ProjectRow, StandingRow};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// An organization as seen by the caller.
#[derive(Debug, Clone)]
pub struct OrgCtx {
    pub org: OrgRow,
    pub role: Option<OrgRole>,
}

/// A project as seen by the caller.
#[derive(Debug, Clone)]
pub struct ProjectCtx {
    pub org: OrgCtx,
    pub project: ProjectRow,
    pub role: Option<ProjectRole>,
}

/// An environment as seen by the caller.
#[derive(Debug, Clone)]
pub struct EnvCtx {
    pub project: ProjectCtx,
    /// The environment as it was when the caller's standing was confirmed: its `revision` and
    /// `updated_at` may be older than the database's (they change with every secret write).
    pub env: EnvironmentRow,
    /// The environment's policy for the caller's project role, if one is set.
    pub policy: Option<EnvAccess>,
}

fn enforce(standing: &Standing, action: Action, hidden: &'static str) -> ApiResult<()> {
    match authz::decide(standing, action) {
        Decision::Allow => Ok(()),
        Decision::Deny => Err(ApiError::forbidden(
            "forbidden",
            "your role does not allow this",
        )),
        Decision::Hidden => Err(ApiError::not_found(hidden)),
    }
}

fn parse_role<T: std::str::FromStr>(text: Option<&str>) -> Option<T> {
    text.and_then(|t| t.parse().ok())
}

/// The caller's standing before the project and environment are known.
fn base_standing(caller: &impl Subject, org_role: Option<OrgRole>) -> Standing {
    Standing {
        org_role,
        token: caller.token().map(|t| TokenScope {
            project_id: t.project_id.to_string(),
            environment_ids: t.environment_ids.iter().map(ToString::to_string).collect(),
            read_write: t.read_write,
        }),
        ..Standing::default()
    }
}

/// The organization `slug` if the caller may perform `action` on it.
pub async fn org(
    state: &AppState,
    caller: &(impl Subject + Sync),
    slug: &str,
    action: Action,
) -> ApiResult<OrgCtx> {
    let org = db::orgs::by_slug(state.db.pool(), slug, caller.user())
        .await?
        .ok_or_else(|| ApiError::not_found("organization"))?;
    org_ctx(caller, org, action)
}

/// Decides on the organization `org` (with the caller's role in it, if any).
fn org_ctx(caller: &impl Subject, org: OrgRow, action: Action) -> ApiResult<OrgCtx> {
    let role = parse_role(org.role.as_deref());
    // A non-member (or another organization's token) learns nothing, whatever the action.
    let belongs = match caller.token() {
        Some(token) => token.org_id == org.id,
        None => role.is_some(),
    };
    if !belongs {
        return Err(ApiError::not_found("organization"));
    }
    enforce(&base_standing(caller, role), action, "organization")?;
    Ok(OrgCtx { org, role })
}

/// The caller's project role: admin for the organization's owners and admins, otherwise the
/// strongest role among the grants in `rows` (direct or through a team); none for a token.
fn project_role(caller: &impl Subject, org: &OrgCtx, rows: &[StandingRow]) -> Option<ProjectRole> {
    if org.role >= Some(OrgRole::Admin) {
        return Some(ProjectRole::Admin);
    }
    caller.user()?;
    rows.iter()
        .filter_map(|r| parse_role::<ProjectRole>(r.grant_role.as_deref()))
        .max()
}

/// The caller's standing at `org/project[/env]`: remembered (see [`crate::access`]), or
/// loaded in one query.
async fn standing(
    state: &AppState,
    caller: &(impl Subject + Sync),
    org_slug: &str,
    project_slug: &str,
    env_slug: Option<&str>,
) -> ApiResult<Arc<[StandingRow]>> {
    let key = StandingKey {
        user: caller.user(),
        org: org_slug.to_owned(),
        project: project_slug.to_owned(),
        env: env_slug.map(str::to_owned),
    };
    let epoch = state.access.epoch();
    if let Some(rows) = state.access.standing(&key) {
        return Ok(rows);
    }
    let rows: Arc<[StandingRow]> = db::projects::standing(
        state.db.pool(),
        org_slug,
        caller.user(),
        project_slug,
        env_slug,
    )
    .await?
    .into();
    // What does not exist (yet) is not remembered: it may be created on another replica.
    let found = rows.first().is_some_and(|first| {
        first.project_id.is_some() && (env_slug.is_none() || first.env_id.is_some())
    });
    if found {
        state.access.put_standing(epoch, key, rows.clone());
    }
    Ok(rows)
}

/// Loads the caller's standing at `org/project[/env]` and decides on the organization and then
/// the project, like [`org`] would with [`Action::OrgRead`].
async fn load_project(
    state: &AppState,
    caller: &(impl Subject + Sync),
    org_slug: &str,
    project_slug: &str,
    env_slug: Option<&str>,
    action: Action,
) -> ApiResult<(ProjectCtx, Arc<[StandingRow]>)> {
    let rows = standing(state, caller, org_slug, project_slug, env_slug).await?;
    let first = rows
        .first()
        .ok_or_else(|| ApiError::not_found("organization"))?;
    let org = org_ctx(caller, first.org(), Action::OrgRead)?;
    let project = first
        .project()
        .ok_or_else(|| ApiError::not_found("project"))?;
    let role = project_role(caller, &org, &rows);
    let standing = Standing {
        project: Some((project.id.to_string(), role)),
        ..base_standing(caller, org.role)
    };
    enforce(&standing, action, "project")?;
    Ok((ProjectCtx { org, project, role }, rows))
}

/// The project `project` of organization `org` if the caller may perform `action` on it.
pub async fn project(
    state: &AppState,
    caller: &(impl Subject + Sync),
    org_slug: &str,
    project_slug: &str,
    action: Action,
) -> ApiResult<ProjectCtx> {
    let (project, _) = load_project(state, caller, org_slug, project_slug, None, action).await?;
    Ok(project)
}

/// Where an environment is: `{org}/{project}/{env}` slugs from a request path.
#[derive(Debug, Clone, Copy)]
pub struct EnvPath<'a> {
    pub org: &'a str,
    pub project: &'a str,
    pub env: &'a str,
}

/// The environment at `at` if the caller may perform `action` in it.
pub async fn environment(
    state: &AppState,
    caller: &(impl Subject + Sync),
    at: EnvPath<'_>,
    action: Action,
) -> ApiResult<EnvCtx> {
    let (project, rows) = load_project(
        state,
        caller,
        at.org,
        at.project,
        Some(at.env),
        Action::ProjectRead,
    )
    .await?;
    let env = rows
        .first()
        .and_then(StandingRow::environment)
        .ok_or_else(|| ApiError::not_found("environment"))?;
    // The policy set for the caller's (strongest) project role; owners and admins have none.
    let policy = match project.role {
        Some(role) if project.org.role < Some(OrgRole::Admin) => rows
            .iter()
            .filter(|r| parse_role::<ProjectRole>(r.grant_role.as_deref()) == Some(role))
            .find_map(|r| parse_role(r.policy.as_deref())),
        _ => None,
    };
    let standing = Standing {
        project: Some((project.project.id.to_string(), project.role)),
        environment: Some((env.id.to_string(), policy)),
        ..base_standing(caller, project.org.role)
    };
    enforce(&standing, action, "environment")?;
    Ok(EnvCtx {
        project,
        env,
        policy,
    })
}

/// `[a-z0-9-]{1,63}`.
pub fn check_slug(slug: &str, what: &str) -> ApiResult<()> {
    let ok = (1..=63).contains(&slug.len())
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::validation(
            "invalid_slug",
            format!("{what} slug must be 1 to 63 characters of a-z, 0-9 and -"),
        ))
    }
}

/// 1 to 100 characters (as sent), no control characters, not only spaces; kept trimmed.
/// `coffer_client::types::formats::Name` documents exactly this.
pub fn check_name(name: &str) -> ApiResult<String> {
    let chars = name.chars().count();
    if chars == 0 || chars > 100 || name.chars().any(char::is_control) || name.trim().is_empty() {
        return Err(ApiError::validation(
            "invalid_name",
            "name must have 1 to 100 printable characters",
        ));
    }
    Ok(name.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_lowercase_digits_and_hyphens() {
        assert!(check_slug("acme-prod-2", "org").is_ok());
        for bad in ["", "Acme", "acme_prod", "acme prod", &"a".repeat(64), "é"] {
            assert!(check_slug(bad, "org").is_err(), "{bad}");
        }
    }

    #[test]
    fn names_are_counted_as_sent_and_kept_trimmed() {
        assert_eq!(
            check_name("  Acme Corp ").ok().as_deref(),
            Some("Acme Corp")
        );
        assert_eq!(check_name("\u{feff}").ok().as_deref(), Some("\u{feff}"));
        let hundred = format!("{}x", " ".repeat(99));
        assert_eq!(check_name(&hundred).ok().as_deref(), Some("x"));
        let long = format!("{}x", " ".repeat(100));
        for bad in [
            "",
            " ",
            "\u{3000}",
            "\tAcme",
            "Acme\n",
            "Ac\u{85}me",
            "a\u{7f}",
            &long,
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
