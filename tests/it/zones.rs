//! Zones (issue 16): a device belongs to a zone, its tasks go to that zone's stream, and only
//! executors started for the zone run them. These tests run every role in this process, on
//! one machine's loopback; `sites.rs` runs them across real network boundaries.

use std::sync::Arc;
use std::time::Duration;

use netcron_common::domain::{Zone, Zones};
use netcron_executor::ExecutorSettings;
use netcron_scheduler::{SchedulerSettings, SystemClock};
use sea_orm::ConnectionTrait as _;
use serde_json::{Value, json};

use crate::support::app::{TestApp, assert_problem, eventually, id, json_of, metric};
use crate::support::pipeline::{
    command, config, entries, finished, get_run, run_now, start_executor, start_scheduler, streams,
};
use crate::support::sshd::{TEST_PASSWORD, TEST_USER, TestSshd};

/// A device on the test sshd in `zone` (`None`: the request names no zone).
async fn device_in(app: &TestApp, name: &str, port: u16, zone: Option<&str>) -> Value {
    let cred = app
        .create(
            "/credentials",
            json!({"name": format!("{name}-cred"), "username": TEST_USER, "password": TEST_PASSWORD}),
        )
        .await;
    let mut body = json!({"name": name, "host": "127.0.0.1", "port": port, "platform": "linux",
                          "credential_id": cred["id"]});
    if let Some(zone) = zone {
        body["zone"] = json!(zone);
    }
    app.create("/devices", body).await
}

fn zone(name: &str) -> Zone {
    Zone::parse(name).expect("zone name")
}

fn serving(zones: &str) -> ExecutorSettings {
    ExecutorSettings {
        zones: Zones::parse(zones).expect("zones"),
        ..config()
    }
}

async fn zone_events(app: &TestApp) -> Vec<Value> {
    app.db
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DatabaseBackend::Postgres,
            "SELECT body FROM events WHERE type = 'zone_without_executors' ORDER BY id",
        ))
        .await
        .expect("events")
        .iter()
        .map(|row| row.try_get::<Value>("", "body").expect("body"))
        .collect()
}

#[tokio::test]
async fn devices_are_in_the_default_zone_unless_they_name_one_and_can_be_listed_by_zone() {
    let app = TestApp::spawn().await;
    let plain = device_in(&app, "plain", 22, None).await;
    assert_eq!(plain["zone"], "default");
    let remote = device_in(&app, "remote", 22, Some("site-b")).await;
    assert_eq!(remote["zone"], "site-b");

    let (status, moved) = json_of(
        app.patch(
            &format!("/devices/{}", id(&plain)),
            &json!({"zone": "site_c-2"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(moved["zone"], "site_c-2");

    let (status, page) = json_of(app.get("/devices?zone=site-b").await).await;
    assert_eq!(status, 200, "{page}");
    let names: Vec<&str> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert_eq!(names, ["remote"]);
    let (_, page) = json_of(app.get("/devices?zone=default").await).await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(0), "{page}");

    // The OpenAPI document describes the field and the filter.
    let (_, spec) = json_of(app.get("/openapi.json").await).await;
    let create = &spec["components"]["schemas"]["DeviceCreate"]["properties"]["zone"];
    assert_eq!(create["default"], "default", "{create}");
    assert!(create["pattern"].is_string(), "{create}");
    let params = spec["paths"]["/devices"]["get"]["parameters"]
        .as_array()
        .expect("parameters");
    assert!(params.iter().any(|p| p["name"] == "zone"), "{params:?}");
}

#[tokio::test]
async fn a_zone_that_is_not_an_identifier_is_refused_naming_the_field() {
    let app = TestApp::spawn().await;
    let cred = app.credential("c").await;
    for bad in ["Site-A", "site a", "a:b", "", "-a", &"z".repeat(64)] {
        let response = app
            .post(
                "/devices",
                &json!({"name": "d", "host": "192.0.2.1", "platform": "linux",
                        "credential_id": cred["id"], "zone": bad}),
            )
            .await;
        let problem = assert_problem(response, 422, "validation", Some("zone")).await;
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains("lower-case")),
            "{problem}"
        );
    }
    let device = app.device("d").await;
    let response = app
        .patch(&format!("/devices/{}", id(&device)), &json!({"zone": "UP"}))
        .await;
    assert_problem(response, 422, "validation", Some("zone")).await;
    assert_problem(
        app.get("/devices?zone=a%3Ab").await,
        400,
        "invalid-parameter",
        Some("zone"),
    )
    .await;
}

#[tokio::test]
async fn a_jump_host_must_be_in_the_zone_of_the_devices_it_serves() {
    let app = TestApp::spawn().await;
    let bastion = device_in(&app, "bastion-b", 22, Some("site-b")).await;
    let cred = app.credential("c").await;
    let body = |name: &str, zone: &str| {
        json!({"name": name, "host": "10.0.0.2", "platform": "linux",
               "credential_id": cred["id"], "zone": zone, "jump_host_id": bastion["id"]})
    };
    // Another zone's executors could not reach the bastion.
    let problem = assert_problem(
        app.post("/devices", &body("far", "site-a")).await,
        422,
        "validation",
        Some("jump_host_id"),
    )
    .await;
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("site-b") && d.contains("site-a")),
        "{problem}"
    );
    let near = app.create("/devices", body("near", "site-b")).await;
    assert_eq!(near["jump_host_id"], bastion["id"]);

    // Neither the device nor its bastion can move away from the other alone.
    assert_problem(
        app.patch(
            &format!("/devices/{}", id(&near)),
            &json!({"zone": "site-a"}),
        )
        .await,
        422,
        "validation",
        Some("zone"),
    )
    .await;
    assert_problem(
        app.patch(
            &format!("/devices/{}", id(&bastion)),
            &json!({"zone": "site-a"}),
        )
        .await,
        422,
        "validation",
        Some("zone"),
    )
    .await;
    // Moving with a jump host of the new zone, or without one, is fine.
    let other = device_in(&app, "other", 22, None).await;
    let (status, moved) = json_of(
        app.patch(
            &format!("/devices/{}", id(&near)),
            &json!({"zone": "site-a", "jump_host_id": null}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{moved}");
    assert_problem(
        app.patch(
            &format!("/devices/{}", id(&near)),
            &json!({"jump_host_id": other["id"]}),
        )
        .await,
        422,
        "validation",
        Some("jump_host_id"),
    )
    .await;
    let (status, moved) = json_of(
        app.patch(
            &format!("/devices/{}", id(&near)),
            &json!({"zone": "default", "jump_host_id": other["id"]}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(moved["zone"], "default");
}

#[tokio::test]
async fn a_run_is_published_to_the_stream_of_its_device_zone_only() {
    let app = TestApp::spawn().await;
    let remote = device_in(&app, "remote", 22, Some("site-b")).await;
    let local = device_in(&app, "local", 22, None).await;
    let c_remote = command(&app, &remote, json!({"command": "true"})).await;
    let c_local = command(&app, &local, json!({"command": "true"})).await;
    let r_remote = run_now(&app, &remote, &c_remote).await;
    let r_local = run_now(&app, &local, &c_local).await;
    let scheduler = app
        .scheduler(SchedulerSettings::default(), Arc::new(SystemClock))
        .await;
    scheduler.tick().await.expect("tick");

    let s = streams(&app);
    let ids_on = |stream: String| {
        let app = &app;
        async move {
            entries(app, &stream)
                .await
                .into_iter()
                .filter_map(|(_, m)| m.get("run_id").cloned())
                .collect::<Vec<_>>()
        }
    };
    // `default` keeps the stream name of netcron before zones.
    assert_eq!(s.zone_tasks(&Zone::default()), s.tasks);
    assert_eq!(ids_on(s.tasks.clone()).await, [r_local]);
    let remote_stream = s.zone_tasks(&zone("site-b"));
    assert_eq!(remote_stream, format!("{}tasks:site-b", app.stream_prefix));
    assert_eq!(ids_on(remote_stream).await, [r_remote]);
}

#[tokio::test]
async fn an_executor_runs_only_the_tasks_of_its_zones() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let _scheduler = start_scheduler(&app).await;
    let (default_only, default_consumer) = start_executor(&app, config()).await;
    let local = device_in(&app, "local", sshd.port, None).await;
    let remote = device_in(&app, "remote", sshd.port, Some("site-b")).await;
    let c_local = command(&app, &local, json!({"command": "echo local"})).await;
    let c_remote = command(&app, &remote, json!({"command": "echo remote"})).await;
    let r_local = run_now(&app, &local, &c_local).await;
    let r_remote = run_now(&app, &remote, &c_remote).await;

    let run = finished(&app, &r_local).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["executor_id"], default_consumer.as_str());
    // Site B's run is there for nobody: it waits, through several re-queue passes (every
    // second here), as its first attempt.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let waiting = get_run(&app, &r_remote).await;
    assert_eq!(waiting["status"], "queued", "{waiting}");
    assert_eq!(waiting["attempt"], 1, "{waiting}");

    // An executor serving both zones takes it; the default-only one never did.
    let (_both, both_consumer) = start_executor(&app, serving("default, site-b")).await;
    let run = finished(&app, &r_remote).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["stdout"], "remote\n");
    assert_eq!(run["attempt"], 1, "{run}");
    assert_eq!(run["executor_id"], both_consumer.as_str());
    // And it serves `default` too.
    default_only.stop().await;
    let again = run_now(&app, &local, &c_local).await;
    let run = finished(&app, &again).await;
    assert_eq!(run["executor_id"], both_consumer.as_str(), "{run}");
}

#[tokio::test]
async fn a_zone_without_executors_is_reported_once_and_its_runs_wait_for_one() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let _scheduler = start_scheduler(&app).await;
    let watch = app
        .scheduler(SchedulerSettings::default(), Arc::new(SystemClock))
        .await;
    let (_default, _) = start_executor(&app, config()).await;
    let remote = device_in(&app, "remote", sshd.port, Some("site-c")).await;
    let c_remote = command(&app, &remote, json!({"command": "echo c"})).await;
    let run_id = run_now(&app, &remote, &c_remote).await;
    let site_c = zone("site-c");
    let state = crate::support::app::eventually(
        "the run queued in site-c",
        Duration::from_secs(10),
        || {
            let watch = &watch;
            let site_c = &site_c;
            async move {
                let zones = watch.watch_zones().await.expect("watch");
                zones
                    .into_iter()
                    .find(|(z, s)| z == site_c && s.queued == 1)
                    .map(|(_, s)| s)
            }
        },
    )
    .await;
    assert!(state.without_executors(), "{state:?}");
    // `default` has its executor and nothing waiting: not reported.
    let zones = watch.watch_zones().await.expect("watch");
    let default = zones.iter().find(|(z, _)| z.is_default()).expect("default");
    assert!(
        !default.1.without_executors() && default.1.executors == 1,
        "{default:?}"
    );

    // One event per outage, however many passes (or scheduler replicas) see it.
    let events = zone_events(&app).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "zone_without_executors");
    assert_eq!(events[0]["data"]["zone"], "site-c");
    assert_eq!(events[0]["data"]["queued"], 1);
    let metrics = app.metrics_text().await;
    assert_eq!(
        metric(&metrics, "netcron_zone_without_executors{zone=\"site-c\"}"),
        1.0
    );
    assert_eq!(
        metric(&metrics, "netcron_zone_queued{zone=\"site-c\"}"),
        1.0
    );
    assert_eq!(
        metric(&metrics, "netcron_zone_executors{zone=\"default\"}"),
        1.0
    );
    // The scheduler stays ready: a zone without executors is not the scheduler's outage.
    let ready = app.client.get(app.url("/ready")).send().await.expect("GET");
    assert_eq!(ready.status(), 200);
    // And the run waits, as its first attempt.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let waiting = get_run(&app, &run_id).await;
    assert_eq!(
        (waiting["status"].as_str(), waiting["attempt"].as_i64()),
        (Some("queued"), Some(1)),
        "{waiting}"
    );

    // An executor of site-c comes: the run finishes and the zone is served again.
    let (_site_c, _) = start_executor(&app, serving("site-c")).await;
    let run = finished(&app, &run_id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["attempt"], 1, "{run}");
    let zones = watch.watch_zones().await.expect("watch");
    let c = zones.iter().find(|(z, _)| *z == site_c).expect("site-c");
    assert_eq!((c.1.executors, c.1.queued), (1, 0), "{c:?}");
    // Both schedulers of this test (the running one and `watch`) set the series; the running
    // one's next pass (every 5 s) clears it too.
    eventually(
        "site-c's gauge back to 0",
        Duration::from_secs(15),
        || async {
            let metrics = app.metrics_text().await;
            (metric(&metrics, "netcron_zone_without_executors{zone=\"site-c\"}") == 0.0)
                .then_some(())
        },
    )
    .await;
    let marker: Option<String> = redis::cmd("GET")
        .arg(streams(&app).zone_alert(&site_c))
        .query_async(&mut app.redis().await)
        .await
        .expect("GET");
    assert_eq!(marker, None);
    assert_eq!(zone_events(&app).await.len(), 1);
}
