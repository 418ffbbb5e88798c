//! The OpenAPI document against the server: Schemathesis generates requests from the document
//! (valid and invalid ones, and sequences of them) and checks every answer against it, with all
//! its checks. Where a rule cannot be written in a schema (a guessable password, an address
//! webhooks may not reach), `tests/schemathesis/schemathesis.toml` says so per operation.
//!
//! Needs Schemathesis installed by `tests/schemathesis/install.sh`; without it the test is
//! skipped with a message, except in CI (`CI=true`), where it fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const SCHEMATHESIS_VERSION: &str = "4.32.5";
/// Per-operation settings; the test adds the seeded path parameters.
const OPERATIONS: &str = include_str!("../schemathesis/schemathesis.toml");
/// Schemathesis's own budget, and the test's hard limit around it.
const MAX_TIME: Duration = Duration::from_secs(120);
const HARD_LIMIT: Duration = Duration::from_secs(170);

fn schemathesis_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(format!(
        "/var/cache/coffer/schemathesis-{SCHEMATHESIS_VERSION}"
    ));
    dir.join(".complete").exists().then_some(dir)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn post(client: &reqwest::Client, url: String, token: Option<&str>, body: Value) -> Value {
    let mut request = client.post(&url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    assert!(
        response.status().is_success(),
        "{url}: {}",
        response.status()
    );
    response.json().await.unwrap()
}

/// Runs `command` until it exits or `limit` passes (then kills it); `None` on the timeout.
fn run_bounded(mut command: Command, limit: Duration) -> Option<std::process::ExitStatus> {
    let mut child = command.spawn().expect("schemathesis starts");
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn report(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_every_answer_as_the_api_document_says() {
    let Some(schemathesis) = schemathesis_dir() else {
        let why = format!(
            "Schemathesis {SCHEMATHESIS_VERSION} is not installed in /var/cache/coffer \
             (run api-server/tests/schemathesis/install.sh)"
        );
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        eprintln!("skipped: {why}");
        return;
    };

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut config = coffer_server::Config::defaults();
    config.data_dir = dir.path().join("data");
    config.listen = format!("127.0.0.1:{port}").parse().unwrap();
    // Schemathesis registers and logs in far more often than a person would.
    config.register_rate_per_ip = 100_000;
    config.login_rate_per_ip = 100_000;
    config.refresh_rate_per_ip = 100_000;
    config.login_rate_per_account = 100_000;
    config.password_hash_concurrency = Some(2);
    let state = coffer_server::start(config).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(coffer_server::serve_until(state, async move {
        let _ = stopped.await;
    }));

    let api = format!("http://127.0.0.1:{port}/api/v1");
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if client
            .get(format!("{api}/openapi.json"))
            .send()
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let registered = post(
        &client,
        format!("{api}/auth/register"),
        None,
        json!({ "email": "ann@example.com", "password": "correct horse battery staple", "name": "Ann" }),
    )
    .await;
    let session = registered["access_token"].as_str().unwrap().to_owned();
    let session = Some(session.as_str());
    post(
        &client,
        format!("{api}/orgs"),
        session,
        json!({ "name": "Acme", "slug": "acme" }),
    )
    .await;
    post(
        &client,
        format!("{api}/orgs/acme/projects"),
        session,
        json!({ "name": "Web", "slug": "web" }),
    )
    .await;
    let key = post(
        &client,
        format!("{api}/api-keys"),
        session,
        json!({ "name": "schemathesis" }),
    )
    .await["token"]
        .as_str()
        .unwrap()
        .to_owned();

    let settings = dir.path().join("schemathesis.toml");
    std::fs::write(
        &settings,
        format!(
            "[parameters]\norg = \"acme\"\nproject = \"web\"\nenv = \"development\"\n\n{OPERATIONS}"
        ),
    )
    .unwrap();
    let output = dir.path().join("schemathesis.txt");
    // Every check runs: that is Schemathesis's default, and naming them on the command line
    // (`--checks all`) would override the per-operation settings of the file.
    let mut command = Command::new(schemathesis.join("bin/schemathesis"));
    command
        .env("PYTHONPATH", &schemathesis)
        .env("NO_COLOR", "1")
        .current_dir(dir.path())
        .args(["--config-file"])
        .arg(&settings)
        .args(["run", &format!("{api}/openapi.json")])
        .args(["-H", &format!("Authorization: Bearer {key}")])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .args(["--max-examples", "10"])
        .args(["--max-time", &MAX_TIME.as_secs().to_string()])
        .args(["--workers", "1", "--max-failures", "100", "--no-color"])
        .args(["--seed", "20260101"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&output).unwrap())
        .stderr(Stdio::inherit());
    let status = tokio::task::spawn_blocking(move || run_bounded(command, HARD_LIMIT))
        .await
        .unwrap();

    stop.send(()).unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(30), server).await;
    let text = report(&output);
    match status {
        None => panic!("Schemathesis ran over {HARD_LIMIT:?}:\n{text}"),
        Some(status) => assert!(status.success(), "Schemathesis failed ({status}):\n{text}"),
    }
}
