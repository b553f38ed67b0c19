//! Reads that tolerate values from a newer version. A newer netcron may add a platform, a
//! command kind, a policy or a run status, and its migration writes that text into rows this
//! build still serves (a rolling upgrade, a rollback). Lists and single resources, in REST and
//! in the console, answer 200 for such rows and show the value as `unknown:<text>`; request
//! bodies still accept only the values this build knows (422 naming the field).

use std::sync::Arc;

use netcron_scheduler::{SchedulerSettings, SystemClock};
use sea_orm::ConnectionTrait as _;
use serde_json::{Value, json};

use crate::support::app::{TestApp, assert_problem, id, json_of};
use crate::support::console::ConsoleSession;

/// What a newer version's migration would do: widen the `CHECK` constraints this build's
/// migrations put on the text-backed enum columns (here: drop them, in this test's own
/// database), then write a value this build does not know into every such column.
const NEWER_VERSION: &str = "
ALTER TABLE devices DROP CONSTRAINT IF EXISTS devices_platform_check;
ALTER TABLE credentials DROP CONSTRAINT IF EXISTS credentials_kind_check;
ALTER TABLE commands DROP CONSTRAINT IF EXISTS commands_kind_check;
ALTER TABLE schedules DROP CONSTRAINT IF EXISTS schedules_misfire_policy_check;
ALTER TABLE schedules DROP CONSTRAINT IF EXISTS schedules_overlap_policy_check;
ALTER TABLE schedules DROP CONSTRAINT IF EXISTS schedules_day_match_check;
ALTER TABLE runs DROP CONSTRAINT IF EXISTS runs_status_check;
ALTER TABLE runs DROP CONSTRAINT IF EXISTS runs_trigger_check;
UPDATE devices SET platform = 'cisco_xr';
UPDATE credentials SET kind = 'certificate';
UPDATE commands SET kind = 'netconf_get';
UPDATE schedules SET misfire_policy = 'run_latest', overlap_policy = 'replace',
    day_match = 'weekday_first';
UPDATE runs SET status = 'paused_by_operator', trigger = 'webhook';
";

/// A device, its credential, a command, a schedule and a manual run, all then rewritten with
/// values from a newer version. Returns `(device, credential id, command, schedule, run)`.
async fn rows_from_a_newer_version(app: &TestApp) -> (Value, String, Value, Value, Value) {
    let (device, command) = app.command("edge-1").await;
    let schedule = app
        .schedule(&device, &command, json!({"cron_expression": "@hourly"}))
        .await;
    let path = format!("/devices/{}/commands/{}/run", id(&device), id(&command));
    let (status, run) = json_of(app.post(&path, &json!({})).await).await;
    assert_eq!(status, 202, "{run}");
    app.db
        .execute_unprepared(NEWER_VERSION)
        .await
        .expect("the newer version's migration");
    let credential = device["credential_id"]
        .as_str()
        .expect("credential id")
        .to_owned();
    (device, credential, command, schedule, run)
}

/// GETs `path` and asserts a 200 with a JSON body.
async fn read(app: &TestApp, path: &str) -> Value {
    let (status, body) = json_of(app.get(path).await).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

#[tokio::test]
async fn rest_lists_and_resources_show_values_from_a_newer_version() {
    let app = TestApp::spawn().await;
    let (device, credential, command, schedule, run) = rows_from_a_newer_version(&app).await;
    let (d, c, s, r) = (id(&device), id(&command), id(&schedule), id(&run));

    let devices = read(&app, "/devices").await;
    assert_eq!(devices["items"][0]["platform"], "unknown:cisco_xr");
    assert_eq!(
        read(&app, &format!("/devices/{d}")).await["platform"],
        "unknown:cisco_xr"
    );

    let credentials = read(&app, "/credentials").await;
    assert_eq!(credentials["items"][0]["kind"], "unknown:certificate");
    assert_eq!(
        read(&app, &format!("/credentials/{credential}")).await["kind"],
        "unknown:certificate"
    );

    let commands = read(&app, &format!("/devices/{d}/commands")).await;
    assert_eq!(commands["items"][0]["kind"], "unknown:netconf_get");
    assert_eq!(
        read(&app, &format!("/devices/{d}/commands/{c}")).await["kind"],
        "unknown:netconf_get"
    );

    for path in [
        "/schedules".to_owned(),
        format!("/devices/{d}/commands/{c}/schedules"),
    ] {
        let item = &read(&app, &path).await["items"][0];
        assert_eq!(item["misfire_policy"], "unknown:run_latest", "{path}");
        assert_eq!(item["overlap_policy"], "unknown:replace", "{path}");
        assert_eq!(item["day_match"], "unknown:weekday_first", "{path}");
    }
    let one = read(&app, &format!("/schedules/{s}")).await;
    assert_eq!(one["misfire_policy"], "unknown:run_latest");
    assert_eq!(one["overlap_policy"], "unknown:replace");
    assert_eq!(one["day_match"], "unknown:weekday_first");
    read(&app, &format!("/schedules/{s}/preview")).await;

    for path in ["/runs".to_owned(), format!("/devices/{d}/results")] {
        let item = &read(&app, &path).await["items"][0];
        assert_eq!(item["status"], "unknown:paused_by_operator", "{path}");
        assert_eq!(item["trigger"], "unknown:webhook", "{path}");
    }
    let one = read(&app, &format!("/runs/{r}")).await;
    assert_eq!(one["status"], "unknown:paused_by_operator");
    assert_eq!(one["trigger"], "unknown:webhook");
}

#[tokio::test]
async fn the_console_shows_values_from_a_newer_version() {
    let app = TestApp::spawn().await;
    let (device, credential, _, schedule, run) = rows_from_a_newer_version(&app).await;
    let (d, s, r) = (id(&device), id(&schedule), id(&run));
    let session = ConsoleSession::open(&app).await;
    let pages: [(String, &[&str]); 10] = [
        ("/".to_owned(), &[]),
        ("/console/devices".to_owned(), &["unknown:cisco_xr"]),
        (
            format!("/console/devices/{d}"),
            &["unknown:cisco_xr", "unknown:netconf_get"],
        ),
        // The form keeps the unknown platform selected: saving it unchanged is refused, never
        // quietly turned into the first known platform.
        (
            format!("/console/devices/{d}/edit"),
            &["<option value=\"unknown:cisco_xr\" selected>"],
        ),
        ("/console/credentials".to_owned(), &["unknown:certificate"]),
        (format!("/console/credentials/{credential}/edit"), &[]),
        ("/console/schedules".to_owned(), &[]),
        // As the platform: saving the form unchanged is refused, never quietly `either`.
        (
            format!("/console/schedules/{s}/edit"),
            &["<option value=\"unknown:weekday_first\" selected>"],
        ),
        ("/console/runs".to_owned(), &["unknown:paused_by_operator"]),
        (
            format!("/console/runs/{r}"),
            &["unknown:paused_by_operator", "unknown:webhook"],
        ),
    ];
    for (path, shown) in pages {
        let response = session.get(&app, &path).await;
        let status = response.status().as_u16();
        let html = response.text().await.expect("html");
        assert_eq!(status, 200, "GET {path}: {html}");
        for text in shown {
            assert!(
                html.contains(text),
                "GET {path} does not show {text}: {html}"
            );
        }
    }
}

#[tokio::test]
async fn writes_still_accept_only_known_values() {
    let app = TestApp::spawn().await;
    let (device, _, command, schedule, _) = rows_from_a_newer_version(&app).await;
    let (d, c, s) = (id(&device), id(&command), id(&schedule));

    for platform in ["cisco_xr", "unknown:cisco_xr"] {
        assert_problem(
            app.patch(&format!("/devices/{d}"), &json!({"platform": platform}))
                .await,
            422,
            "validation",
            Some("platform"),
        )
        .await;
    }
    assert_problem(
        app.patch(
            &format!("/devices/{d}/commands/{c}"),
            &json!({"kind": "unknown:netconf_get"}),
        )
        .await,
        422,
        "validation",
        Some("kind"),
    )
    .await;
    assert_problem(
        app.post(
            &format!("/devices/{d}/commands"),
            &json!({"name": "get", "command": "x", "kind": "netconf_get"}),
        )
        .await,
        422,
        "validation",
        Some("kind"),
    )
    .await;
    for (field, value) in [
        ("overlap_policy", "unknown:replace"),
        ("misfire_policy", "run_latest"),
        ("day_match", "unknown:weekday_first"),
    ] {
        assert_problem(
            app.patch(&format!("/schedules/{s}"), &json!({ field: value }))
                .await,
            422,
            "validation",
            Some(field),
        )
        .await;
    }

    // Editing another field keeps the newer version's value as it is.
    let (status, edited) = json_of(
        app.patch(&format!("/devices/{d}"), &json!({"tags": ["edge"]}))
            .await,
    )
    .await;
    assert_eq!(status, 200, "{edited}");
    assert_eq!(edited["platform"], "unknown:cisco_xr");
    assert_eq!(edited["tags"], json!(["edge"]));
    let (status, edited) = json_of(
        app.patch(
            &format!("/schedules/{s}"),
            &json!({"cron_expression": "0 0 1,15 * MON"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{edited}");
    assert_eq!(edited["day_match"], "unknown:weekday_first");
}

/// Follows a `$ref` into `components.schemas`; any other schema is itself.
fn resolve<'s>(spec: &'s Value, schema: &'s Value) -> &'s Value {
    match schema["$ref"].as_str() {
        Some(path) => {
            let name = path.trim_start_matches("#/components/schemas/");
            &spec["components"]["schemas"][name]
        }
        None => schema,
    }
}

#[tokio::test]
async fn the_schema_documents_the_unknown_form_beside_the_known_values() {
    let app = TestApp::spawn().await;
    let spec = read(&app, "/openapi.json").await;
    let schemas = &spec["components"]["schemas"];
    for (view, field, known) in [
        ("DeviceView", "platform", "cisco_ios"),
        ("CredentialView", "kind", "password"),
        ("CommandView", "kind", "shell"),
        ("ScheduleView", "misfire_policy", "run_once"),
        ("ScheduleView", "overlap_policy", "skip"),
        ("ScheduleView", "day_match", "either"),
        ("RunSummary", "status", "queued"),
        ("RunSummary", "trigger", "manual"),
    ] {
        let schema = resolve(&spec, &schemas[view]["properties"][field]);
        let one_of = schema["oneOf"]
            .as_array()
            .unwrap_or_else(|| panic!("{view}.{field} is not oneOf: {schema}"));
        assert!(
            one_of
                .iter()
                .any(|s| s["type"] == "string" && s["pattern"] == "^unknown:.+$"),
            "{view}.{field}: {schema}"
        );
        assert!(
            one_of.iter().any(|s| resolve(&spec, s)["enum"]
                .as_array()
                .is_some_and(|values| values.contains(&json!(known)))),
            "{view}.{field}: {schema}"
        );
    }
    // Request bodies keep the plain enums: only known values are documented there.
    let create = &schemas["DeviceCreate"]["properties"]["platform"];
    let create = resolve(&spec, create);
    assert!(create["enum"].is_array(), "{create}");
}

#[tokio::test]
async fn a_run_that_needs_a_value_from_a_newer_version_ends_in_error_and_is_never_published() {
    let app = TestApp::spawn().await;
    let (device, command) = app.command("edge-1").await;
    let path = format!("/devices/{}/commands/{}/run", id(&device), id(&command));
    let (status, run) = json_of(app.post(&path, &json!({})).await).await;
    assert_eq!(status, 202, "{run}");
    app.db
        .execute_unprepared(
            "ALTER TABLE devices DROP CONSTRAINT IF EXISTS devices_platform_check;
             UPDATE devices SET platform = 'cisco_xr';",
        )
        .await
        .expect("the newer version's migration");
    let scheduler = app
        .scheduler(SchedulerSettings::default(), Arc::new(SystemClock))
        .await;
    scheduler.publish_pending().await.expect("publish");
    assert!(
        app.tasks().await.is_empty(),
        "no task for a platform this build does not know"
    );
    let ended = read(&app, &format!("/runs/{}", id(&run))).await;
    assert_eq!(ended["status"], "error", "{ended}");
    assert_eq!(ended["error_kind"], "internal", "{ended}");
    assert!(
        ended["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("cannot be published")),
        "{ended}"
    );
}
