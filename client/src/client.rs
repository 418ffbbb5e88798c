use std::time::Duration;

use reqwest::header::{
    ACCEPT, CACHE_CONTROL, CONTENT_TYPE, ETAG, HeaderValue, IF_NONE_MATCH, RETRY_AFTER,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use secrecy::{ExposeSecret as _, SecretString};
use serde::de::DeserializeOwned;

use crate::Error;
use crate::error::describe_json_error;
use crate::retry_after::parse_retry_after;
use crate::stream::EventStream;
use crate::types::{
    BulkUpsertRequest, Comparison, CopyReport, CopySecretsRequest, CreateDynamicSecretRequest,
    CreateEnvironmentRequest, CreateProjectRequest, CreateServiceTokenRequest, DynamicSecret,
    Environment, EnvironmentDetail, ErrorResponse, IssueLeaseRequest, IssuedLease,
    IssuedServiceToken, Lease, Page, Project, PutSecretRequest, RenewLeaseRequest, Secret,
    SecretsPage, WriteReport,
};

mod auth;
mod secrets;

const TIMEOUT: Duration = Duration::from_secs(10);
/// How long an event stream may last before the client ends it (and its caller resumes it):
/// longer than coffer-server ever keeps one open (an hour). It replaces the per-request
/// timeout, which would cut every stream off after a few seconds.
const STREAM_TIMEOUT: Duration = Duration::from_secs(2 * 3600);
const USER_AGENT: &str = concat!("coffer-client/", env!("CARGO_PKG_VERSION"));
/// The largest answer body a [`Client`] reads unless told otherwise: far above any answer
/// coffer-server gives (a bulk read of an environment is bounded by the server's own limits),
/// small enough that a hostile or broken server cannot exhaust the caller's memory.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// A typed client of coffer-server's HTTP API, authenticated with one token (an API key or a
/// service token, `cfr_…`). Cheap to clone: clones share the connection pool.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: SecretString,
    max_response_bytes: usize,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.base.as_str())
            .field("token", &"[redacted]")
            .finish_non_exhaustive()
    }
}

/// The answer to a conditional read (`If-None-Match`).
#[derive(Debug)]
pub enum Fetched<T> {
    /// The current value, and the `ETag` to send next time.
    Modified { etag: Option<String>, value: T },
    /// `304 Not Modified`: what the caller has is current.
    NotModified { etag: Option<String> },
}

impl<T> Fetched<T> {
    /// The `ETag` the server sent.
    pub fn etag(&self) -> Option<&str> {
        match self {
            Self::Modified { etag, .. } | Self::NotModified { etag } => etag.as_deref(),
        }
    }

    /// The value, unless it was not modified.
    pub fn into_value(self) -> Option<T> {
        match self {
            Self::Modified { value, .. } => Some(value),
            Self::NotModified { .. } => None,
        }
    }
}

impl Client {
    /// A client of the coffer-server at `base_url` (e.g. `https://coffer.example.com`; a path
    /// prefix is kept), with a 10 s timeout per request.
    pub fn new(base_url: &str, token: SecretString) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .user_agent(USER_AGENT)
            .build()
            .map_err(Error::Transport)?;
        Self::with_http(http, base_url, token)
    }

    /// Like [`Client::new`], over a `reqwest::Client` configured by the caller (timeouts,
    /// proxies, extra root certificates…).
    pub fn with_http(
        http: reqwest::Client,
        base_url: &str,
        token: SecretString,
    ) -> Result<Self, Error> {
        // The URL appears in transport errors, so it must not hold credentials; and the
        // messages here do not repeat it.
        let base = Url::parse(base_url).map_err(|e| Error::InvalidUrl(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(Error::InvalidUrl("the scheme must be http or https".into()));
        }
        if base.cannot_be_a_base() || base.host().is_none() {
            return Err(Error::InvalidUrl("the URL has no host".into()));
        }
        if !base.username().is_empty() || base.password().is_some() {
            return Err(Error::InvalidUrl(
                "the URL must not carry credentials: the token authenticates".into(),
            ));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(Error::InvalidUrl(
                "the URL must not have a query or a fragment".into(),
            ));
        }
        Ok(Self {
            http,
            base,
            token,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        })
    }

    /// The same client, reading answer bodies of at most `limit` bytes (default
    /// [`DEFAULT_MAX_RESPONSE_BYTES`]); a longer answer is cut off and is an [`Error::Decode`].
    #[must_use]
    pub fn with_max_response_bytes(mut self, limit: usize) -> Self {
        self.max_response_bytes = limit;
        self
    }

    /// The server's base URL, normalised (`http://127.0.0.1:8080/`).
    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    /// The same client (sharing its connection pool) authenticated with `token` instead: after
    /// a login session's tokens were refreshed, for instance.
    #[must_use]
    pub fn with_token(&self, token: SecretString) -> Self {
        Self {
            token,
            ..self.clone()
        }
    }

    /// A project and its environments.
    pub async fn get_project(&self, org: &str, project: &str) -> Result<Project, Error> {
        let url = self.url(&[org, "projects", project])?;
        self.json(self.request(Method::GET, url)).await
    }

    /// Creates a project (with the default environments unless `req.environments` names them).
    pub async fn create_project(
        &self,
        org: &str,
        req: &CreateProjectRequest,
    ) -> Result<Project, Error> {
        let url = self.url(&[org, "projects"])?;
        self.json(self.request(Method::POST, url).json(req)).await
    }

    /// Deletes a project with all its environments and secrets.
    pub async fn delete_project(&self, org: &str, project: &str) -> Result<(), Error> {
        let url = self.url(&[org, "projects", project])?;
        self.empty(self.request(Method::DELETE, url)).await
    }

    /// An environment and its role policies.
    pub async fn get_environment(
        &self,
        org: &str,
        project: &str,
        env: &str,
    ) -> Result<EnvironmentDetail, Error> {
        let url = self.url(&[org, "projects", project, "environments", env])?;
        self.json(self.request(Method::GET, url)).await
    }

    /// Adds an environment at the end of the project's order.
    pub async fn create_environment(
        &self,
        org: &str,
        project: &str,
        req: &CreateEnvironmentRequest,
    ) -> Result<Environment, Error> {
        let url = self.url(&[org, "projects", project, "environments"])?;
        self.json(self.request(Method::POST, url).json(req)).await
    }

    /// Every secret of the environment, with references resolved. With `if_none_match` (the
    /// `ETag` of an earlier read), an unchanged environment answers [`Fetched::NotModified`]
    /// and the server decrypts nothing.
    pub async fn read_secrets(
        &self,
        org: &str,
        project: &str,
        env: &str,
        if_none_match: Option<&str>,
    ) -> Result<Fetched<SecretsPage>, Error> {
        let url = self.secrets_url(org, project, env, None)?;
        let mut request = self.request(Method::GET, url);
        // A tag that is not a valid header value cannot match one the server issued, so
        // leaving it out gets the same answer.
        if let Some(tag) = if_none_match.and_then(|t| HeaderValue::from_str(t).ok()) {
            request = request.header(IF_NONE_MATCH, tag);
        }
        let response = request.send().await.map_err(Error::Transport)?;
        let etag = response
            .headers()
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if response.status() == StatusCode::NOT_MODIFIED {
            return Ok(Fetched::NotModified { etag });
        }
        let value = self.decode(response).await?;
        Ok(Fetched::Modified { etag, value })
    }

    /// Sets a secret's value (a new version), creating the secret if needed.
    pub async fn put_secret(
        &self,
        org: &str,
        project: &str,
        env: &str,
        key: &str,
        req: &PutSecretRequest,
    ) -> Result<Secret, Error> {
        let url = self.secrets_url(org, project, env, Some(key))?;
        self.json(self.request(Method::PUT, url).json(req)).await
    }

    /// Creates or updates many secrets in one transaction; identical ones are left alone.
    pub async fn bulk_upsert(
        &self,
        org: &str,
        project: &str,
        env: &str,
        req: &BulkUpsertRequest,
    ) -> Result<WriteReport, Error> {
        let url = self.secrets_url(org, project, env, None)?;
        self.json(self.request(Method::PUT, url).json(req)).await
    }

    /// Environments `base` and `head` of `project` side by side, key by key; with `reveal`,
    /// the values too (the caller must be able to read both; audited as reads).
    pub async fn compare(
        &self,
        org: &str,
        project: &str,
        base: &str,
        head: &str,
        reveal: bool,
    ) -> Result<Comparison, Error> {
        let mut url = self.url(&[org, "projects", project, "compare"])?;
        url.query_pairs_mut()
            .append_pair("base", base)
            .append_pair("head", head)
            .append_pair("reveal", if reveal { "true" } else { "false" });
        self.json(self.request(Method::GET, url)).await
    }

    /// Copies secrets of environment `req.from` into `env`, in one transaction.
    pub async fn copy_secrets(
        &self,
        org: &str,
        project: &str,
        env: &str,
        req: &CopySecretsRequest,
    ) -> Result<CopyReport, Error> {
        let url = self.env_url(org, project, env, &["secrets", "copy"])?;
        self.json(self.request(Method::POST, url).json(req)).await
    }

    /// Deletes a secret (its history is kept on the server).
    pub async fn delete_secret(
        &self,
        org: &str,
        project: &str,
        env: &str,
        key: &str,
    ) -> Result<(), Error> {
        let url = self.secrets_url(org, project, env, Some(key))?;
        self.empty(self.request(Method::DELETE, url)).await
    }

    /// Opens the event stream of `project`: its changes as they are committed, for the
    /// environments the token may read secrets of (only those of `environments` when given,
    /// which must all exist and be readable). Without `last_event_id` the stream starts with a
    /// [`crate::StreamMessage::Resync`] (the environments' current revisions); with it, it goes
    /// on with every later event exactly once, or starts with a `Resync` when the server no
    /// longer retains the events after it.
    ///
    /// The answer's headers must come within 10 s; afterwards the stream is taken for dead when
    /// nothing arrives for [`crate::DEFAULT_IDLE_TIMEOUT`] (the server sends a heartbeat at
    /// least every 15 s). A refusal is an [`Error::Api`] (429 and 503 with `retry_after`).
    pub async fn project_events(
        &self,
        org: &str,
        project: &str,
        environments: Option<&[String]>,
        last_event_id: Option<i64>,
    ) -> Result<EventStream, Error> {
        let mut url = self.url(&[org, "projects", project, "events"])?;
        if let Some(environments) = environments {
            if environments.is_empty() {
                return Err(Error::InvalidUrl(
                    "`environments` names no environment".into(),
                ));
            }
            url.query_pairs_mut()
                .append_pair("environments", &environments.join(","));
        }
        let mut request = self
            .http
            .get(url)
            .timeout(STREAM_TIMEOUT)
            .bearer_auth(self.token.expose_secret())
            .header(ACCEPT, "text/event-stream")
            .header(CACHE_CONTROL, "no-cache");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = match tokio::time::timeout(TIMEOUT, request.send()).await {
            Ok(sent) => sent.map_err(Error::Transport)?,
            Err(_) => return Err(Error::StreamIdle(TIMEOUT)),
        };
        if !response.status().is_success() {
            return Err(api_error(response, self.max_response_bytes).await);
        }
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !content_type.starts_with("text/event-stream") {
            return Err(Error::Decode(format!(
                "{}: {} with content type {content_type:?} instead of an event stream",
                response.url().path(),
                response.status()
            )));
        }
        Ok(EventStream::new(response))
    }

    /// Configures a dynamic secret in an environment (the server checks its connection first).
    pub async fn create_dynamic_secret(
        &self,
        org: &str,
        project: &str,
        env: &str,
        req: &CreateDynamicSecretRequest,
    ) -> Result<DynamicSecret, Error> {
        let url = self.env_url(org, project, env, &["dynamic-secrets"])?;
        self.json(self.request(Method::POST, url).json(req)).await
    }

    /// Issues a lease of the dynamic secret `name`: new credentials. With `idempotency_key`,
    /// a retry (or a repeat) gets the same lease instead of a second one: its credentials
    /// again when it comes from the same caller soon enough, otherwise a 409
    /// `idempotency_key_used`.
    pub async fn issue_lease(
        &self,
        org: &str,
        project: &str,
        env: &str,
        name: &str,
        req: &IssueLeaseRequest,
        idempotency_key: Option<&str>,
    ) -> Result<IssuedLease, Error> {
        let url = self.leases_url(org, project, env, name, None)?;
        let mut request = self.request(Method::POST, url).json(req);
        if let Some(key) = idempotency_key {
            let value = HeaderValue::from_str(key).map_err(|_| {
                Error::InvalidUrl("the idempotency key is not a header value".into())
            })?;
            request = request.header("idempotency-key", value);
        }
        self.json(request).await
    }

    /// A lease's metadata and state.
    pub async fn get_lease(
        &self,
        org: &str,
        project: &str,
        env: &str,
        name: &str,
        lease: &str,
    ) -> Result<Lease, Error> {
        let url = self.leases_url(org, project, env, name, Some(lease))?;
        self.json(self.request(Method::GET, url)).await
    }

    /// The first page of the dynamic secret's leases, newest first, in every state.
    pub async fn list_leases(
        &self,
        org: &str,
        project: &str,
        env: &str,
        name: &str,
    ) -> Result<Page<Lease>, Error> {
        let url = self.leases_url(org, project, env, name, None)?;
        self.json(self.request(Method::GET, url)).await
    }

    /// Extends a lease (never past its `max_expires_at`: a 422 then).
    pub async fn renew_lease(
        &self,
        org: &str,
        project: &str,
        env: &str,
        name: &str,
        lease: &str,
        req: &RenewLeaseRequest,
    ) -> Result<Lease, Error> {
        let mut url = self.leases_url(org, project, env, name, Some(lease))?;
        url.path_segments_mut()
            .map_err(|()| Error::InvalidUrl("the URL has no host".into()))?
            .push("renew");
        self.json(self.request(Method::POST, url).json(req)).await
    }

    /// Revokes a lease now. Its state afterwards: `revoked`, or `revoking` when the database
    /// refused for now (coffer-server retries until the role is gone).
    pub async fn revoke_lease(
        &self,
        org: &str,
        project: &str,
        env: &str,
        name: &str,
        lease: &str,
    ) -> Result<Lease, Error> {
        let url = self.leases_url(org, project, env, name, Some(lease))?;
        self.json(self.request(Method::DELETE, url)).await
    }

    fn leases_url(
        &self,
        org: &str,
        project: &str,
        env: &str,
        name: &str,
        lease: Option<&str>,
    ) -> Result<Url, Error> {
        let mut segments = vec![
            org,
            "projects",
            project,
            "environments",
            env,
            "dynamic-secrets",
            name,
            "leases",
        ];
        segments.extend(lease);
        self.url(&segments)
    }

    /// Creates a service token; the answer holds the token itself, shown this once.
    pub async fn create_service_token(
        &self,
        org: &str,
        req: &CreateServiceTokenRequest,
    ) -> Result<IssuedServiceToken, Error> {
        let url = self.url(&[org, "service-tokens"])?;
        self.json(self.request(Method::POST, url).json(req)).await
    }

    /// `{base}/api/v1/orgs/` followed by `segments`, each percent-encoded.
    fn url(&self, segments: &[&str]) -> Result<Url, Error> {
        self.api_url("orgs", segments)
    }

    /// `{base}/api/v1/{resource}/` followed by `segments`, each percent-encoded.
    fn api_url(&self, resource: &str, segments: &[&str]) -> Result<Url, Error> {
        let mut url = self.base.clone();
        {
            let mut path = url
                .path_segments_mut()
                .map_err(|()| Error::InvalidUrl("the URL has no host".into()))?;
            path.pop_if_empty().extend(["api", "v1", resource]);
            for segment in segments {
                // `url` would silently drop `.` and `..`, which would address another resource.
                if segment.is_empty() || *segment == "." || *segment == ".." {
                    return Err(Error::InvalidUrl(format!(
                        "{segment:?} cannot be a slug or a key"
                    )));
                }
                path.push(segment);
            }
        }
        Ok(url)
    }

    /// `…/orgs/{org}/projects/{project}/environments/{env}` followed by `rest`.
    pub(crate) fn env_url(
        &self,
        org: &str,
        project: &str,
        env: &str,
        rest: &[&str],
    ) -> Result<Url, Error> {
        let mut segments = vec![org, "projects", project, "environments", env];
        segments.extend_from_slice(rest);
        self.url(&segments)
    }

    fn secrets_url(
        &self,
        org: &str,
        project: &str,
        env: &str,
        key: Option<&str>,
    ) -> Result<Url, Error> {
        match key {
            Some(key) => self.env_url(org, project, env, &["secrets", key]),
            None => self.env_url(org, project, env, &["secrets"]),
        }
    }

    fn request(&self, method: Method, url: Url) -> RequestBuilder {
        self.http
            .request(method, url)
            .bearer_auth(self.token.expose_secret())
            .header(ACCEPT, "application/json")
    }

    async fn json<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T, Error> {
        let response = request.send().await.map_err(Error::Transport)?;
        self.decode(response).await
    }

    async fn empty(&self, request: RequestBuilder) -> Result<(), Error> {
        let response = request.send().await.map_err(Error::Transport)?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(api_error(response, self.max_response_bytes).await)
        }
    }

    async fn decode<T: DeserializeOwned>(&self, response: Response) -> Result<T, Error> {
        let status = response.status();
        if !status.is_success() || status == StatusCode::NO_CONTENT {
            return Err(if status.is_success() {
                Error::Decode(format!("{status} without the documented body"))
            } else {
                api_error(response, self.max_response_bytes).await
            });
        }
        let path = response.url().path().to_owned();
        let body = read_body(response, self.max_response_bytes).await?;
        serde_json::from_slice(&body)
            .map_err(|e| Error::Decode(format!("{path}: {}", describe_json_error(&e))))
    }
}

/// The body of `response`, refused as soon as it is known to exceed `limit` bytes: from its
/// `Content-Length`, else while it arrives, so no more than `limit` bytes are ever held. The
/// error never quotes the body.
async fn read_body(mut response: Response, limit: usize) -> Result<Vec<u8>, Error> {
    let path = response.url().path().to_owned();
    let too_large = || {
        Error::Decode(format!(
            "{path}: the answer is larger than the limit of {limit} bytes"
        ))
    };
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(Error::Transport)? {
        if chunk.len() > limit.saturating_sub(body.len()) {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The error of a non-success answer: the error document if there is one, else the status.
async fn api_error(response: Response, limit: usize) -> Error {
    let status = response.status();
    let headers = response.headers();
    let retry_after = headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
    let header_request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let document = read_body(response, limit)
        .await
        .ok()
        .and_then(|body| serde_json::from_slice::<ErrorResponse>(&body).ok());
    match document {
        Some(ErrorResponse { error }) => Error::Api {
            status: status.as_u16(),
            code: error.code,
            message: error.message,
            request_id: Some(error.request_id)
                .filter(|id| !id.is_empty())
                .or(header_request_id),
            retry_after,
        },
        None => Error::bare(status, header_request_id, retry_after),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn client(base: &str) -> Result<Client, Error> {
        Client::new(base, SecretString::from("cfr_not-a-real-token"))
    }

    #[test]
    fn paths_are_built_under_the_base_and_percent_encoded() {
        let c = client("https://coffer.example.com/prefix/").unwrap();
        let url = c
            .secrets_url("acme", "web", "dev env", Some("A/B?#"))
            .unwrap();
        assert_eq!(
            url.as_str(),
            "https://coffer.example.com/prefix/api/v1/orgs/acme/projects/web/environments/dev%20env/secrets/A%2FB%3F%23"
        );
        let c = client("http://127.0.0.1:8080").unwrap();
        assert_eq!(c.base_url(), "http://127.0.0.1:8080/");
        assert_eq!(
            c.url(&["acme", "service-tokens"]).unwrap().as_str(),
            "http://127.0.0.1:8080/api/v1/orgs/acme/service-tokens"
        );
    }

    #[test]
    fn segments_that_would_address_another_resource_are_refused() {
        let c = client("http://127.0.0.1:8080").unwrap();
        for bad in ["", ".", ".."] {
            assert!(matches!(
                c.url(&["acme", "projects", bad]),
                Err(Error::InvalidUrl(_))
            ));
        }
    }

    #[test]
    fn unusable_base_urls_are_refused_without_repeating_them() {
        for bad in [
            "not a url",
            "ftp://coffer.example.com",
            "mailto:ops@example.com",
            "https://user:hunter2@coffer.example.com",
            "https://coffer.example.com/?x=1",
        ] {
            let err = client(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidUrl(_)), "{bad}: {err:?}");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
    }

    fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> Response {
        let mut builder = axum::http::Response::builder().status(status);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        Response::from(builder.body(body.to_owned()).unwrap())
    }

    #[tokio::test]
    async fn an_error_document_and_retry_after_are_read_and_a_bare_status_still_gets_a_code() {
        let err = api_error(
            answer(
                429,
                &[("retry-after", "7"), ("x-request-id", "from-header")],
                r#"{"error":{"code":"rate_limited","message":"slow down","request_id":"req-1"}}"#,
            ),
            DEFAULT_MAX_RESPONSE_BYTES,
        )
        .await;
        let Error::Api {
            status,
            code,
            message,
            request_id,
            retry_after,
        } = err
        else {
            panic!("{err:?}");
        };
        assert_eq!(
            (status, code.as_str(), message.as_str()),
            (429, "rate_limited", "slow down")
        );
        assert_eq!(request_id.as_deref(), Some("req-1"));
        assert_eq!(retry_after, Some(Duration::from_secs(7)));

        let err = api_error(
            answer(
                502,
                &[("x-request-id", "req-2")],
                "<html>bad gateway</html>",
            ),
            DEFAULT_MAX_RESPONSE_BYTES,
        )
        .await;
        assert_eq!(
            (err.status(), err.code()),
            (Some(502), Some("internal_error"))
        );
        assert!(!err.to_string().contains("html"), "{err}");
        let Error::Api {
            request_id,
            retry_after,
            ..
        } = err
        else {
            panic!("{err:?}");
        };
        assert_eq!((request_id.as_deref(), retry_after), (Some("req-2"), None));
    }

    #[tokio::test]
    async fn retry_after_as_an_http_date_is_the_time_until_then() {
        let at = std::time::SystemTime::now() + Duration::from_secs(120);
        let date = httpdate::fmt_http_date(at);
        let err = api_error(
            answer(503, &[("retry-after", &date)], ""),
            DEFAULT_MAX_RESPONSE_BYTES,
        )
        .await;
        let Error::Api {
            retry_after: Some(delay),
            ..
        } = err
        else {
            panic!("{err:?}");
        };
        // The date has a one-second resolution.
        assert!(
            (Duration::from_secs(118)..=Duration::from_secs(120)).contains(&delay),
            "{delay:?}"
        );
        let err = api_error(
            answer(429, &[("retry-after", "soon")], ""),
            DEFAULT_MAX_RESPONSE_BYTES,
        )
        .await;
        assert!(
            matches!(
                err,
                Error::Api {
                    retry_after: None,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_body_that_is_not_the_documented_one_is_a_decode_error_without_its_values() {
        let err = client("http://127.0.0.1:8080")
            .unwrap()
            .decode::<SecretsPage>(answer(200, &[], r#"{"revision":"hunter2"}"#))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Decode(_)), "{err:?}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn debug_output_hides_the_token() {
        let c = client("http://127.0.0.1:8080").unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("not-a-real-token"), "{debug}");
        assert!(debug.contains("127.0.0.1:8080"), "{debug}");
    }

    /// A server on a local port answering every request with `head` and then `chunks` pieces
    /// of `chunk` bytes each (chunked transfer encoding when `head` says so).
    async fn serve(head: &'static str, chunks: usize, chunk: usize) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = [0_u8; 4096];
                    let _ = socket.read(&mut request).await;
                    socket.write_all(head.as_bytes()).await?;
                    let piece = "x".repeat(chunk);
                    for _ in 0..chunks {
                        if head.contains("chunked") {
                            let framed = format!("{chunk:x}\r\n{piece}\r\n");
                            socket.write_all(framed.as_bytes()).await?;
                        } else {
                            socket.write_all(piece.as_bytes()).await?;
                        }
                    }
                    if head.contains("chunked") {
                        socket.write_all(b"0\r\n\r\n").await?;
                    }
                    socket.shutdown().await
                });
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn an_answer_over_the_limit_is_cut_off_with_an_error_that_does_not_quote_it() {
        // announced by its length
        let declared = serve(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 4096\r\n\r\n",
            4,
            1024,
        )
        .await;
        // streamed without a length, far longer than the limit
        let streamed = serve(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
            256,
            1024,
        )
        .await;
        // an error answer is bounded the same way
        let failing = serve(
            "HTTP/1.1 500 Internal Server Error\r\ntransfer-encoding: chunked\r\n\r\n",
            256,
            1024,
        )
        .await;
        for base in [&declared, &streamed] {
            let err = client(base)
                .unwrap()
                .with_max_response_bytes(1000)
                .get_project("acme", "web")
                .await
                .unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, Error::Decode(_)), "{err:?}");
            assert!(text.contains("limit of 1000 bytes"), "{text}");
            assert!(!text.contains("xxx"), "{text}");
        }
        let err = client(&failing)
            .unwrap()
            .with_max_response_bytes(1000)
            .get_project("acme", "web")
            .await
            .unwrap_err();
        assert_eq!(
            (err.status(), err.code()),
            (Some(500), Some("internal_error"))
        );
        // within the limit the same answer is read (and is not a project)
        let err = client(&declared)
            .unwrap()
            .with_max_response_bytes(4096)
            .get_project("acme", "web")
            .await
            .unwrap_err();
        assert!(!err.to_string().contains("limit"), "{err}");
    }
}
