use serde_json::json;
use uuid::Uuid;

use crate::support::app::{TestApp, assert_problem, collect_pages, id, json_of};

const FINGERPRINT: &str = "SHA256:nThbg6kXUpJWGl7E1IGOCspRomTxdCARLviKw6E5SY8";

#[tokio::test]
async fn device_is_created_with_defaults_and_read_back() {
    let app = TestApp::spawn().await;
    let cred = app.credential("c").await;
    let created = app
        .create(
            "/devices",
            json!({"name": "core-sw1", "host": "Core-SW1.Example.NET", "platform": "cisco_ios",
                   "credential_id": cred["id"], "tags": ["core", "dc1", "core"]}),
        )
        .await;
    assert_eq!(created["port"], 22);
    assert_eq!(created["host"], "core-sw1.example.net");
    assert_eq!(created["tags"], json!(["core", "dc1"]));
    assert_eq!(created["enabled"], true);
    assert_eq!(created["host_key_fingerprint"], serde_json::Value::Null);
    let (status, fetched) = json_of(app.get(&format!("/devices/{}", id(&created))).await).await;
    assert_eq!(status, 200);
    assert_eq!(fetched, created);
}

#[tokio::test]
async fn device_validation_names_the_field() {
    let app = TestApp::spawn().await;
    let cred = app.credential("c").await;
    let base =
        json!({"name": "d", "host": "10.0.0.1", "platform": "linux", "credential_id": cred["id"]});
    let with = |key: &str, value: serde_json::Value| {
        let mut body = base.clone();
        body[key] = value;
        body
    };
    let cases = [
        (with("host", json!("not a host!")), "host"),
        (with("host", json!("300.1.1.1")), "host"),
        (with("port", json!(0)), "port"),
        (with("port", json!(70000)), "port"),
        (with("port", json!("22")), "port"),
        (with("platform", json!("cisco")), "platform"),
        (
            with("credential_id", json!(Uuid::now_v7())),
            "credential_id",
        ),
        (with("credential_id", json!("nope")), "credential_id"),
        (with("tags", json!(["has space"])), "tags[0]"),
        (with("tags", json!(["ok", ""])), "tags[1]"),
        (
            with("host_key_fingerprint", json!("MD5:aa:bb")),
            "host_key_fingerprint",
        ),
        (with("name", json!("  ")), "name"),
        (with("colour", json!("red")), "colour"),
    ];
    for (body, field) in cases {
        assert_problem(
            app.post("/devices", &body).await,
            422,
            "validation",
            Some(field),
        )
        .await;
    }
    let (_, list) = json_of(app.get("/devices").await).await;
    assert_eq!(list["items"], json!([]));
}

#[tokio::test]
async fn patch_changes_fields_and_null_forgets_the_pinned_key() {
    let app = TestApp::spawn().await;
    let cred = app.credential("c").await;
    let device = app
        .create(
            "/devices",
            json!({"name": "r1", "host": "192.0.2.1", "platform": "juniper_junos",
                   "credential_id": cred["id"], "host_key_fingerprint": FINGERPRINT}),
        )
        .await;
    assert_eq!(device["host_key_fingerprint"], FINGERPRINT);
    let path = format!("/devices/{}", id(&device));
    let (status, updated) = json_of(
        app.patch(
            &path,
            &json!({"port": 2222, "tags": ["edge"], "enabled": false}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["port"], 2222);
    assert_eq!(updated["tags"], json!(["edge"]));
    assert_eq!(updated["enabled"], false);
    assert_eq!(
        updated["host_key_fingerprint"], FINGERPRINT,
        "absent field is unchanged"
    );
    let (_, repinned) = json_of(
        app.patch(&path, &json!({"host_key_fingerprint": null}))
            .await,
    )
    .await;
    assert_eq!(repinned["host_key_fingerprint"], serde_json::Value::Null);
    assert_problem(
        app.patch(&path, &json!({"port": -1})).await,
        422,
        "validation",
        Some("port"),
    )
    .await;
    assert_problem(
        app.patch(&path, &json!({"credential_id": Uuid::now_v7()}))
            .await,
        422,
        "validation",
        Some("credential_id"),
    )
    .await;
}

#[tokio::test]
async fn devices_filter_by_tag_and_platform_and_paginate() {
    let app = TestApp::spawn().await;
    let cred = app.credential("c").await;
    let mut core = Vec::new();
    for i in 0..5 {
        let tags = if i % 2 == 0 {
            json!(["core"])
        } else {
            json!(["edge"])
        };
        let platform = if i < 3 {
            "arista_eos"
        } else {
            "mikrotik_routeros"
        };
        let d = app
            .create(
                "/devices",
                json!({"name": format!("d{i}"), "host": format!("10.0.0.{i}"), "platform": platform,
                       "credential_id": cred["id"], "tags": tags}),
            )
            .await;
        if i % 2 == 0 {
            core.push(id(&d).to_owned());
        }
    }
    let (all, pages) = collect_pages(&app, "/devices", 2).await;
    assert_eq!((all.len(), pages), (5, 3));
    let (tagged, _) = collect_pages(&app, "/devices?tag=core", 2).await;
    assert_eq!(tagged, core);
    let (_, mikrotik) = json_of(app.get("/devices?platform=mikrotik_routeros").await).await;
    assert_eq!(mikrotik["items"].as_array().map(Vec::len), Some(2));
    assert_problem(
        app.get("/devices?platform=ios").await,
        400,
        "invalid-parameter",
        Some("platform"),
    )
    .await;
}

#[tokio::test]
async fn duplicate_device_names_conflict() {
    let app = TestApp::spawn().await;
    let d = app.device("same").await;
    let again = app
        .post(
            "/devices",
            &json!({"name": "same", "host": "h", "platform": "linux", "credential_id": d["credential_id"]}),
        )
        .await;
    assert_problem(again, 409, "conflict", Some("name")).await;
}

#[tokio::test]
async fn deleting_a_device_removes_its_commands_and_runs_but_not_while_scheduled() {
    let app = TestApp::spawn().await;
    let (device, command) = app.command("sw").await;
    let run_path = format!("/devices/{}/commands/{}/run", id(&device), id(&command));
    let (status, run) = json_of(app.post(&run_path, &json!({})).await).await;
    assert_eq!(status, 202);
    let schedule = app
        .schedule(&device, &command, json!({"cron_expression": "0 * * * *"}))
        .await;
    let path = format!("/devices/{}", id(&device));
    let refused = assert_problem(app.delete(&path).await, 409, "conflict", None).await;
    assert!(
        refused["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("schedule"),
        "{refused}"
    );
    assert_eq!(
        app.delete(&format!("/schedules/{}", id(&schedule)))
            .await
            .status(),
        204
    );
    assert_eq!(app.delete(&path).await.status(), 204);
    assert_problem(app.get(&path).await, 404, "not-found", None).await;
    assert_problem(
        app.get(&format!(
            "/devices/{}/commands/{}",
            id(&device),
            id(&command)
        ))
        .await,
        404,
        "not-found",
        None,
    )
    .await;
    assert_problem(
        app.get(&format!("/runs/{}", id(&run))).await,
        404,
        "not-found",
        None,
    )
    .await;
}

#[tokio::test]
async fn unknown_devices_are_404_and_bad_ids_400() {
    let app = TestApp::spawn().await;
    let missing = format!("/devices/{}", Uuid::now_v7());
    assert_problem(app.get(&missing).await, 404, "not-found", None).await;
    assert_problem(
        app.patch(&missing, &json!({"port": 23})).await,
        404,
        "not-found",
        None,
    )
    .await;
    assert_problem(app.delete(&missing).await, 404, "not-found", None).await;
    assert_problem(
        app.get("/devices/123").await,
        400,
        "invalid-parameter",
        Some("device_id"),
    )
    .await;
}
