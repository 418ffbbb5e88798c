use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Session, TestApp, TestResponse, db_test};

const TEAMS: &str = "/api/v1/orgs/acme/teams";
const SECRETS: &str = "/api/v1/orgs/acme/projects/web/environments/development/secrets";

fn slugs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| e["slug"].as_str().unwrap().to_owned())
        .collect()
}

fn member_emails(team: &Value) -> Vec<String> {
    team["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["email"].as_str().unwrap().to_owned())
        .collect()
}

/// Ann owns `acme` with project `web`; Bob is a plain member without any grant.
async fn acme_with_bob(app: &TestApp) -> (Session, Session) {
    let ann = app.register("ann@example.com").await;
    app.org(&ann, "acme").await;
    app.project(&ann, "acme", "web").await;
    let bob = app.member(&ann, "acme", "bob@example.com", "member").await;
    (ann, bob)
}

async fn team(app: &TestApp, by: &Session, slug: &str) {
    let r = app
        .post(
            TEAMS,
            Some(&by.access),
            json!({ "slug": slug, "name": slug.to_uppercase() }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
}

/// `PUT …/teams/{team}/members/{user_id}` (no body) as `by`.
async fn add_member(app: &TestApp, by: &Session, team: &str, user_id: &str) -> TestResponse {
    app.call(
        Method::PUT,
        &format!("{TEAMS}/{team}/members/{user_id}"),
        Some(&by.access),
        None,
    )
    .await
}

async fn join(app: &TestApp, by: &Session, team: &str, user: &Session) {
    let r = add_member(app, by, team, &user.user_id).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
}

async fn grant_team(app: &TestApp, by: &Session, team: &str, role: &str) {
    let r = app
        .put(
            &format!("/api/v1/orgs/acme/projects/web/access/teams/{team}"),
            Some(&by.access),
            json!({ "role": role }),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
}

/// The status of `who` writing a secret in `development`.
async fn write_status(app: &TestApp, who: &Session, key: &str) -> StatusCode {
    app.post(
        SECRETS,
        Some(&who.access),
        json!({ "key": key, "value": "v" }),
    )
    .await
    .status
}

db_test!(async fn teams_are_created_listed_renamed_and_deleted(app) {
    let ann = app.register("ann@example.com").await;
    app.org(&ann, "acme").await;
    let r = app.post(TEAMS, Some(&ann.access), json!({ "slug": "ops", "name": "Operations" })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let created = r.json();
    assert_eq!(created["slug"], "ops");
    assert_eq!(created["name"], "Operations");
    assert!(created["id"].is_string() && created["created_at"].is_string());
    assert_eq!(created["members"], json!([]));
    team(&app, &ann, "backend").await;

    let list = app.get(TEAMS, Some(&ann.access)).await.json();
    assert_eq!(slugs(&list["items"]), ["backend", "ops"]);
    assert!(list["next_cursor"].is_null());
    let first = app.get(&format!("{TEAMS}?limit=1"), Some(&ann.access)).await.json();
    assert_eq!(slugs(&first["items"]), ["backend"]);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = app.get(&format!("{TEAMS}?limit=1&cursor={cursor}"), Some(&ann.access)).await.json();
    assert_eq!(slugs(&second["items"]), ["ops"]);
    assert!(second["next_cursor"].is_null());

    let r = app.patch(&format!("{TEAMS}/ops"), Some(&ann.access), json!({ "name": "Ops & SRE" })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["name"], "Ops & SRE");
    let got = app.get(&format!("{TEAMS}/ops"), Some(&ann.access)).await.json();
    assert_eq!(got["name"], "Ops & SRE");
    assert_eq!(got["id"], created["id"]);
    app.patch(&format!("{TEAMS}/ops"), Some(&ann.access), json!({ "name": "  " })).await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_name");

    assert_eq!(app.delete(&format!("{TEAMS}/ops"), Some(&ann.access)).await.status, StatusCode::NO_CONTENT);
    app.get(&format!("{TEAMS}/ops"), Some(&ann.access)).await.assert_error(StatusCode::NOT_FOUND, "not_found");
    app.delete(&format!("{TEAMS}/ops"), Some(&ann.access)).await.assert_error(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(slugs(&app.get(TEAMS, Some(&ann.access)).await.json()["items"]), ["backend"]);

    let audit = app.get("/api/v1/audit-events?limit=200", Some(&ann.access)).await.json();
    let actions: Vec<&str> = audit["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    for expected in ["team.created", "team.updated", "team.deleted"] {
        assert!(actions.contains(&expected), "{expected} missing from {actions:?}");
    }
});

db_test!(async fn team_slugs_are_validated_and_unique_in_their_organization(app) {
    let ann = app.register("ann@example.com").await;
    app.org(&ann, "acme").await;
    team(&app, &ann, "ops").await;
    app.post(TEAMS, Some(&ann.access), json!({ "slug": "ops", "name": "Again" })).await
        .assert_error(StatusCode::CONFLICT, "slug_taken");
    for bad in ["", "Ops", "ops team", "ops_team", &"a".repeat(64)] {
        app.post(TEAMS, Some(&ann.access), json!({ "slug": bad, "name": "X" })).await
            .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_slug");
    }
    // Another organization may use the same slug.
    let zed = app.register("zed@example.com").await;
    app.org(&zed, "other").await;
    let r = app.post("/api/v1/orgs/other/teams", Some(&zed.access), json!({ "slug": "ops", "name": "Ops" })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(slugs(&app.get(TEAMS, Some(&ann.access)).await.json()["items"]), ["ops"]);
});

db_test!(async fn a_member_can_list_teams_but_not_manage_them(app) {
    let (ann, bob) = acme_with_bob(&app).await;
    let vic = app.member(&ann, "acme", "vic@example.com", "viewer").await;
    team(&app, &ann, "ops").await;
    for who in [&bob, &vic] {
        assert_eq!(slugs(&app.get(TEAMS, Some(&who.access)).await.json()["items"]), ["ops"]);
        assert_eq!(app.get(&format!("{TEAMS}/ops"), Some(&who.access)).await.status, StatusCode::OK);
        app.post(TEAMS, Some(&who.access), json!({ "slug": "mine", "name": "Mine" })).await
            .assert_error(StatusCode::FORBIDDEN, "forbidden");
        app.patch(&format!("{TEAMS}/ops"), Some(&who.access), json!({ "name": "Mine" })).await
            .assert_error(StatusCode::FORBIDDEN, "forbidden");
        add_member(&app, who, "ops", &who.user_id).await
            .assert_error(StatusCode::FORBIDDEN, "forbidden");
        app.delete(&format!("{TEAMS}/ops"), Some(&who.access)).await
            .assert_error(StatusCode::FORBIDDEN, "forbidden");
    }
    // An admin of the organization manages teams.
    let ada = app.member(&ann, "acme", "ada@example.com", "admin").await;
    team(&app, &ada, "platform").await;
    join(&app, &ada, "platform", &bob).await;
    assert_eq!(app.get(&format!("{TEAMS}/ops"), Some(&ann.access)).await.json()["name"], "OPS");
});

db_test!(async fn team_members_are_added_and_removed(app) {
    let (ann, bob) = acme_with_bob(&app).await;
    let cat = app.member(&ann, "acme", "cat@example.com", "viewer").await;
    team(&app, &ann, "ops").await;
    join(&app, &ann, "ops", &bob).await;
    join(&app, &ann, "ops", &cat).await;
    // Adding someone twice changes nothing.
    join(&app, &ann, "ops", &bob).await;
    let got = app.get(&format!("{TEAMS}/ops"), Some(&ann.access)).await.json();
    assert_eq!(member_emails(&got), ["bob@example.com", "cat@example.com"]);
    assert_eq!(got["members"][0]["user_id"], bob.user_id.as_str());
    assert_eq!(got["members"][0]["role"], "member");
    assert_eq!(got["members"][1]["role"], "viewer");
    assert!(got["members"][0]["joined_at"].is_string());

    let url = format!("{TEAMS}/ops/members/{}", bob.user_id);
    assert_eq!(app.delete(&url, Some(&ann.access)).await.status, StatusCode::NO_CONTENT);
    app.delete(&url, Some(&ann.access)).await.assert_error(StatusCode::NOT_FOUND, "not_found");
    let got = app.get(&format!("{TEAMS}/ops"), Some(&ann.access)).await.json();
    assert_eq!(member_emails(&got), ["cat@example.com"]);
    // The renamed team still has its members.
    let renamed = app.patch(&format!("{TEAMS}/ops"), Some(&ann.access), json!({ "name": "Ops" })).await.json();
    assert_eq!(member_emails(&renamed), ["cat@example.com"]);

    // Leaving the organization takes one out of its teams.
    let leave = format!("/api/v1/orgs/acme/members/{}", cat.user_id);
    assert_eq!(app.delete(&leave, Some(&cat.access)).await.status, StatusCode::NO_CONTENT);
    assert_eq!(app.get(&format!("{TEAMS}/ops"), Some(&ann.access)).await.json()["members"], json!([]));

    let audit = app.get("/api/v1/audit-events?limit=200", Some(&ann.access)).await.json();
    let items = audit["items"].as_array().unwrap();
    let added = items.iter().filter(|e| e["action"] == "team.member_added").count();
    assert_eq!(added, 2, "adding someone twice is recorded once");
    let removed = items.iter().find(|e| e["action"] == "team.member_removed").unwrap();
    assert_eq!(removed["details"], json!({ "team": "ops", "user": bob.user_id }));
    assert_eq!(removed["target"]["type"], "team");
});

db_test!(async fn only_members_of_the_organization_can_join_its_teams(app) {
    let (ann, _) = acme_with_bob(&app).await;
    team(&app, &ann, "ops").await;
    let stranger = app.register("zed@example.com").await;
    app.org(&stranger, "other").await;
    add_member(&app, &ann, "ops", &stranger.user_id).await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    add_member(&app, &ann, "ops", "not-a-uuid").await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    add_member(&app, &ann, "nope", &stranger.user_id).await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(app.get(&format!("{TEAMS}/ops"), Some(&ann.access)).await.json()["members"], json!([]));
    // A team of another organization is out of reach, even with the same slug.
    let r = app.post("/api/v1/orgs/other/teams", Some(&stranger.access), json!({ "slug": "red", "name": "Red" })).await;
    assert_eq!(r.status, StatusCode::CREATED);
    app.get(&format!("{TEAMS}/red"), Some(&ann.access)).await.assert_error(StatusCode::NOT_FOUND, "not_found");
    app.put("/api/v1/orgs/acme/projects/web/access/teams/red", Some(&ann.access), json!({ "role": "admin" })).await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
});

db_test!(async fn a_teams_project_role_reaches_its_members(app) {
    let (ann, bob) = acme_with_bob(&app).await;
    app.get("/api/v1/orgs/acme/projects/web", Some(&bob.access)).await.assert_error(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(write_status(&app, &bob, "A").await, StatusCode::NOT_FOUND);

    team(&app, &ann, "devs").await;
    grant_team(&app, &ann, "devs", "developer").await;
    // The grant alone gives Bob nothing until he is in the team.
    assert_eq!(write_status(&app, &bob, "A").await, StatusCode::NOT_FOUND);
    join(&app, &ann, "devs", &bob).await;
    assert_eq!(write_status(&app, &bob, "A").await, StatusCode::CREATED);
    let web = app.get("/api/v1/orgs/acme/projects/web", Some(&bob.access)).await.json();
    assert_eq!(web["role"], "developer");
    assert_eq!(slugs(&app.get("/api/v1/orgs/acme/projects", Some(&bob.access)).await.json()["items"]), ["web"]);

    let access = app.get("/api/v1/orgs/acme/projects/web/access", Some(&ann.access)).await.json()["items"].clone();
    let grant = access.as_array().unwrap().iter().find(|g| g["subject_type"] == "team").unwrap();
    assert_eq!(grant["subject_name"], "devs");
    assert_eq!(grant["role"], "developer");
    let team_id = app.get(&format!("{TEAMS}/devs"), Some(&ann.access)).await.json()["id"].clone();
    assert_eq!(grant["subject_id"], team_id);

    // Downgraded to viewer: reading still works, writing does not.
    grant_team(&app, &ann, "devs", "viewer").await;
    assert_eq!(write_status(&app, &bob, "B").await, StatusCode::FORBIDDEN);
    let r = app.get(SECRETS, Some(&bob.access)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["secrets"][0]["key"], "A");

    // Out of the team, out of the project.
    let membership = format!("{TEAMS}/devs/members/{}", bob.user_id);
    assert_eq!(app.delete(&membership, Some(&ann.access)).await.status, StatusCode::NO_CONTENT);
    app.get(SECRETS, Some(&bob.access)).await.assert_error(StatusCode::NOT_FOUND, "not_found");

    // Back in the team, then the team goes: out again, and its grant with it.
    join(&app, &ann, "devs", &bob).await;
    assert_eq!(app.get(SECRETS, Some(&bob.access)).await.status, StatusCode::OK);
    assert_eq!(app.delete(&format!("{TEAMS}/devs"), Some(&ann.access)).await.status, StatusCode::NO_CONTENT);
    app.get(SECRETS, Some(&bob.access)).await.assert_error(StatusCode::NOT_FOUND, "not_found");
    app.get("/api/v1/orgs/acme/projects/web", Some(&bob.access)).await.assert_error(StatusCode::NOT_FOUND, "not_found");
    let access = app.get("/api/v1/orgs/acme/projects/web/access", Some(&ann.access)).await.json()["items"].clone();
    assert!(access.as_array().unwrap().iter().all(|g| g["subject_type"] != "team"), "{access}");
});

db_test!(async fn revoking_a_teams_project_role_is_audited_with_the_team(app) {
    let (ann, bob) = acme_with_bob(&app).await;
    team(&app, &ann, "devs").await;
    join(&app, &ann, "devs", &bob).await;
    grant_team(&app, &ann, "devs", "developer").await;
    assert_eq!(write_status(&app, &bob, "A").await, StatusCode::CREATED);
    let url = "/api/v1/orgs/acme/projects/web/access/teams/devs";
    // Only those who manage the project's access may change it.
    app.delete(url, Some(&bob.access)).await.assert_error(StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(app.delete(url, Some(&ann.access)).await.status, StatusCode::NO_CONTENT);
    app.delete(url, Some(&ann.access)).await.assert_error(StatusCode::NOT_FOUND, "not_found");
    app.put("/api/v1/orgs/acme/projects/web/access/teams/nope", Some(&ann.access), json!({ "role": "viewer" })).await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(write_status(&app, &bob, "B").await, StatusCode::NOT_FOUND);

    let audit = app.get("/api/v1/audit-events?limit=200", Some(&ann.access)).await.json();
    let items = audit["items"].as_array().unwrap();
    let granted = items.iter().find(|e| e["action"] == "project.access_granted").unwrap();
    assert_eq!(granted["details"], json!({ "team": "devs", "role": "developer" }));
    let revoked = items.iter().find(|e| e["action"] == "project.access_revoked").unwrap();
    assert_eq!(revoked["details"], json!({ "team": "devs", "role": "developer" }));
});

db_test!(async fn the_strongest_of_direct_and_team_roles_wins(app) {
    let (ann, bob) = acme_with_bob(&app).await;
    team(&app, &ann, "devs").await;
    join(&app, &ann, "devs", &bob).await;

    // A direct viewer in a developer team writes.
    app.grant(&ann, "acme", "web", &bob, "viewer").await;
    grant_team(&app, &ann, "devs", "developer").await;
    assert_eq!(write_status(&app, &bob, "A").await, StatusCode::CREATED);
    assert_eq!(app.get("/api/v1/orgs/acme/projects/web", Some(&bob.access)).await.json()["role"], "developer");

    // A direct developer in a viewer team writes too.
    app.grant(&ann, "acme", "web", &bob, "developer").await;
    grant_team(&app, &ann, "devs", "viewer").await;
    assert_eq!(write_status(&app, &bob, "B").await, StatusCode::CREATED);

    // Both viewer: read only.
    app.grant(&ann, "acme", "web", &bob, "viewer").await;
    assert_eq!(write_status(&app, &bob, "C").await, StatusCode::FORBIDDEN);

    // A team admin role lets him manage the project, which his direct role does not.
    app.post("/api/v1/orgs/acme/projects/web/environments", Some(&bob.access), json!({ "slug": "qa" })).await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    grant_team(&app, &ann, "devs", "admin").await;
    assert_eq!(app.post("/api/v1/orgs/acme/projects/web/environments", Some(&bob.access), json!({ "slug": "qa" })).await.status, StatusCode::CREATED);

    // Losing the direct grant leaves the team's.
    let direct = format!("/api/v1/orgs/acme/projects/web/access/users/{}", bob.user_id);
    assert_eq!(app.delete(&direct, Some(&ann.access)).await.status, StatusCode::NO_CONTENT);
    assert_eq!(app.get("/api/v1/orgs/acme/projects/web", Some(&bob.access)).await.json()["role"], "admin");
});
