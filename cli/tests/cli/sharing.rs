//! `coffer compare` and `coffer copy`.

use crate::support::{User, server};

#[test]
fn compare_shows_each_key_and_reveals_values_only_when_asked() {
    let project = server().project("compare");
    server().put(&project, "staging", "SAME", "1");
    server().put(&project, "production", "SAME", "1");
    server().put(&project, "staging", "DIFF", "staging-value");
    server().put(&project, "production", "DIFF", "production-value");
    server().put(&project, "staging", "NEW", "n");
    server().put(&project, "production", "OLD", "o");
    let user = User::with_token(&project);

    let out = user.run(["compare", "staging", "production"]);
    let text = out.ok();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            "DIFF\tdifferent\tv1\tv1",
            "NEW\tonly in base\tv1\t-",
            "OLD\tonly in head\t-\tv1",
            "SAME\tsame\tv1\tv1",
        ],
        "{out:#?}"
    );
    assert!(!text.contains("staging-value"), "{text}");

    let json = user
        .run(["compare", "staging", "production", "--json"])
        .json();
    assert_eq!(json["summary"]["different"], 1);
    assert_eq!(json["summary"]["only_in_base"], 1);
    assert!(json["keys"][0]["base"].get("value").is_none());

    let revealed = user.run(["compare", "staging", "production", "--reveal"]);
    assert!(
        revealed
            .ok()
            .contains("DIFF\tdifferent\tv1\tv1\tstaging-value\tproduction-value"),
        "{revealed:#?}"
    );
    let err = user
        .run(["compare", "staging", "nowhere"])
        .fails_with(4)
        .to_owned();
    assert!(!err.is_empty());
}

#[test]
fn copy_creates_what_is_missing_and_replaces_only_with_overwrite_or_as_references() {
    let project = server().project("copy");
    server().put(&project, "staging", "A", "a-staging");
    server().put(&project, "staging", "B", "b-staging");
    server().put(&project, "staging", "C", "c-staging");
    server().put(&project, "production", "B", "b-production");
    let user = User::with_token(&project);

    let out = user.run(["copy", "--from", "staging", "--to", "production"]);
    let text = out.ok();
    assert!(text.contains("created: A, C"), "{text}");
    assert!(text.contains("skipped"), "{text}");
    let get = |key: &str| {
        user.run(["secrets", "get", key, "--env", "production"])
            .ok()
            .to_owned()
    };
    assert_eq!(get("B"), "b-production");

    let report = user
        .run([
            "copy",
            "--from",
            "staging",
            "--to",
            "production",
            "B",
            "--overwrite",
            "--json",
        ])
        .json();
    assert_eq!(report["updated"], serde_json::json!(["B"]));
    assert_eq!(get("B"), "b-staging");

    // --to defaults to the current environment (development here); references follow.
    let report = user
        .run(["copy", "--from", "staging", "A", "--as-reference", "--json"])
        .json();
    assert_eq!(report["created"], serde_json::json!(["A"]));
    assert_eq!(
        user.run(["secrets", "get", "A", "--raw"]).ok(),
        "${staging.A}"
    );
    server().put(&project, "staging", "A", "a-changed");
    assert_eq!(user.run(["secrets", "get", "A"]).ok(), "a-changed");

    let err = user
        .run(["copy", "--from", "staging", "--to", "production", "MISSING"])
        .fails_with(7)
        .to_owned();
    assert!(err.contains("MISSING"), "{err}");
    let err = user
        .run(["copy", "--from", "development"])
        .fails_with(2)
        .to_owned();
    assert!(err.contains("two environments"), "{err}");
}
