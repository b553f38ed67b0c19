use serde_json::json;
use uuid::Uuid;

use crate::support::app::{TestApp, assert_problem, collect_pages, id, json_of};

#[tokio::test]
async fn command_is_created_with_defaults() {
    let app = TestApp::spawn().await;
    let device = app.device("d").await;
    let path = format!("/devices/{}/commands", id(&device));
    let created = app
        .create(&path, json!({"name": "uptime", "command": "uptime"}))
        .await;
    assert_eq!(created["kind"], "shell");
    assert_eq!(created["timeout_s"], 60);
    assert_eq!(created["max_output_bytes"], 1_048_576);
    assert_eq!(created["max_attempts"], 1);
    assert_eq!(created["device_id"], device["id"]);
    let (status, fetched) = json_of(app.get(&format!("{path}/{}", id(&created))).await).await;
    assert_eq!(status, 200);
    assert_eq!(fetched, created);
}

#[tokio::test]
async fn command_validation_names_the_field() {
    let app = TestApp::spawn().await;
    let device = app.device("d").await;
    let path = format!("/devices/{}/commands", id(&device));
    let cases = [
        (json!({"name": "x"}), "command"),
        (json!({"name": "x", "command": "   "}), "command"),
        (
            json!({"name": "x", "command": "ls", "timeout_s": 0}),
            "timeout_s",
        ),
        (
            json!({"name": "x", "command": "ls", "timeout_s": 86401}),
            "timeout_s",
        ),
        (
            json!({"name": "x", "command": "ls", "max_output_bytes": 0}),
            "max_output_bytes",
        ),
        (
            json!({"name": "x", "command": "ls", "max_output_bytes": 104_857_601}),
            "max_output_bytes",
        ),
        (
            json!({"name": "x", "command": "ls", "max_attempts": 11}),
            "max_attempts",
        ),
        (
            json!({"name": "x", "command": "ls", "kind": "telnet"}),
            "kind",
        ),
        (json!({"name": "", "command": "ls"}), "name"),
        (json!({"name": "x", "command": "a\u{0}b"}), "command"),
    ];
    for (body, field) in cases {
        assert_problem(app.post(&path, &body).await, 422, "validation", Some(field)).await;
    }
}

#[tokio::test]
async fn commands_belong_to_their_device() {
    let app = TestApp::spawn().await;
    let (device, command) = app.command("a").await;
    let other = app.device("b").await;
    let foreign = format!("/devices/{}/commands/{}", id(&other), id(&command));
    assert_problem(app.get(&foreign).await, 404, "not-found", None).await;
    assert_problem(
        app.patch(&foreign, &json!({"timeout_s": 5})).await,
        404,
        "not-found",
        None,
    )
    .await;
    assert_problem(app.delete(&foreign).await, 404, "not-found", None).await;
    let missing_device = format!("/devices/{}/commands", Uuid::now_v7());
    assert_problem(app.get(&missing_device).await, 404, "not-found", None).await;
    assert_problem(
        app.post(&missing_device, &json!({"name": "x", "command": "ls"}))
            .await,
        404,
        "not-found",
        None,
    )
    .await;
    let own = format!("/devices/{}/commands/{}", id(&device), id(&command));
    assert_eq!(app.get(&own).await.status(), 200);
}

#[tokio::test]
async fn patch_updates_and_keeps_rules_across_fields() {
    let app = TestApp::spawn().await;
    let (device, command) = app.command("a").await;
    let path = format!("/devices/{}/commands/{}", id(&device), id(&command));
    let (status, updated) = json_of(
        app.patch(&path, &json!({"command": "show version", "timeout_s": 120}))
            .await,
    )
    .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["command"], "show version");
    assert_eq!(updated["timeout_s"], 120);
    assert_eq!(updated["name"], "uptime");
    assert_problem(
        app.patch(&path, &json!({"command": ""})).await,
        422,
        "validation",
        Some("command"),
    )
    .await;
}

#[tokio::test]
async fn duplicate_names_on_one_device_conflict_but_not_across_devices() {
    let app = TestApp::spawn().await;
    let (device, _) = app.command("a").await;
    let again = app
        .post(
            &format!("/devices/{}/commands", id(&device)),
            &json!({"name": "uptime", "command": "w"}),
        )
        .await;
    assert_problem(again, 409, "conflict", Some("name")).await;
    let other = app.device("b").await;
    app.create(
        &format!("/devices/{}/commands", id(&other)),
        json!({"name": "uptime", "command": "w"}),
    )
    .await;
}

#[tokio::test]
async fn scheduled_command_cannot_be_deleted() {
    let app = TestApp::spawn().await;
    let (device, command) = app.command("a").await;
    let schedule = app
        .schedule(&device, &command, json!({"cron_expression": "@hourly"}))
        .await;
    let path = format!("/devices/{}/commands/{}", id(&device), id(&command));
    assert_problem(app.delete(&path).await, 409, "conflict", None).await;
    assert_eq!(
        app.delete(&format!("/schedules/{}", id(&schedule)))
            .await
            .status(),
        204
    );
    assert_eq!(app.delete(&path).await.status(), 204);
    assert_problem(app.get(&path).await, 404, "not-found", None).await;
}

#[tokio::test]
async fn commands_paginate() {
    let app = TestApp::spawn().await;
    let device = app.device("d").await;
    let path = format!("/devices/{}/commands", id(&device));
    for i in 0..5 {
        app.create(&path, json!({"name": format!("c{i}"), "command": "true"}))
            .await;
    }
    let (ids, pages) = collect_pages(&app, &path, 2).await;
    assert_eq!((ids.len(), pages), (5, 3));
}
