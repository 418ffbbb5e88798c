//! `coffer login`, `whoami`, `logout`: sessions, tokens, refresh, and the credentials file.

use serde_json::Value;

use crate::support::{OWNER_EMAIL, PASSWORD, User, mode, server};

fn credentials(user: &User) -> Value {
    let text = std::fs::read_to_string(user.config_dir().join("credentials.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn stored_session(user: &User) -> Value {
    credentials(user)["servers"][format!("{}/", server().url)].clone()
}

fn login(user: &User, email: &str) {
    let out = user.run_with_stdin(
        [
            "login",
            "--server",
            &server().url,
            "--email",
            email,
            "--password-stdin",
        ],
        &format!("{PASSWORD}\n"),
    );
    assert!(out.ok().contains(&format!("as {email}")), "{out:#?}");
}

#[test]
fn logging_in_keeps_a_0600_session_that_whoami_uses_and_logout_ends() {
    let email = server().user("login");
    let user = User::new();
    login(&user, &email);
    let file = user.config_dir().join("credentials.json");
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&user.config_dir()), 0o700);
    let session = stored_session(&user);
    assert_eq!(session["kind"], "session");
    assert_eq!(session["email"], email.as_str());
    let access = session["access_token"].as_str().unwrap().to_owned();

    // The server of the last login is the default: no --server needed.
    let out = user.run(["whoami"]);
    assert!(out.ok().contains(&email), "{out:#?}");
    assert!(out.stdout.contains("login session"), "{out:#?}");
    // Neither the password nor a token is ever printed.
    for text in [&out.stdout, &out.stderr] {
        assert!(!text.contains(PASSWORD) && !text.contains(&access));
    }
    let json = user.run(["whoami", "--json"]).json();
    assert_eq!(json["user"]["email"], email.as_str());
    assert_eq!(json["credential"], "login session");

    let out = user.run(["logout"]);
    assert!(out.ok().contains("Logged out"), "{out:#?}");
    assert!(
        credentials(&user)["servers"]
            .as_object()
            .unwrap()
            .is_empty()
    );
    // The session ended on the server too: its access token no longer works.
    let refused = crate::support::runtime().block_on(async {
        reqwest::Client::new()
            .get(format!("{}/api/v1/auth/me", server().url))
            .bearer_auth(&access)
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(refused, 401);
    let out = user.run(["whoami", "--server", &server().url]);
    let err = out.fails_with(3);
    assert!(
        err.contains("not logged in") && err.contains("coffer login"),
        "{err}"
    );
}

#[test]
fn a_wrong_password_is_refused_with_exit_code_3_and_nothing_is_stored() {
    let email = server().user("wrong-password");
    let user = User::new();
    let out = user.run_with_stdin(
        ["login", "--server", &server().url, "--email", &email],
        "not the password\n",
    );
    let err = out.fails_with(3);
    assert!(err.contains("wrong email or password"), "{err}");
    assert!(!err.contains("not the password"), "{err}");
    assert!(!user.config_dir().join("credentials.json").exists());
    let json = user.run_with_stdin(
        [
            "login",
            "--server",
            &server().url,
            "--email",
            &email,
            "--json",
        ],
        "not the password\n",
    );
    json.fails_with(3);
    let error: Value = serde_json::from_str(json.stderr.trim()).unwrap();
    assert_eq!(error["error"]["code"], "wrong_credentials");
    assert_eq!(error["error"]["exit_code"], 3);
}

#[test]
fn a_refused_or_expired_access_token_is_refreshed_and_the_new_refresh_token_kept() {
    let project = server().project("refresh");
    server().put(&project, "development", "GREETING", "hello");
    let user = User::new()
        .var("COFFER_ORG", crate::support::ORG)
        .var("COFFER_PROJECT", &project)
        .var("COFFER_ENVIRONMENT", "development");
    login(&user, OWNER_EMAIL);
    let path = user.config_dir().join("credentials.json");
    let before = stored_session(&user);

    // The server answers 401 to a token it does not know: coffer refreshes and retries.
    let mut store = credentials(&user);
    let key = format!("{}/", server().url);
    store["servers"][&key]["access_token"] = "not-a-valid-token".into();
    std::fs::write(&path, serde_json::to_vec(&store).unwrap()).unwrap();
    let out = user.run(["secrets", "get", "GREETING"]);
    assert_eq!(out.ok(), "hello");
    let after = stored_session(&user);
    assert_ne!(after["refresh_token"], before["refresh_token"]);
    assert_ne!(after["access_token"], "not-a-valid-token");
    assert_eq!(mode(&path), 0o600);

    // An access token past its expiry is refreshed before it is used.
    let mut store = credentials(&user);
    store["servers"][&key]["access_expires_at"] = 0.into();
    std::fs::write(&path, serde_json::to_vec(&store).unwrap()).unwrap();
    assert_eq!(user.run(["secrets", "get", "GREETING"]).ok(), "hello");
    let again = stored_session(&user);
    assert_ne!(again["refresh_token"], after["refresh_token"]);
    assert!(again["access_expires_at"].as_i64().unwrap() > 0);

    // A spent refresh token cannot be used again: the session has ended.
    let mut store = credentials(&user);
    store["servers"][&key] = before.clone();
    store["servers"][&key]["access_expires_at"] = 0.into();
    std::fs::write(&path, serde_json::to_vec(&store).unwrap()).unwrap();
    let err = user
        .run(["secrets", "get", "GREETING"])
        .fails_with(3)
        .to_owned();
    assert!(
        err.contains("session") && err.contains("coffer login"),
        "{err}"
    );
}

#[test]
fn a_token_is_stored_from_stdin_or_used_from_coffer_token() {
    let project = server().project("tokens");
    let user = User::new();
    let out = user.run_with_stdin(
        ["login", "--server", &server().url, "--token"],
        &format!("{}\n", server().admin_token),
    );
    assert!(out.ok().contains("an API key"), "{out:#?}");
    assert!(!out.stdout.contains(&server().admin_token));
    assert_eq!(stored_session(&user)["kind"], "token");
    assert_eq!(mode(&user.config_dir().join("credentials.json")), 0o600);
    let out = user.run(["whoami"]);
    assert!(out.ok().contains(OWNER_EMAIL), "{out:#?}");

    // COFFER_TOKEN works without anything stored, and a service token is recognised.
    let token = crate::support::runtime()
        .block_on(server().admin().create_service_token(
            crate::support::ORG,
            &coffer_client::CreateServiceTokenRequest {
                name: "ci".into(),
                project: project.clone(),
                environments: vec!["development".into()],
                access: coffer_client::TokenAccess::Read,
                expires_in_days: None,
            },
        ))
        .unwrap();
    let ci = User::new()
        .var("COFFER_SERVER_URL", &server().url)
        .var("COFFER_TOKEN", token.token.expose());
    let out = ci.run(["whoami"]);
    assert!(out.ok().contains("service token"), "{out:#?}");

    // A token the server does not know is refused.
    let bad = User::new();
    let out = bad.run_with_stdin(
        ["login", "--server", &server().url, "--token"],
        "cfr_not-a-real-token\n",
    );
    let err = out.fails_with(3);
    assert!(err.contains("refused the token"), "{err}");
    assert!(!err.contains("not-a-real-token"), "{err}");
}
