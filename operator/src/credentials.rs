//! Which coffer-server a `Project` uses and with which credentials: read from the `Project`
//! and, when it names one, from a Secret of its namespace. The result, a [`Connection`], is what
//! [`crate::source::Sources`] reads with; nothing here caches data.
//!
//! Whoever may create a `Project` must not be able to use the operator to read what they may
//! not: a credentials Secret is used only when it carries [`CREDENTIALS_LABEL`], and a token is
//! sent only to a server the operator allows (its own, or `COFFER_ALLOWED_SERVERS`), never over
//! plain http to another machine unless that server is listed by name.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use coffer_client::Client;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt as _};
use reqwest::Url;
use reqwest::tls::Certificate;
use secrecy::{ExposeSecret as _, SecretString};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::conditions::Reason;
use crate::config::Config;
use crate::crd::{CredentialsRef, Project};
use crate::source::SourceKey;
use crate::stores;

/// Whether `labels` opt a Secret in as credentials ([`CREDENTIALS_LABEL`]`: "true"`).
fn opted_in(labels: &std::collections::BTreeMap<String, String>) -> bool {
    labels.get(CREDENTIALS_LABEL).is_some_and(|v| v == "true")
}

/// How long a request to coffer-server may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How many HTTP clients with a `Project`'s own CA bundle are kept; beyond that the cache
/// starts again, so changing bundles cannot grow it without bound.
const MAX_CA_CLIENTS: usize = 64;

/// The label (with the value `"true"`) by which a Secret allows the operator to use it as a
/// `Project`'s credentials.
pub const CREDENTIALS_LABEL: &str = "coffer.dev/credentials";

/// Why the operator's HTTP client cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error("cannot read the CA bundle {path:?}: {source}")]
    ReadCaBundle {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the CA bundle {path:?} holds no PEM certificate")]
    EmptyCaBundle { path: PathBuf },
    #[error("the CA bundle {path:?} is not valid PEM: {source}")]
    InvalidCaBundle {
        path: PathBuf,
        source: reqwest::Error,
    },
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// Where a `Project`'s data comes from, and with which credentials.
#[derive(Debug, Clone)]
pub struct Connection {
    pub server: String,
    pub client: Client,
    /// SHA-256 of the token (and of the `Project`'s CA bundle, if it has one): tells
    /// credentials and the trust they are sent under apart without keeping a copy of them.
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

/// Makes [`Connection`]s; every client it makes shares one HTTP connection pool, except those
/// of `Project`s with their own CA bundle, which share one per bundle.
#[derive(Debug, Clone)]
pub struct Connector {
    http: reqwest::Client,
    /// The operator-wide CA certificates (`COFFER_CA_BUNDLE`).
    roots: Vec<Certificate>,
    /// Clients by the SHA-256 of a `Project`'s CA bundle.
    with_bundle: Arc<Mutex<HashMap<[u8; 32], reqwest::Client>>>,
}

impl Connector {
    /// The client for `config`: trusting the certificates of `COFFER_CA_BUNDLE` besides the
    /// system's.
    pub fn new(config: &Config) -> Result<Self, ConnectorError> {
        let roots = match &config.ca_bundle {
            Some(path) => ca_bundle(path)?,
            None => Vec::new(),
        };
        Ok(Self {
            http: http_client(roots.iter().cloned())?,
            roots,
            with_bundle: Arc::default(),
        })
    }

    /// The HTTP client trusting `pem` besides the operator's roots, and the bundle's SHA-256.
    fn with_ca_bundle(&self, pem: &[u8]) -> Result<(reqwest::Client, [u8; 32]), String> {
        let digest: [u8; 32] = Sha256::digest(pem).into();
        let mut cache = self
            .with_bundle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(http) = cache.get(&digest) {
            return Ok((http.clone(), digest));
        }
        let certificates =
            Certificate::from_pem_bundle(pem).map_err(|e| format!("it is not valid PEM: {e}"))?;
        if certificates.is_empty() {
            return Err("it holds no PEM certificate".to_owned());
        }
        let http = http_client(self.roots.iter().cloned().chain(certificates))
            .map_err(|e| format!("cannot build an HTTP client with it: {e}"))?;
        if cache.len() >= MAX_CA_CLIENTS {
            cache.clear();
        }
        cache.insert(digest, http.clone());
        Ok((http, digest))
    }

    /// The server and credentials of `project`: its own, else the operator's defaults.
    pub async fn connection(
        &self,
        kube: &kube::Client,
        config: &Config,
        credentials: &Store<Secret>,
        project: &Project,
    ) -> Result<Connection, ConnectionError> {
        let fail = |reason, message: String| ConnectionError { reason, message };
        let (server, source) = plan(project, config)?;
        let namespace = project.metadata.namespace.as_deref().unwrap_or("default");
        let (http, trust) = match &project.spec.ca_bundle_ref {
            None => (self.http.clone(), None),
            Some(reference) => {
                let missing = |what: &str| {
                    fail(
                        Reason::CaBundleNotFound,
                        format!(
                            "spec.caBundleRef: {what} (ConfigMap {:?}, key {:?})",
                            reference.name, reference.key
                        ),
                    )
                };
                let maps: Api<ConfigMap> = Api::namespaced(kube.clone(), namespace);
                let map = maps.get_opt(&reference.name).await.map_err(|e| {
                    fail(
                        Reason::KubernetesError,
                        format!("reading the CA bundle ConfigMap: {e}"),
                    )
                })?;
                let map = map.ok_or_else(|| missing("the ConfigMap does not exist"))?;
                let pem = map
                    .data
                    .and_then(|mut data| data.remove(&reference.key))
                    .map(String::into_bytes)
                    .or_else(|| {
                        map.binary_data
                            .and_then(|mut data| data.remove(&reference.key))
                            .map(|v| v.0)
                    })
                    .ok_or_else(|| missing("the ConfigMap has no such key"))?;
                let (http, digest) = self.with_ca_bundle(&pem).map_err(|e| missing(&e))?;
                (http, Some(digest))
            }
        };
        let token = match source {
            TokenSource::Default(token) => token.clone(),
            TokenSource::Ref(reference) => {
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
                // Only labelled Secrets are in the store; a miss is looked into (metadata
                // only) to say why.
                let key = ObjectRef::<Secret>::new(&reference.name).within(namespace);
                stores::ready(credentials, "credentials Secrets")
                    .await
                    .map_err(|e| fail(Reason::KubernetesError, e.to_string()))?;
                let Some(secret) = credentials.get(&key) else {
                    let metadata =
                        secrets
                            .get_metadata_opt(&reference.name)
                            .await
                            .map_err(|e| {
                                fail(
                                    Reason::KubernetesError,
                                    format!("reading the credentials Secret: {e}"),
                                )
                            })?;
                    return Err(match metadata {
                        None => not_found("the Secret does not exist"),
                        Some(meta) if !opted_in(meta.labels()) => fail(
                            Reason::CredentialsNotAllowed,
                            format!(
                                "spec.credentialsRef: the Secret {:?} is not labelled \
                                 {CREDENTIALS_LABEL}: \"true\"; the operator sends no other \
                                 Secret to a server",
                                reference.name
                            ),
                        ),
                        // Labelled just now: the watch brings it in a moment, and wakes the
                        // resources that use it.
                        Some(_) => not_found("the Secret is not known to the operator yet"),
                    });
                };
                let value = secret
                    .data
                    .as_ref()
                    .and_then(|data| data.get(&reference.key))
                    .map(|v| Zeroizing::new(v.0.clone()))
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
        let mut digest = Sha256::new();
        digest.update(token.expose_secret().as_bytes());
        if let Some(trust) = trust {
            digest.update(b"\0ca-bundle\0");
            digest.update(trust);
        }
        let credentials: [u8; 32] = digest.finalize().into();
        let client = Client::with_http(http, &server, token).map_err(|e| {
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

/// The client of coffer-server: trusting `roots` besides the system's certificates.
fn http_client(
    roots: impl IntoIterator<Item = Certificate>,
) -> Result<reqwest::Client, reqwest::Error> {
    let mut builder = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("coffer-operator/", env!("CARGO_PKG_VERSION")));
    for certificate in roots {
        builder = builder.add_root_certificate(certificate);
    }
    builder.build()
}

/// The certificates of the PEM file at `path`.
fn ca_bundle(path: &std::path::Path) -> Result<Vec<Certificate>, ConnectorError> {
    let pem = std::fs::read(path).map_err(|source| ConnectorError::ReadCaBundle {
        path: path.to_owned(),
        source,
    })?;
    let certificates =
        Certificate::from_pem_bundle(&pem).map_err(|source| ConnectorError::InvalidCaBundle {
            path: path.to_owned(),
            source,
        })?;
    if certificates.is_empty() {
        return Err(ConnectorError::EmptyCaBundle {
            path: path.to_owned(),
        });
    }
    Ok(certificates)
}

/// Whether the operator may send credentials to `server`: the operator's own server and the
/// origins of `COFFER_ALLOWED_SERVERS` are allowed; with `*` there, any other server over
/// https, or over plain http on this machine (loopback), where nobody can listen in.
fn server_allowed(server: &str, config: &Config) -> Result<(), ConnectionError> {
    let refuse = |message: String| ConnectionError {
        reason: Reason::ServerNotAllowed,
        message,
    };
    let url = Url::parse(server).map_err(|e| ConnectionError {
        reason: Reason::InvalidSpec,
        message: format!("the coffer-server URL {server:?} is invalid: {e}"),
    })?;
    let origin = url.origin();
    if !matches!(url.scheme(), "http" | "https") || !origin.is_tuple() {
        return Err(ConnectionError {
            reason: Reason::InvalidSpec,
            message: format!("the coffer-server URL {server:?} is not an http or https URL"),
        });
    }
    let origin = origin.ascii_serialization();
    let own = config
        .server_url
        .as_deref()
        .and_then(|own| Url::parse(own).ok())
        .map(|own| own.origin().ascii_serialization());
    if own.as_deref() == Some(origin.as_str()) || config.allowed_servers.contains(&origin) {
        return Ok(());
    }
    if !config.allowed_servers.iter().any(|entry| entry == "*") {
        return Err(refuse(format!(
            "the coffer-server {origin} is not one the operator may send credentials to: the \
             operator's own server and COFFER_ALLOWED_SERVERS name those"
        )));
    }
    if url.scheme() == "http" && !is_loopback(&url) {
        return Err(refuse(format!(
            "{origin} is plain http to another machine, where the token could be read on the \
             way: use https, or name the server in COFFER_ALLOWED_SERVERS"
        )));
    }
    Ok(())
}

fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
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
            if project.spec.ca_bundle_ref.is_some() {
                return Err(fail(
                    Reason::NoCredentials,
                    "spec.caBundleRef is set, and the operator's own token is only ever sent \
                     under the operator's own trust: set spec.credentialsRef",
                ));
            }
            TokenSource::Default(token)
        }
    };
    server_allowed(server, config)?;
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
            allowed_servers: Vec::new(),
            ca_bundle: None,
            namespaces: Vec::new(),
            metrics_addr: "127.0.0.1:0".parse().unwrap(),
            leader_election: false,
            operator_namespace: None,
            lease_name: "l".into(),
            hash_key_secret: "h".into(),
            lease_revoke_grace: std::time::Duration::from_secs(120),
            concurrency: 10,
            event_streams: true,
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
        // with its own credentials a Project may use an allowed server
        let mut c = c;
        c.allowed_servers = vec!["https://other.example".into()];
        assert_eq!(
            planned(&project(Some("https://other.example/"), true), &c),
            Ok(("https://other.example/".into(), "ref:t".into()))
        );
    }

    #[test]
    fn only_the_operators_server_and_the_allowed_ones_are_sent_credentials() {
        let mut c = config(Some("https://coffer.example.com"), Some("cfr_op"));
        let reason = |server: &str, c: &Config| planned(&project(Some(server), true), c).err();
        // by default, only the operator's own server, whatever the path or spelling
        assert_eq!(reason("https://COFFER.example.com:443/x", &c), None);
        for refused in [
            "https://attacker.example",
            "https://coffer.example.com:8443",
            "http://coffer.example.com",
            "http://127.0.0.1:8080",
        ] {
            assert_eq!(
                reason(refused, &c),
                Some(Reason::ServerNotAllowed),
                "{refused}"
            );
        }
        // a listed origin, even plain http, since it is named
        c.allowed_servers = vec!["http://coffer.coffer.svc:8080".into()];
        assert_eq!(reason("http://coffer.coffer.svc:8080/", &c), None);
        assert_eq!(
            reason("http://coffer.coffer.svc:8081", &c),
            Some(Reason::ServerNotAllowed)
        );
        // `*`: any https server, plain http only on this machine
        c.allowed_servers = vec!["*".into()];
        for allowed in [
            "https://anywhere.example",
            "http://127.0.0.1:9",
            "http://localhost:8080",
            "http://[::1]:8080",
        ] {
            assert_eq!(reason(allowed, &c), None, "{allowed}");
        }
        for refused in [
            "http://anywhere.example",
            "http://10.0.0.1:8080",
            "http://[::2]",
        ] {
            assert_eq!(
                reason(refused, &c),
                Some(Reason::ServerNotAllowed),
                "{refused}"
            );
        }
        assert_eq!(
            reason("ftp://anywhere.example", &c),
            Some(Reason::InvalidSpec)
        );
        // the operator's own server is checked too, through the same path
        assert_eq!(
            planned(&project(None, false), &c),
            Ok(("https://coffer.example.com".into(), "cfr_op".into()))
        );
    }

    #[test]
    fn a_ca_bundle_must_hold_certificates() {
        let dir = std::env::temp_dir().join(format!("coffer-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let mut c = config(None, None);
        c.ca_bundle = Some(empty);
        assert!(matches!(
            Connector::new(&c),
            Err(ConnectorError::EmptyCaBundle { .. })
        ));
        c.ca_bundle = Some(dir.join("missing.pem"));
        assert!(matches!(
            Connector::new(&c),
            Err(ConnectorError::ReadCaBundle { .. })
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_projects_ca_bundle_gets_one_client_per_bundle() {
        let connector = Connector::new(&config(None, None)).unwrap();
        assert!(connector.with_ca_bundle(b"not a certificate").is_err());
        let pem = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .unwrap()
            .cert
            .pem();
        let (_, first) = connector.with_ca_bundle(pem.as_bytes()).unwrap();
        let (_, again) = connector.with_ca_bundle(pem.as_bytes()).unwrap();
        assert_eq!(first, again);
        assert_eq!(connector.with_bundle.lock().unwrap().len(), 1);
    }

    #[test]
    fn the_operator_token_is_never_sent_under_a_projects_own_ca_bundle() {
        let c = config(Some("https://coffer.example.com"), Some("cfr_op"));
        let with_bundle = |credentials: bool| {
            let mut p = project(None, credentials);
            p.spec.ca_bundle_ref = Some(crate::crd::ConfigMapKeyRef {
                name: "ca".into(),
                key: "ca.crt".into(),
            });
            p
        };
        assert_eq!(planned(&with_bundle(false), &c), Err(Reason::NoCredentials));
        assert!(planned(&with_bundle(true), &c).is_ok());
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
