//! coffer-client against a real coffer-server (in-process, over a socket, SQLite in a temporary
//! directory): every method, conditional reads, service tokens, event streams, errors, and no
//! secret in `Debug`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use std::time::Duration;

use coffer_client::{
    BulkUpsertRequest, ChangeAction, Client, CreateEnvironmentRequest, CreateProjectRequest,
    CreateSecretRequest, CreateServiceTokenRequest, Error, Event, EventStream, EventType, Fetched,
    FileFormat, LoginRequest, ProjectRole, PutSecretRequest, RefreshRequest, Resync, ResyncReason,
    SecretsPage, StreamMessage, TokenAccess,
};
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";
const ORG: &str = "acme";

/// A coffer-server on a free loopback port, stopped when dropped.
struct Server {
    base: String,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = coffer_server::Config::defaults();
        config.data_dir = dir.path().to_path_buf();
        config.database_url = Some(format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("coffer.db").display()
        ));
        config.database_max_connections = 5;
        config.password_hash_concurrency = Some(2);
        let state = coffer_server::start(config)
            .await
            .expect("coffer-server starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = coffer_server::app(state).into_make_service_with_connect_info::<SocketAddr>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        Self {
            base: format!("http://{addr}"),
            task,
            _dir: dir,
        }
    }

    /// Registers a user, creates organization [`ORG`] and returns a read-write API key of theirs
    /// (with the same JSON as coffer-server's own tests).
    async fn api_key(&self) -> String {
        let http = reqwest::Client::new();
        let post = |path: &str, token: Option<&str>, body: Value| {
            let mut request = http.post(format!("{}{path}", self.base)).json(&body);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            request.send()
        };
        let r = post(
            "/api/v1/auth/register",
            None,
            json!({ "email": "ann@example.com", "password": PASSWORD, "name": "Ann" }),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 201);
        let access = r.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let r = post(
            "/api/v1/orgs",
            Some(&access),
            json!({ "name": "Acme", "slug": ORG }),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 201);
        let r = post(
            "/api/v1/api-keys",
            Some(&access),
            json!({ "name": "client-tests" }),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn client(&self) -> Client {
        let token = self.api_key().await;
        Client::new(&self.base, SecretString::from(token)).unwrap()
    }
}

fn project(slug: &str, environments: Option<&[&str]>) -> CreateProjectRequest {
    CreateProjectRequest {
        name: slug.to_uppercase(),
        slug: slug.into(),
        environments: environments.map(|e| e.iter().map(|s| s.to_string()).collect()),
    }
}

fn put(value: &str) -> PutSecretRequest {
    PutSecretRequest {
        value: SecretString::from(value),
        comment: None,
    }
}

fn entry(key: &str, value: &str) -> CreateSecretRequest {
    CreateSecretRequest {
        key: key.into(),
        value: SecretString::from(value),
        comment: None,
    }
}

/// `(key, value)` of every secret of a page.
fn values(page: &SecretsPage) -> Vec<(&str, &str)> {
    page.secrets
        .iter()
        .map(|s| (s.key.as_str(), s.value.expose()))
        .collect()
}

/// A client of `server` and its project `web` with the default environments.
async fn with_web(server: &Server) -> Client {
    let client = server.client().await;
    client
        .create_project(ORG, &project("web", None))
        .await
        .unwrap();
    client
}

async fn read(client: &Client, env: &str) -> (Option<String>, SecretsPage) {
    match client.read_secrets(ORG, "web", env, None).await.unwrap() {
        Fetched::Modified { etag, value } => (etag, value),
        other => panic!("expected the secrets, got {other:?}"),
    }
}

#[tokio::test]
async fn projects_and_environments_are_created_read_and_deleted() {
    let server = Server::start().await;
    let client = server.client().await;

    let created = client
        .create_project(ORG, &project("web", Some(&["dev", "prod"])))
        .await
        .unwrap();
    assert_eq!(
        (created.slug.as_str(), created.name.as_str()),
        ("web", "WEB")
    );
    assert_eq!(created.role, Some(ProjectRole::Admin));
    let slugs: Vec<&str> = created
        .environments
        .as_deref()
        .unwrap()
        .iter()
        .map(|e| e.slug.as_str())
        .collect();
    assert_eq!(slugs, ["dev", "prod"]);

    let fetched = client.get_project(ORG, "web").await.unwrap();
    assert_eq!(fetched.id, created.id);
    assert_eq!(
        fetched.created_at, created.created_at,
        "timestamps read back exactly"
    );
    assert_eq!(fetched.environments.unwrap().len(), 2);

    let qa = client
        .create_environment(
            ORG,
            "web",
            &CreateEnvironmentRequest {
                slug: "qa".into(),
                name: Some("QA".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (qa.slug.as_str(), qa.name.as_str(), qa.position),
        ("qa", "QA", 2)
    );
    let detail = client.get_environment(ORG, "web", "qa").await.unwrap();
    assert_eq!(detail.environment.id, qa.id);
    assert!(detail.policies.is_empty());

    client.delete_project(ORG, "web").await.unwrap();
    let err = client.get_project(ORG, "web").await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    let err = client.get_environment(ORG, "web", "qa").await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
}

#[tokio::test]
async fn secrets_are_written_one_by_one_and_in_bulk_read_and_deleted() {
    let server = Server::start().await;
    let client = with_web(&server).await;

    let secret = client
        .put_secret(
            ORG,
            "web",
            "development",
            "DB_PASSWORD",
            &PutSecretRequest {
                value: SecretString::from("s3cr3t"),
                comment: Some(SecretString::from("rotated by hand")),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (secret.key.as_str(), secret.value.expose(), secret.version),
        ("DB_PASSWORD", "s3cr3t", 1)
    );
    assert_eq!(
        secret.comment.as_ref().map(|c| c.expose()),
        Some("rotated by hand")
    );

    let report = client
        .bulk_upsert(
            ORG,
            "web",
            "development",
            &BulkUpsertRequest {
                secrets: vec![entry("DB_PASSWORD", "s3cr3t"), entry("DB_USER", "web")],
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (report.created, report.updated, report.unchanged),
        (1, 0, 1)
    );

    let (_, page) = read(&client, "development").await;
    assert_eq!(report.revision, Some(page.revision));
    let mut got = values(&page);
    got.sort();
    assert_eq!(got, [("DB_PASSWORD", "s3cr3t"), ("DB_USER", "web")]);

    let secret = client
        .put_secret(ORG, "web", "development", "DB_PASSWORD", &put("n3w"))
        .await
        .unwrap();
    assert_eq!((secret.value.expose(), secret.version), ("n3w", 2));
    assert_eq!(
        secret.comment.as_ref().map(|c| c.expose()),
        Some("rotated by hand"),
        "no comment keeps the current one"
    );

    client
        .delete_secret(ORG, "web", "development", "DB_USER")
        .await
        .unwrap();
    let (_, page) = read(&client, "development").await;
    assert_eq!(values(&page), [("DB_PASSWORD", "n3w")]);
    let err = client
        .delete_secret(ORG, "web", "development", "DB_USER")
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
}

#[tokio::test]
async fn reading_again_with_the_etag_answers_not_modified_until_something_changes() {
    let server = Server::start().await;
    let client = with_web(&server).await;
    client
        .put_secret(ORG, "web", "staging", "A", &put("one"))
        .await
        .unwrap();

    let (etag, page) = read(&client, "staging").await;
    let etag = etag.expect("an ETag");
    assert_eq!(values(&page), [("A", "one")]);

    match client
        .read_secrets(ORG, "web", "staging", Some(&etag))
        .await
        .unwrap()
    {
        Fetched::NotModified { etag: same } => assert_eq!(same.as_deref(), Some(etag.as_str())),
        other => panic!("expected 304, got {other:?}"),
    }

    client
        .put_secret(ORG, "web", "staging", "A", &put("two"))
        .await
        .unwrap();
    match client
        .read_secrets(ORG, "web", "staging", Some(&etag))
        .await
        .unwrap()
    {
        Fetched::Modified { etag: new, value } => {
            assert!(
                new.is_some() && new.as_deref() != Some(etag.as_str()),
                "{new:?}"
            );
            assert_eq!(values(&value), [("A", "two")]);
        }
        other => panic!("expected the new values, got {other:?}"),
    }
}

#[tokio::test]
async fn a_service_token_created_through_the_client_reads_only_its_environments() {
    let server = Server::start().await;
    let client = with_web(&server).await;
    client
        .put_secret(ORG, "web", "production", "API_KEY", &put("live-key"))
        .await
        .unwrap();

    let issued = client
        .create_service_token(
            ORG,
            &CreateServiceTokenRequest {
                name: "k8s-operator".into(),
                project: "web".into(),
                environments: vec!["production".into()],
                access: TokenAccess::Read,
                expires_in_days: Some(30),
            },
        )
        .await
        .unwrap();
    assert_eq!(issued.service_token.name, "k8s-operator");
    assert_eq!(issued.service_token.project, "web");
    assert_eq!(issued.service_token.environments, ["production"]);
    assert_eq!(issued.service_token.access, TokenAccess::Read);
    assert!(issued.service_token.expires_at.is_some());
    let token = issued.token.expose().to_owned();
    assert!(
        token.starts_with(&issued.service_token.prefix),
        "the prefix names the token"
    );
    assert!(!format!("{issued:?}").contains(&token), "{issued:?}");

    let machine = Client::new(&server.base, issued.token.into_inner()).unwrap();
    let (_, page) = read(&machine, "production").await;
    assert_eq!(values(&page), [("API_KEY", "live-key")]);

    let err = machine
        .read_secrets(ORG, "web", "development", None)
        .await
        .unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (Some(403), Some("forbidden")),
        "{err:?}"
    );
    let err = machine
        .put_secret(ORG, "web", "production", "API_KEY", &put("changed"))
        .await
        .unwrap_err();
    assert_eq!(
        err.status(),
        Some(403),
        "a read token cannot write: {err:?}"
    );
}

#[tokio::test]
async fn errors_carry_the_status_the_code_and_the_request_id() {
    let server = Server::start().await;
    let client = server.client().await;

    let err = client.get_project(ORG, "nope").await.unwrap_err();
    assert!(err.is_not_found());
    let Error::Api {
        status,
        code,
        message,
        request_id,
        retry_after,
    } = &err
    else {
        panic!("expected an API error, got {err:?}");
    };
    assert_eq!((*status, code.as_str()), (404, "not_found"));
    assert!(!message.is_empty());
    assert!(
        request_id.as_deref().is_some_and(|id| !id.is_empty()),
        "{err:?}"
    );
    assert_eq!(*retry_after, None);

    client
        .create_project(ORG, &project("web", None))
        .await
        .unwrap();
    let err = client
        .create_project(ORG, &project("web", None))
        .await
        .unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (Some(409), Some("slug_taken")),
        "{err:?}"
    );
    let err = client
        .create_project(ORG, &project("Not A Slug!", None))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(422), "{err:?}");

    let stranger = Client::new(&server.base, SecretString::from("cfr_not-a-real-token")).unwrap();
    let err = stranger.get_project(ORG, "web").await.unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (Some(401), Some("invalid_token")),
        "{err:?}"
    );
    assert!(!format!("{err} {err:?}").contains("not-a-real-token"));

    // Nothing listens on a port that was just freed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gone = Client::new(
        &format!("http://127.0.0.1:{port}"),
        SecretString::from("cfr_x"),
    )
    .unwrap();
    let err = gone.get_project(ORG, "web").await.unwrap_err();
    assert!(matches!(err, Error::Transport(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "no answer from coffer-server: cannot connect"
    );
    assert_eq!(
        (err.status(), err.code(), err.is_not_found()),
        (None, None, false)
    );

    let err = client.get_project(ORG, "").await.unwrap_err();
    assert!(matches!(err, Error::InvalidUrl(_)), "{err:?}");
}

#[tokio::test]
async fn debug_output_shows_neither_the_token_nor_secret_values() {
    let server = Server::start().await;
    let token = server.api_key().await;
    let client = Client::new(&server.base, SecretString::from(token.clone())).unwrap();
    client
        .create_project(ORG, &project("web", None))
        .await
        .unwrap();
    let request = PutSecretRequest {
        value: SecretString::from("hunter2-value"),
        comment: Some(SecretString::from("hunter2-comment")),
    };
    client
        .put_secret(ORG, "web", "development", "PASSWORD", &request)
        .await
        .unwrap();
    let fetched = client
        .read_secrets(ORG, "web", "development", None)
        .await
        .unwrap();

    let debug = format!("{client:?} {request:?} {fetched:?}");
    assert!(debug.contains("PASSWORD"), "keys are not secret: {debug}");
    for secret in [token.as_str(), "hunter2"] {
        assert!(!debug.contains(secret), "{secret} in {debug}");
    }
    let Fetched::Modified { value: page, .. } = fetched else {
        panic!("expected the secrets");
    };
    assert!(!format!("{page:?}").contains("hunter2"));
    assert_eq!(page.secrets[0].value.expose(), "hunter2-value");
}

/// The next message of `stream`, which must come within 10 s.
async fn next(stream: &mut EventStream) -> StreamMessage {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a message within 10 s")
        .unwrap()
        .expect("the stream goes on")
}

async fn next_event(stream: &mut EventStream) -> Event {
    match next(stream).await {
        StreamMessage::Event(event) => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

async fn next_resync(stream: &mut EventStream) -> Resync {
    match next(stream).await {
        StreamMessage::Resync(resync) => resync,
        other => panic!("expected a resync, got {other:?}"),
    }
}

#[tokio::test]
async fn an_event_stream_starts_with_the_revisions_and_resumes_after_the_last_event() {
    let server = Server::start().await;
    let client = server.client().await;
    client
        .create_project(ORG, &project("web", Some(&["development", "production"])))
        .await
        .unwrap();

    let mut stream = client.project_events(ORG, "web", None, None).await.unwrap();
    let start = next_resync(&mut stream).await;
    assert_eq!(start.reason, ResyncReason::Start);
    let names: Vec<&str> = start
        .environments
        .iter()
        .map(|e| e.environment.as_str())
        .collect();
    assert_eq!(names, ["development", "production"]);
    assert_eq!(stream.last_event_id(), Some(start.last_event_id));

    client
        .put_secret(ORG, "web", "production", "A", &put("hunter2-1"))
        .await
        .unwrap();
    let first = next_event(&mut stream).await;
    assert_eq!(
        (first.kind, first.environment.as_str()),
        (EventType::SecretsChanged, "production")
    );
    assert_eq!(first.changes.len(), 1);
    assert_eq!(
        (first.changes[0].key.as_str(), first.changes[0].action),
        ("A", ChangeAction::Created)
    );
    assert!(first.id > start.last_event_id && !first.via_reference);
    assert_eq!(stream.last_event_id(), Some(first.id));
    assert!(!format!("{stream:?} {first:?}").contains("hunter2"));
    drop(stream);

    // What happened while it was closed comes on resumption, exactly once, without a resync.
    client
        .put_secret(ORG, "web", "development", "B", &put("1"))
        .await
        .unwrap();
    client
        .put_secret(ORG, "web", "production", "A", &put("hunter2-2"))
        .await
        .unwrap();
    let mut resumed = client
        .project_events(ORG, "web", None, Some(first.id))
        .await
        .unwrap();
    let missed = [
        next_event(&mut resumed).await,
        next_event(&mut resumed).await,
    ];
    assert_eq!(
        missed
            .iter()
            .map(|e| (e.environment.as_str(), e.changes[0].action))
            .collect::<Vec<_>>(),
        [
            ("development", ChangeAction::Created),
            ("production", ChangeAction::Updated)
        ]
    );
    assert!(missed[1].revision > first.revision);
    assert_eq!(resumed.last_event_id(), Some(missed[1].id));

    // Only the environments asked for.
    let only = [String::from("production")];
    let mut narrowed = client
        .project_events(ORG, "web", Some(&only), None)
        .await
        .unwrap();
    let start = next_resync(&mut narrowed).await;
    assert_eq!(start.environments.len(), 1);
    assert_eq!(start.environments[0].environment, "production");
    assert_eq!(start.environments[0].revision, missed[1].revision);
}

#[tokio::test]
async fn an_event_stream_is_refused_with_the_servers_error() {
    let server = Server::start().await;
    let client = with_web(&server).await;
    let err = client
        .project_events(ORG, "nope", None, None)
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    let stranger = Client::new(&server.base, SecretString::from("cfr_not-a-real-token")).unwrap();
    let err = stranger
        .project_events(ORG, "web", None, None)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(401), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("not-a-real-token"));
    let err = client
        .project_events(ORG, "web", Some(&[]), None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidUrl(_)), "{err:?}");
    let missing = [String::from("qa")];
    let err = client
        .project_events(ORG, "web", Some(&missing), None)
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
}

#[tokio::test]
async fn an_event_stream_outlives_the_clients_request_timeout() {
    let server = Server::start().await;
    let token = server.api_key().await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let client = Client::with_http(http, &server.base, SecretString::from(token)).unwrap();
    client
        .create_project(ORG, &project("web", None))
        .await
        .unwrap();
    let mut stream = client.project_events(ORG, "web", None, None).await.unwrap();
    next_resync(&mut stream).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    client
        .put_secret(ORG, "web", "production", "A", &put("1"))
        .await
        .unwrap();
    assert_eq!(next_event(&mut stream).await.environment, "production");
}

#[tokio::test]
async fn a_login_session_is_refreshed_once_per_refresh_token_and_ended_by_logout() {
    let server = Server::start().await;
    // The API key's owner, ann@example.com, registered with PASSWORD.
    server.api_key().await;
    let anonymous = Client::anonymous(&server.base).unwrap();
    let err = anonymous
        .login(&LoginRequest {
            email: "ann@example.com".into(),
            password: SecretString::from("not the password"),
        })
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(401), "{err:?}");
    assert!(!err.to_string().contains("not the password"));

    let logged_in = anonymous
        .login(&LoginRequest {
            email: "ann@example.com".into(),
            password: SecretString::from(PASSWORD),
        })
        .await
        .unwrap();
    assert_eq!(logged_in.user.email, "ann@example.com");
    assert!(logged_in.tokens.expires_in > 0);
    let session = anonymous.with_token(logged_in.tokens.access_token.into_inner());
    assert_eq!(session.me().await.unwrap().email, "ann@example.com");

    let first = logged_in.tokens.refresh_token.into_inner();
    let refreshed = anonymous
        .refresh_session(&RefreshRequest {
            refresh_token: first.clone(),
        })
        .await
        .unwrap();
    assert_ne!(refreshed.refresh_token.expose(), first.expose_secret());
    let session = session.with_token(refreshed.access_token.into_inner());
    session.me().await.unwrap();

    session.logout().await.unwrap();
    let err = session.me().await.unwrap_err();
    assert_eq!(err.status(), Some(401), "{err:?}");
    let err = anonymous
        .refresh_session(&RefreshRequest {
            refresh_token: refreshed.refresh_token.into_inner(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(401), "{err:?}");
}

#[tokio::test]
async fn one_secret_is_read_its_versions_listed_and_an_earlier_one_made_current() {
    let server = Server::start().await;
    let client = with_web(&server).await;
    for value in ["one", "two", "${OTHER}"] {
        if value.contains("OTHER") {
            client
                .put_secret(ORG, "web", "development", "OTHER", &put("other"))
                .await
                .unwrap();
        }
        client
            .put_secret(ORG, "web", "development", "KEY", &put(value))
            .await
            .unwrap();
    }
    let raw = client
        .get_secret(ORG, "web", "development", "KEY", false)
        .await
        .unwrap();
    assert_eq!((raw.value.expose(), raw.version), ("${OTHER}", 3));
    let resolved = client
        .get_secret(ORG, "web", "development", "KEY", true)
        .await
        .unwrap();
    assert_eq!(resolved.value.expose(), "other");

    let history = client
        .secret_versions(ORG, "web", "development", "KEY", None)
        .await
        .unwrap();
    let versions: Vec<i64> = history.items.iter().map(|v| v.version).collect();
    assert_eq!(versions, [3, 2, 1]);
    assert_eq!(history.items[0].actor.kind, "api_key");
    assert!(history.next_cursor.is_none());

    let old = client
        .get_secret_version(ORG, "web", "development", "KEY", 1)
        .await
        .unwrap();
    assert_eq!(old.value.expose(), "one");
    let rolled = client
        .rollback_secret(
            ORG,
            "web",
            "development",
            "KEY",
            &coffer_client::RollbackRequest { version: 2 },
        )
        .await
        .unwrap();
    assert_eq!((rolled.value.expose(), rolled.version), ("two", 4));
    let err = client
        .get_secret(ORG, "web", "development", "MISSING", false)
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
}

#[tokio::test]
async fn an_exported_file_imports_back_in_each_format() {
    let server = Server::start().await;
    let client = with_web(&server).await;
    client
        .bulk_upsert(
            ORG,
            "web",
            "development",
            &BulkUpsertRequest {
                secrets: vec![entry("A", "1"), entry("B", "two words"), entry("C", "${A}")],
            },
        )
        .await
        .unwrap();
    for (format, env) in [
        (FileFormat::Dotenv, "staging"),
        (FileFormat::Json, "production"),
    ] {
        let file = client
            .export_secrets(ORG, "web", "development", format, false)
            .await
            .unwrap();
        assert!(file.expose_secret().contains("${A}"), "{format}");
        let report = client
            .import_secrets(
                ORG,
                "web",
                env,
                format,
                file.expose_secret().as_bytes().to_vec(),
            )
            .await
            .unwrap();
        assert_eq!((report.created, report.unchanged), (3, 0), "{format}");
        let (_, page) = read(&client, env).await;
        let mut got = values(&page);
        got.sort();
        assert_eq!(
            got,
            [("A", "1"), ("B", "two words"), ("C", "1")],
            "{format}"
        );
    }
    let resolved = client
        .export_secrets(ORG, "web", "development", FileFormat::Yaml, true)
        .await
        .unwrap();
    assert!(!resolved.expose_secret().contains("${A}"));
    let err = client
        .import_secrets(
            ORG,
            "web",
            "staging",
            FileFormat::Json,
            b"{\"A\": ".to_vec(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(422), "{err:?}");
}
