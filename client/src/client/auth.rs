//! `/api/v1/auth`: logging in and out, refreshing a login session's tokens, the current user.

use reqwest::Method;
use reqwest::header::ACCEPT;
use secrecy::SecretString;

use super::Client;
use crate::Error;
use crate::types::{LoggedIn, LoginRequest, RefreshRequest, SessionTokens, User};

impl Client {
    /// A client of the coffer-server at `base_url` that holds no token yet: for
    /// [`Client::login`] and [`Client::refresh_session`], whose answers give one (then
    /// [`Client::with_token`]). Every other call answers 401.
    pub fn anonymous(base_url: &str) -> Result<Self, Error> {
        Self::new(base_url, SecretString::from(String::new()))
    }

    /// Logs in with an email and a password: the user and a new login session's tokens. No
    /// token is sent. Wrong credentials are a 401 `invalid_credentials`; too many attempts a
    /// 429 with `retry_after`.
    pub async fn login(&self, req: &LoginRequest) -> Result<LoggedIn, Error> {
        let url = self.api_url("auth", &["login"])?;
        self.json(self.anonymous_request(Method::POST, url).json(req))
            .await
    }

    /// Trades a login session's refresh token for new tokens. Each refresh token works once:
    /// keep the new one before anything else, since presenting a used one ends the session
    /// (a 401). No token is sent.
    pub async fn refresh_session(&self, req: &RefreshRequest) -> Result<SessionTokens, Error> {
        let url = self.api_url("auth", &["refresh"])?;
        self.json(self.anonymous_request(Method::POST, url).json(req))
            .await
    }

    /// Ends the login session whose access token this client holds, at once (its refresh token
    /// stops working too).
    pub async fn logout(&self) -> Result<(), Error> {
        let url = self.api_url("auth", &["logout"])?;
        self.empty(self.request(Method::POST, url)).await
    }

    /// The user this client's token belongs to (a login session or an API key; a service token
    /// belongs to no user and gets a 403 `user_required`).
    pub async fn me(&self) -> Result<User, Error> {
        let url = self.api_url("auth", &["me"])?;
        self.json(self.request(Method::GET, url)).await
    }

    fn anonymous_request(&self, method: Method, url: reqwest::Url) -> reqwest::RequestBuilder {
        self.http
            .request(method, url)
            .header(ACCEPT, "application/json")
    }
}
