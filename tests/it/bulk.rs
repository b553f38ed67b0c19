//! The fleet in bulk: CSV import (dry run, upsert by name), CSV export, and tag edits on a
//! selection of devices.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::app::{TestApp, assert_problem, collect_pages, id, json_of};

const HEADER: &str = "name,host,port,platform,zone,credential,tags,vars,enabled,jump_host,\
                      legacy_algorithms,session_reuse\n";

async fn import(app: &TestApp, csv: &str, dry_run: bool) -> reqwest::Response {
    app.request(Method::POST, &format!("/devices/import?dry_run={dry_run}"))
        .header("content-type", "text/csv")
        .body(csv.to_owned())
        .send()
        .await
        .expect("POST /devices/import")
}

async fn imported(app: &TestApp, csv: &str) -> Value {
    let (status, body) = json_of(import(app, csv, false).await).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn export(app: &TestApp, query: &str) -> String {
    let response = app.get(&format!("/devices/export{query}")).await;
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    response.text().await.expect("CSV body")
}

async fn device_count(app: &TestApp) -> usize {
    collect_pages(app, "/devices", 500).await.0.len()
}

fn counts(summary: &Value) -> (u64, u64, u64) {
    let n = |k: &str| summary[k].as_u64().unwrap_or(u64::MAX);
    (n("created"), n("updated"), n("unchanged"))
}

fn generated(rows: usize) -> String {
    let mut csv = HEADER.to_owned();
    for i in 0..rows {
        let zone = if i % 2 == 0 { "site-a" } else { "site-b" };
        writeln!(
            csv,
            "sw{i:05},10.{}.{}.{},22,cisco_ios,{zone},lab,access;floor{},\"{{\"\"vlan\"\": {}}}\",true,,false,true",
            i / 65536,
            (i / 256) % 256,
            i % 256,
            i % 7,
            i % 4000
        )
        .expect("write");
    }
    csv
}

#[tokio::test]
async fn dry_run_lists_every_bad_row_by_line_and_column_and_writes_nothing() {
    let app = TestApp::spawn().await;
    app.credential("lab").await;
    app.device("kept").await;
    let before = device_count(&app).await;
    let csv = "name,host,platform,credential,port,tags,vars,enabled\n\
               ok-1,192.0.2.1,linux,lab,22,core,,true\n\
               bad-port,192.0.2.2,linux,lab,70000,,,\n\
               bad-platform,192.0.2.3,cisco,lab,,,,\n\
               bad-cred,192.0.2.4,linux,nobody,,,,\n\
               bad-tag,192.0.2.5,linux,lab,,has space,,\n\
               bad-vars,192.0.2.6,linux,lab,,,[1],\n\
               bad-flag,192.0.2.7,linux,lab,,,,maybe\n\
               ok-1,192.0.2.8,linux,lab,,,,\n\
               bad-host,not a host!,linux,lab,,,,\n";
    for dry_run in [true, false] {
        let body =
            assert_problem(import(&app, csv, dry_run).await, 422, "invalid-rows", None).await;
        let errors: Vec<(u64, String)> = body["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .map(|e| {
                assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
                (
                    e["row"].as_u64().unwrap_or_default(),
                    e["column"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        let expected: Vec<(u64, String)> = [
            (3, "port"),
            (4, "platform"),
            (5, "credential"),
            (6, "tags"),
            (7, "vars"),
            (8, "enabled"),
            (9, "name"),
            (10, "host"),
        ]
        .into_iter()
        .map(|(r, c)| (r, c.to_owned()))
        .collect();
        assert_eq!(errors, expected, "{body}");
    }
    assert_eq!(device_count(&app).await, before, "nothing was written");
}

#[tokio::test]
async fn header_must_name_known_and_required_columns() {
    let app = TestApp::spawn().await;
    let body = assert_problem(
        import(&app, "name,host,colour\nx,192.0.2.1,red\n", true).await,
        422,
        "invalid-rows",
        None,
    )
    .await;
    assert_eq!(
        body["errors"],
        json!([
            {"row": 1, "column": "colour", "message": "unknown column; the columns are name,host,port,platform,zone,credential,tags,vars,enabled,jump_host,legacy_algorithms,session_reuse"},
            {"row": 1, "column": "credential", "message": "a required column is missing"},
            {"row": 1, "column": "platform", "message": "a required column is missing"},
        ])
    );
}

#[tokio::test]
async fn dry_run_reports_actions_and_writes_nothing() {
    let app = TestApp::spawn().await;
    app.credential("lab").await;
    let csv = format!("{HEADER}a,192.0.2.1,,linux,,lab,,,,,,\nb,192.0.2.2,,linux,,lab,,,,,,\n");
    let (status, body) = json_of(import(&app, &csv, true).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["dry_run"], true);
    assert_eq!(counts(&body), (2, 0, 0));
    assert_eq!(
        body["rows"],
        json!([{"row": 2, "name": "a", "action": "create"}, {"row": 3, "name": "b", "action": "create"}])
    );
    assert_eq!(device_count(&app).await, 0);
}

#[tokio::test]
async fn thousands_of_rows_import_in_one_request_and_again_unchanged() {
    let app = TestApp::spawn().await;
    app.credential("lab").await;
    let csv = generated(5_000);
    let started = Instant::now();
    let body = imported(&app, &csv).await;
    let elapsed = started.elapsed();
    eprintln!("importing 5000 devices took {elapsed:?}");
    assert!(elapsed < Duration::from_secs(30), "{elapsed:?}");
    assert_eq!(counts(&body), (5_000, 0, 0));
    assert_eq!(device_count(&app).await, 5_000);

    let started = Instant::now();
    let again = imported(&app, &csv).await;
    eprintln!(
        "importing the same 5000 devices again took {:?}",
        started.elapsed()
    );
    assert_eq!(counts(&again), (0, 0, 5_000));

    let changed = csv.replacen("sw00042,10.0.0.42,22,", "sw00042,10.0.0.42,2222,", 1);
    assert_ne!(changed, csv);
    let once = imported(&app, &changed).await;
    assert_eq!(counts(&once), (0, 1, 4_999));
    let row = once["rows"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["action"] == "update"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        row,
        json!({"row": 44, "name": "sw00042", "action": "update"})
    );
}

#[tokio::test]
async fn import_updates_by_name_and_keeps_what_the_file_does_not_say() {
    let app = TestApp::spawn().await;
    let lab = app.credential("lab").await;
    let fp = "SHA256:nThbg6kXUpJWGl7E1IGOCspRomTxdCARLviKw6E5SY8";
    let cred = app.credential("other").await;
    let existing = app
        .create(
            "/devices",
            json!({"name": "r1", "host": "192.0.2.1", "platform": "linux",
                   "credential_id": cred["id"], "tags": ["old"], "zone": "site-a",
                   "host_key_fingerprint": fp, "vars": {"a": 1}}),
        )
        .await;
    let body = imported(
        &app,
        "name,host,platform,credential,tags\nr1,192.0.2.1,linux,lab,new;core\n",
    )
    .await;
    assert_eq!(counts(&body), (0, 1, 0));
    let (_, device) = json_of(app.get(&format!("/devices/{}", id(&existing))).await).await;
    assert_eq!(device["credential_id"], lab["id"], "the credential by name");
    assert_eq!(device["tags"], json!(["new", "core"]));
    assert_eq!(device["zone"], "site-a", "no zone column: kept");
    assert_eq!(device["vars"], json!({"a": 1}), "no vars column: kept");
    assert_eq!(device["host_key_fingerprint"], fp, "the pin is kept");
    assert_eq!(device["created_at"], existing["created_at"]);
}

#[tokio::test]
async fn export_then_import_changes_nothing() {
    let app = TestApp::spawn().await;
    app.credential("lab").await;
    imported(
        &app,
        &format!(
            "{HEADER}bastion,192.0.2.1,2222,linux,site-a,lab,jump,,true,,true,false\n\
             sw1,192.0.2.2,,cisco_ios,site-a,lab,core;dc1,\"{{\"\"vlan\"\": 10, \"\"name\"\": \"\"a,b\"\"}}\",false,bastion,,\n\
             sw2,sw2.example.net,,arista_eos,,lab,,,,,,\n"
        ),
    )
    .await;
    let csv = export(&app, "").await;
    assert!(csv.starts_with(HEADER), "{csv}");
    assert!(
        csv.contains("sw1,192.0.2.2,22,cisco_ios,site-a,lab,core;dc1,"),
        "{csv}"
    );
    assert!(csv.contains(",false,bastion,false,true\n"), "{csv}");
    let again = imported(&app, &csv).await;
    assert_eq!(counts(&again), (0, 0, 3), "{again}");

    let only = export(&app, "?tag=core").await;
    assert_eq!(only.lines().count(), 2, "{only}");
    let zone = export(&app, "?zone=site-a&platform=linux").await;
    assert_eq!(zone.lines().count(), 2, "{zone}");
}

#[tokio::test]
async fn jump_hosts_are_named_and_checked_like_single_devices() {
    let app = TestApp::spawn().await;
    app.credential("lab").await;
    let body = assert_problem(
        import(
            &app,
            "name,host,platform,credential,zone,jump_host\n\
             b1,192.0.2.1,linux,lab,site-a,\n\
             d1,192.0.2.2,linux,lab,site-b,b1\n\
             d2,192.0.2.3,linux,lab,site-a,nowhere\n\
             d3,192.0.2.4,linux,lab,site-a,d3\n",
            false,
        )
        .await,
        422,
        "invalid-rows",
        None,
    )
    .await;
    let at: Vec<(u64, &str)> = body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| {
            (
                e["row"].as_u64().unwrap_or_default(),
                e["column"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        at,
        [(3, "jump_host"), (4, "jump_host"), (5, "jump_host")],
        "{body}"
    );
    assert_eq!(device_count(&app).await, 0);
}

#[tokio::test]
async fn tags_are_added_and_removed_on_the_selected_devices_only() {
    let app = TestApp::spawn().await;
    app.credential("lab").await;
    imported(
        &app,
        "name,host,platform,credential,zone,tags,enabled\n\
         a,192.0.2.1,linux,lab,site-a,old;keep,true\n\
         b,192.0.2.2,linux,lab,site-a,keep,true\n\
         c,192.0.2.3,linux,lab,site-b,old,true\n\
         d,192.0.2.4,linux,lab,site-a,old,false\n",
    )
    .await;
    let (_, list) = json_of(app.get("/devices").await).await;
    let id_of = |name: &str| -> Value {
        list["items"]
            .as_array()
            .and_then(|items| items.iter().find(|d| d["name"] == name))
            .map(|d| d["id"].clone())
            .unwrap_or_default()
    };
    let tags_of = |name: &'static str| {
        let app = &app;
        async move {
            let (_, list) = json_of(app.get("/devices").await).await;
            list["items"]
                .as_array()
                .and_then(|items| items.iter().find(|d| d["name"] == name))
                .map(|d| d["tags"].clone())
                .unwrap_or_default()
        }
    };

    let (status, body) = json_of(
        app.post(
            "/devices/tags",
            &json!({"devices": [id_of("a"), id_of("c")], "add": ["new", "old"], "remove": ["keep"]}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"matched": 2, "changed": 2}));
    assert_eq!(tags_of("a").await, json!(["old", "new"]));
    assert_eq!(tags_of("c").await, json!(["old", "new"]));
    assert_eq!(tags_of("b").await, json!(["keep"]), "not selected");
    assert_eq!(tags_of("d").await, json!(["old"]), "not selected");

    // By target: enabled devices of zone site-a (a and b; d is disabled).
    let (status, body) = json_of(
        app.post(
            "/devices/tags",
            &json!({"target": {"zones": ["site-a"]}, "remove": ["old"], "add": ["audited"]}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"matched": 2, "changed": 2}));
    assert_eq!(tags_of("a").await, json!(["new", "audited"]));
    assert_eq!(tags_of("b").await, json!(["keep", "audited"]));
    assert_eq!(tags_of("c").await, json!(["old", "new"]), "other zone");
    assert_eq!(tags_of("d").await, json!(["old"]), "disabled");

    // The same edit again changes nothing.
    let (_, body) = json_of(
        app.post(
            "/devices/tags",
            &json!({"target": {"zones": ["site-a"]}, "remove": ["old"], "add": ["audited"]}),
        )
        .await,
    )
    .await;
    assert_eq!(body, json!({"matched": 2, "changed": 0}));
}

#[tokio::test]
async fn tag_edits_are_checked_like_device_tags() {
    let app = TestApp::spawn().await;
    let device = app.device("a").await;
    let cases = [
        (
            json!({"devices": [device["id"]], "add": ["has space"]}),
            "add[0]",
        ),
        (
            json!({"devices": [device["id"]], "remove": [""]}),
            "remove[0]",
        ),
        (json!({"devices": [device["id"]]}), "add"),
        (json!({"add": ["x"]}), "devices"),
        (
            json!({"devices": [device["id"]], "target": {"all": true}, "add": ["x"]}),
            "devices",
        ),
        (json!({"target": {}, "add": ["x"]}), "target"),
        (
            json!({"devices": [device["id"]], "add": ["x"], "remove": ["x"]}),
            "remove",
        ),
    ];
    for (body, field) in cases {
        assert_problem(
            app.post("/devices/tags", &body).await,
            422,
            "validation",
            Some(field),
        )
        .await;
    }
    let many: Vec<String> = (0..32).map(|i| format!("t{i}")).collect();
    assert_problem(
        app.post(
            "/devices/tags",
            &json!({"devices": [device["id"]], "add": many}),
        )
        .await,
        422,
        "validation",
        Some("add"),
    )
    .await;
    let (_, fetched) = json_of(app.get(&format!("/devices/{}", id(&device))).await).await;
    assert_eq!(fetched["tags"], json!(["lab"]), "nothing changed");
}

#[tokio::test]
async fn secret_variables_are_sealed_on_import_masked_on_export_and_kept_when_imported_again() {
    let app = TestApp::spawn().await;
    app.credential("lab").await;
    let file = "name,host,platform,credential,vars\n\
                sw1,192.0.2.2,cisco_ios,lab,\"{\"\"snmp_community\"\": \"\"Imp0rted-S3cret\"\", \"\"vlan\"\": 7}\"\n";
    let first = imported(&app, file).await;
    assert_eq!(counts(&first), (1, 0, 0), "{first}");
    // The same plaintext again is no change (its stored ciphertext is kept).
    let again = imported(&app, file).await;
    assert_eq!(counts(&again), (0, 0, 1), "{again}");
    let csv = export(&app, "").await;
    assert!(
        csv.contains("********") && !csv.contains("Imp0rted-S3cret"),
        "{csv}"
    );
    // The exported file, masks and all, imports as unchanged.
    let round = imported(&app, &csv).await;
    assert_eq!(counts(&round), (0, 0, 1), "{round}");
    // A mask for a secret that was never stored is refused on its row and column.
    let body = assert_problem(
        import(
            &app,
            "name,host,platform,credential,vars\n\
             sw2,192.0.2.3,linux,lab,\"{\"\"api_key\"\": \"\"********\"\"}\"\n",
            false,
        )
        .await,
        422,
        "invalid-rows",
        None,
    )
    .await;
    assert_eq!(body["errors"][0]["row"], 2, "{body}");
    assert_eq!(body["errors"][0]["column"], "vars", "{body}");
    // Nowhere in plaintext at rest.
    use sea_orm::{ConnectionTrait as _, Statement};
    let row = app
        .db
        .query_one_raw(Statement::from_string(
            app.db.get_database_backend(),
            "SELECT vars::text AS vars FROM devices WHERE name = 'sw1'",
        ))
        .await
        .expect("query")
        .expect("sw1");
    let vars: String = row.try_get("", "vars").expect("vars");
    assert!(
        !vars.contains("Imp0rted-S3cret") && vars.contains("$sealed"),
        "{vars}"
    );
}
