//! Which coffer-server a `Project` uses and with which credentials: read from the `Project`
//! and, when it names one, from a Secret of its namespace. The result, a [`Connection`], is what
//! [`crate::source::Sources`] reads with; nothing here caches data.

use std::time::Duration;

use coffer_client::Client;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use secrecy::{ExposeSecret as _, SecretString};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::conditions::Reason;
use crate::config::Config;
use crate::crd::{CredentialsRef, Project};
use crate::source::SourceKey;

/// How long a request to coffer-server may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a `Project`'s data comes from, and with which credentials.
#[derive(Debug, Clone)]
pub struct Connection {
    pub server: String,
    pub client: Client,
    /// SHA-256 of the token: tells credentials apart without keeping a copy of them around.
    pub credentials: [u8; 32],
}

impl Connection {
    /// The source of `environment` of `project` of `org`, read with this connection.
    pub fn source(&self, org: &str, project: &str, environment: &str) -> SourceKey {
        SourceKey::new(&self.server, self.credentials, org, project, environment)
    }
}

/// Why a `Project`'s connection cannot be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionError {
    pub reason: Reason,
    pub message: String,
}

/// Makes [`Connection`]s; every client it makes shares one HTTP connection pool.
#[derive(Debug, Clone)]
pub struct Connector {
    http: reqwest::Client,
}

impl Connector {
    pub fn new() -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("coffer-operator/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { http })
    }

    /// The server and credentials of `project`: its own, else the operator's defaults.
    pub async fn connection(
        &self,
        kube: &kube::Client,
        config: &Config,
        project: &Project,
    ) -> Result<Connection, ConnectionError> {
        let fail = |reason, message: String| ConnectionError { reason, message };
        let (server, source) = plan(project, config)?;
        let token = match source {
            TokenSource::Default(token) => token.clone(),
            TokenSource::Ref(reference) => {
                let namespace = project.metadata.namespace.as_deref().unwrap_or("default");
                let secrets: Api<Secret> = Api::namespaced(kube.clone(), namespace);
                let not_found = |what: &str| {
                    fail(
                        Reason::CredentialsNotFound,
                        format!(
                            "spec.credentialsRef: {what} (Secret {:?}, key {:?})",
                            reference.name, reference.key
                        ),
                    )
                };
                let secret = secrets.get_opt(&reference.name).await.map_err(|e| {
                    fail(
                        Reason::KubernetesError,
                        format!("reading the credentials Secret: {e}"),
                    )
                })?;
                let secret = secret.ok_or_else(|| not_found("the Secret does not exist"))?;
                let value = secret
                    .data
                    .and_then(|mut data| data.remove(&reference.key))
                    .map(|v| Zeroizing::new(v.0))
                    .ok_or_else(|| not_found("the Secret has no such key"))?;
                let text = std::str::from_utf8(&value)
                    .map_err(|_| not_found("the value is not UTF-8 text"))?
                    .trim();
                if text.is_empty() {
                    return Err(not_found("the value is empty"));
                }
                SecretString::from(text.to_owned())
            }
        };
        let credentials: [u8; 32] = Sha256::digest(token.expose_secret().as_bytes()).into();
        let client = Client::with_http(self.http.clone(), &server, token).map_err(|e| {
            fail(
                Reason::InvalidSpec,
                format!("the coffer-server URL {server:?} is invalid: {e}"),
            )
        })?;
        Ok(Connection {
            server,
            client,
            credentials,
        })
    }
}

/// Where a `Project`'s token comes from.
#[derive(Debug)]
enum TokenSource<'a> {
    /// A key of a Secret in the `Project`'s namespace.
    Ref(&'a CredentialsRef),
    /// The operator's own token.
    Default(&'a SecretString),
}

/// The server of `project` and where its token comes from. The operator's own token is sent
/// only to the operator's own server: a `Project` that names another server must bring its
/// own credentials, or anyone who may create a `Project` could send the token anywhere.
fn plan<'a>(
    project: &'a Project,
    config: &'a Config,
) -> Result<(String, TokenSource<'a>), ConnectionError> {
    let fail = |reason, message: &str| ConnectionError {
        reason,
        message: message.to_owned(),
    };
    let own = project.spec.server_url.as_deref().filter(|s| !s.is_empty());
    let default = config.server_url.as_deref().filter(|s| !s.is_empty());
    let server = own.or(default).ok_or_else(|| {
        fail(
            Reason::NoServer,
            "no coffer-server URL: set spec.serverUrl or the operator's COFFER_SERVER_URL",
        )
    })?;
    let source = match &project.spec.credentials_ref {
        Some(reference) => TokenSource::Ref(reference),
        None => {
            let token = config.token.as_ref().ok_or_else(|| {
                fail(
                    Reason::NoCredentials,
                    "no credentials: set spec.credentialsRef or the operator's COFFER_TOKEN",
                )
            })?;
            let same = |a: &str, b: &str| a.trim_end_matches('/') == b.trim_end_matches('/');
            if own.is_some_and(|own| !default.is_some_and(|default| same(own, default))) {
                return Err(fail(
                    Reason::NoCredentials,
                    "spec.serverUrl is not the operator's server, and the operator's own token \
                     is only ever sent to its own server: set spec.credentialsRef",
                ));
            }
            TokenSource::Default(token)
        }
    };
    Ok((server.to_owned(), source))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use secrecy::ExposeSecret as _;

    use super::*;
    use crate::crd::ProjectSpec;

    fn config(server: Option<&str>, token: Option<&str>) -> Config {
        Config {
            server_url: server.map(str::to_owned),
            token: token.map(|t| SecretString::from(t.to_owned())),
            namespaces: Vec::new(),
            metrics_addr: "127.0.0.1:0".parse().unwrap(),
            leader_election: false,
            operator_namespace: None,
            lease_name: "l".into(),
            hash_key_secret: "h".into(),
            identity: None,
        }
    }

    fn project(server: Option<&str>, credentials: bool) -> Project {
        let spec: ProjectSpec = serde_json::from_value(serde_json::json!({
            "organization": "acme",
            "serverUrl": server,
            "credentialsRef": credentials.then(|| serde_json::json!({ "name": "t", "key": "token" })),
        }))
        .unwrap();
        Project::new("web", spec)
    }

    fn planned(project: &Project, config: &Config) -> Result<(String, String), Reason> {
        plan(project, config)
            .map(|(server, source)| {
                let token = match source {
                    TokenSource::Ref(r) => format!("ref:{}", r.name),
                    TokenSource::Default(t) => t.expose_secret().to_owned(),
                };
                (server, token)
            })
            .map_err(|e| e.reason)
    }

    #[test]
    fn the_defaults_apply_when_the_project_names_neither_server_nor_credentials() {
        let c = config(Some("https://coffer.example.com"), Some("cfr_op"));
        assert_eq!(
            planned(&project(None, false), &c),
            Ok(("https://coffer.example.com".into(), "cfr_op".into()))
        );
        // the same server, however written
        assert!(planned(&project(Some("https://coffer.example.com/"), false), &c).is_ok());
    }

    #[test]
    fn the_operator_token_never_goes_to_another_server() {
        let c = config(Some("https://coffer.example.com"), Some("cfr_op"));
        assert_eq!(
            planned(&project(Some("https://attacker.example"), false), &c),
            Err(Reason::NoCredentials)
        );
        let no_default_server = config(None, Some("cfr_op"));
        assert_eq!(
            planned(
                &project(Some("https://attacker.example"), false),
                &no_default_server
            ),
            Err(Reason::NoCredentials)
        );
        // with its own credentials a Project may use any server
        assert_eq!(
            planned(&project(Some("https://other.example"), true), &c),
            Ok(("https://other.example".into(), "ref:t".into()))
        );
    }

    #[test]
    fn missing_server_or_credentials_are_reported() {
        assert_eq!(
            planned(&project(None, false), &config(None, Some("cfr_op"))),
            Err(Reason::NoServer)
        );
        assert_eq!(
            planned(
                &project(None, false),
                &config(Some("https://c.example"), None)
            ),
            Err(Reason::NoCredentials)
        );
    }
}
