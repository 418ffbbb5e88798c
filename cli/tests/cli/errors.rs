//! Errors that say what to do next, with their documented exit codes.

use crate::support::{ORG, User, closed_port_url, server};

#[test]
fn without_a_project_file_or_flags_the_error_says_to_run_coffer_init() {
    let user = User::new()
        .var("COFFER_TOKEN", &server().admin_token)
        .var("COFFER_SERVER_URL", &server().url);
    let err = user.run(["secrets", "list"]).fails_with(2).to_owned();
    assert!(err.contains("run `coffer init` or pass --org"), "{err}");
    let err = user
        .run(["secrets", "list", "--org", ORG])
        .fails_with(2)
        .to_owned();
    assert!(
        err.contains("no project: run `coffer init` or pass --project"),
        "{err}"
    );
    assert!(err.contains("no .coffer.toml"), "{err}");
    let err = User::new().run(["whoami"]).fails_with(2).to_owned();
    assert!(
        err.contains("no server") && err.contains("--server"),
        "{err}"
    );
}

#[test]
fn an_unreachable_server_is_named_with_exit_code_6() {
    let url = closed_port_url();
    let user = User::with_token("web").var("COFFER_SERVER_URL", &url);
    let out = user.run(["secrets", "list"]);
    let err = out.fails_with(6);
    assert!(err.contains(&format!("cannot reach {url}/")), "{err}");
    assert!(err.contains("is the server running?"), "{err}");
    assert!(!err.contains(&server().admin_token));
}

#[test]
fn what_does_not_exist_is_4_and_what_is_not_allowed_is_5() {
    let project = server().project("allowed");
    let user = User::with_token("no-such-project");
    let err = user.run(["secrets", "list"]).fails_with(4).to_owned();
    assert!(
        err.contains("not_found") || err.contains("not found"),
        "{err}"
    );

    let token = crate::support::runtime()
        .block_on(server().admin().create_service_token(
            ORG,
            &coffer_client::CreateServiceTokenRequest {
                name: "read-only".into(),
                project: project.clone(),
                environments: vec!["development".into()],
                access: coffer_client::TokenAccess::Read,
                expires_in_days: None,
            },
        ))
        .unwrap();
    let reader = User::with_token(&project).var("COFFER_TOKEN", token.token.expose());
    reader.run(["secrets", "list"]).ok();
    let err = reader
        .run(["secrets", "set", "A=1"])
        .fails_with(5)
        .to_owned();
    assert!(err.contains("role does not allow"), "{err}");
}

#[test]
fn every_command_has_help_the_exit_codes_are_listed_and_bad_usage_is_2() {
    let user = User::new();
    let help = user.run(["--help"]);
    let text = help.ok();
    assert!(text.contains("Exit codes:"), "{text}");
    assert!(text.contains("3  not authenticated"), "{text}");
    for command in [
        vec!["login"],
        vec!["logout"],
        vec!["whoami"],
        vec!["init"],
        vec!["secrets"],
        vec!["secrets", "list"],
        vec!["secrets", "get"],
        vec!["secrets", "set"],
        vec!["secrets", "delete"],
        vec!["secrets", "history"],
        vec!["secrets", "rollback"],
        vec!["export"],
        vec!["import"],
        vec!["compare"],
        vec!["copy"],
        vec!["run"],
        vec!["completions"],
    ] {
        let mut args = command.clone();
        args.push("--help");
        let out = user.run(&args);
        assert!(out.ok().contains("Usage: coffer"), "{command:?}: {out:#?}");
    }
    user.run(["secrets", "frobnicate"]).fails_with(2);
    user.run(["run"]).fails_with(2);
}

#[test]
fn completions_are_generated_for_each_shell() {
    let user = User::new();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = user.run(["completions", shell]);
        assert!(out.ok().contains("coffer"), "{shell}");
    }
}
