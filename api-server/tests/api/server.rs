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
