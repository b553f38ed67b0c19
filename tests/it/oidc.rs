//! Signing in to the console through an OpenID Connect provider: a real one (npm's
//! `oidc-provider`, see `support::oidc`), in Chromium for the whole way and with a plain HTTP
//! client where a test needs to change something in transit.

use sea_orm::{ConnectionTrait as _, DbBackend, Statement};
use serde_json::Value;

use crate::support::app::TestApp;
use crate::support::browser::Browser;
use crate::support::oidc::{
    self, Jar, PASSWORD, Provider, account, app_with_provider, callback, finish, provider_login,
    start_sign_in,
};

/// The audit entries of `action`, as (actor name, status, detail).
async fn audit(app: &TestApp, action: &str) -> Vec<(String, i32, Value)> {
    app.db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT actor_name, status, detail FROM audit_log WHERE action = $1 ORDER BY id",
            [action.into()],
        ))
        .await
        .expect("audit")
        .iter()
        .map(|row| {
            (
                row.try_get("", "actor_name").expect("actor_name"),
                row.try_get("", "status").expect("status"),
                row.try_get::<Option<Value>>("", "detail")
                    .expect("detail")
                    .unwrap_or(Value::Null),
            )
        })
        .collect()
}

/// The accounts that came from a provider, as (name, role).
async fn provider_accounts(app: &TestApp) -> Vec<(String, String)> {
    app.db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT name, role FROM users WHERE oidc_subject IS NOT NULL ORDER BY name",
        ))
        .await
        .expect("users")
        .iter()
        .map(|row| {
            (
                row.try_get("", "name").expect("name"),
                row.try_get("", "role").expect("role"),
            )
        })
        .collect()
}

async fn sessions(app: &TestApp) -> i64 {
    app.db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT count(*) AS n FROM console_sessions",
        ))
        .await
        .expect("count")
        .expect("row")
        .try_get("", "n")
        .expect("n")
}

/// Signs in through the sign-in page's link and the provider's form; waits for the console.
async fn sign_in_in_browser(b: &Browser, login: &str, expect_who: &str) {
    b.goto("/console/sign-in").await;
    b.click("#sign-in-providers a").await;
    b.fill("input#login", login).await;
    b.fill("input#password", PASSWORD).await;
    b.click("button#submit").await;
    b.wait_text("#signed-in-as", "signed in through the provider", |t| {
        t == expect_who
    })
    .await;
}

/// A person signs in at the provider in the browser and lands in the console with the role
/// their group maps to; the account is made at the first sign-in, and a later sign-in with
/// another group (the provider restarted, with new keys) changes the role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_in_through_the_provider_and_their_group_sets_the_role() {
    let (app, provider) = app_with_provider(
        &[account(
            "alice",
            "Alice Admin",
            &["netcron-admins", "staff"],
        )],
        &[],
    )
    .await;
    let b = Browser::open(&app.base).await;
    b.goto("/console/sign-in").await;
    assert!(
        b.text("#sign-in-providers")
            .await
            .contains("Sign in with Corp SSO")
    );
    b.shot("oidc-sign-in").await;
    sign_in_in_browser(&b, "alice", "alice · admin").await;
    assert_eq!(b.path().await, "/");
    assert_eq!(
        provider_accounts(&app).await,
        [("alice".to_owned(), "admin".to_owned())]
    );
    let first_session = b.session_cookie().await;

    // The same person, now only in `netops`: the provider restarts on its port (same issuer,
    // a new signing key, so netcron must fetch the keys again).
    let port = provider.port;
    drop(provider);
    let _provider = Provider::start(
        port,
        &callback(
            app.base
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .expect("app port"),
        ),
        &[account("alice", "Alice Admin", &["netops"])],
        &[],
    );
    sign_in_in_browser(&b, "alice", "alice · operator").await;
    assert_ne!(b.session_cookie().await, first_session, "a new session");
    assert_eq!(
        provider_accounts(&app).await,
        [("alice".to_owned(), "operator".to_owned())]
    );
    let signed_in = audit(&app, "sign_in").await;
    assert_eq!(signed_in.len(), 2, "{signed_in:?}");
    assert!(
        signed_in
            .iter()
            .all(|(name, _, detail)| name == "alice" && detail["provider"] == oidc::ID)
    );
    b.close().await;
}

/// The refusals' shared shape: the status, the message on the sign-in page, no session, no
/// account, and a `sign_in_failed` entry giving the reason.
async fn assert_refused(app: &TestApp, response: reqwest::Response, status: u16, says: &str) {
    assert_eq!(response.status(), status);
    assert!(
        response
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .all(|c| !c
                .to_str()
                .unwrap_or_default()
                .starts_with("netcron_session=")),
        "no session cookie"
    );
    let page = response.text().await.expect("page");
    assert!(page.contains("id=\"sign-in-error\""), "{page}");
    assert!(page.contains(says), "the page says {says:?}: {page}");
    assert_eq!(sessions(app).await, 0);
    assert!(provider_accounts(app).await.is_empty());
    let failed = audit(app, "sign_in_failed").await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].1, i32::from(status));
    assert_eq!(failed[0].2["provider"], oidc::ID);
    assert!(
        failed[0].2["reason"]
            .as_str()
            .is_some_and(|r| r.contains(says)),
        "{failed:?}"
    );
    assert!(audit(app, "sign_in").await.is_empty());
}

/// A callback whose `state` is not the one this browser's sign-in started is refused, and
/// the sign-in it started is used up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_state_is_refused_and_nobody_is_signed_in() {
    let (app, provider) =
        app_with_provider(&[account("alice", "Alice Admin", &["netcron-admins"])], &[]).await;
    let mut jar = Jar::default();
    let authorize = start_sign_in(&app, &mut jar).await;
    assert!(jar.get("netcron_oidc_state").is_some());
    let back = provider_login(&authorize, "alice", &provider.issuer).await;
    let mut url = reqwest::Url::parse(&back).expect("callback URL");
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "state" {
                format!("{v}x")
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(pairs);
    let response = finish(url.as_str(), &jar).await;
    assert_refused(&app, response, 400, "not started in this browser").await;
    // The genuine callback after that finds its sign-in gone.
    let again = finish(&back, &jar).await;
    assert_eq!(again.status(), 400);
    assert_eq!(sessions(&app).await, 0);
}

/// An ID token with a nonce other than the one netcron sent (the authorization request was
/// changed on its way to the provider) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_token_with_another_nonce_is_refused() {
    let (app, provider) =
        app_with_provider(&[account("alice", "Alice Admin", &["netcron-admins"])], &[]).await;
    let mut jar = Jar::default();
    let authorize = start_sign_in(&app, &mut jar).await;
    let mut url = reqwest::Url::parse(&authorize).expect("authorize URL");
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "nonce" {
                "a-nonce-netcron-never-sent".to_owned()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(pairs);
    let back = provider_login(url.as_str(), "alice", &provider.issuer).await;
    let response = finish(&back, &jar).await;
    assert_refused(&app, response, 401, "wrong nonce").await;
}

/// An ID token that has expired by the time netcron receives it (the provider issues it for
/// one second and holds the answer back 1.5 s) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_id_token_is_refused() {
    let (app, provider) = app_with_provider(
        &[account("alice", "Alice Admin", &["netcron-admins"])],
        &[("OIDC_ID_TOKEN_TTL", "1"), ("OIDC_TOKEN_DELAY_MS", "1500")],
    )
    .await;
    let mut jar = Jar::default();
    let authorize = start_sign_in(&app, &mut jar).await;
    let back = provider_login(&authorize, "alice", &provider.issuer).await;
    let response = finish(&back, &jar).await;
    assert_refused(&app, response, 401, "has expired").await;
}

/// A person none of whose groups maps to a role, with no default role, is refused with what
/// to do about it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_without_a_mapped_group_is_refused() {
    let (app, provider) = app_with_provider(&[account("carol", "Carol", &["staff"])], &[]).await;
    let mut jar = Jar::default();
    let authorize = start_sign_in(&app, &mut jar).await;
    let back = provider_login(&authorize, "carol", &provider.issuer).await;
    let response = finish(&back, &jar).await;
    assert_refused(
        &app,
        response,
        401,
        "your account at Corp SSO has no netcron role; ask an admin to map one of your groups",
    )
    .await;
}

/// Signs `login` in over HTTP from the start; answers the callback's response.
async fn http_sign_in(app: &TestApp, provider: &Provider, login: &str) -> reqwest::Response {
    let mut jar = Jar::default();
    let authorize = start_sign_in(app, &mut jar).await;
    let back = provider_login(&authorize, login, &provider.issuer).await;
    finish(&back, &jar).await
}

/// A provider's person whose netcron account was disabled is refused; one whose name another
/// account has already is refused rather than merged into it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_account_and_a_taken_name_are_refused() {
    let (app, provider) = app_with_provider(
        &[
            account("alice", "Alice Admin", &["netcron-admins"]),
            account("bob", "Bob from SSO", &["netops"]),
        ],
        &[],
    )
    .await;
    let signed_in = http_sign_in(&app, &provider, "alice").await;
    assert_eq!(signed_in.status(), 200);
    assert!(
        signed_in
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .any(|c| c
                .to_str()
                .unwrap_or_default()
                .starts_with("netcron_session="))
    );
    app.db
        .execute_unprepared("UPDATE users SET disabled_at = now() WHERE name = 'alice'")
        .await
        .expect("disable alice");
    let refused = http_sign_in(&app, &provider, "alice").await;
    assert_eq!(refused.status(), 401);
    assert!(
        refused
            .text()
            .await
            .expect("page")
            .contains("your netcron account is disabled")
    );

    app.db
        .execute_unprepared(
            "INSERT INTO users (id, name, role) VALUES (gen_random_uuid(), 'bob', 'viewer')",
        )
        .await
        .expect("a local bob");
    let refused = http_sign_in(&app, &provider, "bob").await;
    assert_eq!(refused.status(), 401);
    assert!(
        refused
            .text()
            .await
            .expect("page")
            .contains("exists here already and is not linked to Corp SSO")
    );
    assert_eq!(
        provider_accounts(&app).await,
        [("alice".to_owned(), "admin".to_owned())]
    );
    assert_eq!(audit(&app, "sign_in").await.len(), 1);
    let failed = audit(&app, "sign_in_failed").await;
    assert_eq!(
        failed.iter().map(|f| f.0.as_str()).collect::<Vec<_>>(),
        ["alice", "bob"]
    );
}

/// A provider list with a mistake stops the start with one line that names the setting and
/// the mistake, and never shows the client secret it holds.
#[test]
fn a_malformed_provider_list_stops_the_start_with_one_line() {
    let dir = crate::support::sites::temp_dir("oidc-conf");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_netcron"))
        .arg("api")
        .current_dir(&*dir)
        .env("DATABASE_URL", "postgres://netcron:pw@127.0.0.1:1/netcron")
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .env("NETCRON_API_TOKEN", "a-token")
        .env(
            "NETCRON_SECRET_KEY",
            netcron_common::secret::SecretKey::generate_base64(),
        )
        .env(
            "NETCRON_OIDC_PROVIDERS",
            r#"[{"id": "corp", "name": "Corp SSO", "issuer": "https://sso.example",
                 "client_id": "netcron", "client_secret": "hunter2",
                 "roles": {"netcron-admins": "root"}}]"#,
        )
        .output()
        .expect("netcron api");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("invalid configuration: NETCRON_OIDC_PROVIDERS") && stderr.contains("root"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}
