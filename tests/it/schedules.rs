use std::sync::Arc;

use chrono::{DateTime, Datelike, Duration, Timelike, Utc};
use netcron_migration::{Migrator, MigratorTrait as _};
use netcron_scheduler::{ManualClock, SchedulerSettings};
use sea_orm::ConnectionTrait as _;
use serde_json::json;
use uuid::Uuid;

use crate::support::app::{TestApp, assert_problem, collect_pages, id, json_of};
use crate::support::console::ConsoleSession;

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
    assert_eq!(s["day_match"], "either");
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

/// The dates (`YYYY-MM-DD`, UTC) of a schedule's next `count` fire times.
async fn preview_dates(app: &TestApp, schedule: &serde_json::Value, count: u32) -> Vec<String> {
    let (status, preview) = json_of(
        app.get(&format!(
            "/schedules/{}/preview?count={count}",
            id(schedule)
        ))
        .await,
    )
    .await;
    assert_eq!(status, 200, "{preview}");
    preview["fire_times"]
        .as_array()
        .expect("fire_times")
        .iter()
        .map(|f| time(&f["utc"]).format("%Y-%m-%d").to_string())
        .collect()
}

#[tokio::test]
async fn l_fires_at_the_end_of_every_month() {
    let app = TestApp::spawn().await;
    let (device, command) = app.command("d").await;
    let path = format!(
        "/devices/{}/commands/{}/schedules",
        id(&device),
        id(&command)
    );
    let (status, s) = json_of(
        app.post(&path, &json!({"cron_expression": "0 2 L * *"}))
            .await,
    )
    .await;
    assert_eq!(status, 201, "{s}");
    assert_eq!(s["cron_expression"], "0 2 L * *");
    let (_, preview) = json_of(
        app.get(&format!("/schedules/{}/preview?count=13", id(&s)))
            .await,
    )
    .await;
    let fires: Vec<DateTime<Utc>> = preview["fire_times"]
        .as_array()
        .expect("fire_times")
        .iter()
        .map(|f| time(&f["utc"]))
        .collect();
    assert_eq!(fires.len(), 13, "{preview}");
    assert_eq!(fires[0], time(&s["next_fire_at"]));
    for (fire, next) in fires.iter().zip(&fires[1..]) {
        assert_eq!((fire.hour(), fire.minute(), fire.second()), (2, 0, 0));
        let day_after = *fire + Duration::days(1);
        assert_eq!(
            day_after.day(),
            1,
            "{fire} is not the last day of its month"
        );
        assert_eq!(
            day_after.month(),
            next.month(),
            "{next} does not end the month after {fire}"
        );
    }
    // In a fixed window: January to April 2031.
    let s = app
        .schedule(
            &device,
            &command,
            json!({"cron_expression": "0 2 L * *", "start_at": "2031-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(
        preview_dates(&app, &s, 4).await,
        ["2031-01-31", "2031-02-28", "2031-03-31", "2031-04-30"]
    );
}

#[tokio::test]
async fn new_schedules_fire_when_either_day_field_matches() {
    let app = TestApp::spawn().await;
    let (device, command) = app.command("d").await;
    let s = app
        .schedule(
            &device,
            &command,
            json!({"cron_expression": "0 0 1,15 * MON", "start_at": "2031-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(s["day_match"], "either");
    // 2031-01-01 is a Wednesday: the 1st, then Mondays, the 15th (a Wednesday), Mondays, the
    // 1st of February (a Saturday), Monday the 3rd.
    assert_eq!(s["next_fire_at"], "2031-01-01T00:00:00Z");
    assert_eq!(
        preview_dates(&app, &s, 8).await,
        [
            "2031-01-01",
            "2031-01-06",
            "2031-01-13",
            "2031-01-15",
            "2031-01-20",
            "2031-01-27",
            "2031-02-01",
            "2031-02-03"
        ]
    );
    let (_, fetched) = json_of(app.get(&format!("/schedules/{}", id(&s))).await).await;
    assert_eq!(fetched["day_match"], "either");
}

#[tokio::test]
async fn schedules_from_before_day_match_keep_both_fields_matching() {
    let app = TestApp::spawn().await;
    let (device, command) = app.command("d").await;
    let s = app
        .schedule(
            &device,
            &command,
            json!({"cron_expression": "0 0 1,15 * MON", "start_at": "2031-01-01T00:00:00Z"}),
        )
        .await;
    // Back to the schema before `day_match`, then the upgrade: the row is one the migration
    // finds, as every schedule of an older release is.
    // Every migration from day_match's on goes down (later ones with it).
    let names: Vec<String> = Migrator::migrations()
        .iter()
        .map(|m| m.name().to_owned())
        .collect();
    let at = names
        .iter()
        .position(|n| n.contains("schedule_day_match"))
        .expect("day_match's migration");
    let steps = u32::try_from(names.len() - at).expect("steps");
    Migrator::down(&app.db, Some(steps))
        .await
        .expect("day_match's migration and the later ones go down");
    let columns = app
        .db
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DatabaseBackend::Postgres,
            "SELECT count(*) AS n FROM information_schema.columns \
             WHERE table_name = 'schedules' AND column_name = 'day_match'",
        ))
        .await
        .expect("columns")
        .expect("a row");
    assert_eq!(columns.try_get::<i64>("", "n").expect("n"), 0);
    Migrator::up(&app.db, None).await.expect("upgrade");

    let (_, fetched) = json_of(app.get(&format!("/schedules/{}", id(&s))).await).await;
    assert_eq!(fetched["day_match"], "both", "{fetched}");
    // Only Mondays that are the 1st or the 15th, as before the upgrade.
    assert_eq!(
        preview_dates(&app, &s, 4).await,
        ["2031-09-01", "2031-09-15", "2031-12-01", "2031-12-15"]
    );

    // The scheduler reads the row's rule too: after the fire of Monday 1 September 2031 the
    // next is Monday the 15th, not Monday the 8th.
    let fire = time(&json!("2031-09-01T00:00:00Z"));
    app.db
        .execute_unprepared(&format!(
            "UPDATE schedules SET next_fire_at = '{}' WHERE id = '{}'",
            fire.to_rfc3339(),
            id(&s)
        ))
        .await
        .expect("set the fire time");
    let config = SchedulerSettings {
        horizon: Duration::zero(),
        ..SchedulerSettings::default()
    };
    let scheduler = app
        .scheduler(config, Arc::new(ManualClock::new(fire)))
        .await;
    let report = scheduler.tick().await.expect("tick");
    assert_eq!(report.fired.queued, 1);
    let (_, fired) = json_of(app.get(&format!("/schedules/{}", id(&s))).await).await;
    assert_eq!(fired["next_fire_at"], "2031-09-15T00:00:00Z", "{fired}");
    assert_eq!(fired["day_match"], "both");
}

#[tokio::test]
async fn day_match_is_checked_and_named() {
    let app = TestApp::spawn().await;
    let (device, command) = app.command("d").await;
    let path = format!(
        "/devices/{}/commands/{}/schedules",
        id(&device),
        id(&command)
    );
    for body in [
        json!({"cron_expression": "@hourly", "day_match": "any"}),
        json!({"cron_expression": "@hourly", "day_match": "unknown:any"}),
        json!({"cron_expression": "@hourly", "day_match": "Either"}),
        // No Monday is the 30th of February.
        json!({"cron_expression": "0 0 30 2 MON", "day_match": "both"}),
    ] {
        assert_problem(
            app.post(&path, &body).await,
            422,
            "validation",
            Some("day_match"),
        )
        .await;
    }
    let (_, list) = json_of(app.get("/schedules").await).await;
    assert_eq!(list["items"], json!([]));
    let s = app
        .schedule(
            &device,
            &command,
            json!({"cron_expression": "0 0 30 2 MON"}),
        )
        .await;
    let one = format!("/schedules/{}", id(&s));
    assert_problem(
        app.patch(&one, &json!({"day_match": "AND"})).await,
        422,
        "validation",
        Some("day_match"),
    )
    .await;
    assert_problem(
        app.patch(&one, &json!({"day_match": "both"})).await,
        422,
        "validation",
        Some("day_match"),
    )
    .await;
    let (_, unchanged) = json_of(app.get(&one).await).await;
    assert_eq!(unchanged["day_match"], "either");
    // A refused expression quotes what was typed and the field's bounds.
    let problem = assert_problem(
        app.post(&path, &json!({"cron_expression": "61 2 L * *"}))
            .await,
        422,
        "validation",
        Some("cron_expression"),
    )
    .await;
    let detail = problem["detail"].as_str().expect("detail");
    assert!(
        detail.contains("`61 2 L * *`") && detail.contains("minute (field 1 of 5) must be 0 to 59"),
        "{detail}"
    );
}

#[tokio::test]
async fn day_match_round_trips_through_patch() {
    let app = TestApp::spawn().await;
    let (device, command) = app.command("d").await;
    let s = app
        .schedule(
            &device,
            &command,
            json!({"cron_expression": "0 0 1,15 * MON", "start_at": "2031-01-01T00:00:00Z",
                   "day_match": "both"}),
        )
        .await;
    assert_eq!(s["day_match"], "both");
    assert_eq!(s["next_fire_at"], "2031-09-01T00:00:00Z");
    let one = format!("/schedules/{}", id(&s));
    let (status, switched) = json_of(app.patch(&one, &json!({"day_match": "either"})).await).await;
    assert_eq!(status, 200, "{switched}");
    assert_eq!(switched["day_match"], "either");
    assert_eq!(switched["next_fire_at"], "2031-01-01T00:00:00Z");
    let (_, back) = json_of(app.patch(&one, &json!({"day_match": "both"})).await).await;
    assert_eq!(back["day_match"], "both");
    assert_eq!(back["next_fire_at"], "2031-09-01T00:00:00Z");
    // A new expression keeps the rule: the 1st that is a Monday.
    let (status, edited) = json_of(
        app.patch(&one, &json!({"cron_expression": "0 0 1 * MON"}))
            .await,
    )
    .await;
    assert_eq!(status, 200, "{edited}");
    assert_eq!(edited["day_match"], "both");
    assert_eq!(edited["cron_expression"], "0 0 1 * MON");
    assert_eq!(edited["next_fire_at"], "2031-09-01T00:00:00Z");
    // A new expression the stored rule can never fire is refused, naming the expression.
    assert_problem(
        app.patch(&one, &json!({"cron_expression": "0 0 30 2 MON"}))
            .await,
        422,
        "validation",
        Some("cron_expression"),
    )
    .await;
    let (_, fetched) = json_of(app.get(&one).await).await;
    assert_eq!(fetched, edited, "a refused patch changes nothing");
}

#[tokio::test]
async fn the_console_form_chooses_day_match() {
    let app = TestApp::spawn().await;
    let (_, command) = app.command("d").await;
    let session = ConsoleSession::open(&app).await;
    let html = |response: reqwest::Response| async move {
        assert_eq!(response.status(), 200);
        response.text().await.expect("html")
    };
    let new = html(session.get(&app, "/console/schedules/new").await).await;
    assert!(
        new.contains("<select id=\"day_match\" name=\"day_match\">")
            && new.contains("<option value=\"either\" selected>"),
        "{new}"
    );
    let origin = reqwest::Url::parse(&app.base)
        .expect("base")
        .origin()
        .ascii_serialization();
    let created = session
        .client
        .post(app.url("/console/schedules"))
        .header("cookie", &session.cookie)
        .header("origin", origin)
        .form(&[
            ("csrf", session.csrf.as_str()),
            ("command_id", id(&command)),
            ("cron_expression", "0 0 1,15 * MON"),
            ("day_match", "both"),
            ("timezone", "UTC"),
            ("misfire_policy", "run_once"),
            ("overlap_policy", "skip"),
            ("enabled", "on"),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(created.status(), 303);
    let (_, list) = json_of(app.get("/schedules").await).await;
    let s = &list["items"][0];
    assert_eq!(s["day_match"], "both", "{list}");
    let edit = html(
        session
            .get(&app, &format!("/console/schedules/{}/edit", id(s)))
            .await,
    )
    .await;
    assert!(edit.contains("<option value=\"both\" selected>"), "{edit}");
}
