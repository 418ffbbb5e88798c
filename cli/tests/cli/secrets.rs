//! `coffer secrets …` and where commands find their organization, project and environment.

use crate::support::{ORG, User, server};

#[test]
fn secrets_are_set_read_listed_and_rolled_back_through_their_history() {
    let project = server().project("secrets");
    let user = User::with_token(&project);
    let out = user.run(["secrets", "set", "DATABASE_URL=postgres://one", "PORT=8080"]);
    assert!(out.ok().contains("2 created"), "{out:#?}");
    let out = user.run(["secrets", "set", "DATABASE_URL=postgres://two"]);
    assert!(out.ok().contains("version 2"), "{out:#?}");

    assert_eq!(
        user.run(["secrets", "get", "DATABASE_URL"]).ok(),
        "postgres://two"
    );
    assert_eq!(
        user.run(["secrets", "get", "DATABASE_URL", "--version", "1"])
            .ok(),
        "postgres://one"
    );

    // Piped, a list is one tab-separated line per secret, and no value unless revealed.
    let list = user.run(["secrets", "list"]);
    let lines: Vec<&str> = list.ok().lines().collect();
    assert_eq!(lines.len(), 2, "{list:#?}");
    assert!(lines[0].starts_with("DATABASE_URL\t2\t"), "{lines:?}");
    assert!(!list.stdout.contains("postgres://"), "{list:#?}");
    let revealed = user.run(["secrets", "list", "--reveal"]);
    assert!(revealed.ok().contains("postgres://two"), "{revealed:#?}");

    let json = user.run(["secrets", "list", "--json"]).json();
    assert_eq!(json["secrets"][0]["key"], "DATABASE_URL");
    assert_eq!(json["secrets"][0]["version"], 2);
    assert!(json["secrets"][0].get("value").is_none());

    let history = user
        .run(["secrets", "history", "DATABASE_URL", "--json"])
        .json();
    let versions: Vec<i64> = history["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, [2, 1]);
    assert_eq!(history["versions"][0]["actor"]["type"], "api_key");
    let table = user.run(["secrets", "history", "DATABASE_URL"]);
    assert!(table.ok().starts_with("2\t"), "{table:#?}");

    let out = user.run(["secrets", "rollback", "DATABASE_URL", "1"]);
    assert!(out.ok().contains("now version 3"), "{out:#?}");
    assert_eq!(
        user.run(["secrets", "get", "DATABASE_URL"]).ok(),
        "postgres://one"
    );

    let get = user.run(["secrets", "get", "PORT", "--json"]).json();
    assert_eq!(
        (get["key"].as_str(), get["value"].as_str()),
        (Some("PORT"), Some("8080"))
    );

    let out = user.run(["secrets", "delete", "PORT"]);
    assert!(out.ok().contains("Deleted PORT"), "{out:#?}");
    let err = user
        .run(["secrets", "get", "PORT"])
        .fails_with(4)
        .to_owned();
    assert!(err.contains("--project"), "{err}");
}

#[test]
fn a_value_comes_from_a_file_byte_for_byte_or_from_stdin_without_its_newline() {
    let project = server().project("values");
    let user = User::with_token(&project);
    let pem = "-----BEGIN KEY-----\nabc=\n-----END KEY-----\n";
    std::fs::write(user.path("server.key"), pem).unwrap();
    user.run(["secrets", "set", "TLS_KEY", "--from-file", "server.key"])
        .ok();
    assert_eq!(user.run(["secrets", "get", "TLS_KEY"]).ok(), pem);

    let out = user.run_with_stdin(["secrets", "set", "API_KEY", "--json"], "from-stdin\n");
    assert_eq!(out.json()["version"], 1);
    assert_eq!(user.run(["secrets", "get", "API_KEY"]).ok(), "from-stdin");
    // Nothing echoes the value.
    assert!(!out.stdout.contains("from-stdin") && !out.stderr.contains("from-stdin"));

    let err = user
        .run(["secrets", "set", "A=1", "B"])
        .fails_with(2)
        .to_owned();
    assert!(err.contains("KEY=VALUE"), "{err}");
    let err = user
        .run(["secrets", "set", "bad key=1"])
        .fails_with(7)
        .to_owned();
    assert!(!err.is_empty());
}

#[test]
fn a_reference_is_resolved_unless_raw_is_asked_for() {
    let project = server().project("references");
    let user = User::with_token(&project);
    user.run([
        "secrets",
        "set",
        "HOST=db.internal",
        "URL=postgres://${HOST}/app",
    ])
    .ok();
    assert_eq!(
        user.run(["secrets", "get", "URL"]).ok(),
        "postgres://db.internal/app"
    );
    assert_eq!(
        user.run(["secrets", "get", "URL", "--raw"]).ok(),
        "postgres://${HOST}/app"
    );
}

#[test]
fn flags_come_before_variables_which_come_before_the_project_file_found_above() {
    let project = server().project("precedence");
    let other = server().project("precedence-other");
    server().put(&project, "staging", "WHERE", "file");
    server().put(&project, "production", "WHERE", "variable");
    server().put(&other, "development", "WHERE", "flag");
    let user = User::new().var("COFFER_TOKEN", &server().admin_token);
    let out = user.run([
        "init",
        "--server",
        &server().url,
        "--org",
        ORG,
        "--project",
        &project,
        "--env",
        "staging",
    ]);
    assert!(out.ok().contains(".coffer.toml"), "{out:#?}");
    let written = std::fs::read_to_string(user.path(".coffer.toml")).unwrap();
    assert!(
        written.contains(&format!("project = \"{project}\"")),
        "{written}"
    );
    let err = user
        .run(["init", "--org", ORG, "--project", &project])
        .fails_with(2)
        .to_owned();
    assert!(err.contains("--force"), "{err}");

    // From a subdirectory, the file above is found.
    let sub = user.path("src/deep");
    std::fs::create_dir_all(&sub).unwrap();
    let get = |extra: &[&str], vars: &[(&str, &str)]| {
        let mut command = user.command(["secrets", "get", "WHERE"]);
        command.args(extra).current_dir(&sub);
        for (k, v) in vars {
            command.env(k, v);
        }
        let child = command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        crate::support::finish(child, crate::support::TIMEOUT)
            .ok()
            .to_owned()
    };
    assert_eq!(get(&[], &[]), "file");
    assert_eq!(
        get(&[], &[("COFFER_ENVIRONMENT", "production")]),
        "variable"
    );
    assert_eq!(
        get(
            &["--project", &other, "--env", "development"],
            &[("COFFER_ENVIRONMENT", "production")]
        ),
        "flag"
    );
}

#[test]
fn on_a_terminal_a_table_is_aligned_with_a_header_and_coloured_unless_no_color() {
    let project = server().project("terminal");
    let user = User::with_token(&project);
    user.run(["secrets", "set", "A=1", "A_LONGER_KEY=2"]).ok();
    let on_terminal = |no_color: bool| {
        let mut command = user.command_on_a_terminal(&["secrets", "list"])?;
        if no_color {
            command.env("NO_COLOR", "1");
        }
        let child = command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        Some(
            crate::support::finish(child, crate::support::TIMEOUT)
                .ok()
                .replace('\r', ""),
        )
    };
    let Some(coloured) = on_terminal(false) else {
        return;
    };
    assert!(coloured.contains("\x1b[1mKEY\x1b[0m"), "{coloured:?}");
    let plain = on_terminal(true).unwrap();
    assert!(!plain.contains('\x1b'), "{plain:?}");
    let lines: Vec<&str> = plain.lines().collect();
    assert!(
        lines[0].starts_with("KEY           VERSION  UPDATED"),
        "{plain}"
    );
    assert!(lines[1].starts_with("A             1        "), "{plain}");
    assert!(lines[2].starts_with("A_LONGER_KEY  1        "), "{plain}");
}
