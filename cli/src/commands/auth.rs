//! `coffer login`, `coffer logout`, `coffer whoami`.

use coffer_client::{Client, LoginRequest, Revealed, User};
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::json;

use super::{Context, interactive, prompt, read_secret_line};
use crate::cli::LoginArgs;
use crate::credentials::{Credentials, Stored};
use crate::error::CliError;
use crate::output::{self, Style};
use crate::session::{CredentialKind, Retry, Session, env_token, stored_session};

/// The server to log in to: the settings' (or COFFER_SERVER_URL), else the last one.
fn login_server(ctx: &Context) -> Result<String, CliError> {
    ctx.server().map_err(|e| match e {
        CliError::Usage(_) => CliError::usage(
            "no server: pass --server URL (or set COFFER_SERVER_URL, or run `coffer init --server URL`)",
        ),
        other => other,
    })
}

pub async fn login(ctx: &Context, args: LoginArgs) -> Result<(), CliError> {
    let server = login_server(ctx)?;
    let credentials = Credentials::in_dir(ctx.config_dir()?);
    let anonymous = Client::anonymous(&server).map_err(|e| CliError::Other(e.to_string()))?;
    let (stored, user, what) = match args.token {
        Some(token) => {
            let token = if !token.is_empty() {
                SecretString::from(token)
            } else if let Some(token) = env_token() {
                token
            } else {
                read_secret_line("Token: ")?
            };
            if token.expose_secret().trim().is_empty() {
                return Err(CliError::usage("no token given"));
            }
            let client =
                anonymous.with_token(SecretString::from(token.expose_secret().trim().to_owned()));
            // A token is checked before it is kept: a user's API key says whose it is; a
            // service token belongs to no user (403 user_required) but is accepted.
            let user = match client.me().await {
                Ok(user) => Some(user),
                Err(e) if e.code() == Some("user_required") => None,
                Err(e) if e.status() == Some(401) => {
                    return Err(CliError::TokenRefused { server });
                }
                Err(e) => return Err(CliError::from_client(&server, e)),
            };
            let owner = user
                .as_ref()
                .map_or_else(|| "a service token".to_owned(), |u| u.email.clone());
            let stored = Stored::Token {
                token: Revealed(SecretString::from(token.expose_secret().trim().to_owned())),
                owner: Some(owner),
            };
            let what = if user.is_some() {
                "an API key"
            } else {
                "a service token"
            };
            (stored, user, what)
        }
        None => {
            let email = match args.email {
                Some(email) => email,
                None if interactive() => prompt("Email: ")?,
                None => {
                    return Err(CliError::usage(
                        "pass --email (stdin is not a terminal, so it cannot be asked for)",
                    ));
                }
            };
            let email = email.trim().to_owned();
            if email.is_empty() {
                return Err(CliError::usage("no email given"));
            }
            let password = if args.password_stdin || !interactive() {
                read_secret_line("")?
            } else {
                read_secret_line("Password: ")?
            };
            let request = LoginRequest {
                email: email.clone(),
                password,
            };
            let logged_in = match anonymous.login(&request).await {
                Ok(answer) => answer,
                Err(e) if e.status() == Some(401) => return Err(CliError::WrongCredentials),
                Err(e) => return Err(CliError::from_client(&server, e)),
            };
            let stored = stored_session(
                &logged_in.user.email,
                logged_in.tokens.access_token,
                logged_in.tokens.expires_in,
                logged_in.tokens.refresh_token,
            );
            (stored, Some(logged_in.user), "a login session")
        }
    };
    {
        let _lock = credentials.lock().await?;
        let mut store = credentials.load()?;
        store.servers.insert(server.clone(), stored);
        store.default_server = Some(server.clone());
        credentials.save(&store)?;
    }
    if env_token().is_some() {
        output::warn("COFFER_TOKEN is set: commands use it rather than what was just stored");
    }
    if ctx.out.json {
        ctx.out.json(&json!({
            "server": server,
            "credential": what,
            "user": user,
        }))?;
    } else {
        let who = user.map_or_else(|| "a service token".to_owned(), |u| u.email);
        ctx.out.styled_line(
            &format!("Logged in to {server} as {who} ({what})"),
            Style::Green,
        )?;
    }
    Ok(())
}

pub async fn logout(ctx: &Context) -> Result<(), CliError> {
    let server = ctx.server()?;
    let credentials = Credentials::in_dir(ctx.config_dir()?);
    let stored = credentials.load()?.servers.remove(&server);
    let mut ended_session = false;
    if let Some(Stored::Session { .. }) = stored {
        // Ending the session on the server makes its tokens useless even if a copy of the
        // file survives; when that fails, forgetting them here still logs out.
        let ended = match Session::open(&server, ctx.config_dir()?) {
            Ok(mut session) if session.kind() == CredentialKind::Login => {
                session
                    .call(Retry::Never, async |c: &Client| c.logout().await)
                    .await
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        match ended {
            Ok(()) => ended_session = true,
            Err(CliError::SessionEnded { .. }) => {}
            Err(e) => output::warn(&format!(
                "the session could not be ended on the server ({e}); forgetting it here"
            )),
        }
    }
    {
        let _lock = credentials.lock().await?;
        let mut store = credentials.load()?;
        store.servers.remove(&server);
        if store.default_server.as_deref() == Some(server.as_str()) {
            store.default_server = None;
        }
        credentials.save(&store)?;
    }
    if env_token().is_some() {
        output::warn("COFFER_TOKEN is still set: commands keep using it");
    }
    if ctx.out.json {
        ctx.out.json(&json!({
            "server": server,
            "logged_out": stored.is_some(),
            "session_ended": ended_session,
        }))?;
    } else if stored.is_some() {
        ctx.out.line(&format!("Logged out of {server}"))?;
    } else {
        ctx.out.line(&format!("Not logged in to {server}"))?;
    }
    Ok(())
}

pub async fn whoami(ctx: &Context) -> Result<(), CliError> {
    let mut session = ctx.session()?;
    let user: Option<User> = match session
        .call(Retry::Idempotent, async |c: &Client| c.me().await)
        .await
    {
        Ok(user) => Some(user),
        // A service token belongs to no user.
        Err(CliError::Api { code, .. }) if code == "user_required" => None,
        Err(e) => return Err(e),
    };
    let credential = match (session.kind(), &user) {
        (CredentialKind::Login, _) => "login session",
        (CredentialKind::EnvironmentToken, Some(_)) => "API key from COFFER_TOKEN",
        (CredentialKind::EnvironmentToken, None) => "service token from COFFER_TOKEN",
        (CredentialKind::StoredToken, Some(_)) => "API key",
        (CredentialKind::StoredToken, None) => "service token",
    };
    if ctx.out.json {
        ctx.out.json(&json!({
            "server": session.server(),
            "credential": credential,
            "user": user,
        }))?;
        return Ok(());
    }
    match &user {
        Some(user) => ctx.out.line(&format!("{} <{}>", user.name, user.email))?,
        None => ctx
            .out
            .line("a service token (it belongs to the organization, not to a user)")?,
    }
    ctx.out.styled_line(
        &format!("{} with a {credential}", session.server()),
        Style::Dim,
    )?;
    Ok(())
}
