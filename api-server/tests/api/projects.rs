use axum::http::StatusCode;
use serde_json::json;

use crate::helpers::{acme_web, db_test};

fn slugs(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| e["slug"].as_str().unwrap().to_owned())
        .collect()
}

db_test!(async fn a_new_project_gets_the_default_environments_or_the_ones_named(app) {
    let ann = app.register("ann@example.com").await;
    app.org(&ann, "acme").await;
    let r = app.post("/api/v1/orgs/acme/projects", Some(&ann.access), json!({ "name": "Web", "slug": "web" })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(slugs(&r.json()["environments"]), ["development", "staging", "production"]);
    assert_eq!(r.json()["environments"][0]["name"], "Development");
    assert_eq!(r.json()["environments"][0]["revision"], 0);

    let r = app.post("/api/v1/orgs/acme/projects", Some(&ann.access), json!({ "name": "Api", "slug": "api", "environments": ["dev", "prod"] })).await;
    assert_eq!(slugs(&r.json()["environments"]), ["dev", "prod"]);
    let got = app.get("/api/v1/orgs/acme/projects/api", Some(&ann.access)).await.json();
    assert_eq!(got["role"], "admin");
    assert_eq!(slugs(&got["environments"]), ["dev", "prod"]);
    let list = app.get("/api/v1/orgs/acme/projects", Some(&ann.access)).await.json();
    assert_eq!(slugs(&list["items"]), ["api", "web"]);

    app.post("/api/v1/orgs/acme/projects", Some(&ann.access), json!({ "name": "Web", "slug": "web" })).await.assert_error(StatusCode::CONFLICT, "slug_taken");
    app.post("/api/v1/orgs/acme/projects", Some(&ann.access), json!({ "name": "X", "slug": "x", "environments": ["a", "a"] })).await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "duplicate_environment");
    app.post("/api/v1/orgs/acme/projects", Some(&ann.access), json!({ "name": "X", "slug": "x", "environments": ["Bad Env"] })).await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_slug");
    assert_eq!(app.get("/api/v1/orgs/acme/projects", Some(&ann.access)).await.json()["items"].as_array().unwrap().len(), 2);
});

db_test!(async fn environments_are_created_renamed_reordered_and_deleted(app) {
    let ann = app.register("ann@example.com").await;
    app.org(&ann, "acme").await;
    app.project(&ann, "acme", "web").await;
    let base = "/api/v1/orgs/acme/projects/web/environments";
    let r = app.post(base, Some(&ann.access), json!({ "slug": "qa" })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(r.json()["position"], 3);
    app.post(base, Some(&ann.access), json!({ "slug": "qa" })).await.assert_error(StatusCode::CONFLICT, "slug_taken");

    let r = app.patch(&format!("{base}/qa"), Some(&ann.access), json!({ "name": "Quality", "position": 0 })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["name"], "Quality");
    let envs = app.get(base, Some(&ann.access)).await.json()["items"].clone();
    assert_eq!(slugs(&envs), ["qa", "development", "staging", "production"]);
    let positions: Vec<i64> = envs.as_array().unwrap().iter().map(|e| e["position"].as_i64().unwrap()).collect();
    assert_eq!(positions, [0, 1, 2, 3]);

    assert_eq!(app.delete(&format!("{base}/staging"), Some(&ann.access)).await.status, StatusCode::NO_CONTENT);
    assert_eq!(slugs(&app.get(base, Some(&ann.access)).await.json()["items"]), ["qa", "development", "production"]);
    app.get(&format!("{base}/staging"), Some(&ann.access)).await.assert_error(StatusCode::NOT_FOUND, "not_found");
});

db_test!(async fn members_see_only_the_projects_they_were_given(app) {
    let ann = app.register("ann@example.com").await;
    app.org(&ann, "acme").await;
    app.project(&ann, "acme", "web").await;
    app.project(&ann, "acme", "billing").await;
    let bob = app.member(&ann, "acme", "bob@example.com", "member").await;
    assert!(app.get("/api/v1/orgs/acme/projects", Some(&bob.access)).await.json()["items"].as_array().unwrap().is_empty());
    app.get("/api/v1/orgs/acme/projects/web", Some(&bob.access)).await.assert_error(StatusCode::NOT_FOUND, "not_found");

    let grant = format!("/api/v1/orgs/acme/projects/web/access/users/{}", bob.user_id);
    assert_eq!(app.put(&grant, Some(&ann.access), json!({ "role": "viewer" })).await.status, StatusCode::NO_CONTENT);
    assert_eq!(slugs(&app.get("/api/v1/orgs/acme/projects", Some(&bob.access)).await.json()["items"]), ["web"]);
    let web = app.get("/api/v1/orgs/acme/projects/web", Some(&bob.access)).await.json();
    assert_eq!(web["role"], "viewer");
    app.get("/api/v1/orgs/acme/projects/billing", Some(&bob.access)).await.assert_error(StatusCode::NOT_FOUND, "not_found");
    // A viewer cannot manage; an admin of the project can.
    app.post("/api/v1/orgs/acme/projects/web/environments", Some(&bob.access), json!({ "slug": "qa" })).await.assert_error(StatusCode::FORBIDDEN, "forbidden");
    app.put(&grant, Some(&ann.access), json!({ "role": "admin" })).await;
    assert_eq!(app.post("/api/v1/orgs/acme/projects/web/environments", Some(&bob.access), json!({ "slug": "qa" })).await.status, StatusCode::CREATED);
    app.delete("/api/v1/orgs/acme/projects/web", Some(&bob.access)).await.assert_error(StatusCode::FORBIDDEN, "forbidden");

    let access = app.get("/api/v1/orgs/acme/projects/web/access", Some(&ann.access)).await.json()["items"].clone();
    assert_eq!(access[0]["subject_name"], "bob@example.com");
    assert_eq!(access[0]["role"], "admin");
    assert_eq!(app.delete(&grant, Some(&ann.access)).await.status, StatusCode::NO_CONTENT);
    app.get("/api/v1/orgs/acme/projects/web", Some(&bob.access)).await.assert_error(StatusCode::NOT_FOUND, "not_found");
    // Only members of the organization can be given a project role.
    let stranger = app.register("zed@example.com").await;
    app.put(&format!("/api/v1/orgs/acme/projects/web/access/users/{}", stranger.user_id), Some(&ann.access), json!({ "role": "viewer" })).await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
});

db_test!(async fn a_member_who_creates_a_project_administers_it(app) {
    let ann = app.register("ann@example.com").await;
    app.org(&ann, "acme").await;
    let bob = app.member(&ann, "acme", "bob@example.com", "member").await;
    let viewer = app.member(&ann, "acme", "vic@example.com", "viewer").await;
    app.project(&bob, "acme", "tools").await;
    assert_eq!(app.get("/api/v1/orgs/acme/projects/tools", Some(&bob.access)).await.json()["role"], "admin");
    app.post("/api/v1/orgs/acme/projects", Some(&viewer.access), json!({ "name": "V", "slug": "v" })).await.assert_error(StatusCode::FORBIDDEN, "forbidden");
});

db_test!(async fn environment_policies_are_set_shown_and_cleared(app) {
    let ann = app.register("ann@example.com").await;
    app.org(&ann, "acme").await;
    app.project(&ann, "acme", "web").await;
    let url = "/api/v1/orgs/acme/projects/web/environments/production/policies/developer";
    assert_eq!(app.put(url, Some(&ann.access), json!({ "access": "read" })).await.status, StatusCode::NO_CONTENT);
    let env = app.get("/api/v1/orgs/acme/projects/web/environments/production", Some(&ann.access)).await.json();
    assert_eq!(env["policies"]["developer"], "read");
    assert_eq!(app.delete(url, Some(&ann.access)).await.status, StatusCode::NO_CONTENT);
    let env = app.get("/api/v1/orgs/acme/projects/web/environments/production", Some(&ann.access)).await.json();
    assert!(env["policies"].as_object().unwrap().is_empty());
    app.put("/api/v1/orgs/acme/projects/web/environments/production/policies/boss", Some(&ann.access), json!({ "access": "read" })).await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_role");
    app.put(url, Some(&ann.access), json!({ "access": "everything" })).await.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
});

db_test!(async fn environments_and_project_access_are_listed_in_bounded_pages(app) {
    let ann = app.register("ann@example.com").await;
    app.org(&ann, "acme").await;
    app.project(&ann, "acme", "web").await;
    let envs = "/api/v1/orgs/acme/projects/web/environments";
    let first = app.get(&format!("{envs}?limit=2"), Some(&ann.access)).await.json();
    let slugs = |page: &serde_json::Value| -> Vec<String> { page["items"].as_array().unwrap().iter().map(|e| e["slug"].as_str().unwrap().to_owned()).collect() };
    assert_eq!(slugs(&first), ["development", "staging"]);
    let cursor = first["next_cursor"].as_str().unwrap();
    let rest = app.get(&format!("{envs}?limit=2&cursor={cursor}"), Some(&ann.access)).await.json();
    assert_eq!(slugs(&rest), ["production"]);
    assert!(rest["next_cursor"].is_null());
    app.get(&format!("{envs}?limit=201"), Some(&ann.access)).await.assert_error(StatusCode::BAD_REQUEST, "invalid_query");
    app.get(&format!("{envs}?cursor=nonsense"), Some(&ann.access)).await.assert_error(StatusCode::BAD_REQUEST, "invalid_cursor");

    for i in 0..3 {
        let user = app.member(&ann, "acme", &format!("u{i}@example.com"), "member").await;
        let r = app.put(&format!("/api/v1/orgs/acme/projects/web/access/users/{}", user.user_id), Some(&ann.access), json!({ "role": "viewer" })).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    }
    let access = "/api/v1/orgs/acme/projects/web/access";
    let all = app.get(access, Some(&ann.access)).await.json();
    let total = all["items"].as_array().unwrap().len();
    assert!(total >= 3, "{all}");
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..=total {
        let url = match &cursor { Some(c) => format!("{access}?limit=2&cursor={c}"), None => format!("{access}?limit=2") };
        let page = app.get(&url, Some(&ann.access)).await.json();
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2, "{page}");
        seen.extend(items.iter().cloned());
        match page["next_cursor"].as_str() { Some(c) => cursor = Some(c.to_owned()), None => break }
    }
    assert_eq!(serde_json::Value::Array(seen), all["items"]);
});

db_test!(async fn a_project_is_deleted_with_its_secrets_in_every_environment(app) {
    let ann = acme_web(&app).await;
    for env in ["development", "staging", "production"] {
        let r = app.put(&format!("/api/v1/orgs/acme/projects/web/environments/{env}/secrets/KEY"), Some(&ann.access), json!({ "value": "v" })).await;
        assert!(r.status.is_success(), "{}", r.text());
    }
    let r = app.delete("/api/v1/orgs/acme/projects/web", Some(&ann.access)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    app.get("/api/v1/orgs/acme/projects/web", Some(&ann.access)).await.assert_error(StatusCode::NOT_FOUND, "not_found");
    for table in ["projects", "environments", "secrets", "secret_versions", "deks"] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}")).fetch_one(app.state.db.pool()).await.unwrap();
        assert_eq!(n, 0, "{table}");
    }
});
