//! An organization's service tokens (owners and admins only): list, create for one project and
//! some of its environments, rotate, revoke. A token is shown in the answer that issued it only.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;

use super::api_keys::{GRACE_PERIODS, IssuedToken, back_to, parse_days, parse_grace, refusal};
use super::{FormError, Layout, when};
use crate::authz::Action;
use crate::db;
use crate::error::ApiError;
use crate::ids::{ServiceTokenId, Timestamp};
use crate::service::service_tokens::NewToken;
use crate::service::{self, ClientMeta, tenancy};
use crate::state::AppState;
use crate::web::session::SignedIn;
use crate::web::{WebError, render};

/// Most tokens, and projects, the page lists.
const PAGE: u32 = 200;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/orgs/{org}/service-tokens", get(list).post(create))
        .route("/orgs/{org}/service-tokens/{id}/rotate", post(rotate))
        .route("/orgs/{org}/service-tokens/{id}/revoke", post(revoke))
}

/// A service token as the list shows it.
#[derive(Debug)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub project: String,
    pub environments: String,
    pub read_write: bool,
    pub created: String,
    pub last_used: String,
    pub expires: String,
    pub expired: bool,
    pub previous_until: Option<String>,
}

/// A project and its environments, to choose a token's scope from.
#[derive(Debug)]
pub struct ProjectChoice {
    pub slug: String,
    pub name: String,
    pub envs: Vec<EnvChoice>,
}

#[derive(Debug)]
pub struct EnvChoice {
    pub slug: String,
    pub name: String,
}

/// What the creation form holds, kept when it is refused. Environments are `project/env`.
#[derive(Debug, Default)]
pub struct TokenForm {
    pub name: String,
    pub read_write: bool,
    pub expires_in_days: String,
    pub environments: Vec<String>,
}

impl TokenForm {
    /// The form's fields, `env` repeated once per checked environment.
    fn from_pairs(pairs: Vec<(String, String)>) -> Self {
        let mut form = Self::default();
        for (key, value) in pairs {
            match key.as_str() {
                "name" => form.name = value,
                "access" => form.read_write = value == "read-write",
                "expires_in_days" => form.expires_in_days = value,
                "env" => form.environments.push(value),
                _ => {}
            }
        }
        form
    }

    /// Whether `project/env` is checked.
    pub fn has(&self, project: &str, env: &str) -> bool {
        self.environments
            .iter()
            .any(|e| e.split_once('/') == Some((project, env)))
    }

    /// The one project the checked environments belong to, and their slugs.
    fn scope(&self) -> Result<(&str, Vec<String>), ApiError> {
        let mut project = None;
        let mut envs = Vec::new();
        for chosen in &self.environments {
            let (p, e) = chosen.split_once('/').ok_or_else(|| {
                ApiError::validation("unknown_environment", "choose environments from the list")
            })?;
            if project.is_some_and(|seen| seen != p) {
                return Err(ApiError::validation(
                    "environments_of_several_projects",
                    "a service token reaches one project: choose environments of one project only",
                ));
            }
            project = Some(p);
            envs.push(e.to_owned());
        }
        match project {
            Some(p) => Ok((p, envs)),
            None => Err(ApiError::validation(
                "no_environments",
                "choose at least one environment",
            )),
        }
    }
}

#[derive(Template)]
#[template(path = "service_tokens.html")]
struct ServiceTokensPage {
    layout: Layout,
    org: String,
    tokens: Vec<TokenView>,
    projects: Vec<ProjectChoice>,
    form: TokenForm,
    error: FormError,
    issued: Option<IssuedToken>,
    notice: Option<&'static str>,
    grace_periods: &'static [(u64, &'static str)],
}

async fn page(
    state: &AppState,
    who: &SignedIn,
    org: &str,
    form: TokenForm,
    error: FormError,
    issued: Option<IssuedToken>,
    notice: Option<&'static str>,
) -> Result<Response, WebError> {
    // Members and viewers are refused here (403), other tenants do not find the organization.
    let ctx = tenancy::org(state, &who.principal, org, Action::ServiceTokensManage).await?;
    let now = Timestamp::now();
    let tokens = service::service_tokens::list(state, &who.principal, org, None, PAGE)
        .await?
        .into_iter()
        .take(PAGE as usize)
        .map(|v| TokenView {
            id: v.token.id.to_string(),
            read_write: v.token.read_write(),
            name: v.token.name,
            prefix: v.token.prefix,
            project: v.project,
            environments: v.environments.join(", "),
            created: when(v.token.created_at),
            last_used: v
                .token
                .last_used_at
                .map_or_else(|| "never".to_owned(), when),
            expires: v.token.expires_at.map_or_else(|| "never".to_owned(), when),
            expired: v.token.expires_at.is_some_and(|t| t <= now),
            previous_until: v.token.previous_expires_at.filter(|t| *t > now).map(when),
        })
        .collect();
    let mut projects = Vec::new();
    for p in service::projects::list(state, &who.principal, org, None, PAGE)
        .await?
        .into_iter()
        .take(PAGE as usize)
    {
        let envs = db::projects::environments(state.db.pool(), p.id)
            .await
            .map_err(ApiError::from)?
            .into_iter()
            .map(|e| EnvChoice {
                slug: e.slug,
                name: e.name,
            })
            .collect();
        projects.push(ProjectChoice {
            slug: p.slug,
            name: p.name,
            envs,
        });
    }
    let layout =
        Layout::signed_in(state, who, Some(&ctx), "Service tokens", "service-tokens").await?;
    render(&ServiceTokensPage {
        layout,
        org: ctx.org.slug.clone(),
        tokens,
        projects,
        form,
        error,
        issued,
        notice,
        grace_periods: GRACE_PERIODS,
    })
}

#[derive(Debug, Deserialize)]
pub struct NoticeQuery {
    #[serde(default)]
    done: Option<String>,
}

/// `/orgs/{org}/service-tokens`
pub async fn list(
    State(state): State<AppState>,
    who: SignedIn,
    Path(org): Path<String>,
    Query(query): Query<NoticeQuery>,
) -> Result<Response, WebError> {
    let notice = match query.done.as_deref() {
        Some("revoked") => Some("The service token was revoked: it no longer works."),
        _ => None,
    };
    page(
        &state,
        &who,
        &org,
        TokenForm::default(),
        FormError::none(),
        None,
        notice,
    )
    .await
}

/// Creates a token; the answer is the page with its secret, this once.
pub async fn create(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path(org): Path<String>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, WebError> {
    let form = TokenForm::from_pairs(pairs);
    let created = async {
        let days = parse_days(&form.expires_in_days)?;
        let (project, environments) = form.scope()?;
        let new = NewToken {
            name: &form.name,
            project,
            environments: &environments,
            read_write: form.read_write,
            expires_in_days: days,
        };
        service::service_tokens::create(&state, &meta, &who.principal, &org, new).await
    }
    .await;
    match created {
        Ok((view, secret)) => {
            let shown = IssuedToken::new(
                format!("Service token “{}” created", view.token.name),
                secret,
                None,
                false,
            );
            let form = TokenForm::default();
            page(
                &state,
                &who,
                &org,
                form,
                FormError::none(),
                Some(shown),
                None,
            )
            .await
        }
        Err(e) => {
            let status = e.status();
            let error = refusal(
                &e,
                &[
                    ("invalid_expiry", "expires_in_days"),
                    ("no_environments", "environments"),
                    ("unknown_project", "environments"),
                    ("unknown_environment", "environments"),
                    ("environments_of_several_projects", "environments"),
                ],
            );
            let page = page(&state, &who, &org, form, error, None, None).await?;
            Ok((status, page).into_response())
        }
    }
}

fn parse_id(id: &str) -> Result<ServiceTokenId, ApiError> {
    id.parse().map_err(|_| ApiError::not_found("service token"))
}

#[derive(Debug, Deserialize)]
pub struct RotateForm {
    #[serde(default)]
    grace: Option<String>,
}

/// Rotates a token; the answer is the page with its new secret, this once.
pub async fn rotate(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path((org, id)): Path<(String, String)>,
    Form(form): Form<RotateForm>,
) -> Result<Response, WebError> {
    let grace = parse_grace(form.grace.as_deref())?;
    let (view, secret) =
        service::service_tokens::rotate(&state, &meta, &who.principal, &org, parse_id(&id)?, grace)
            .await?;
    let shown = IssuedToken::new(
        format!("Service token “{}” rotated", view.token.name),
        secret,
        view.token.previous_expires_at,
        true,
    );
    page(
        &state,
        &who,
        &org,
        TokenForm::default(),
        FormError::none(),
        Some(shown),
        None,
    )
    .await
}

/// Revokes a token at once.
pub async fn revoke(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    headers: HeaderMap,
    Path((org, id)): Path<(String, String)>,
) -> Result<Response, WebError> {
    service::service_tokens::revoke(&state, &meta, &who.principal, &org, parse_id(&id)?).await?;
    Ok(back_to(
        &format!("/orgs/{org}/service-tokens?done=revoked"),
        &headers,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(envs: &[&str]) -> TokenForm {
        TokenForm::from_pairs(
            envs.iter()
                .map(|e| ("env".to_owned(), (*e).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn a_token_reaches_the_environments_of_one_project() {
        let one = form(&["web/development", "web/staging"]);
        let (project, envs) = one.scope().unwrap_or(("", Vec::new()));
        assert_eq!(project, "web");
        assert_eq!(envs, ["development", "staging"]);
        assert!(one.has("web", "staging") && !one.has("web", "production"));
        let two = form(&["web/development", "api/development"]);
        assert_eq!(
            two.scope().err().map(|e| e.code()),
            Some("environments_of_several_projects")
        );
        assert_eq!(
            form(&[]).scope().err().map(|e| e.code()),
            Some("no_environments")
        );
    }
}
