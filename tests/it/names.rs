//! Names compared as people see them (issue 28): one Unicode form (NFC) for every name, no
//! invisible characters, a clash named in words, and names stored before the rule reported
//! by the migration instead of broken.

use netcron_migration::MigratorTrait as _;
use sea_orm::{ConnectionTrait as _, Statement};
use serde_json::{Value, json};

use crate::support::app::{TestApp, id, json_of};

const NFC: &str = "caf\u{e9}-router";
const NFD: &str = "cafe\u{301}-router";

async fn device_body(app: &TestApp, name: &str) -> Value {
    let cred = app
        .credential(&format!("cred-{}", uuid::Uuid::new_v4().simple()))
        .await;
    json!({"name": name, "host": "192.0.2.10", "platform": "linux", "credential_id": cred["id"]})
}

#[tokio::test]
async fn names_that_look_the_same_are_the_same_name() {
    let app = TestApp::spawn().await;
    // Typed with a combining accent, stored composed.
    let (status, created) =
        json_of(app.post("/devices", &device_body(&app, NFD).await).await).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["name"], NFC);
    // The same name typed the other way is a clash, named in words.
    let (status, problem) =
        json_of(app.post("/devices", &device_body(&app, NFC).await).await).await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(problem["field"], "name", "{problem}");
    assert_eq!(
        problem["detail"],
        format!("name: a device named \"{NFC}\" already exists"),
        "{problem}"
    );
    // Renaming another device to it is the same clash.
    let other = app.device("other").await;
    let (status, problem) = json_of(
        app.patch(&format!("/devices/{}", id(&other)), &json!({"name": NFD}))
            .await,
    )
    .await;
    assert_eq!(status, 409, "{problem}");

    // Invisible characters are refused, named by code point and position, on every kind.
    let cases = [
        ("core\u{200B}-1", "U+200B (zero-width space) at position 5"),
        (
            "\u{202E}1-eroc",
            "U+202E (bidirectional embedding or override) at position 1",
        ),
        (
            "core-1\u{FEFF}x",
            "U+FEFF (zero-width no-break space) at position 7",
        ),
        ("core\u{2060}1", "U+2060 (word joiner)"),
        ("co\u{AD}re", "U+00AD (soft hyphen)"),
    ];
    for (name, said) in cases {
        let (status, problem) =
            json_of(app.post("/devices", &device_body(&app, name).await).await).await;
        assert_eq!(status, 422, "{name:?}: {problem}");
        assert_eq!(problem["field"], "name", "{problem}");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(said), "{name:?}: {detail}");
    }
    let (status, problem) = json_of(
        app.post(
            "/credentials",
            &json!({"name": "lab\u{200D}key", "username": "u", "password": "pw-123456"}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (422, Some("name")),
        "{problem}"
    );
    let (status, problem) = json_of(
        app.post(
            "/webhooks",
            &json!({"name": "hook\u{200B}", "url": "http://127.0.0.1:9/x", "secret": "a-webhook-secret-1"}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (422, Some("name")),
        "{problem}"
    );

    // A command name of one device: the clash names the command.
    let (device, command) = app.command("with-command").await;
    let taken = command["name"].as_str().expect("command name").to_owned();
    let (status, problem) = json_of(
        app.post(
            &format!("/devices/{}/commands", id(&device)),
            &json!({"name": taken, "command": "true"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(
        problem["detail"],
        format!("name: a command of this device named \"{taken}\" already exists"),
        "{problem}"
    );
}

/// Rows written before the rule: the migration composes every name it can and leaves a pair
/// that would then clash as it is, listed in `name_clashes`.
#[tokio::test]
async fn the_migration_composes_old_names_and_reports_pairs_it_cannot() {
    let app = TestApp::spawn().await;
    let a = app.device("a").await;
    let b = app.device("b").await;
    let c = app.device("c").await;
    let d = app.device("d").await;
    // Back to the schema before the rule, and names as an older release could store them.
    let names: Vec<String> = netcron_migration::Migrator::migrations()
        .iter()
        .map(|m| m.name().to_owned())
        .collect();
    let at = names
        .iter()
        .position(|n| n.contains("name_normal_form"))
        .expect("the names migration");
    let steps = u32::try_from(names.len() - at).expect("steps");
    netcron_migration::Migrator::down(&app.db, Some(steps))
        .await
        .expect("down");
    let rename = |device: &Value, name: &str| {
        format!(
            "UPDATE devices SET name = '{}' WHERE id = '{}'",
            name.replace('\'', "''"),
            id(device)
        )
    };
    for (device, name) in [
        (&a, NFC),
        (&b, NFD),
        (&c, "cafe\u{301}-switch"),
        (&d, "caf\u{e9}\u{200B}-router"),
    ] {
        app.db
            .execute_unprepared(&rename(device, name))
            .await
            .expect("rename");
    }
    netcron_migration::Migrator::up(&app.db, None)
        .await
        .expect("the migration does not fail on a clash");

    let name_of = |device: &Value| {
        let path = format!("/devices/{}", id(device));
        let app = &app;
        async move { json_of(app.get(&path).await).await.1["name"].clone() }
    };
    // Alone in its form: composed.
    assert_eq!(name_of(&c).await, "caf\u{e9}-switch");
    // The three that look like `café-router` are left as they were, and reported.
    assert_eq!(name_of(&a).await, NFC);
    assert_eq!(name_of(&b).await, NFD);
    assert_eq!(name_of(&d).await, "caf\u{e9}\u{200B}-router");
    let rows = app
        .db
        .query_all_raw(Statement::from_string(
            sea_orm::DatabaseBackend::Postgres,
            "SELECT kind, array_length(names, 1) AS n, name_key FROM name_clashes",
        ))
        .await
        .expect("name_clashes");
    let clashes: Vec<(String, i32, String)> = rows
        .iter()
        .map(|r| {
            (
                r.try_get("", "kind").expect("kind"),
                r.try_get("", "n").expect("n"),
                r.try_get("", "name_key").expect("key"),
            )
        })
        .collect();
    assert_eq!(clashes, [("device".to_owned(), 3, NFC.to_owned())]);
    // Renaming one clears its part of the report.
    let (status, _) = json_of(
        app.patch(
            &format!("/devices/{}", id(&b)),
            &json!({"name": "cafe-router-2"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = json_of(
        app.patch(
            &format!("/devices/{}", id(&d)),
            &json!({"name": "cafe-router-3"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    let left = app
        .db
        .query_one_raw(Statement::from_string(
            sea_orm::DatabaseBackend::Postgres,
            "SELECT count(*) AS n FROM name_clashes",
        ))
        .await
        .expect("count")
        .expect("row");
    assert_eq!(left.try_get::<i64>("", "n").expect("n"), 0);
}
