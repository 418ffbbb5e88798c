//! Test support: a coffer-server per test over its own database (a SQLite file, or a fresh
//! PostgreSQL schema when `COFFER_TEST_DATABASE_URL` is set), driven through the real router.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use coffer_server::config::Config;
use coffer_server::{AppState, app};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;

pub const PASSWORD: &str = "correct horse battery staple";

/// Runs a test body once on SQLite and once on PostgreSQL, as `<name>::sqlite` and
/// `<name>::postgres`. `|config| …` after the app name adjusts the configuration.
macro_rules! db_test {
    ($(#[$meta:meta])* async fn $name:ident($app:ident $(, |$cfg:ident| $tweak:expr)?) $body:block) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[allow(unused_variables)]
            fn tweak(config: &mut coffer_server::Config) {
                $(let $cfg = config; $tweak;)?
            }

            #[tokio::test]
            async fn sqlite() {
                let $app = $crate::helpers::TestApp::sqlite(tweak).await;
                $body
            }

            #[tokio::test]
            async fn postgres() {
                let Some($app) = $crate::helpers::TestApp::postgres(tweak).await else { return };
                $body
            }
        }
    };
}
pub(crate) use db_test;

/// A coffer-server with its own database.
pub struct TestApp {
    pub router: Router,
    pub state: AppState,
    /// Kept for the test's duration: the data directory, and the PostgreSQL schema to drop.
    _dir: Arc<tempfile::TempDir>,
    _schema: Option<Arc<PgSchema>>,
}

impl TestApp {
    fn config(dir: &tempfile::TempDir, database_url: String, tweak: fn(&mut Config)) -> Config {
        let mut config = Config::defaults();
        config.data_dir = dir.path().to_path_buf();
        config.database_url = Some(database_url);
        config.database_max_connections = 5;
        config.password_hash_concurrency = Some(2);
        config.register_rate_per_ip = 10_000;
        config.login_rate_per_ip = 10_000;
        config.refresh_rate_per_ip = 10_000;
        config.login_rate_per_account = 1_000;
        tweak(&mut config);
        config
    }

    async fn start(
        config: Config,
        dir: Arc<tempfile::TempDir>,
        schema: Option<Arc<PgSchema>>,
    ) -> Self {
        let state = coffer_server::start(config)
            .await
            .expect("coffer-server starts");
        coffer_server::spawn_workers(&state);
        let router =
            app(state.clone()).layer(MockConnectInfo(SocketAddr::from(([192, 0, 2, 10], 40_000))));
        Self {
            router,
            state,
            _dir: dir,
            _schema: schema,
        }
    }

    pub async fn sqlite(tweak: fn(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("coffer.db").display()
        );
        let config = Self::config(&dir, url, tweak);
        Self::start(config, Arc::new(dir), None).await
    }

    /// `None` (and a message) when `COFFER_TEST_DATABASE_URL` is not set; in CI that fails.
    pub async fn postgres(tweak: fn(&mut Config)) -> Option<Self> {
        let admin_url = postgres_url()?;
        let schema = PgSchema::create(&admin_url).await;
        let dir = tempfile::tempdir().expect("temp dir");
        let config = Self::config(&dir, schema.url.clone(), tweak);
        Some(Self::start(config, Arc::new(dir), Some(Arc::new(schema))).await)
    }

    /// A second coffer-server on the same database and keys, as another replica would be.
    pub async fn replica(&self) -> Self {
        Self::start(
            self.state.config.clone(),
            self._dir.clone(),
            self._schema.clone(),
        )
        .await
    }

    /// Waits (up to 5 s) until the PostgreSQL change listener is connected: other replicas'
    /// notifications reach this one from then on.
    pub async fn wait_for_listener(&self) {
        for _ in 0..100 {
            if self.state.db.cache().listener_backend().is_some() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the change listener does not connect");
    }

    /// Sends a request through the whole application.
    pub async fn send(&self, request: Request<Body>) -> TestResponse {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec();
        TestResponse {
            status,
            headers,
            body,
        }
    }

    /// A JSON request, authenticated with `token` when given.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> TestResponse {
        let mut builder = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => builder
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&body).expect("json"))),
            None => builder.body(Body::empty()),
        };
        self.send(request.expect("request")).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> TestResponse {
        self.call(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> TestResponse {
        self.call(Method::POST, path, token, Some(body)).await
    }

    /// Registers `email` with [`PASSWORD`] and returns its session.
    pub async fn register(&self, email: &str) -> Session {
        let r = self
            .post(
                "/api/v1/auth/register",
                None,
                json!({ "email": email, "password": PASSWORD, "name": "Test User" }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        Session::from(&r.json())
    }

    pub async fn login(&self, email: &str, password: &str) -> TestResponse {
        self.post(
            "/api/v1/auth/login",
            None,
            json!({ "email": email, "password": password }),
        )
        .await
    }

    /// A login through a proxy that sent `x_forwarded_for`.
    pub async fn login_from(
        &self,
        x_forwarded_for: &str,
        email: &str,
        password: &str,
    ) -> TestResponse {
        let body = json!({ "email": email, "password": password });
        let request = Request::post("/api/v1/auth/login")
            .header("content-type", "application/json")
            .header("x-forwarded-for", x_forwarded_for)
            .body(Body::from(serde_json::to_vec(&body).expect("json")))
            .expect("request");
        self.send(request).await
    }

    /// The caller's audit events with `action`, newest first.
    pub async fn audit_events(&self, token: &str, action: &str) -> Vec<Value> {
        let r = self
            .get("/api/v1/audit-events?limit=200", Some(token))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        r.json()["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter(|e| e["action"] == action)
            .cloned()
            .collect()
    }

    /// Creates an API key for `session` and returns its token.
    /// Creates a service token of `org` as `by`: (id, secret).
    pub async fn service_token(&self, by: &Session, org: &str, body: Value) -> (String, String) {
        let r = self
            .post(
                &format!("/api/v1/orgs/{org}/service-tokens"),
                Some(&by.access),
                body,
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        let v = r.json();
        (
            v["id"].as_str().expect("id").to_owned(),
            v["token"].as_str().expect("token").to_owned(),
        )
    }

    /// Gives `user` the project role `role` in `org/project`, as `by`.
    pub async fn grant(&self, by: &Session, org: &str, project: &str, user: &Session, role: &str) {
        let r = self
            .put(
                &format!(
                    "/api/v1/orgs/{org}/projects/{project}/access/users/{}",
                    user.user_id
                ),
                Some(&by.access),
                json!({ "role": role }),
            )
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    }

    pub async fn api_key(&self, session: &Session, body: Value) -> (String, String) {
        let r = self
            .post("/api/v1/api-keys", Some(&session.access), body)
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        let v = r.json();
        (
            v["id"].as_str().expect("id").to_owned(),
            v["token"].as_str().expect("token").to_owned(),
        )
    }
}

/// Ann, owner of the organization `acme` and its project `web` (with the default environments).
pub async fn acme_web(app: &TestApp) -> Session {
    let ann = app.register("ann@example.com").await;
    app.org(&ann, "acme").await;
    app.project(&ann, "acme", "web").await;
    ann
}

/// A logged-in user.
#[derive(Debug, Clone)]
pub struct Session {
    pub user_id: String,
    pub access: String,
    pub refresh: String,
}

impl From<&Value> for Session {
    fn from(v: &Value) -> Self {
        Self {
            user_id: v["user"]["id"].as_str().unwrap_or_default().to_owned(),
            access: v["access_token"].as_str().expect("access_token").to_owned(),
            refresh: v["refresh_token"]
                .as_str()
                .expect("refresh_token")
                .to_owned(),
        }
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl TestResponse {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts the standard error shape, status and code; returns the message.
    #[track_caller]
    pub fn assert_error(&self, status: StatusCode, code: &str) -> String {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(
            self.headers
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/json"),
            "{}",
            self.text()
        );
        let v = self.json();
        assert_eq!(v["error"]["code"], code, "{}", self.text());
        let request_id = self
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .expect("x-request-id");
        assert_eq!(v["error"]["request_id"], request_id);
        v["error"]["message"].as_str().expect("message").to_owned()
    }
}

fn postgres_url() -> Option<String> {
    match std::env::var("COFFER_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "COFFER_TEST_DATABASE_URL must be set in CI: the PostgreSQL tests may not be skipped"
            );
            eprintln!("skipping the PostgreSQL variant: COFFER_TEST_DATABASE_URL is not set");
            None
        }
    }
}

/// A PostgreSQL schema of its own for one test, dropped afterwards.
struct PgSchema {
    admin_url: String,
    name: String,
    url: String,
}

impl PgSchema {
    async fn create(admin_url: &str) -> Self {
        sqlx::any::install_default_drivers();
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(admin_url)
            .await
            .expect("connect to PostgreSQL");
        sqlx::query(&format!("CREATE SCHEMA {name}"))
            .execute(&mut conn)
            .await
            .expect("create schema");
        let sep = if admin_url.contains('?') { '&' } else { '?' };
        let url = format!("{admin_url}{sep}options=-c%20search_path%3D{name}");
        Self {
            admin_url: admin_url.to_owned(),
            name,
            url,
        }
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        // Not joined: the test's pooled connections (a rolled-back transaction's may still hold
        // locks until its runtime flushes the rollback) go away when the test's runtime ends,
        // and only then can the schema be dropped.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&url)
                    .await
                    .ok()?;
                sqlx::query(&format!("DROP SCHEMA {name} CASCADE"))
                    .execute(&mut conn)
                    .await
                    .ok()
            })
        });
    }
}

impl TestApp {
    pub async fn patch(&self, path: &str, token: Option<&str>, body: Value) -> TestResponse {
        self.call(Method::PATCH, path, token, Some(body)).await
    }

    pub async fn put(&self, path: &str, token: Option<&str>, body: Value) -> TestResponse {
        self.call(Method::PUT, path, token, Some(body)).await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> TestResponse {
        self.call(Method::DELETE, path, token, None).await
    }

    /// Creates organization `slug` owned by `owner`.
    pub async fn org(&self, owner: &Session, slug: &str) {
        let r = self
            .post(
                "/api/v1/orgs",
                Some(&owner.access),
                json!({ "name": slug.to_uppercase(), "slug": slug }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    }

    /// Creates `project` (with the default environments) in `org`.
    pub async fn project(&self, by: &Session, org: &str, project: &str) {
        let r = self
            .post(
                &format!("/api/v1/orgs/{org}/projects"),
                Some(&by.access),
                json!({ "name": project, "slug": project }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    }

    /// Registers `email` and makes them a member of `org` with `role` (by invitation).
    pub async fn member(&self, owner: &Session, org: &str, email: &str, role: &str) -> Session {
        let user = self.register(email).await;
        let r = self
            .post(
                &format!("/api/v1/orgs/{org}/invitations"),
                Some(&owner.access),
                json!({ "email": email, "role": role }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        let token = r.json()["token"].as_str().unwrap().to_owned();
        let r = self
            .call(
                Method::POST,
                &format!("/api/v1/invitations/{token}/accept"),
                Some(&user.access),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        user
    }
}

/// A PostgreSQL session of its own on a test's schema, in a transaction that holds a lock while
/// requests run into it: a deterministic way to stop a request at a chosen statement.
pub struct LockHolder {
    conn: sqlx::AnyConnection,
    pid: i32,
}

impl TestApp {
    /// Opens a session on the app's PostgreSQL schema, begins a transaction and runs `sql` in it
    /// (a statement that takes a lock), holding the lock until [`LockHolder::release`].
    pub async fn hold_lock(&self, sql: &str) -> LockHolder {
        let url = self.state.config.effective_database_url();
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&url)
            .await
            .expect("connect to PostgreSQL");
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut conn)
            .await
            .expect("backend pid");
        sqlx::raw_sql("BEGIN")
            .execute(&mut conn)
            .await
            .expect("begin");
        sqlx::raw_sql(sql)
            .execute(&mut conn)
            .await
            .expect("take the lock");
        LockHolder { conn, pid }
    }
}

impl LockHolder {
    /// Waits until `n` sessions wait on this one's lock, directly or behind one another; panics
    /// when that does not happen within 30 seconds.
    pub async fn wait_for_waiters(&mut self, n: usize) {
        let root = self.pid;
        let waited = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            loop {
                // `pg_locks` is read afresh each time (`pg_stat_activity` would be the snapshot
                // taken at its first use in this transaction, missing sessions opened since).
                let rows: Vec<(i32, String)> = sqlx::query_as(
                    "SELECT pid, array_to_string(pg_blocking_pids(pid), ',') \
                     FROM (SELECT DISTINCT pid FROM pg_locks WHERE NOT granted AND pid IS NOT NULL) w",
                )
                .fetch_all(&mut self.conn)
                .await
                .expect("pg_stat_activity");
                let mut behind = std::collections::BTreeSet::from([root]);
                loop {
                    let before = behind.len();
                    for (pid, blockers) in &rows {
                        if blockers
                            .split(',')
                            .filter_map(|b| b.parse::<i32>().ok())
                            .any(|b| behind.contains(&b))
                        {
                            behind.insert(*pid);
                        }
                    }
                    if behind.len() == before {
                        break;
                    }
                }
                if behind.len() > n {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await;
        if waited.is_err() {
            // What the sessions are doing instead (statements only: values are bound parameters).
            let _ = sqlx::query("SELECT pg_stat_clear_snapshot()")
                .execute(&mut self.conn)
                .await;
            let sessions: Option<String> = sqlx::query_scalar(
                "SELECT string_agg(format('%s %s %s blocked by [%s]: %s', pid, state, wait_event_type, \
                 array_to_string(pg_blocking_pids(pid), ','), left(query, 120)), E'\\n') \
                 FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .fetch_one(&mut self.conn)
            .await
            .unwrap_or_default();
            panic!(
                "{n} session(s) never came to wait on the held lock (held by {root}):\n{}",
                sessions.unwrap_or_default()
            );
        }
    }

    /// Ends the transaction (rolling back), letting the waiting sessions go on.
    pub async fn release(mut self) {
        sqlx::raw_sql("ROLLBACK")
            .execute(&mut self.conn)
            .await
            .expect("rollback");
    }
}

/// Runs `first` until it waits on `holder`'s lock; only then starts `second`, until it waits
/// too (behind the lock or behind `first`) or finishes; then releases the lock and lets both
/// end. Returns their outputs, and whether `second` had to wait.
pub async fn interleave<A, B>(
    mut holder: LockHolder,
    first: A,
    second: B,
) -> (TestResponse, B::Output, bool)
where
    A: Future<Output = TestResponse>,
    B: Future,
{
    let mut first = std::pin::pin!(first);
    tokio::select! {
        out = &mut first => panic!("the first request ended without waiting: {} {}", out.status, out.text()),
        () = holder.wait_for_waiters(1) => {}
    }
    let control = async move {
        let mut second = std::pin::pin!(second);
        let early = tokio::select! {
            out = &mut second => Some(out),
            () = holder.wait_for_waiters(2) => None,
        };
        holder.release().await;
        match early {
            Some(out) => (out, false),
            None => (second.await, true),
        }
    };
    let (a, (b, waited)) = tokio::join!(first, control);
    (a, b, waited)
}

/// One Server-Sent Events message (comments are skipped).
#[derive(Debug, Clone)]
pub struct SseMessage {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

impl SseMessage {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.data))
    }
}

/// An open event stream, read message by message.
pub struct EventStream {
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: Body,
    buffer: String,
    /// Comment lines seen (heartbeats).
    pub comments: usize,
    ended: bool,
}

impl EventStream {
    /// The next message, or `None` when none comes within `within` or the stream ended.
    pub async fn next_within(&mut self, within: std::time::Duration) -> Option<SseMessage> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(message) = self.parse_one() {
                return Some(message);
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => return None,
                Ok(None) | Ok(Some(Err(_))) => self.ended = true,
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.push_str(&String::from_utf8_lossy(&data));
                    }
                }
            }
        }
    }

    /// The next message; panics when none comes within 10 s (the machine may be busy).
    pub async fn next(&mut self) -> SseMessage {
        self.next_within(std::time::Duration::from_secs(10))
            .await
            .expect("a message within 10 s")
    }

    /// Whether the server ended the stream within `within` (messages before the end are
    /// skipped).
    pub async fn ends_within(&mut self, within: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            let left = deadline - tokio::time::Instant::now();
            if self.next_within(left).await.is_none() && self.ended {
                return true;
            }
        }
        self.ended
    }

    fn parse_one(&mut self) -> Option<SseMessage> {
        loop {
            let end = self.buffer.find("\n\n")?;
            let block: String = self.buffer.drain(..end + 2).collect();
            let mut message = SseMessage {
                id: None,
                event: None,
                data: String::new(),
            };
            let mut any = false;
            for line in block.lines() {
                if line.starts_with(':') {
                    self.comments += 1;
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                any = true;
                match field {
                    "id" => message.id = Some(value.to_owned()),
                    "event" => message.event = Some(value.to_owned()),
                    "data" => {
                        if !message.data.is_empty() {
                            message.data.push('\n');
                        }
                        message.data.push_str(value);
                    }
                    _ => {}
                }
            }
            if any {
                return Some(message);
            }
        }
    }
}

impl TestApp {
    /// Opens an event stream at `path` (`Accept: text/event-stream`), resuming after
    /// `last_event_id` when given. A refusal is read whole: see [`EventStream::refusal`].
    pub async fn stream(
        &self,
        path: &str,
        token: &str,
        last_event_id: Option<&str>,
    ) -> EventStream {
        let mut builder = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header("authorization", format!("Bearer {token}"))
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            builder = builder.header("last-event-id", id);
        }
        let response = self
            .router
            .clone()
            .oneshot(builder.body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        EventStream {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.into_body(),
            buffer: String::new(),
            comments: 0,
            ended: false,
        }
    }
}

impl EventStream {
    /// The error body of a refused stream.
    pub async fn refusal(self) -> TestResponse {
        let body = self.body.collect().await.expect("body").to_bytes().to_vec();
        TestResponse {
            status: self.status,
            headers: self.headers,
            body,
        }
    }
}
