//! `coffer export` and `coffer import`.

use crate::support::{User, mode, server};

#[test]
fn an_export_imports_back_into_another_environment_in_every_format() {
    let project = server().project("transfer");
    server().environment(&project, "qa");
    let user = User::with_token(&project);
    user.run([
        "secrets",
        "set",
        "PLAIN=value",
        "SPACES=a value with spaces",
        "QUOTES=say \"hi\" # not a comment",
        "MULTILINE=line one\nline two",
        "REF=${PLAIN}-suffix",
    ])
    .ok();
    let original = user.run(["secrets", "list", "--reveal", "--json"]).json();

    for (format, file) in [
        ("dotenv", "exported.env"),
        ("json", "exported.json"),
        ("yaml", "exported.yaml"),
    ] {
        let out = user.run(["export", "--format", format, "--output", file]);
        out.ok();
        assert!(out.stderr.contains(file), "{out:#?}");
        assert_eq!(mode(&user.path(file)), 0o600, "{file}");
        // References stay references, so the file imports back as it was.
        let text = std::fs::read_to_string(user.path(file)).unwrap();
        assert!(text.contains("${PLAIN}"), "{format}: {text}");

        let env = match format {
            "dotenv" => "staging",
            "json" => "production",
            _ => "qa",
        };
        // The format comes from the file's name.
        let report = user.run(["import", "--env", env, file, "--json"]).json();
        assert_eq!(report["created"], 5, "{format}: {report}");
        let copy = user
            .run(["secrets", "list", "--reveal", "--json", "--env", env])
            .json();
        let values = |doc: &serde_json::Value| -> Vec<(String, String)> {
            doc["secrets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    (
                        s["key"].as_str().unwrap().to_owned(),
                        s["value"].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        };
        assert_eq!(values(&copy), values(&original), "{format}");
    }

    // To stdout, the file itself.
    let dotenv = user.run(["export"]);
    assert!(dotenv.ok().contains("PLAIN="), "{dotenv:#?}");
    let json: serde_json::Value =
        serde_json::from_str(user.run(["export", "--format", "json"]).ok()).unwrap();
    assert_eq!(json["SPACES"], "a value with spaces");

    // From stdin, with the format named; importing the same file again changes nothing.
    let out = user.run_with_stdin(
        ["import", "-", "--format", "dotenv", "--env", "staging"],
        dotenv.ok(),
    );
    assert!(out.ok().contains("5 unchanged"), "{out:#?}");
}

#[test]
fn an_import_needs_a_format_it_can_tell_and_a_malformed_file_changes_nothing() {
    let project = server().project("import-errors");
    let user = User::with_token(&project);
    std::fs::write(user.path("secrets.txt"), "A=1\n").unwrap();
    let err = user.run(["import", "secrets.txt"]).fails_with(2).to_owned();
    assert!(err.contains("--format"), "{err}");

    std::fs::write(user.path("broken.json"), "{\"A\": \"1\", \"B\": }").unwrap();
    let err = user.run(["import", "broken.json"]).fails_with(7).to_owned();
    assert!(err.contains("line"), "{err}");
    let list = user.run(["secrets", "list", "--json"]).json();
    assert!(list["secrets"].as_array().unwrap().is_empty());

    let err = user.run(["import", "missing.env"]).fails_with(1).to_owned();
    assert!(err.contains("missing.env"), "{err}");
}

#[test]
fn a_large_import_shows_its_upload_on_a_terminal() {
    let project = server().project("large-import");
    let user = User::with_token(&project);
    let file: String = (0..1000)
        .map(|i| format!("KEY_{i}={}\n", "x".repeat(100)))
        .collect();
    std::fs::write(user.path("big.env"), &file).unwrap();
    let Some(mut command) = user.command_on_a_terminal(&["import", "big.env"]) else {
        return;
    };
    let child = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let screen = crate::support::finish(child, crate::support::TIMEOUT)
        .ok()
        .to_owned();
    assert!(
        screen.contains("uploading big.env (106.3 KiB)"),
        "{screen:?}"
    );
    assert!(screen.contains("1000 created"), "{screen:?}");
    // Piped, no spinner.
    let out = user.run(["import", "big.env"]);
    assert!(!out.stderr.contains("uploading"), "{out:#?}");
    assert!(out.ok().contains("1000 unchanged"), "{out:#?}");
}
