//! No plaintext at rest: secret values and comments, passwords and credentials written through
//! the API are found nowhere in what the server keeps or says once it has stopped: not in the
//! database (the SQLite file with its `-wal` and `-shm`, or a `pg_dump` of the PostgreSQL
//! schema), not in any file of the data directory (the read-audit journal included), not in
//! its log at the most verbose level, not in the audit log.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use serde_json::json;

use crate::helpers::{Session, TestApp, db_test};

const BASE: &str = "/api/v1/orgs/acme/projects/web/environments/development/secrets";
/// What every value, comment and password written starts with; nothing else the test writes
/// contains it.
const MARK: &str = "canary-";

fn canary() -> String {
    format!("{MARK}{}", uuid::Uuid::new_v4().simple())
}

/// Byte strings to look for, found in one pass over a haystack: a table of first bytes, then
/// the first 8 bytes, then the whole needle.
struct Needles {
    first: [bool; 256],
    by_prefix: HashMap<[u8; 8], Vec<Vec<u8>>>,
}

impl Needles {
    fn new(needles: &HashSet<String>) -> Self {
        let mut first = [false; 256];
        let mut by_prefix: HashMap<[u8; 8], Vec<Vec<u8>>> = HashMap::new();
        for n in needles {
            let n = n.as_bytes();
            assert!(n.len() >= 8, "a needle of at least 8 bytes");
            first[usize::from(n[0])] = true;
            by_prefix
                .entry(n[..8].try_into().unwrap())
                .or_default()
                .push(n.to_vec());
        }
        Self { first, by_prefix }
    }

    /// The needles found in `hay` (each once), with where the first was.
    fn find(&self, hay: &[u8]) -> Vec<(usize, String)> {
        let mut found = Vec::new();
        let mut seen = HashSet::new();
        for i in 0..hay.len().saturating_sub(7) {
            if !self.first[usize::from(hay[i])] {
                continue;
            }
            let Some(candidates) = self.by_prefix.get(&hay[i..i + 8]) else {
                continue;
            };
            for n in candidates {
                if hay[i..].starts_with(n) && seen.insert(n.clone()) {
                    found.push((i, String::from_utf8_lossy(n).into_owned()));
                }
            }
        }
        found
    }
}

/// What the server logged, at every level, on this test's thread (the runtime of
/// `#[tokio::test]` runs every task on it).
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// The test's PostgreSQL schema, as the helpers name it in the connection's `search_path`.
fn pg_schema(app: &TestApp) -> Option<String> {
    let url = app.state.config.effective_database_url();
    if !url.starts_with("postgres") {
        return None;
    }
    let name = url
        .split("search_path%3D")
        .nth(1)
        .expect("a schema of its own");
    Some(name.split('&').next().unwrap().to_owned())
}

async fn register(app: &TestApp, email: &str, password: &str) -> Session {
    let r = app
        .post(
            "/api/v1/auth/register",
            None,
            json!({ "email": email, "password": password, "name": "Someone" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    Session::from(&r.json())
}

db_test!(async fn nothing_written_through_the_api_is_kept_or_logged_in_plaintext(app) {
    let started = std::time::Instant::now();
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _log_guard = tracing::subscriber::set_default(subscriber);

    let mut canaries: HashSet<String> = HashSet::new();
    let mut keep = |s: &str| {
        canaries.insert(s.to_owned());
        s.to_owned()
    };

    // People (their passwords), their sessions, an API key and a service token.
    let ann_password = keep(&canary());
    let ann = register(&app, "ann@example.com", &ann_password).await;
    let bob_password = keep(&canary());
    let bob = register(&app, "bob@example.com", &bob_password).await;
    app.org(&ann, "acme").await;
    app.project(&ann, "acme", "web").await;
    let (_, api_key) = app.api_key(&ann, json!({ "name": "laptop" })).await;
    let (_, service_token) = app
        .service_token(&ann, "acme", json!({ "name": "ci", "project": "web", "environments": ["development"], "access": "read" }))
        .await;
    keep(&api_key);
    keep(&service_token);
    for s in [&ann, &bob] {
        keep(&s.refresh);
    }
    // A changed password: the new one too.
    let new_password = keep(&canary());
    let r = app
        .put("/api/v1/auth/change-password", Some(&bob.access), json!({ "current_password": bob_password, "new_password": new_password, "revoke_api_keys": false }))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    let r = app.login("bob@example.com", &new_password).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    keep(r.json()["refresh_token"].as_str().unwrap());

    // 1,000 secrets in one bulk write, values and comments all distinct canaries.
    let secrets: Vec<(String, String, String)> = (0..1000)
        .map(|i| (format!("KEY_{i:04}"), canary(), canary()))
        .collect();
    for (_, value, comment) in &secrets {
        keep(value);
        keep(comment);
    }
    let body = json!({ "secrets": secrets.iter().map(|(k, v, c)| json!({ "key": k, "value": v, "comment": c })).collect::<Vec<_>>() });
    let r = app.put(BASE, Some(&ann.access), body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    // New versions of a few, one by one (the old values stay as versions).
    for (key, _, _) in secrets.iter().take(5) {
        let (value, comment) = (keep(&canary()), keep(&canary()));
        let r = app.put(&format!("{BASE}/{key}"), Some(&ann.access), json!({ "value": value, "comment": comment })).await;
        assert!(r.status.is_success(), "{}", r.text());
    }

    // Reads by each kind of credential, the whole environment, versions and an export.
    for (i, (key, value, _)) in secrets.iter().enumerate().skip(10).take(10) {
        let token = [&ann.access, &api_key, &service_token][i % 3];
        let r = app.get(&format!("{BASE}/{key}"), Some(token)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.json()["value"], value.as_str());
    }
    let r = app.get(&format!("{BASE}/{}/versions", secrets[0].0), Some(&ann.access)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = app.get(BASE, Some(&service_token)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.text().contains(&secrets[999].1));
    let export = app.get(&format!("{BASE}/export?format=env"), Some(&api_key)).await;
    assert_eq!(export.status, StatusCode::OK, "{}", export.text());

    let needles = Needles::new(&canaries);
    // The search finds what is there: every value in the export.
    assert_eq!(needles.find(&export.body).len(), 1000, "{}", export.text());
    let scan = |what: &str, hay: &[u8], hits: &mut Vec<String>| {
        for (at, needle) in needles.find(hay) {
            hits.push(format!("{what} at byte {at}: {needle}"));
        }
        // The mark alone (a value cut short, a prefix logged).
        if let Some(at) = hay.windows(MARK.len()).position(|w| w == MARK.as_bytes()) {
            hits.push(format!("{what} at byte {at}: {MARK}…"));
        }
    };
    let mut hits = Vec::new();

    // The audit log, the user's and the organization's.
    app.state.audit.flush().await.unwrap();
    for (path, token) in [
        ("/api/v1/audit-events?limit=200", &ann.access),
        ("/api/v1/audit-events?limit=200", &bob.access),
        ("/api/v1/orgs/acme/audit-events?limit=200", &ann.access),
    ] {
        let r = app.get(path, Some(token)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert!(!r.json()["items"].as_array().unwrap().is_empty(), "{path}");
        scan(path, &r.body, &mut hits);
    }
    let org_log = app.get("/api/v1/orgs/acme/audit-events?limit=200", Some(&ann.access)).await.json();
    assert!(
        org_log["items"].as_array().unwrap().iter().any(|e| e["action"].as_str().unwrap_or_default().contains("read")),
        "the reads are in the audit log: {org_log}"
    );

    // Stopped as the server stops: the read-audit journal drained, the database closed.
    app.state.audit.shutdown().await;
    app.state.db.close().await;

    let mut files = Vec::new();
    files_under(&app.state.config.data_dir, &mut files);
    if pg_schema(&app).is_none() {
        let names: Vec<String> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert!(names.iter().any(|n| n == "coffer.db"), "{names:?}");
    }
    assert!(
        files.iter().any(|f| f.components().any(|c| c.as_os_str() == "audit-journal")),
        "the read-audit journal is searched too: {files:?}"
    );
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        scan(&file.display().to_string(), &bytes, &mut hits);
    }

    if let Some(schema) = pg_schema(&app) {
        let url = std::env::var("COFFER_TEST_DATABASE_URL").unwrap();
        let dump = tokio::task::spawn_blocking(move || {
            std::process::Command::new("pg_dump")
                .args([&format!("--schema={schema}"), "--no-owner", &url])
                .output()
        })
        .await
        .unwrap()
        .expect("pg_dump runs");
        assert!(dump.status.success(), "pg_dump: {}", String::from_utf8_lossy(&dump.stderr));
        let text = String::from_utf8_lossy(&dump.stdout);
        assert!(text.contains("COPY") && text.contains("secret_versions"), "a dump of the schema's data");
        scan("pg_dump", &dump.stdout, &mut hits);
    }

    drop(_log_guard);
    let logged = log.0.lock().unwrap().clone();
    assert!(
        !logged.is_empty(),
        "the log was captured"
    );
    scan("the log", &logged, &mut hits);

    assert!(hits.is_empty(), "{} plaintext(s) found:\n{}", hits.len(), hits.join("\n"));
    eprintln!("searched {} files and {} log bytes for {} canaries in {:?}", files.len(), logged.len(), canaries.len(), started.elapsed());
});

/// The deployed binary, logging at its most verbose (`COFFER_LOG=trace`, the database driver's
/// statements included): nothing written or read through it is in what it prints.
#[tokio::test]
async fn the_server_logs_no_secret_even_at_trace_level() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_coffer-server"))
        .current_dir(dir.path())
        .env_clear()
        .env("COFFER_LISTEN", format!("127.0.0.1:{port}"))
        .env("COFFER_LOG", "trace")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut up = false;
    for _ in 0..200 {
        if client.get(format!("{base}/health")).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(up, "the server answers");

    let mut canaries = HashSet::new();
    let password = canary();
    canaries.insert(password.clone());
    let call = |method: reqwest::Method,
                path: &str,
                token: Option<&str>,
                body: Option<serde_json::Value>| {
        let mut request = client.request(method, format!("{base}{path}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send()
    };
    let r = call(
        reqwest::Method::POST,
        "/api/v1/auth/register",
        None,
        Some(json!({ "email": "ann@example.com", "password": password, "name": "Ann" })),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    let session: serde_json::Value = r.json().await.unwrap();
    let access = session["access_token"].as_str().unwrap().to_owned();
    canaries.insert(session["refresh_token"].as_str().unwrap().to_owned());
    for (path, body) in [
        ("/api/v1/orgs", json!({ "name": "Acme", "slug": "acme" })),
        (
            "/api/v1/orgs/acme/projects",
            json!({ "name": "web", "slug": "web" }),
        ),
    ] {
        assert_eq!(
            call(reqwest::Method::POST, path, Some(&access), Some(body))
                .await
                .unwrap()
                .status(),
            201
        );
    }
    let r = call(
        reqwest::Method::POST,
        "/api/v1/api-keys",
        Some(&access),
        Some(json!({ "name": "laptop" })),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    let api_key = r.json::<serde_json::Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    canaries.insert(api_key.clone());

    let secrets: Vec<(String, String, String)> = (0..20)
        .map(|i| (format!("KEY_{i:02}"), canary(), canary()))
        .collect();
    for (_, value, comment) in &secrets {
        canaries.insert(value.clone());
        canaries.insert(comment.clone());
    }
    let body = json!({ "secrets": secrets.iter().map(|(k, v, c)| json!({ "key": k, "value": v, "comment": c })).collect::<Vec<_>>() });
    assert_eq!(
        call(reqwest::Method::PUT, BASE, Some(&access), Some(body))
            .await
            .unwrap()
            .status(),
        200
    );
    let (value, comment) = (canary(), canary());
    canaries.insert(value.clone());
    canaries.insert(comment.clone());
    let r = call(
        reqwest::Method::PUT,
        &format!("{BASE}/KEY_00"),
        Some(&api_key),
        Some(json!({ "value": value, "comment": comment })),
    )
    .await
    .unwrap();
    assert!(r.status().is_success());
    for path in [
        format!("{BASE}/KEY_01"),
        BASE.to_owned(),
        format!("{BASE}/export?format=json"),
    ] {
        let r = call(reqwest::Method::GET, &path, Some(&api_key), None)
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    // A refused write with a value in it (an invalid key): the refusal is logged, not the value.
    let refused = canary();
    canaries.insert(refused.clone());
    let r = call(
        reqwest::Method::PUT,
        BASE,
        Some(&access),
        Some(json!({ "secrets": [{ "key": "bad key", "value": refused }] })),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 422);

    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    let log = [out.stdout, out.stderr].concat();
    let text = String::from_utf8_lossy(&log);
    assert!(text.contains("coffer-server stopped"), "{text}");
    assert!(
        text.contains("TRACE") || text.contains("\"TRACE\""),
        "logged at trace level"
    );

    let mut hits: Vec<String> = Needles::new(&canaries)
        .find(&log)
        .into_iter()
        .map(|(at, n)| format!("the log at byte {at}: {n}"))
        .collect();
    if let Some(at) = log.windows(MARK.len()).position(|w| w == MARK.as_bytes()) {
        hits.push(format!("the log at byte {at}: {MARK}…"));
    }
    let mut files = Vec::new();
    files_under(dir.path(), &mut files);
    for file in &files {
        for (at, n) in Needles::new(&canaries).find(&std::fs::read(file).unwrap()) {
            hits.push(format!("{} at byte {at}: {n}", file.display()));
        }
    }
    assert!(
        hits.is_empty(),
        "{} plaintext(s) found:\n{}",
        hits.len(),
        hits.join("\n")
    );
}
