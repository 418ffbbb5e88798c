//! An authenticated connection to one server: the token from `COFFER_TOKEN` or the stored
//! credentials, refreshed transparently (before it expires, and once on a 401) for a login
//! session, and requests retried on 429 and 503 when repeating them is harmless.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coffer_client::{Client, RefreshRequest, Revealed};
use secrecy::{ExposeSecret as _, SecretString};

use crate::credentials::{Credentials, Stored, normalize_server};
use crate::error::CliError;
use crate::output;

/// Refresh an access token this long before it expires, so that it does not expire in flight.
const EXPIRY_MARGIN_SECS: i64 = 30;
/// At most this many tries of one idempotent request answered 429 or 503…
const MAX_TRIES: u32 = 3;
/// …each after the `Retry-After` delay, at most this long…
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);
/// …or this long when the answer gave none.
const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Whether a request may be sent again after a 429 or 503 (the server may have done it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// GET, PUT, DELETE: doing it twice is doing it once.
    Idempotent,
    /// POST: sent once.
    Never,
}

/// Where the token comes from.
#[derive(Debug)]
enum Auth {
    /// `COFFER_TOKEN`.
    EnvToken,
    /// `coffer login --token`.
    StoredToken { owner: Option<String> },
    /// `coffer login`: an access token and the refresh token to renew it with.
    Login {
        email: String,
        refresh_token: SecretString,
        expires_at: i64,
    },
}

/// What the session's credential is, for `coffer whoami`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// From `COFFER_TOKEN`.
    EnvironmentToken,
    /// Stored by `coffer login --token`.
    StoredToken,
    /// A login session.
    Login,
}

/// An authenticated client of one server.
#[derive(Debug)]
pub struct Session {
    server: String,
    client: Client,
    auth: Auth,
    credentials: Credentials,
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `COFFER_TOKEN`, unless it is unset or empty.
pub fn env_token() -> Option<SecretString> {
    std::env::var("COFFER_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .map(|t| SecretString::from(t.trim().to_owned()))
}

impl Session {
    /// The session for `server`: `COFFER_TOKEN` if set, else what `coffer login` stored.
    pub fn open(server: &str, config_dir: &Path) -> Result<Self, CliError> {
        let server = normalize_server(server)?;
        let credentials = Credentials::in_dir(config_dir);
        let client = |token: SecretString| {
            Client::new(&server, token).map_err(|e| CliError::Other(e.to_string()))
        };
        if let Some(token) = env_token() {
            return Ok(Self {
                client: client(token)?,
                server,
                auth: Auth::EnvToken,
                credentials,
            });
        }
        let store = credentials.load()?;
        let (client, auth) = match store.servers.get(&server) {
            None => return Err(CliError::NotLoggedIn { server }),
            Some(Stored::Token { token, owner }) => (
                client(token.0.clone())?,
                Auth::StoredToken {
                    owner: owner.clone(),
                },
            ),
            Some(Stored::Session {
                email,
                access_token,
                access_expires_at,
                refresh_token,
            }) => (
                client(access_token.0.clone())?,
                Auth::Login {
                    email: email.clone(),
                    refresh_token: refresh_token.0.clone(),
                    expires_at: *access_expires_at,
                },
            ),
        };
        Ok(Self {
            server,
            client,
            auth,
            credentials,
        })
    }

    /// The server's URL, normalised.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The kind of credential in use.
    pub fn kind(&self) -> CredentialKind {
        match self.auth {
            Auth::EnvToken => CredentialKind::EnvironmentToken,
            Auth::StoredToken { .. } => CredentialKind::StoredToken,
            Auth::Login { .. } => CredentialKind::Login,
        }
    }

    /// Who the credential was stored for, if known (the email of a login; the owner of a
    /// token as `coffer login --token` saw it).
    pub fn owner(&self) -> Option<&str> {
        match &self.auth {
            Auth::EnvToken => None,
            Auth::StoredToken { owner } => owner.as_deref(),
            Auth::Login { email, .. } => Some(email),
        }
    }

    /// The client with a token that is not about to expire (refreshed first if needed), for
    /// what [`Session::call`] cannot wrap (an event stream).
    pub async fn fresh_client(&mut self) -> Result<Client, CliError> {
        if let Auth::Login { expires_at, .. } = self.auth
            && expires_at - EXPIRY_MARGIN_SECS <= now_secs()
        {
            self.refresh().await?;
        }
        Ok(self.client.clone())
    }

    /// Runs `call` with the client: refreshes a login session's token first when it is about
    /// to expire and once more on a 401, and repeats an [`Retry::Idempotent`] request answered
    /// 429 or 503 after the `Retry-After` delay (at most 3 tries, each delay at most 30 s).
    pub async fn call<T>(
        &mut self,
        retry: Retry,
        call: impl AsyncFn(&Client) -> Result<T, coffer_client::Error>,
    ) -> Result<T, CliError> {
        let mut client = self.fresh_client().await?;
        let mut refreshed = false;
        let mut tries = 1;
        loop {
            match call(&client).await {
                Ok(value) => return Ok(value),
                Err(e) if e.status() == Some(401) => {
                    if refreshed || !matches!(self.auth, Auth::Login { .. }) {
                        return Err(self.refused());
                    }
                    self.refresh().await?;
                    client = self.client.clone();
                    refreshed = true;
                }
                Err(coffer_client::Error::Api {
                    status: status @ (429 | 503),
                    retry_after,
                    ..
                }) if retry == Retry::Idempotent && tries < MAX_TRIES => {
                    let delay = retry_after
                        .unwrap_or(DEFAULT_RETRY_DELAY)
                        .min(MAX_RETRY_DELAY);
                    output::note(&format!(
                        "{} answered {status}: trying again in {} s",
                        self.server,
                        delay.as_secs_f32()
                    ));
                    tokio::time::sleep(delay).await;
                    tries += 1;
                }
                Err(e) => return Err(CliError::from_client(&self.server, e)),
            }
        }
    }

    /// The error for a credential the server refused.
    fn refused(&self) -> CliError {
        match self.auth {
            Auth::Login { .. } => CliError::SessionEnded {
                server: self.server.clone(),
            },
            Auth::EnvToken | Auth::StoredToken { .. } => CliError::TokenRefused {
                server: self.server.clone(),
            },
        }
    }

    /// Trades the refresh token for new tokens and keeps them. The exchange runs as a task of
    /// its own that stores the new refresh token before anything else: should this future be
    /// dropped halfway (a signal in `coffer run`), the rotated token is still kept, and the
    /// next refresh finds it in the file.
    async fn refresh(&mut self) -> Result<(), CliError> {
        let Auth::Login { refresh_token, .. } = &self.auth else {
            return Ok(());
        };
        let task = tokio::spawn(refresh_and_store(
            self.credentials.clone(),
            self.server.clone(),
            self.client.clone(),
            refresh_token.clone(),
        ));
        let (access, refresh, expires_at) = task
            .await
            .map_err(|e| CliError::Other(format!("refreshing the session failed: {e}")))??;
        self.client = self.client.with_token(access);
        if let Auth::Login {
            refresh_token,
            expires_at: expiry,
            ..
        } = &mut self.auth
        {
            *refresh_token = refresh;
            *expiry = expires_at;
        }
        Ok(())
    }
}

/// New tokens for the session whose refresh token is `ours`, stored before they are returned.
/// When the file already holds another refresh token for the server, another process (or an
/// earlier, interrupted refresh) rotated it: its tokens are used, or its refresh token if they
/// are about to expire too; `ours` is then not sent (it is spent, and presenting it again
/// would end the session).
async fn refresh_and_store(
    credentials: Credentials,
    server: String,
    client: Client,
    ours: SecretString,
) -> Result<(SecretString, SecretString, i64), CliError> {
    let _lock = credentials.lock().await?;
    let mut store = credentials.load()?;
    let (email, current) = match store.servers.get(&server) {
        Some(Stored::Session {
            email,
            access_token,
            access_expires_at,
            refresh_token,
        }) => {
            if refresh_token.expose() != ours.expose_secret()
                && *access_expires_at - EXPIRY_MARGIN_SECS > now_secs()
            {
                return Ok((
                    access_token.0.clone(),
                    refresh_token.0.clone(),
                    *access_expires_at,
                ));
            }
            (email.clone(), refresh_token.0.clone())
        }
        _ => return Err(CliError::NotLoggedIn { server }),
    };
    let request = RefreshRequest {
        refresh_token: current,
    };
    let tokens = match client.refresh_session(&request).await {
        Ok(tokens) => tokens,
        Err(e) if e.status() == Some(401) => return Err(CliError::SessionEnded { server }),
        Err(e) => return Err(CliError::from_client(&server, e)),
    };
    let expires_at = now_secs().saturating_add(i64::try_from(tokens.expires_in).unwrap_or(0));
    store.servers.insert(
        server,
        Stored::Session {
            email,
            access_token: tokens.access_token.clone(),
            access_expires_at: expires_at,
            refresh_token: tokens.refresh_token.clone(),
        },
    );
    credentials.save(&store)?;
    Ok((
        tokens.access_token.into_inner(),
        tokens.refresh_token.into_inner(),
        expires_at,
    ))
}

/// The stored form of a new login session's tokens.
pub fn stored_session(email: &str, access: Revealed, expires_in: u64, refresh: Revealed) -> Stored {
    Stored::Session {
        email: email.to_owned(),
        access_token: access,
        access_expires_at: now_secs().saturating_add(i64::try_from(expires_in).unwrap_or(0)),
        refresh_token: refresh,
    }
}
