//! The server as deployed: the real binary, real sockets, TLS, signals.

use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_coffer-server");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_for(url: &str, client: &reqwest::Client) -> reqwest::Response {
    for _ in 0..200 {
        if let Ok(r) = client.get(url).send().await {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} never answered");
}

#[tokio::test]
async fn the_binary_starts_with_no_configuration_and_stops_gracefully_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = Command::new(BIN)
        .current_dir(dir.path())
        .env_clear()
        .env("COFFER_LISTEN", format!("127.0.0.1:{port}"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let r = wait_for(&format!("http://127.0.0.1:{port}/health"), &client).await;
    assert_eq!(r.status(), 200);
    let ready = client
        .get(format!("http://127.0.0.1:{port}/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);

    // Development defaults: SQLite and generated keys in ./coffer-data, owner-only.
    use std::os::unix::fs::PermissionsExt as _;
    let data = dir.path().join("coffer-data");
    assert!(data.join("coffer.db").exists());
    for key in ["master.key", "jwt.secret"] {
        let mode = std::fs::metadata(data.join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.status.success(), "exit: {:?}", exit.status);
    let log = String::from_utf8_lossy(&exit.stderr);
    assert!(
        log.contains("development key"),
        "the generated keys are announced: {log}"
    );
    assert!(log.contains("coffer-server stopped"), "{log}");
}

#[test]
fn production_mode_without_keys_refuses_to_start_with_one_line_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .env_clear()
        .env("COFFER_ENV", "production")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("COFFER_MASTER_KEY"), "{err}");
    assert!(
        !dir.path().join("coffer-data").join("master.key").exists(),
        "production never generates keys"
    );
}

#[test]
fn an_invalid_variable_stops_start_up_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    for (var, value) in [
        ("COFFER_LISTEN", "not-an-address"),
        ("COFFER_LOG_FORMAT", "xml"),
        ("COFFER_MASTER_KEY", "c2hvcnQ="),
        ("COFFER_DATABASE_URL", "mysql://x"),
        ("COFFER_ACCESS_TOKEN_TTL", "-5"),
    ] {
        let out = Command::new(BIN)
            .current_dir(dir.path())
            .env_clear()
            .env(var, value)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{var}={value} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(var), "{var}: {err}");
        assert!(!err.contains("c2hvcnQ="), "the key is not echoed: {err}");
    }
}

#[tokio::test]
async fn with_a_certificate_it_serves_https() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let port = free_port();
    let mut config = coffer_server::Config::defaults();
    config.data_dir = dir.path().join("data");
    config.listen = format!("127.0.0.1:{port}").parse().unwrap();
    config.tls_cert = Some(cert_path);
    config.tls_key = Some(key_path);
    let state = coffer_server::start(config).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(coffer_server::serve_until(state, async move {
        let _ = stopped.await;
    }));

    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .resolve("localhost", format!("127.0.0.1:{port}").parse().unwrap())
        .build()
        .unwrap();
    let r = wait_for(&format!("https://localhost:{port}/health"), &client).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-request-id"));
    // Plain HTTP on the TLS port gets no API answer.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/health"))
        .send()
        .await;
    assert!(plain.map(|r| r.status() != 200).unwrap_or(true));

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(40), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

const OLD_KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
const NEW_KEY: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";

#[tokio::test]
async fn the_rotate_master_key_command_moves_every_data_key_to_the_new_master_key() {
    use crate::helpers::TestApp;
    use secrecy::SecretString;
    use serde_json::json;

    let app = TestApp::sqlite(|c| c.master_key = Some(SecretString::from(OLD_KEY))).await;
    let ann = app.register("ann@example.com").await;
    let (_, token) = app.api_key(&ann, json!({ "name": "k" })).await;
    app.org(&ann, "acme").await;
    app.project(&ann, "acme", "web").await;
    let url = "/api/v1/orgs/acme/projects/web/environments/production/secrets";
    app.post(
        url,
        Some(&ann.access),
        json!({ "key": "K", "value": "survives-rotation" }),
    )
    .await;
    let config = app.state.config.clone();
    app.state.db.close().await;

    let run = |previous: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.arg("rotate-master-key")
            .env_clear()
            .env("COFFER_DATA_DIR", &config.data_dir)
            .env(
                "COFFER_DATABASE_URL",
                config.database_url.as_deref().unwrap(),
            )
            .env("COFFER_MASTER_KEY", NEW_KEY);
        if let Some(p) = previous {
            cmd.env("COFFER_PREVIOUS_MASTER_KEYS", p);
        }
        cmd.output().unwrap()
    };
    let refused = run(None);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("COFFER_PREVIOUS_MASTER_KEYS"));
    let out = run(Some(OLD_KEY));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("data_keys=1"), "{log}");
    assert!(
        !log.contains(OLD_KEY) && !log.contains(NEW_KEY),
        "a key reached the log"
    );

    let mut rotated = config.clone();
    rotated.master_key = Some(SecretString::from(NEW_KEY));
    let state = coffer_server::start(rotated).await.unwrap();
    let router = coffer_server::app(state);
    let req = axum::http::Request::get(url)
        .header("authorization", format!("Bearer {token}"))
        .body(axum::body::Body::empty())
        .unwrap();
    let res = tower::ServiceExt::oneshot(router, req).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("survives-rotation"));
}

#[tokio::test]
async fn with_a_metrics_listener_metrics_are_served_there_only() {
    let dir = tempfile::tempdir().unwrap();
    let (port, metrics_port) = (free_port(), free_port());
    let mut child = Command::new(BIN)
        .current_dir(dir.path())
        .env_clear()
        .env("COFFER_LISTEN", format!("127.0.0.1:{port}"))
        .env("COFFER_METRICS_LISTEN", format!("127.0.0.1:{metrics_port}"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let metrics = wait_for(&format!("http://127.0.0.1:{metrics_port}/metrics"), &client).await;
    assert_eq!(metrics.status(), 200);
    assert!(metrics.text().await.unwrap().contains("coffer_build_info"));
    wait_for(&format!("http://127.0.0.1:{port}/health"), &client).await;
    let main = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(main.status(), 404);
    child.kill().unwrap();
    child.wait().unwrap();
}
