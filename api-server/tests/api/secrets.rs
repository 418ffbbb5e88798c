use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Session, TestApp, acme_web, db_test};

const ENV: &str = "/api/v1/orgs/acme/projects/web/environments";

fn secrets_of(v: &Value) -> Vec<(String, String)> {
    v["secrets"]
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
}

db_test!(async fn a_secret_is_created_read_updated_versioned_rolled_back_deleted_and_restored(app) {
    let ann = acme_web(&app).await;
    let base = format!("{ENV}/development/secrets");
    let r = app.post(&base, Some(&ann.access), json!({ "key": "DATABASE_URL", "value": "postgres://one", "comment": "primary" })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!((r.json()["value"].as_str(), r.json()["version"].as_i64(), r.json()["comment"].as_str()), (Some("postgres://one"), Some(1), Some("primary")));
    app.post(&base, Some(&ann.access), json!({ "key": "DATABASE_URL", "value": "x" })).await.assert_error(StatusCode::CONFLICT, "secret_exists");

    let one = format!("{base}/DATABASE_URL");
    let r = app.put(&one, Some(&ann.access), json!({ "value": "postgres://two" })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!((r.json()["version"].as_i64(), r.json()["comment"].as_str()), (Some(2), Some("primary")), "the comment is kept");
    assert_eq!(app.get(&one, Some(&ann.access)).await.json()["value"], "postgres://two");

    let versions = app.get(&format!("{one}/versions"), Some(&ann.access)).await.json()["items"].clone();
    let numbers: Vec<i64> = versions.as_array().unwrap().iter().map(|v| v["version"].as_i64().unwrap()).collect();
    assert_eq!(numbers, [2, 1]);
    assert_eq!(versions[0]["actor"]["id"], ann.user_id.as_str());
    assert!(versions[0].get("value").is_none());
    assert_eq!(app.get(&format!("{one}/versions/1"), Some(&ann.access)).await.json()["value"], "postgres://one");
    app.get(&format!("{one}/versions/9"), Some(&ann.access)).await.assert_error(StatusCode::NOT_FOUND, "not_found");

    let r = app.post(&format!("{one}/rollback"), Some(&ann.access), json!({ "version": 1 })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!((r.json()["value"].as_str(), r.json()["version"].as_i64()), (Some("postgres://one"), Some(3)));

    assert_eq!(app.delete(&one, Some(&ann.access)).await.status, StatusCode::NO_CONTENT);
    app.get(&one, Some(&ann.access)).await.assert_error(StatusCode::NOT_FOUND, "not_found");
    assert!(secrets_of(&app.get(&base, Some(&ann.access)).await.json()).is_empty());
    app.delete(&one, Some(&ann.access)).await.assert_error(StatusCode::NOT_FOUND, "not_found");
    let r = app.post(&format!("{one}/restore"), Some(&ann.access), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!((r.json()["value"].as_str(), r.json()["version"].as_i64()), (Some("postgres://one"), Some(3)));
    assert_eq!(app.get(&format!("{one}/versions"), Some(&ann.access)).await.json()["items"].as_array().unwrap().len(), 3, "history survives deletion");
    let page = app.get(&format!("{one}/versions?limit=2"), Some(&ann.access)).await.json();
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let rest = app.get(&format!("{one}/versions?limit=2&cursor={}", page["next_cursor"].as_str().unwrap()), Some(&ann.access)).await.json();
    assert_eq!(rest["items"][0]["version"], 1);
    assert!(rest["next_cursor"].is_null());
});

db_test!(async fn bad_keys_values_and_comments_are_refused_and_change_nothing(app) {
    let ann = acme_web(&app).await;
    let base = format!("{ENV}/development/secrets");
    for key in ["", "1ABC", "A B", "A=B", &"K".repeat(257)] {
        app.post(&base, Some(&ann.access), json!({ "key": key, "value": "v" })).await.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_key");
    }
    app.post(&base, Some(&ann.access), json!({ "key": "BIG", "value": "x".repeat(64 * 1024 + 1) })).await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "value_too_large");
    app.post(&base, Some(&ann.access), json!({ "key": "C", "value": "v", "comment": "c".repeat(4097) })).await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "comment_too_long");
    app.post(&base, Some(&ann.access), json!({ "key": "N", "value": 5 })).await.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    let ok = app.post(&base, Some(&ann.access), json!({ "key": "MAX", "value": "x".repeat(64 * 1024) })).await;
    assert_eq!(ok.status, StatusCode::CREATED);
    let r = app.put(&base, Some(&ann.access), json!({ "secrets": [{ "key": "GOOD", "value": "1" }, { "key": "bad key", "value": "2" }] })).await;
    r.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_key");
    assert_eq!(secrets_of(&app.get(&base, Some(&ann.access)).await.json()).len(), 1, "the bulk write was all or nothing");
});

db_test!(async fn the_bulk_read_has_a_revision_and_an_etag_and_answers_304_when_unchanged(app) {
    let ann = acme_web(&app).await;
    let base = format!("{ENV}/staging/secrets");
    let r = app.put(&base, Some(&ann.access), json!({ "secrets": [{ "key": "A", "value": "1" }, { "key": "B", "value": "2" }] })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json(), json!({ "created": 2, "updated": 0, "unchanged": 0, "revision": 1 }));
    let r = app.get(&base, Some(&ann.access)).await;
    assert_eq!(r.json()["revision"], 1);
    assert_eq!(secrets_of(&r.json()), [("A".to_owned(), "1".to_owned()), ("B".to_owned(), "2".to_owned())]);
    assert_eq!(r.headers.get("cache-control").unwrap(), "no-store");
    let etag = r.headers.get("etag").unwrap().to_str().unwrap().to_owned();

    let conditional = |tag: &str| Request::get(&base).header("authorization", format!("Bearer {}", ann.access)).header("if-none-match", tag).body(Body::empty()).unwrap();
    let r = app.send(conditional(&etag)).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert!(r.body.is_empty());
    assert_eq!(r.headers.get("etag").unwrap().to_str().unwrap(), etag);

    // An unchanged bulk write changes nothing, not even the revision.
    let r = app.put(&base, Some(&ann.access), json!({ "secrets": [{ "key": "A", "value": "1" }, { "key": "B", "value": "3" }] })).await;
    assert_eq!(r.json(), json!({ "created": 0, "updated": 1, "unchanged": 1, "revision": 2 }));
    let r = app.send(conditional(&etag)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["revision"], 2);
    assert_ne!(r.headers.get("etag").unwrap().to_str().unwrap(), etag);
});

db_test!(async fn an_environment_created_again_never_matches_the_etag_of_the_one_deleted(app) {
    let ann = acme_web(&app).await;
    let base = format!("{ENV}/preview/secrets");
    let create = || app.post(ENV, Some(&ann.access), json!({ "slug": "preview" }));
    assert_eq!(create().await.status, StatusCode::CREATED);
    app.put(&base, Some(&ann.access), json!({ "secrets": [{ "key": "A", "value": "old" }] })).await;
    let etag = app.get(&base, Some(&ann.access)).await.headers.get("etag").unwrap().to_str().unwrap().to_owned();
    assert_eq!(app.delete(&format!("{ENV}/preview"), Some(&ann.access)).await.status, StatusCode::NO_CONTENT);
    assert_eq!(create().await.status, StatusCode::CREATED);
    // The same revision (1) as before, but other data: a conditional read must not answer 304.
    app.put(&base, Some(&ann.access), json!({ "secrets": [{ "key": "A", "value": "new" }] })).await;
    let request = Request::get(&base).header("authorization", format!("Bearer {}", ann.access)).header("if-none-match", &etag).body(Body::empty()).unwrap();
    let r = app.send(request).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["revision"], 1);
    assert_eq!(secrets_of(&r.json()), [("A".to_owned(), "new".to_owned())]);
});

db_test!(async fn references_resolve_across_environments_and_projects_with_cycles_reported(app) {
    let ann = acme_web(&app).await;
    app.project(&ann, "acme", "shared").await;
    app.post("/api/v1/orgs/acme/projects/shared/environments/production/secrets", Some(&ann.access), json!({ "key": "HOST", "value": "db.internal" })).await;
    app.post(&format!("{ENV}/production/secrets"), Some(&ann.access), json!({ "key": "PASSWORD", "value": "s3cr3t" })).await;
    let dev = format!("{ENV}/development/secrets");
    let r = app.put(&dev, Some(&ann.access), json!({ "secrets": [
        { "key": "USER", "value": "app" },
        { "key": "URL", "value": "postgres://${USER}:${production.PASSWORD}@${shared.production.HOST}/app" },
        { "key": "LITERAL", "value": "$${NOT_A_REF}" },
    ] })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let values: std::collections::BTreeMap<String, String> = secrets_of(&app.get(&dev, Some(&ann.access)).await.json()).into_iter().collect();
    assert_eq!(values["URL"], "postgres://app:s3cr3t@db.internal/app");
    assert_eq!(values["LITERAL"], "${NOT_A_REF}");
    // Values read through references are audited in their own environment.
    let audit = app.get("/api/v1/orgs/acme/audit-events?action=secrets.read&project=shared&environment=production", Some(&ann.access)).await.json();
    let via: Vec<&Value> = audit["items"].as_array().unwrap().iter().filter(|e| e["details"]["via_reference"] == true).collect();
    assert_eq!(via.len(), 1, "{audit}");
    assert_eq!(via[0]["details"]["keys"], json!(["HOST"]));
    let raw: std::collections::BTreeMap<String, String> = secrets_of(&app.get(&format!("{dev}?resolve=false"), Some(&ann.access)).await.json()).into_iter().collect();
    assert_eq!(raw["URL"], "postgres://${USER}:${production.PASSWORD}@${shared.production.HOST}/app");
    assert_eq!(app.get(&format!("{dev}/URL?resolve=true"), Some(&ann.access)).await.json()["value"], "postgres://app:s3cr3t@db.internal/app");

    // A change in a referenced environment changes the resolved read's entity tag.
    let before = app.get(&dev, Some(&ann.access)).await.headers.get("etag").unwrap().clone();
    app.put(&format!("{ENV}/production/secrets/PASSWORD"), Some(&ann.access), json!({ "value": "n3w" })).await;
    let after = app.get(&dev, Some(&ann.access)).await;
    assert_ne!(after.headers.get("etag").unwrap(), &before);
    assert!(after.text().contains("postgres://app:n3w@db.internal/app"));

    // Broken references are refused when written (see references.rs for the read side).
    let m = app.put(&dev, Some(&ann.access), json!({ "secrets": [{ "key": "A", "value": "${B}" }, { "key": "B", "value": "x${A}" }] })).await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "reference_error");
    assert!(m.contains("cycle"), "{m}");
    let m = app.put(&dev, Some(&ann.access), json!({ "secrets": [{ "key": "A", "value": "${MISSING}" }, { "key": "B", "value": "b" }] })).await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "reference_error");
    assert!(m.contains("development/A") && m.contains("does not exist"), "{m}");
});

db_test!(async fn a_reference_to_an_environment_the_reader_may_not_read_is_refused(app) {
    let ann = acme_web(&app).await;
    let dev = app.member(&ann, "acme", "dev@example.com", "member").await;
    app.put(&format!("/api/v1/orgs/acme/projects/web/access/users/{}", dev.user_id), Some(&ann.access), json!({ "role": "developer" })).await;
    app.put(&format!("{ENV}/production/policies/developer"), Some(&ann.access), json!({ "access": "none" })).await;
    app.post(&format!("{ENV}/production/secrets"), Some(&ann.access), json!({ "key": "PASSWORD", "value": "prod-only-value" })).await;
    app.post(&format!("{ENV}/development/secrets"), Some(&ann.access), json!({ "key": "STEAL", "value": "${production.PASSWORD}" })).await;

    app.get(&format!("{ENV}/production/secrets"), Some(&dev.access)).await.assert_error(StatusCode::FORBIDDEN, "forbidden");
    let r = app.get(&format!("{ENV}/development/secrets"), Some(&dev.access)).await;
    r.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "reference_error");
    assert!(!r.text().contains("prod-only-value"));
    // The admin reads it resolved.
    assert!(app.get(&format!("{ENV}/development/secrets"), Some(&ann.access)).await.text().contains("prod-only-value"));
});

db_test!(async fn project_roles_and_environment_policies_decide_who_reads_and_writes(app) {
    let ann = acme_web(&app).await;
    app.post(&format!("{ENV}/production/secrets"), Some(&ann.access), json!({ "key": "K", "value": "v" })).await;
    let viewer = app.member(&ann, "acme", "viewer@example.com", "member").await;
    let developer = app.member(&ann, "acme", "developer@example.com", "member").await;
    let outsider = app.member(&ann, "acme", "nobody@example.com", "member").await;
    for (user, role) in [(&viewer, "viewer"), (&developer, "developer")] {
        let url = format!("/api/v1/orgs/acme/projects/web/access/users/{}", user.user_id);
        assert_eq!(app.put(&url, Some(&ann.access), json!({ "role": role })).await.status, StatusCode::NO_CONTENT);
    }
    let prod = format!("{ENV}/production/secrets");
    let key_url = format!("{prod}/K");
    let write = |who: &Session| {
        let token = who.access.clone();
        let app = &app;
        let url = key_url.clone();
        async move { app.put(&url, Some(&token), json!({ "value": "w" })).await }
    };

    assert_eq!(app.get(&prod, Some(&viewer.access)).await.status, StatusCode::OK);
    write(&viewer).await.assert_error(StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(write(&developer).await.status, StatusCode::OK);
    app.get(&prod, Some(&outsider.access)).await.assert_error(StatusCode::NOT_FOUND, "not_found");

    app.put(&format!("{ENV}/production/policies/developer"), Some(&ann.access), json!({ "access": "read" })).await;
    assert_eq!(app.get(&prod, Some(&developer.access)).await.status, StatusCode::OK);
    write(&developer).await.assert_error(StatusCode::FORBIDDEN, "forbidden");
    app.put(&format!("{ENV}/production/policies/viewer"), Some(&ann.access), json!({ "access": "none" })).await;
    app.get(&prod, Some(&viewer.access)).await.assert_error(StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(app.get(&format!("{ENV}/staging/secrets"), Some(&viewer.access)).await.status, StatusCode::OK);
});

db_test!(async fn reading_values_is_audited_with_keys_but_never_values(app) {
    let ann = acme_web(&app).await;
    app.post(&format!("{ENV}/development/secrets"), Some(&ann.access), json!({ "key": "TOKEN", "value": "tok-9f8e7d" })).await;
    app.get(&format!("{ENV}/development/secrets"), Some(&ann.access)).await;
    app.get(&format!("{ENV}/development/secrets/TOKEN"), Some(&ann.access)).await;
    let r = app.get("/api/v1/audit-events?limit=200", Some(&ann.access)).await;
    assert!(!r.text().contains("tok-9f8e7d"));
    let v = r.json();
    let reads: Vec<&Value> = v["items"].as_array().unwrap().iter().filter(|e| e["action"] == "secrets.read").collect();
    assert_eq!(reads.len(), 2, "{reads:?}");
    assert!(reads.iter().all(|e| e["details"]["keys"] == json!(["TOKEN"])), "{reads:?}");
    let created = v["items"].as_array().unwrap().iter().find(|e| e["action"] == "secret.created").unwrap();
    assert_eq!(created["details"]["created"], json!(["TOKEN"]));
});

db_test!(async fn export_then_import_into_an_empty_environment_gives_identical_secrets(app) {
    let ann = acme_web(&app).await;
    let tricky = json!({ "secrets": [
        { "key": "EMPTY", "value": "" },
        { "key": "SPACES", "value": "  padded  " },
        { "key": "QUOTES", "value": "it's \"quoted\"" },
        { "key": "HASH", "value": "a # not a comment" },
        { "key": "MULTI", "value": "line one\nline two\r\nline three" },
        { "key": "DOLLAR", "value": "$HOME and ${SPACES} and $${ESC}" },
        { "key": "BACKSLASH", "value": "C:\\path\\n" },
        { "key": "UNICODE", "value": "clé 🔑" },
        { "key": "NUMBERISH", "value": "007" },
        { "key": "BOOLISH", "value": "true" },
    ] });
    assert_eq!(app.put(&format!("{ENV}/development/secrets"), Some(&ann.access), tricky).await.status, StatusCode::OK);
    let original = app.get(&format!("{ENV}/development/secrets?resolve=false"), Some(&ann.access)).await.json();
    for (i, format) in ["dotenv", "json", "yaml"].into_iter().enumerate() {
        let r = app.get(&format!("{ENV}/development/secrets/export?format={format}"), Some(&ann.access)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert!(r.headers.get("content-disposition").unwrap().to_str().unwrap().contains("development."));
        let target = format!("copy-{i}");
        app.post(ENV, Some(&ann.access), json!({ "slug": target })).await;
        let import = Request::post(format!("{ENV}/{target}/secrets/import?format={format}"))
            .header("authorization", format!("Bearer {}", ann.access))
            .header("content-type", "text/plain")
            .body(Body::from(r.body.clone()))
            .unwrap();
        let report = app.send(import).await;
        assert_eq!(report.status, StatusCode::OK, "{format}: {}", report.text());
        assert_eq!(report.json()["created"], 10, "{format}");
        let copy = app.get(&format!("{ENV}/{target}/secrets?resolve=false"), Some(&ann.access)).await.json();
        assert_eq!(secrets_of(&copy), secrets_of(&original), "{format}");
        // Importing the same file again changes nothing.
        let again = Request::post(format!("{ENV}/{target}/secrets/import?format={format}"))
            .header("authorization", format!("Bearer {}", ann.access))
            .body(Body::from(r.body.clone()))
            .unwrap();
        assert_eq!(app.send(again).await.json(), json!({ "created": 0, "updated": 0, "unchanged": 10, "revision": null }));
    }
});

db_test!(async fn a_malformed_import_names_the_line_and_changes_nothing(app) {
    let ann = acme_web(&app).await;
    let send = |format: &str, body: &str| {
        let req = Request::builder().method(Method::POST).uri(format!("{ENV}/development/secrets/import?format={format}"))
            .header("authorization", format!("Bearer {}", ann.access)).body(Body::from(body.to_owned())).unwrap();
        app.send(req)
    };
    let m = send("dotenv", "GOOD=1\nOTHER=\"unterminated\nTHIRD=3\n").await.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_file");
    assert!(m.contains("line 2"), "{m}");
    let m = send("dotenv", "GOOD=1\n9BAD=x\n").await.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_file");
    assert!(m.contains("line 2") && !m.contains("x\n"), "{m}");
    let m = send("json", "{\"A\": \"1\",\n \"B\": [1]}").await.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_file");
    assert!(m.contains('B'), "{m}");
    send("yaml", "A: [1, 2]\n").await.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_file");
    send("toml", "A=1").await.assert_error(StatusCode::BAD_REQUEST, "invalid_query");
    let now = app.get(&format!("{ENV}/development/secrets"), Some(&ann.access)).await.json();
    assert!(secrets_of(&now).is_empty());
    assert_eq!(now["revision"], 0);
});

db_test!(async fn a_ciphertext_moved_to_another_row_fails_to_decrypt_and_reveals_nothing(app) {
    let ann = acme_web(&app).await;
    let base = format!("{ENV}/development/secrets");
    app.put(&base, Some(&ann.access), json!({ "secrets": [{ "key": "A", "value": "value-of-a" }, { "key": "B", "value": "value-of-b" }] })).await;
    // Copy A's sealed value over B's: same DEK, same environment, different place.
    sqlx::query(
        "UPDATE secret_versions SET value_ct = (SELECT v.value_ct FROM secret_versions v JOIN secrets s ON s.id = v.secret_id WHERE s.key = 'A') \
         WHERE secret_id = (SELECT id FROM secrets WHERE key = 'B')",
    ).execute(app.state.db.pool()).await.unwrap();
    app.state.deks.clear();
    let r = app.get(&format!("{base}/B"), Some(&ann.access)).await;
    r.assert_error(StatusCode::INTERNAL_SERVER_ERROR, "internal_error");
    assert!(!r.text().contains("value-of-a"));
    assert_eq!(app.get(&format!("{base}/A"), Some(&ann.access)).await.json()["value"], "value-of-a");
});

db_test!(async fn no_secret_value_is_stored_in_plaintext(app) {
    let ann = acme_web(&app).await;
    let marker = "plaintext-marker-5c1e7a";
    app.post(&format!("{ENV}/development/secrets"), Some(&ann.access), json!({ "key": "M", "value": marker, "comment": format!("comment {marker}") })).await;
    app.put(&format!("{ENV}/development/secrets/M"), Some(&ann.access), json!({ "value": format!("{marker}-2") })).await;
    // Every stored byte of every table, as the database holds it.
    let tables = ["users", "sessions", "refresh_tokens", "api_keys", "audit_events", "organizations", "projects", "environments", "deks", "secrets", "secret_versions"];
    for table in tables {
        let dump: Vec<String> = if app.state.db.backend() == coffer_server::db::Backend::Postgres {
            sqlx::query_scalar(&format!("SELECT CAST(t AS TEXT) FROM {table} t")).fetch_all(app.state.db.pool()).await.unwrap()
        } else {
            let rows = sqlx::query(&format!("SELECT * FROM {table}")).fetch_all(app.state.db.pool()).await.unwrap();
            use sqlx::Row;
            rows.iter().map(|row| (0..row.columns().len()).map(|i| {
                row.try_get::<Vec<u8>, _>(i).map(|b| String::from_utf8_lossy(&b).into_owned())
                    .or_else(|_| row.try_get::<String, _>(i)).unwrap_or_default()
            }).collect::<Vec<_>>().join("|")).collect()
        };
        assert!(dump.iter().all(|row| !row.contains(marker)), "{table} holds the value in plaintext");
    }
    if app.state.db.backend() == coffer_server::db::Backend::Sqlite {
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(app.state.db.pool()).await.unwrap();
        // The database, its WAL, the keys, the read-audit journal: every file.
        let mut dirs = vec![app.state.config.data_dir.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let bytes = std::fs::read(&path).unwrap();
                assert!(!bytes.windows(marker.len()).any(|w| w == marker.as_bytes()), "{} holds the value", path.display());
            }
        }
    }
});

/// Collects everything logged, at every level, while it is the thread's subscriber.
#[derive(Clone, Default)]
struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_secret_value_reaches_the_logs() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let marker = "log-marker-3b9d1f";
    let app = TestApp::sqlite(|_| {}).await;
    let ann = acme_web(&app).await;
    let base = format!("{ENV}/development/secrets");
    app.post(
        &base,
        Some(&ann.access),
        json!({ "key": "M", "value": marker, "comment": marker }),
    )
    .await;
    app.put(
        &format!("{base}/M"),
        Some(&ann.access),
        json!({ "value": format!("{marker}-2") }),
    )
    .await;
    app.get(&base, Some(&ann.access)).await;
    app.get(&format!("{base}/export?format=json"), Some(&ann.access))
        .await;
    app.put(
        &base,
        Some(&ann.access),
        json!({ "secrets": [{ "key": "BAD KEY", "value": marker }] }),
    )
    .await;
    app.post(
        &base,
        Some(&ann.access),
        json!({ "key": "N", "value": 12, "comment": marker }),
    )
    .await;
    app.put(
        &base,
        Some(&ann.access),
        json!({ "secrets": [{ "key": "R", "value": format!("${{MISSING}}{marker}") }] }),
    )
    .await;
    app.get(&base, Some(&ann.access)).await;
    // A failure that is logged with its cause.
    sqlx::query("UPDATE secret_versions SET value_ct = comment_ct WHERE comment_ct IS NOT NULL")
        .execute(app.state.db.pool())
        .await
        .unwrap();
    app.state.deks.clear();
    app.get(&format!("{base}/M/versions/1"), Some(&ann.access))
        .await
        .assert_error(StatusCode::INTERNAL_SERVER_ERROR, "internal_error");

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("internal error"),
        "the logs were captured: {text}"
    );
    assert!(!text.contains(marker), "a secret value reached the logs");
    assert!(
        !text.contains(&ann.access) && !text.contains(&ann.refresh),
        "a token reached the logs"
    );
}

db_test!(async fn each_of_concurrent_writes_of_one_key_answers_with_the_version_it_wrote(app) {
    let ann = acme_web(&app).await;
    let one = format!("{ENV}/development/secrets/SHARED");
    let writes = (0..16).map(|i| {
        let (app, one, token) = (&app, &one, ann.access.clone());
        async move {
            let value = format!("v{i}");
            let r = app.put(one, Some(&token), json!({ "value": value })).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            let body = r.json();
            assert_eq!(body["value"], value.as_str(), "the answer holds the value this request wrote");
            (value, body["version"].as_i64().unwrap())
        }
    });
    let answers = futures::future::join_all(writes).await;
    let mut versions: Vec<i64> = answers.iter().map(|(_, v)| *v).collect();
    versions.sort_unstable();
    assert_eq!(versions, (1..=16).collect::<Vec<_>>(), "each answer names its own version");
    for (value, version) in answers {
        let stored = app.get(&format!("{one}/versions/{version}"), Some(&ann.access)).await.json();
        assert_eq!(stored["value"], value.as_str(), "version {version} holds what its writer was told");
    }
});

db_test!(async fn concurrent_creates_of_one_key_make_one_secret_and_answer_the_others_409(app) {
    let ann = acme_web(&app).await;
    let base = format!("{ENV}/development/secrets");
    let creates = (0..8).map(|i| {
        let (app, base, token) = (&app, &base, ann.access.clone());
        async move { app.post(base, Some(&token), json!({ "key": "ONCE", "value": format!("v{i}") })).await }
    });
    let answers = futures::future::join_all(creates).await;
    let created = answers.iter().filter(|r| r.status == StatusCode::CREATED).count();
    assert_eq!(created, 1, "one create wins");
    for r in answers.iter().filter(|r| r.status != StatusCode::CREATED) {
        r.assert_error(StatusCode::CONFLICT, "secret_exists");
    }
    let history = app.get(&format!("{base}/ONCE/versions"), Some(&ann.access)).await.json();
    assert_eq!(history["items"].as_array().unwrap().len(), 1, "no create became a second version");
});

db_test!(async fn a_put_without_a_comment_keeps_the_current_one_and_an_empty_one_clears_it(app) {
    let ann = acme_web(&app).await;
    let base = format!("{ENV}/development/secrets");
    let r = app.post(&base, Some(&ann.access), json!({ "key": "K", "value": "a", "comment": "why" })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let created_at = r.json()["created_at"].clone();
    let r = app.put(&format!("{base}/K"), Some(&ann.access), json!({ "value": "b" })).await;
    assert_eq!((r.json()["comment"].as_str(), r.json()["version"].as_i64()), (Some("why"), Some(2)));
    assert_eq!(r.json()["created_at"], created_at, "created once");
    assert_eq!(app.get(&format!("{base}/K"), Some(&ann.access)).await.json()["comment"], "why");
    let r = app.put(&format!("{base}/K"), Some(&ann.access), json!({ "value": "c", "comment": "" })).await;
    assert!(r.json()["comment"].is_null(), "{}", r.text());
    assert!(app.get(&format!("{base}/K"), Some(&ann.access)).await.json()["comment"].is_null());
});
