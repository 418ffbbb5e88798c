//! The user's settings: profile, password, sessions.

use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use secrecy::SecretString;
use serde::Deserialize;

use super::{FormError, Layout, when};
use crate::auth::Credential;
use crate::ids::SessionId;
use crate::service::{self, ClientMeta};
use crate::state::AppState;
use crate::web::session::SignedIn;
use crate::web::{WebError, render};

#[derive(Debug)]
pub struct SessionView {
    pub id: String,
    pub started: String,
    pub last_seen: String,
    pub client: String,
    pub dashboard: bool,
    pub current: bool,
}

#[derive(Template)]
#[template(path = "settings.html")]
struct SettingsPage {
    layout: Layout,
    sessions: Vec<SessionView>,
    notice: Option<&'static str>,
    error: FormError,
}

/// A browser's or tool's name, from its user agent, as people would say it.
fn client_name(user_agent: Option<&str>) -> String {
    let Some(ua) = user_agent else {
        return "Unknown client".to_owned();
    };
    let known = [
        ("coffer-cli", "Coffer CLI"),
        ("coffer-operator", "Coffer operator"),
        ("Edg/", "Edge"),
        ("Chrome/", "Chrome"),
        ("Firefox/", "Firefox"),
        ("Safari/", "Safari"),
        ("curl/", "curl"),
    ];
    known
        .iter()
        .find(|(needle, _)| ua.contains(needle))
        .map_or_else(
            || ua.chars().take(40).collect(),
            |(_, name)| (*name).to_owned(),
        )
}

async fn settings_page(
    state: &AppState,
    who: &SignedIn,
    notice: Option<&'static str>,
    error: FormError,
) -> Result<Response, WebError> {
    let current = match who.principal.credential {
        Credential::Session(id) => Some(id),
        Credential::ApiKey { .. } => None,
    };
    let sessions = service::auth::sessions(state, &who.principal)
        .await?
        .into_iter()
        .map(|s| SessionView {
            id: s.id.to_string(),
            started: when(s.created_at),
            last_seen: s.last_seen_at.map(when).unwrap_or_default(),
            client: format!(
                "{}{}",
                client_name(s.user_agent.as_deref()),
                s.client_ip.map(|ip| format!(" · {ip}")).unwrap_or_default()
            ),
            dashboard: s.web_token_hash.is_some(),
            current: Some(s.id) == current,
        })
        .collect();
    let layout = Layout::signed_in(state, who, None, "Settings", "settings").await?;
    render(&SettingsPage {
        layout,
        sessions,
        notice,
        error,
    })
}

/// `/settings`
pub async fn page(State(state): State<AppState>, who: SignedIn) -> Result<Response, WebError> {
    settings_page(&state, &who, None, FormError::none()).await
}

#[derive(Deserialize)]
pub struct ProfileForm {
    name: String,
}

/// Changes the user's name.
pub async fn change_profile(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Form(form): Form<ProfileForm>,
) -> Result<Response, WebError> {
    match service::auth::rename(&state, &meta, &who.principal, &form.name).await {
        Ok(_) => {
            settings_page(
                &state,
                &who,
                Some("Your name was changed."),
                FormError::none(),
            )
            .await
        }
        Err(e) => {
            let status = e.status();
            let mut error = FormError::from_api(&e);
            error.field = Some("profile-name");
            let page = settings_page(&state, &who, None, error).await?;
            Ok((status, page).into_response())
        }
    }
}

#[derive(Deserialize)]
pub struct PasswordForm {
    current: SecretString,
    password: SecretString,
    #[serde(default)]
    revoke_api_keys: Option<String>,
}

/// Changes the password; the user's other sessions end.
pub async fn change_password(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Form(form): Form<PasswordForm>,
) -> Result<Response, WebError> {
    let result = service::auth::change_password(
        &state,
        &meta,
        &who.principal,
        &form.current,
        &form.password,
        form.revoke_api_keys.is_some(),
    )
    .await;
    match result {
        Ok(()) => {
            settings_page(
                &state,
                &who,
                Some("Your password was changed; your other sessions were signed out."),
                FormError::none(),
            )
            .await
        }
        Err(e) => {
            let status = e.status();
            let mut error = FormError::from_api(&e);
            if e.code() == "wrong_password" {
                error.field = Some("current");
            }
            let page = settings_page(&state, &who, None, error).await?;
            Ok((status, page).into_response())
        }
    }
}

pub async fn end_session(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
    Path(id): Path<String>,
) -> Result<Response, WebError> {
    let id: SessionId = id
        .parse()
        .map_err(|_| crate::error::ApiError::not_found("session"))?;
    service::auth::end_sessions(&state, &meta, &who.principal, Some(id)).await?;
    Ok(Redirect::to("/settings").into_response())
}

/// Signs out every other session of the user ("sign out other sessions").
pub async fn end_others(
    State(state): State<AppState>,
    who: SignedIn,
    meta: ClientMeta,
) -> Result<Response, WebError> {
    service::auth::end_sessions(&state, &meta, &who.principal, None).await?;
    Ok(Redirect::to("/settings").into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_named() {
        assert_eq!(client_name(None), "Unknown client");
        assert_eq!(
            client_name(Some(
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 Safari/537.36"
            )),
            "Chrome"
        );
        assert_eq!(client_name(Some("coffer-cli/0.1.0")), "Coffer CLI");
    }
}
