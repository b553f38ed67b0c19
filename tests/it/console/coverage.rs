//! Everything the REST API does, the console does: the served OpenAPI document is walked
//! against the console's coverage table (`netcron_api::console_coverage`), and every console
//! route the table names is requested, signed in, with real ids.

use std::collections::BTreeSet;

use netcron_api::console_coverage::{COVERED, EXCEPTIONS};
use serde_json::json;

use crate::support::app::{TestApp, id, json_of};
use crate::support::console::ConsoleSession;
use crate::support::pipeline::run_now;

/// The operations of the served document, as (`METHOD`, path).
async fn operations(app: &TestApp) -> BTreeSet<(String, String)> {
    let (status, spec) = json_of(
        app.client
            .get(app.url("/openapi.json"))
            .send()
            .await
            .expect("GET /openapi.json"),
    )
    .await;
    assert_eq!(status, 200);
    let mut out = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for method in [
            "get", "put", "post", "patch", "delete", "head", "options", "trace",
        ] {
            if item.get(method).is_some() {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

/// One of each resource, so that every console path can be filled with ids that exist.
async fn fixtures(app: &TestApp) -> Vec<(&'static str, String)> {
    let (device, command) = app.command("coverage-sw1").await;
    let schedule = app
        .schedule(&device, &command, json!({"cron_expression": "0 3 * * *"}))
        .await;
    let run = run_now(app, &device, &command).await;
    let job = app
        .create(
            "/jobs",
            json!({"name": "coverage-job", "target": {"tags_all": ["lab"]}, "command": "uptime"}),
        )
        .await;
    let (status, job_run) = json_of(
        app.post(&format!("/jobs/{}/runs", id(&job)), &json!({}))
            .await,
    )
    .await;
    assert!(status == 201 || status == 202, "{status} {job_run}");
    let webhook = app
        .create(
            "/webhooks",
            json!({"name": "coverage-hook", "url": "https://hooks.example.net/netcron",
                   "secret": "0123456789abcdef"}),
        )
        .await;
    use sea_orm::ConnectionTrait as _;
    app.db
        .execute_unprepared(&format!(
            "INSERT INTO config_versions (id, device_id, version, hash, content, run_id)
             VALUES (gen_random_uuid(), '{0}', 1, 'h1', 'hostname coverage-sw1', gen_random_uuid()),
                    (gen_random_uuid(), '{0}', 2, 'h2', 'hostname coverage-sw2', gen_random_uuid())",
            id(&device)
        ))
        .await
        .expect("a config version");
    let user = app
        .create(
            "/users",
            json!({"name": "coverage-person", "role": "viewer", "password": "correct horse"}),
        )
        .await;
    let token = app
        .create(
            "/tokens",
            json!({"name": "coverage-token", "owner_id": user["id"]}),
        )
        .await;
    vec![
        ("user_id", id(&user).to_owned()),
        ("token_id", id(&token).to_owned()),
        ("device_id", id(&device).to_owned()),
        ("command_id", id(&command).to_owned()),
        (
            "credential_id",
            device["credential_id"]
                .as_str()
                .expect("credential")
                .to_owned(),
        ),
        ("schedule_id", id(&schedule).to_owned()),
        ("run_id", run),
        ("job_id", id(&job).to_owned()),
        ("job_run_id", id(&job_run).to_owned()),
        ("webhook_id", id(&webhook).to_owned()),
        ("version", "1".to_owned()),
    ]
}

fn is_html(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"))
}

fn fill(path: &str, ids: &[(&str, String)]) -> String {
    let mut out = path.to_owned();
    for (name, value) in ids {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    assert!(!out.contains('{'), "{path}: a parameter without a fixture");
    out
}

/// An API operation without a console path (and not listed as a deliberate exception) fails
/// this test; so does a table row whose operation the API no longer has, and a console route
/// that the router does not answer.
#[tokio::test]
async fn every_api_operation_has_a_console_path() {
    let app = TestApp::spawn().await;
    let operations = operations(&app).await;
    assert!(operations.len() > 40, "{operations:?}");

    let covered: BTreeSet<(String, String)> = COVERED
        .iter()
        .map(|c| (c.method.to_owned(), c.path.to_owned()))
        .collect();
    let excepted: BTreeSet<(String, String)> = EXCEPTIONS
        .iter()
        .map(|e| (e.method.to_owned(), e.path.to_owned()))
        .collect();
    assert_eq!(
        covered.len(),
        COVERED.len(),
        "an operation is in the table twice"
    );
    let both: Vec<_> = covered.intersection(&excepted).collect();
    assert!(both.is_empty(), "covered and excepted at once: {both:?}");
    for e in EXCEPTIONS {
        assert!(
            !e.reason.trim().is_empty(),
            "{} {}: no reason",
            e.method,
            e.path
        );
    }

    let missing: Vec<String> = operations
        .iter()
        .filter(|op| !covered.contains(*op) && !excepted.contains(*op))
        .map(|(m, p)| format!("{m} {p}"))
        .collect();
    assert!(
        missing.is_empty(),
        "API operations with no console path; add the page or form and a row to \
         api/src/console/coverage.rs (or an exception with its reason): {missing:#?}"
    );
    let stale: Vec<String> = covered
        .union(&excepted)
        .filter(|op| !operations.contains(*op))
        .map(|(m, p)| format!("{m} {p}"))
        .collect();
    assert!(
        stale.is_empty(),
        "rows for operations the API does not have: {stale:#?}"
    );

    // The table cannot lie: each console route answers, signed in, with ids that exist. A
    // form is posted without its CSRF token, so it is refused (403) rather than carried out —
    // a route that did not exist would be 404, a method it does not take 405 (a preview,
    // which changes nothing, answers 200).
    let ids = fixtures(&app).await;
    let session = ConsoleSession::open(&app).await;
    // A path the router does not have answers its fallback, a problem document; a console
    // page that exists but finds nothing to show (no inventory yet) answers an HTML page.
    let unrouted = session.get(&app, "/console/devices/no/such/page").await;
    assert_eq!(unrouted.status(), 404);
    assert!(
        !is_html(&unrouted),
        "the router's fallback is not a console page"
    );
    let mut wrong = Vec::new();
    for c in COVERED {
        let path = fill(c.console_path, &ids);
        let response = match c.console_method {
            "GET" => session.get(&app, &path).await,
            "POST" => session
                .client
                .post(app.url(&path))
                .header("cookie", &session.cookie)
                .form(&[("probe", "1")])
                .send()
                .await
                .expect("post"),
            other => panic!("{other}: the console only has GET and POST"),
        };
        let status = response.status().as_u16();
        let fine = match c.console_method {
            // A page, or the page's own "nothing to show" (an HTML 404 naming what is missing).
            "GET" => status < 400 || (status == 404 && is_html(&response)),
            // The CSRF refusal: the route exists and takes POST. A form's live preview
            // changes nothing, so it needs no token and answers its fragment.
            _ if path.ends_with("/preview") => status == 200,
            _ => status == 403,
        };
        if !fine {
            wrong.push(format!(
                "{} {} (for {} {}) answered {status}",
                c.console_method, path, c.method, c.path
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "console routes in the table that do not answer: {wrong:#?}"
    );
}

/// The exceptions are few and each says why, so that "not in the console" stays a decision.
#[test]
fn the_deliberate_exceptions_are_the_machine_endpoints() {
    let listed: Vec<(&str, &str)> = EXCEPTIONS.iter().map(|e| (e.method, e.path)).collect();
    assert_eq!(
        listed,
        [("GET", "/health"), ("GET", "/ready"), ("GET", "/metrics")]
    );
}

/// Swagger UI shows the document's description at the top: it links back to the console.
#[tokio::test]
async fn swagger_ui_leads_back_to_the_console() {
    let app = TestApp::spawn().await;
    let (_, spec) = json_of(
        app.client
            .get(app.url("/openapi.json"))
            .send()
            .await
            .expect("GET /openapi.json"),
    )
    .await;
    let description = spec["info"]["description"].as_str().unwrap_or_default();
    assert!(
        description.contains("[← Back to the operator console](/)"),
        "{description}"
    );
}

/// The icon a browser asks for by itself: `/favicon.ico` leads to the console's SVG icon, which
/// every page also links.
#[tokio::test]
async fn the_browser_finds_the_console_icon() {
    let app = TestApp::spawn().await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let response = client
        .get(app.url("/favicon.ico"))
        .send()
        .await
        .expect("GET /favicon.ico");
    assert_eq!(response.status(), 308);
    assert_eq!(
        response.headers()["location"],
        "/console/assets/favicon.svg"
    );
    let icon = app
        .client
        .get(app.url("/console/assets/favicon.svg"))
        .send()
        .await
        .expect("GET the icon");
    assert_eq!(icon.status(), 200);
    assert_eq!(icon.headers()["content-type"], "image/svg+xml");
    assert!(icon.text().await.expect("body").starts_with("<svg"));
    let sign_in = app
        .client
        .get(app.url("/console/sign-in"))
        .send()
        .await
        .expect("GET the sign-in page")
        .text()
        .await
        .expect("body");
    assert!(
        sign_in.contains(r#"<link rel="icon" href="/console/assets/favicon.svg""#),
        "{sign_in}"
    );
}

/// An API address typed into a browser leads to the console's page for it; programs still get
/// the 401 problem they can act on.
#[tokio::test]
async fn a_browser_at_an_api_address_is_led_to_the_console() {
    let app = TestApp::spawn().await;
    let device = app.device("typed").await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let navigate = |path: String, accept: &'static str| {
        let request = client.get(app.url(&path)).header("accept", accept);
        async move { request.send().await.expect("GET") }
    };
    let html = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    for (path, page) in [
        ("/devices".to_owned(), "/console/devices".to_owned()),
        (
            format!("/devices/{}", id(&device)),
            format!("/console/devices/{}", id(&device)),
        ),
        ("/schedules".to_owned(), "/console/schedules".to_owned()),
        (format!("/devices/{}/commands", id(&device)), "/".to_owned()),
    ] {
        let response = navigate(path.clone(), html).await;
        assert_eq!(response.status(), 303, "{path}");
        assert_eq!(response.headers()["location"], page.as_str(), "{path}");
    }
    for accept in ["application/json", "*/*"] {
        let response = navigate("/devices".to_owned(), accept).await;
        assert_eq!(response.status(), 401, "{accept}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{accept}"
        );
    }
}

/// A refused request's page keeps the console's navigation, so the way on is one click.
#[tokio::test]
async fn an_error_page_keeps_the_navigation() {
    let app = TestApp::spawn().await;
    let session = ConsoleSession::open(&app).await;
    for (path, status) in [
        ("/console/devices/not-a-uuid", 400),
        ("/console/runs?status=done", 400),
        ("/console/devices/00000000-0000-0000-0000-000000000000", 404),
    ] {
        let response = session.get(&app, path).await;
        assert_eq!(response.status(), status, "{path}");
        let html = response.text().await.expect("html");
        for link in [
            r#"<nav aria-label="Sections">"#,
            r#"href="/console/devices""#,
            r#"href="/console/runs""#,
            r#"href="/console/webhooks""#,
        ] {
            assert!(html.contains(link), "{path}: no {link} in {html}");
        }
    }
}

/// The overview's "every device was reachable" is computed from the same counter as its list:
/// one run refused at the door lists the device at once, before the outage threshold marks it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_lists_a_device_whose_last_run_could_not_reach_it() {
    let app = TestApp::spawn().await;
    let _pipeline = crate::support::pipeline::pipeline(&app).await;
    let session = ConsoleSession::open(&app).await;
    let overview = || async { session.get(&app, "/").await.text().await.expect("html") };
    assert!(
        overview()
            .await
            .contains("Every device was reachable at its last run.")
    );
    // Nothing listens on this port: the run ends `connection_refused`.
    let closed = crate::support::sshd::free_port();
    let device = crate::support::pipeline::password_device(&app, "door-shut", closed, "pw").await;
    let command =
        crate::support::pipeline::command(&app, &device, json!({"command": "true"})).await;
    let run = run_now(&app, &device, &command).await;
    let ended = crate::support::pipeline::finished(&app, &run).await;
    assert_eq!(ended["error_kind"], "connection_refused", "{ended}");
    let html = crate::support::app::eventually(
        "the overview lists the device",
        std::time::Duration::from_secs(10),
        || async {
            let html = overview().await;
            html.contains("door-shut").then_some(html)
        },
    )
    .await;
    assert!(!html.contains("Every device was reachable"), "{html}");
    assert!(
        html.contains("not reached at its last run (not yet marked unreachable)"),
        "{html}"
    );
}
