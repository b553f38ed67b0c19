//! People and access (issue 29): the role × route matrix walked from the OpenAPI document, an
//! audit entry for every state-changing request, API tokens (shown once, hashed at rest,
//! revoked or expired within one request), sessions that end when the account changes, and
//! guessing slowed down.

use std::collections::BTreeMap;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::app::{TestApp, id};
use crate::support::console::client;
use netcron_api::access::{Need, rule};
use netcron_services::people::Role;

const ANY: &str = "00000000-0000-7000-8000-000000000000";

/// Creates an account of `role` (with a password) and a token of it; the token.
async fn token_of(app: &TestApp, role: Role) -> (String, Value) {
    let user = app
        .create(
            "/users",
            json!({"name": format!("{role}-person"), "role": role, "password": "correct horse"}),
        )
        .await;
    let token = app
        .create(
            "/tokens",
            json!({"name": format!("{role}-token"), "owner_id": user["id"]}),
        )
        .await;
    (token["token"].as_str().expect("token").to_owned(), user)
}

/// Every operation of the served document, as (method, path).
async fn operations(app: &TestApp) -> Vec<(Method, String)> {
    let doc: Value = app.get("/openapi.json").await.json().await.expect("JSON");
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in ["get", "post", "patch", "put", "delete"] {
            if item.get(method).is_some() {
                out.push((method.to_uppercase().parse().expect("method"), path.clone()));
            }
        }
    }
    out
}

/// The definition of the roles, written apart from the api's table so that a wrong
/// rule there fails here: every role reads (but webhooks, people and the audit log are admins');
/// operators run, cancel, retry, pause and resume; editors change what runs; admins manage
/// credentials, webhooks and people; every account manages its own tokens.
fn expected(method: &Method, path: &str) -> Option<Role> {
    let public = ["/health", "/ready", "/metrics"];
    if public.contains(&path) {
        return None;
    }
    let admin_only = ["/webhooks", "/users", "/audit"];
    if admin_only.iter().any(|p| path.starts_with(p)) {
        return Some(Role::Admin);
    }
    if *method == Method::GET || path == "/jobs/preview" || path.starts_with("/tokens") {
        return Some(Role::Viewer);
    }
    if path.starts_with("/credentials") {
        return Some(Role::Admin);
    }
    let operations = [
        "/run",
        "/runs",
        "/cancel",
        "/retry-failed",
        "/pause",
        "/resume",
    ];
    if *method == Method::POST && operations.iter().any(|op| path.ends_with(op)) {
        return Some(Role::Operator);
    }
    Some(Role::Editor)
}

/// A GET with an account's token.
async fn bearer_get(app: &TestApp, path: &str, token: impl std::fmt::Display) -> reqwest::Response {
    app.client
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET with a token")
}

fn fill(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .map_or(rest.len(), |e| start + e + 1);
        out.push_str(if &rest[start..end] == "{version}" {
            "1"
        } else {
            ANY
        });
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Every operation in the OpenAPI document has a rule, and every role gets exactly what the
/// rule says: 403 below the rule's role, never 401 or 403 at or above it. Each state-changing
/// request (allowed or refused) leaves exactly one audit entry naming who sent it.
#[tokio::test]
async fn every_operation_has_a_rule_and_each_role_gets_it() {
    let app = TestApp::spawn().await;
    let mut tokens = BTreeMap::new();
    for role in Role::ALL {
        tokens.insert(role, token_of(&app, role).await.0);
    }
    let operations = operations(&app).await;
    assert!(operations.len() > 60, "{}", operations.len());
    let mut missing = Vec::new();
    let mut writes = Vec::new();
    for (method, path) in &operations {
        let Some(rule) = rule(method, path) else {
            missing.push(format!("{method} {path}"));
            continue;
        };
        let wanted = expected(method, path).map_or(Need::Public, Need::Role);
        assert_eq!(
            rule.need, wanted,
            "{method} {path}: the table says {:?}",
            rule.need
        );
        for (role, token) in &tokens {
            let mut request = app
                .client
                .request(method.clone(), app.url(&fill(path)))
                .bearer_auth(token);
            if matches!(*method, Method::POST | Method::PATCH) {
                request = request.json(&json!({}));
            }
            let status = request.send().await.expect("send").status();
            match rule.need {
                Need::Public => assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{method} {path} is public but {role} got {status}"
                ),
                Need::Role(needed) if *role < needed => assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{method} {path} needs {needed}; {role} got {status}"
                ),
                Need::Role(_) => assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{method} {path}: {role} may, but got {status}"
                ),
            }
        }
        if rule.writes {
            writes.push(format!("{method} {path}"));
        } else {
            assert!(
                *method == Method::GET || path.ends_with("/preview"),
                "{method} {path} changes state but is not audited"
            );
        }
    }
    assert!(missing.is_empty(), "operations without a rule: {missing:?}");

    // One entry per state-changing request: four roles each sent one to every such operation.
    for action in writes {
        for role in Role::ALL {
            let actor = format!("{role}-person (token {role}-token)");
            let page: Value = app
                .request(Method::GET, "/audit")
                .query(&[
                    ("actor", actor.as_str()),
                    ("action", &action),
                    ("limit", "500"),
                ])
                .send()
                .await
                .expect("audit")
                .json()
                .await
                .expect("JSON");
            let exact: Vec<&Value> = page["items"]
                .as_array()
                .expect("items")
                .iter()
                .filter(|e| e["action"] == action.as_str())
                .collect();
            assert_eq!(exact.len(), 1, "{action} by {role}: {page}");
            assert_eq!(exact[0]["actor_kind"], "token", "{}", exact[0]);
            assert!(
                exact[0]["request_id"]
                    .as_str()
                    .is_some_and(|r| !r.is_empty())
            );
        }
    }
}

/// A token is in the creation answer and nowhere else: not in the list, not in any table (only
/// its SHA-256 is); revoked, its very next request is refused and the refusal is audited; an
/// expired one is refused too; a token can never do more than its owner.
#[tokio::test]
async fn tokens_are_shown_once_hashed_at_rest_and_refused_once_revoked_or_expired() {
    let app = TestApp::spawn().await;
    let (token, user) = token_of(&app, Role::Operator).await;
    let me: Value = bearer_get(&app, "/me", &token)
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(me["role"], "operator", "{me}");
    assert_eq!(me["name"], "operator-person", "{me}");

    let listed = app
        .get("/tokens?all=true")
        .await
        .text()
        .await
        .expect("list");
    assert!(!listed.contains(&token), "{listed}");
    let tables: Vec<String> = <TableName as sea_orm::FromQueryResult>::find_by_statement(
        sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT table_name::text AS name FROM information_schema.tables \
             WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
        ),
    )
    .all(&app.db)
    .await
    .expect("tables")
    .into_iter()
    .map(|t| t.name)
    .collect();
    assert!(tables.contains(&"api_tokens".to_owned()), "{tables:?}");
    for table in &tables {
        let holding = sea_orm::ConnectionTrait::query_one_raw(
            &app.db,
            sea_orm::Statement::from_sql_and_values(
                sea_orm::DbBackend::Postgres,
                format!(
                    "SELECT count(*) AS n FROM \"{table}\" t WHERE t::text LIKE '%' || $1 || '%'"
                ),
                [token.clone().into()],
            ),
        )
        .await
        .expect("scan")
        .expect("row")
        .try_get::<i64>("", "n")
        .expect("n");
        assert_eq!(holding, 0, "table {table} holds the token");
    }

    // Above the owner's role: refused, naming the field.
    let above = app
        .post(
            "/tokens",
            &json!({"name": "too-much", "owner_id": user["id"], "role": "admin"}),
        )
        .await;
    assert_eq!(above.status(), 422);
    assert!(
        above
            .text()
            .await
            .expect("body")
            .contains("\"field\":\"role\"")
    );

    let listed: Value = app
        .get("/tokens?all=true")
        .await
        .json()
        .await
        .expect("JSON");
    let token_id = listed
        .as_array()
        .expect("tokens")
        .iter()
        .find(|t| t["name"] == "operator-token")
        .map(|t| t["id"].as_str().expect("id").to_owned())
        .expect("the token is listed");
    assert_eq!(
        app.delete(&format!("/tokens/{token_id}")).await.status(),
        200
    );
    let after = bearer_get(&app, "/runs", &token).await;
    assert_eq!(after.status(), 401);
    let audit: Value = app
        .get("/audit?action=token_refused")
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        audit["items"][0]["detail"]["why"], "the token was revoked",
        "{audit}"
    );
    assert_eq!(
        audit["items"][0]["actor_name"], "operator-person",
        "{audit}"
    );

    let soon = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let short = app
        .create(
            "/tokens",
            json!({"name": "short", "owner_id": user["id"], "expires_at": soon}),
        )
        .await;
    let short = short["token"].as_str().expect("token").to_owned();
    assert_eq!(bearer_get(&app, "/runs", &short).await.status(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(bearer_get(&app, "/runs", &short).await.status(), 401);
}

#[derive(sea_orm::FromQueryResult)]
struct TableName {
    name: String,
}

/// Signs in with a name and password; the session cookie, or the refusal's status.
async fn sign_in(app: &TestApp, name: &str, password: &str) -> Result<String, (u16, String)> {
    let response = client()
        .post(app.url("/console/sign-in"))
        .form(&[("name", name), ("password", password), ("next", "/")])
        .send()
        .await
        .expect("sign in");
    let status = response.status().as_u16();
    if status != 303 {
        let retry = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap_or_default().to_owned())
            .unwrap_or_default();
        let body = response.text().await.unwrap_or_default();
        let error = body
            .split("id=\"sign-in-error\">")
            .nth(1)
            .and_then(|r| r.split('<').next())
            .unwrap_or_default()
            .to_owned();
        return Err((status, format!("{error}|{retry}")));
    }
    Ok(response.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .split(';')
        .next()
        .expect("name=value")
        .to_owned())
}

async fn page_status(app: &TestApp, cookie: &str, path: &str) -> u16 {
    client()
        .get(app.url(path))
        .header("cookie", cookie)
        .send()
        .await
        .expect("page")
        .status()
        .as_u16()
}

/// A console session of an account follows the account, on every api replica: a viewer's
/// session reads but is refused an editor's page; promoted, the same session gets it on its next
/// request at the other replica; signed out at one replica, it is gone at the other; a new
/// password or disabling the account ends the session on its next request, and a disabled
/// account's tokens stop too.
#[tokio::test]
async fn sessions_follow_the_account_and_end_when_it_changes() {
    let app = TestApp::spawn().await;
    let replica = TestApp::spawn_with(|s| {
        s.database.url = app.db_url.clone();
        s.redis.stream_prefix = app.stream_prefix.clone();
        s.run_ingest = false;
    })
    .await;
    let (token, user) = token_of(&app, Role::Viewer).await;
    let user_id = id(&user).to_owned();
    let cookie = sign_in(&app, "Viewer-Person", "correct horse")
        .await
        .expect("names compare without case");
    assert_eq!(page_status(&app, &cookie, "/console/devices").await, 200);
    assert_eq!(
        page_status(&replica, &cookie, "/console/devices/new").await,
        403
    );
    let promoted = app
        .patch(&format!("/users/{user_id}"), &json!({"role": "editor"}))
        .await;
    assert_eq!(promoted.status(), 200);
    assert_eq!(
        page_status(&replica, &cookie, "/console/devices/new").await,
        200
    );
    let demoted = replica
        .patch(&format!("/users/{user_id}"), &json!({"role": "viewer"}))
        .await;
    assert_eq!(demoted.status(), 200);
    assert_eq!(
        page_status(&app, &cookie, "/console/devices/new").await,
        403
    );

    let account = client()
        .get(replica.url("/console/account"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("account")
        .text()
        .await
        .expect("html");
    let signed_out = client()
        .post(replica.url("/console/sign-out"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf_of(&account).as_str())])
        .send()
        .await
        .expect("sign out");
    assert_eq!(signed_out.status(), 303);
    assert_eq!(page_status(&app, &cookie, "/console/devices").await, 303);

    let cookie = sign_in(&app, "viewer-person", "correct horse")
        .await
        .expect("signs in again");
    assert_eq!(
        page_status(&replica, &cookie, "/console/devices").await,
        200
    );

    let changed = app
        .patch(
            &format!("/users/{user_id}"),
            &json!({"password": "battery staple"}),
        )
        .await;
    assert_eq!(changed.status(), 200);
    assert_eq!(page_status(&app, &cookie, "/console/devices").await, 303);
    assert!(
        sign_in(&app, "viewer-person", "correct horse")
            .await
            .is_err()
    );

    let cookie = sign_in(&app, "viewer-person", "battery staple")
        .await
        .expect("the new password signs in");
    assert_eq!(page_status(&app, &cookie, "/").await, 200);
    let disabled = app
        .patch(&format!("/users/{user_id}"), &json!({"disabled": true}))
        .await;
    assert_eq!(disabled.status(), 200);
    assert_eq!(page_status(&app, &cookie, "/").await, 303);
    let by_token = bearer_get(&app, "/devices", &token).await;
    assert_eq!(by_token.status(), 401);
    assert_eq!(
        sign_in(&app, "viewer-person", "battery staple").await,
        Err((
            401,
            "That name and password do not sign in here.|".to_owned()
        ))
    );
}

/// An unknown name and a wrong password get the same answer; after ten failures for one name
/// even the right password is answered 429 with `Retry-After`, and every attempt is audited.
#[tokio::test]
async fn sign_in_guessing_is_limited_per_name_and_answers_the_same_for_unknown_names() {
    let app = TestApp::spawn().await;
    token_of(&app, Role::Editor).await;
    let unknown = sign_in(&app, "nobody-here", "whatever1").await;
    let wrong = sign_in(&app, "editor-person", "whatever1").await;
    assert_eq!(unknown, wrong);
    assert_eq!(unknown.clone().map_err(|e| e.0), Err(401));
    for _ in 0..9 {
        assert_eq!(
            sign_in(&app, "editor-person", "wrong-guess")
                .await
                .map_err(|e| e.0),
            Err(401)
        );
    }
    let blocked = sign_in(&app, "editor-person", "correct horse").await;
    let Err((429, text)) = blocked else {
        panic!("not limited: {blocked:?}");
    };
    let retry: u64 = text
        .rsplit('|')
        .next()
        .unwrap_or_default()
        .parse()
        .expect("Retry-After");
    assert!((1..=900).contains(&retry), "{retry}");
    // Another name from elsewhere is not blocked by this one.
    let audit: Value = app
        .get("/audit?action=sign_in_failed&limit=500")
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        audit["items"].as_array().expect("items").len(),
        11,
        "{audit}"
    );
}

/// The `csrf` of a signed-in page.
fn csrf_of(page: &str) -> String {
    page.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a csrf field")
        .to_owned()
}

/// The console does what the API does for people: an admin adds an operator; the operator
/// sees no People or Audit, makes a token on the Account page that is shown once (the page that
/// answers the form) and never again, uses it, and revokes it; the audit page lists all of it.
#[tokio::test]
async fn the_console_adds_people_and_shows_a_new_token_once() {
    let app = TestApp::spawn().await;
    app.create(
        "/users",
        json!({"name": "root-admin", "role": "admin", "password": "correct horse"}),
    )
    .await;
    let admin = sign_in(&app, "root-admin", "correct horse")
        .await
        .expect("admin signs in");
    let browser = client();
    let page = browser
        .get(app.url("/console/users"))
        .header("cookie", &admin)
        .send()
        .await
        .expect("users page");
    assert_eq!(page.status(), 200);
    let csrf = csrf_of(&page.text().await.expect("html"));
    let added = browser
        .post(app.url("/console/users"))
        .header("cookie", &admin)
        .form(&[
            ("csrf", csrf.as_str()),
            ("name", "op-two"),
            ("display_name", "Operator Two"),
            ("role", "operator"),
            ("kind", "person"),
            ("password", "short"),
        ])
        .send()
        .await
        .expect("add");
    assert_eq!(added.status(), 422, "a short password is refused");
    let refused = added.text().await.expect("html");
    assert!(
        refused.contains("must be at least 8 characters"),
        "{refused}"
    );
    assert!(
        !refused.contains("value=\"short\""),
        "the password typed is never shown again"
    );
    let added = browser
        .post(app.url("/console/users"))
        .header("cookie", &admin)
        .form(&[
            ("csrf", csrf.as_str()),
            ("name", "op-two"),
            ("role", "operator"),
            ("kind", "person"),
            ("password", "long enough"),
        ])
        .send()
        .await
        .expect("add");
    assert_eq!(added.status(), 303);

    let operator = sign_in(&app, "op-two", "long enough")
        .await
        .expect("signs in");
    let account = browser
        .get(app.url("/console/account"))
        .header("cookie", &operator)
        .send()
        .await
        .expect("account")
        .text()
        .await
        .expect("html");
    assert!(account.contains("op-two · operator"), "the header says who");
    assert!(
        !account.contains("/console/users\""),
        "no People link for an operator"
    );
    assert_eq!(page_status(&app, &operator, "/console/audit").await, 403);
    let made = browser
        .post(app.url("/console/account/tokens"))
        .header("cookie", &operator)
        .form(&[
            ("csrf", csrf_of(&account).as_str()),
            ("name", "laptop"),
            ("role", "operator"),
            ("expires_at", "2099-12-31"),
        ])
        .send()
        .await
        .expect("token");
    assert_eq!(made.status(), 200);
    let made = made.text().await.expect("html");
    let token = made
        .split("<code id=\"new-token\">")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .expect("the new token is shown")
        .to_owned();
    assert!(token.starts_with("nct_"), "{token}");
    let again = browser
        .get(app.url("/console/account"))
        .header("cookie", &operator)
        .send()
        .await
        .expect("account")
        .text()
        .await
        .expect("html");
    assert!(!again.contains(&token), "shown once");
    assert!(
        again.contains(&token[..10]),
        "its first characters tell it apart"
    );
    let me: Value = bearer_get(&app, "/me", &token)
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(me["name"], "op-two", "{me}");

    let tokens: Value = app
        .get("/tokens?all=true")
        .await
        .json()
        .await
        .expect("JSON");
    let token_id = tokens[0]["id"].as_str().expect("id").to_owned();
    // A date means through that day: the token ends at the next midnight, UTC.
    assert_eq!(tokens[0]["expires_at"], "2100-01-01T00:00:00Z", "{tokens}");
    let revoked = browser
        .post(app.url(&format!("/console/account/tokens/{token_id}/revoke")))
        .header("cookie", &operator)
        .form(&[("csrf", csrf_of(&again).as_str())])
        .send()
        .await
        .expect("revoke");
    assert_eq!(revoked.status(), 303);
    let after = bearer_get(&app, "/me", &token).await;
    assert_eq!(after.status(), 401);

    let audit = browser
        .get(app.url("/console/audit?actor=op-two"))
        .header("cookie", &admin)
        .send()
        .await
        .expect("audit")
        .text()
        .await
        .expect("html");
    for action in [
        "POST /console/account/tokens/{id}/revoke",
        "POST /console/account/tokens",
        "sign_in",
    ] {
        assert!(audit.contains(action), "{action} is not in the audit page");
    }
}

/// `netcron user add --admin` gets the first person in: with a password from standard input,
/// or with one it makes and prints once; either signs in to the console as an admin.
#[tokio::test]
async fn netcron_user_add_makes_the_first_admin() {
    use std::io::Write as _;
    let app = TestApp::spawn().await;
    let add = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_netcron"))
            .args(["user", "add"])
            .args(args)
            .env("DATABASE_URL", &app.db_url)
            .env("NETCRON_LOG_FORMAT", "json")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("netcron user add")
    };
    let mut given = add(&["--admin", "first-admin", "--password-stdin"]);
    given
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"a long passphrase\n")
        .expect("write");
    let out = given.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.starts_with("created first-admin ("), "{printed}");
    assert!(!printed.contains("a long passphrase"), "{printed}");
    let cookie = sign_in(&app, "first-admin", "a long passphrase")
        .await
        .expect("signs in");
    assert_eq!(page_status(&app, &cookie, "/console/users").await, 200);

    let made = add(&["--role", "viewer", "second"])
        .wait_with_output()
        .expect("wait");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let printed = String::from_utf8_lossy(&made.stdout);
    let password = printed
        .lines()
        .find_map(|l| l.strip_prefix("password (shown once): "))
        .expect("the made password is printed once")
        .to_owned();
    let cookie = sign_in(&app, "second", &password).await.expect("signs in");
    assert_eq!(page_status(&app, &cookie, "/console/users").await, 403);

    let mut clash = add(&["--admin", "FIRST-ADMIN", "--password-stdin"]);
    clash
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"another long one\n")
        .expect("write");
    let out = clash.wait_with_output().expect("wait");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("a user named"), "{stderr}");
}
