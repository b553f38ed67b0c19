use chrono::{DateTime, Duration, Timelike, Utc};
use serde_json::json;
use uuid::Uuid;

use crate::support::app::{TestApp, assert_problem, collect_pages, id, json_of};

fn time(v: &serde_json::Value) -> DateTime<Utc> {
    v.as_str().expect("timestamp").parse().expect("RFC 3339")
}

#[tokio::test]
async fn schedule_gets_its_first_fire_time() {
    let app = TestApp::spawn().await;
    let (device, command) = app.command("d").await;
    let before = Utc::now();
    let s = app
        .schedule(&device, &command, json!({"cron_expression": "*/5 * * * *"}))
        .await;
    assert_eq!(s["timezone"], "UTC");
    assert_eq!(s["enabled"], true);
    assert_eq!(s["misfire_policy"], "run_once");
    assert_eq!(s["overlap_policy"], "skip");
    assert_eq!(s["command_id"], command["id"]);
    let next = time(&s["next_fire_at"]);
    assert!(
        next > before && next <= before + Duration::minutes(5),
        "{next}"
    );
    assert_eq!(next.minute() % 5, 0);
    assert_eq!(next.second(), 0);
}

#[tokio::test]
async fn six_field_expressions_fire_on_seconds() {
    let app = TestApp::spawn().await;
    let (device, command) = app.command("d").await;
    let before = Utc::now();
    let s = app
        .schedule(&device, &command, json!({"cron_expression": "* * * * * *"}))
        .await;
    let next = time(&s["next_fire_at"]);
    assert!(
        next > before && next <= before + Duration::seconds(2),
        "{next}"
    );
}

#[tokio::test]
async fn schedule_validation_names_the_field() {
    let app = TestApp::spawn().await;
    let (device, command) = app.command("d").await;
    let path = format!(
        "/devices/{}/commands/{}/schedules",
        id(&device),
        id(&command)
    );
    let cases = [
        (json!({"cron_expression": "* * *"}), "cron_expression"),
        (json!({"cron_expression": "61 * * * *"}), "cron_expression"),
        (json!({"cron_expression": "* * * * 9"}), "cron_expression"),
        (json!({"cron_expression": ""}), "cron_expression"),
        (
            json!({"cron_expression": "0 0 0 1 1 * 2001"}),
            "cron_expression",
        ),
        (
            json!({"cron_expression": "@hourly", "timezone": "Mars/Olympus"}),
            "timezone",
        ),
        (
            json!({"cron_expression": "@hourly", "misfire_policy": "sometimes"}),
            "misfire_policy",
        ),
        (
            json!({"cron_expression": "@hourly", "overlap_policy": "maybe"}),
            "overlap_policy",
        ),
        (
            json!({"cron_expression": "@hourly", "start_at": "yesterday"}),
            "start_at",
        ),
        (
            json!({"cron_expression": "@hourly", "start_at": "2030-01-02T00:00:00Z", "end_at": "2030-01-01T00:00:00Z"}),
            "end_at",
        ),
        (json!({"cron": "@hourly"}), "cron"),
    ];
    for (body, field) in cases {
        assert_problem(app.post(&path, &body).await, 422, "validation", Some(field)).await;
    }
    let (_, list) = json_of(app.get("/schedules").await).await;
    assert_eq!(list["items"], json!([]));
}

#[tokio::test]
async fn start_and_end_bound_the_fire_times() {
    let app = TestApp::spawn().await;
    let (device, command) = app.command("d").await;
    let s = app
        .schedule(
            &device,
            &command,
            json!({"cron_expression": "0 12 * * *", "start_at": "2030-06-01T00:00:00Z",
                   "end_at": "2030-06-03T23:00:00Z"}),
        )
        .await;
    assert_eq!(s["next_fire_at"], "2030-06-01T12:00:00Z");
    let (status, preview) = json_of(
        app.get(&format!("/schedules/{}/preview?count=10", id(&s)))
            .await,
    )
    .await;
    assert_eq!(status, 200, "{preview}");
    let utc: Vec<&str> = preview["fire_times"]
        .as_array()
        .expect("fire_times")
        .iter()
        .map(|f| f["utc"].as_str().expect("utc"))
        .collect();
    assert_eq!(
        utc,
        [
            "2030-06-01T12:00:00Z",
            "2030-06-02T12:00:00Z",
            "2030-06-03T12:00:00Z"
        ]
    );
    let ended = app
        .schedule(
            &device,
            &command,
            json!({"cron_expression": "@hourly", "end_at": "2020-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(ended["next_fire_at"], serde_json::Value::Null);
}

#[tokio::test]
async fn preview_shows_the_zone_wall_clock_and_utc() {
    let app = TestApp::spawn().await;
    let (device, command) = app.command("d").await;
    let s = app
        .schedule(
            &device,
            &command,
            json!({"cron_expression": "30 9 * * 1-5", "timezone": "Europe/Berlin",
                   "start_at": "2031-01-04T00:00:00Z"}),
        )
        .await;
    let (status, preview) = json_of(
        app.get(&format!("/schedules/{}/preview?count=3", id(&s)))
            .await,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(preview["timezone"], "Europe/Berlin");
    // 2031-01-04 is a Saturday: the next weekdays are Monday 6th to Wednesday 8th, CET (+01:00).
    assert_eq!(
        preview["fire_times"],
        json!([
            {"local": "2031-01-06T09:30:00+01:00", "utc": "2031-01-06T08:30:00Z"},
            {"local": "2031-01-07T09:30:00+01:00", "utc": "2031-01-07T08:30:00Z"},
            {"local": "2031-01-08T09:30:00+01:00", "utc": "2031-01-08T08:30:00Z"},
        ])
    );
    let path = format!("/schedules/{}/preview", id(&s));
    assert_problem(
        app.get(&format!("{path}?count=0")).await,
        400,
        "invalid-parameter",
        Some("count"),
    )
    .await;
    assert_problem(
        app.get(&format!("{path}?count=101")).await,
        400,
        "invalid-parameter",
        Some("count"),
    )
    .await;
    let (_, default) = json_of(app.get(&path).await).await;
    assert_eq!(default["fire_times"].as_array().map(Vec::len), Some(10));
}

#[tokio::test]
async fn pause_and_resume() {
    let app = TestApp::spawn().await;
    let (device, command) = app.command("d").await;
    let s = app
        .schedule(&device, &command, json!({"cron_expression": "@daily"}))
        .await;
    let (status, paused) = json_of(
        app.post(&format!("/schedules/{}/pause", id(&s)), &json!({}))
            .await,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(paused["enabled"], false);
    let (_, listed) = json_of(app.get("/schedules?enabled=false").await).await;
    assert_eq!(listed["items"][0]["id"], s["id"]);
    let (status, resumed) = json_of(
        app.post(&format!("/schedules/{}/resume/", id(&s)), &json!({}))
            .await,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(resumed["enabled"], true);
    assert!(time(&resumed["next_fire_at"]) > Utc::now());
    let missing = format!("/schedules/{}/pause", Uuid::now_v7());
    assert_problem(app.post(&missing, &json!({})).await, 404, "not-found", None).await;
}

#[tokio::test]
async fn patch_recomputes_the_next_fire_time() {
    let app = TestApp::spawn().await;
    let (device, command) = app.command("d").await;
    let s = app
        .schedule(&device, &command, json!({"cron_expression": "0 0 1 1 *"}))
        .await;
    let path = format!("/schedules/{}", id(&s));
    let (status, updated) = json_of(
        app.patch(
            &path,
            &json!({"cron_expression": "0 * * * * *", "timezone": "America/New_York",
                                  "overlap_policy": "allow", "misfire_policy": "run_all"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["timezone"], "America/New_York");
    assert_eq!(updated["overlap_policy"], "allow");
    assert_eq!(updated["misfire_policy"], "run_all");
    let next = time(&updated["next_fire_at"]);
    assert!(next <= Utc::now() + Duration::seconds(61), "{next}");
    assert_problem(
        app.patch(&path, &json!({"cron_expression": "bad"})).await,
        422,
        "validation",
        Some("cron_expression"),
    )
    .await;
    let (_, fetched) = json_of(app.get(&path).await).await;
    assert_eq!(fetched, updated, "a rejected patch changes nothing");
}

#[tokio::test]
async fn schedules_list_globally_by_device_and_by_command() {
    let app = TestApp::spawn().await;
    let (d1, c1) = app.command("d1").await;
    let (d2, c2) = app.command("d2").await;
    for _ in 0..3 {
        app.schedule(&d1, &c1, json!({"cron_expression": "@hourly"}))
            .await;
    }
    app.schedule(&d2, &c2, json!({"cron_expression": "@daily"}))
        .await;
    let (all, pages) = collect_pages(&app, "/schedules", 2).await;
    assert_eq!((all.len(), pages), (4, 2));
    let (by_device, _) =
        collect_pages(&app, &format!("/schedules?device_id={}", id(&d2)), 10).await;
    assert_eq!(by_device.len(), 1);
    let (by_command, _) = collect_pages(
        &app,
        &format!("/devices/{}/commands/{}/schedules", id(&d1), id(&c1)),
        2,
    )
    .await;
    assert_eq!(by_command.len(), 3);
    let foreign = format!("/devices/{}/commands/{}/schedules", id(&d2), id(&c1));
    assert_problem(app.get(&foreign).await, 404, "not-found", None).await;
    assert_problem(
        app.get("/schedules?device_id=x").await,
        400,
        "invalid-parameter",
        Some("device_id"),
    )
    .await;
}

#[tokio::test]
async fn deleting_a_schedule_keeps_its_runs() {
    let app = TestApp::spawn().await;
    let (device, command) = app.command("d").await;
    let s = app
        .schedule(&device, &command, json!({"cron_expression": "@hourly"}))
        .await;
    let schedule_id: Uuid = id(&s).parse().expect("uuid");
    // A run the scheduler would have created for this schedule.
    sea_orm::ConnectionTrait::execute_unprepared(
        &app.db,
        &format!(
            "INSERT INTO runs (id, schedule_id, command_id, device_id, trigger, scheduled_for, status) \
             VALUES ('{}', '{schedule_id}', '{}', '{}', 'scheduled', now(), 'succeeded')",
            Uuid::now_v7(),
            id(&command),
            id(&device)
        ),
    )
    .await
    .expect("insert run");
    assert_eq!(
        app.delete(&format!("/schedules/{schedule_id}"))
            .await
            .status(),
        204
    );
    assert_problem(
        app.get(&format!("/schedules/{schedule_id}")).await,
        404,
        "not-found",
        None,
    )
    .await;
    let (_, runs) = json_of(app.get(&format!("/devices/{}/results", id(&device))).await).await;
    assert_eq!(runs["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(runs["items"][0]["schedule_id"], serde_json::Value::Null);
}
