//! The run lifecycle under ordinary pressure: busy devices, stopped ingest, a frozen executor,
//! skewed clocks and a first-contact race. Every promise is counted where it happens: each
//! execution appends `<run id> <attempt>` to a file on the SSH host (the executor passes
//! `NETCRON_RUN_ID` and `NETCRON_ATTEMPT`, which the test sshd accepts), and the test compares
//! those lines with the run history.

use std::sync::Arc;
use std::time::Duration;

use netcron_scheduler::{Scheduler, SchedulerSettings, SkewedClock, SystemClock};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::app::TestApp;
use crate::support::executions::{Executions, assert_each_ran_once};
use crate::support::executor_process::ExecutorProcess;
use crate::support::pipeline::{
    TERMINAL, command, config, finished, get_run, password_device, run_now, start_executor,
    start_scheduler, wait_for_status,
};
use crate::support::sshd::{TEST_PASSWORD, TestSshd, alternating_front};

#[tokio::test]
async fn runs_queued_on_a_busy_device_execute_exactly_once_each() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let executions = Executions::new();
    let _scheduler = start_scheduler(&app).await;
    // One command at a time on the device; each takes 2 s of a 3 s timeout, so the sixth waits
    // about 10 s: far longer than its timeout, a lease (3 s) and the re-queue confirmation
    // (2 s) together.
    let (_executor, _) = start_executor(&app, config()).await;
    let device = password_device(&app, "busy", sshd.port, TEST_PASSWORD).await;
    let c = command(
        &app,
        &device,
        json!({"command": executions.command("sleep 2"), "timeout_s": 3}),
    )
    .await;
    let mut runs = Vec::new();
    for _ in 0..6 {
        runs.push(run_now(&app, &device, &c).await);
    }
    for run_id in &runs {
        wait_for_status(&app, run_id, &TERMINAL, Duration::from_secs(60)).await;
    }
    // Time for a wrongly re-queued attempt to show up.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_each_ran_once(&app, &runs, &executions).await;
}

#[tokio::test]
async fn ingest_stopped_for_longer_than_a_lease_executes_nothing_twice() {
    let app = TestApp::spawn_with(|s| s.run_ingest = false).await;
    let sshd = TestSshd::start();
    let executions = Executions::new();
    let _scheduler = start_scheduler(&app).await;
    let (_executor, _) = start_executor(&app, config()).await;
    let device = password_device(&app, "host", sshd.port, TEST_PASSWORD).await;
    let c = command(
        &app,
        &device,
        json!({"command": executions.command("sleep 1"), "timeout_s": 2}),
    )
    .await;
    let runs = vec![
        run_now(&app, &device, &c).await,
        run_now(&app, &device, &c).await,
        run_now(&app, &device, &c).await,
    ];
    executions.wait_for(3, Duration::from_secs(30)).await;
    // Nobody stores the outcomes: Postgres still says `queued` well past every command's
    // timeout, every lease and several re-queue passes.
    tokio::time::sleep(Duration::from_secs(10)).await;
    for run_id in &runs {
        assert_eq!(get_run(&app, run_id).await["status"], "queued");
    }
    let shutdown = CancellationToken::new();
    let ingesting = tokio::spawn(crate::support::pipeline::ingest(&app).run(shutdown.clone()));
    for run_id in &runs {
        wait_for_status(&app, run_id, &TERMINAL, Duration::from_secs(30)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_each_ran_once(&app, &runs, &executions).await;
    shutdown.cancel();
    ingesting.await.expect("ingest stops");
}

#[tokio::test]
async fn a_frozen_executor_is_superseded_once_and_its_late_outcome_is_recorded() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let executions = Executions::new();
    let _scheduler = start_scheduler(&app).await;
    let frozen = ExecutorProcess::start(&app, None);
    let device = password_device(&app, "host", sshd.port, TEST_PASSWORD).await;
    let c = command(
        &app,
        &device,
        json!({"command": executions.command("sleep 3; echo \"attempt $NETCRON_ATTEMPT\""),
               "timeout_s": 30}),
    )
    .await;
    let run_id = run_now(&app, &device, &c).await;
    executions.wait_for(1, Duration::from_secs(30)).await;
    frozen.signal("STOP");
    // Its lease (2 s) expires; the run comes back as attempt 2 on a live executor.
    let (_live, live_name) = start_executor(&app, config()).await;
    let run = wait_for_status(&app, &run_id, &TERMINAL, Duration::from_secs(60)).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["attempt"], 2, "{run}");
    assert_eq!(run["executor_id"], live_name.as_str(), "{run}");
    assert_eq!(run["stdout"], "attempt 2\n", "{run}");
    let frozen_name = run["attempts"][0]["executor_id"]
        .as_str()
        .expect("the lost attempt names its executor")
        .to_owned();
    assert_ne!(frozen_name, live_name);

    // Thawed, the frozen executor finishes attempt 1 and publishes its outcome.
    frozen.signal("CONT");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let superseded = loop {
        let run = get_run(&app, &run_id).await;
        let attempts = run["attempts"].as_array().cloned().unwrap_or_default();
        if let Some(s) = attempts.iter().find(|a| a["superseded"] == true) {
            break (run.clone(), s.clone());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no superseded outcome recorded: {run}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (run, late) = superseded;
    assert_eq!(late["attempt"], 1, "{run}");
    assert_eq!(late["executor_id"], frozen_name.as_str(), "{run}");
    assert_eq!(late["status"], "succeeded", "{run}");
    assert_eq!(late["output"], "attempt 1\n", "{run}");
    // The run's own outcome is still attempt 2's, and the repeat is exactly the one recorded.
    assert_eq!(run["attempt"], 2, "{run}");
    assert_eq!(run["stdout"], "attempt 2\n", "{run}");
    assert_eq!(run["executor_id"], live_name.as_str(), "{run}");
    let counts = executions.counts();
    assert_eq!(counts.get(&(run_id.clone(), 1)), Some(&1), "{counts:?}");
    assert_eq!(counts.get(&(run_id.clone(), 2)), Some(&1), "{counts:?}");
    assert_eq!(executions.lines().len(), 2, "{counts:?}");
    // A second copy of the late outcome (a redelivery) is not recorded twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let run = get_run(&app, &run_id).await;
    let recorded = run["attempts"]
        .as_array()
        .map_or(0, |a| a.iter().filter(|a| a["superseded"] == true).count());
    assert_eq!(recorded, 1, "{run}");
}

#[tokio::test]
async fn clocks_skewed_by_minutes_neither_fire_early_nor_run_twice() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let executions = Executions::new();
    // The scheduler's host runs five minutes fast; the executor's five minutes slow.
    let config = SchedulerSettings {
        requeue_cron: "* * * * * *".into(),
        lease_confirm: Duration::from_secs(2),
        ..SchedulerSettings::default()
    };
    let fast = Arc::new(SkewedClock(
        Arc::new(SystemClock),
        chrono::Duration::minutes(5),
    ));
    let scheduler = Arc::new(
        Scheduler::connect_following_database(
            &app.scheduler_settings(config),
            fast,
            &app.telemetry,
        )
        .await
        .expect("scheduler"),
    );
    let shutdown = CancellationToken::new();
    let scheduling = tokio::spawn({
        let scheduler = Arc::clone(&scheduler);
        let shutdown = shutdown.clone();
        async move { scheduler.run(shutdown).await.expect("scheduler loop") }
    });
    let _slow = ExecutorProcess::start(&app, Some("-5m"));
    let device = password_device(&app, "host", sshd.port, TEST_PASSWORD).await;
    let c = command(
        &app,
        &device,
        json!({"command": executions.command("true"), "timeout_s": 5}),
    )
    .await;
    let schedule = app
        .create(
            &format!(
                "/devices/{}/commands/{}/schedules",
                device["id"].as_str().unwrap_or_default(),
                c["id"].as_str().unwrap_or_default()
            ),
            json!({"cron_expression": "* * * * * *", "overlap_policy": "allow"}),
        )
        .await;
    // Runs are materialised ahead of their fire time on purpose (the scheduler's horizon);
    // what must never happen is a command beginning before it. Six seconds of fires.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (status, _) = crate::support::app::json_of(
        app.patch(
            &format!("/schedules/{}", schedule["id"].as_str().unwrap_or_default()),
            &json!({"enabled": false}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    let (_, page) = crate::support::app::json_of(
        app.get(&format!(
            "/runs?schedule_id={}&limit=500",
            schedule["id"].as_str().unwrap_or_default()
        ))
        .await,
    )
    .await;
    let runs: Vec<String> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|r| r["status"] != "missed" && r["status"] != "skipped")
        .map(|r| r["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(runs.len() >= 3, "the schedule fired: {page}");
    for run_id in &runs {
        wait_for_status(&app, run_id, &TERMINAL, Duration::from_secs(30)).await;
    }
    // Well past a lease and its confirmation: a clock-based re-queue would have struck.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_each_ran_once(&app, &runs, &executions).await;
    // Each command began at its fire time as the host (and Postgres) count it: not before,
    // although the scheduler runs five minutes fast, and not five minutes after, although the
    // executor runs five minutes slow (it waits by Redis' clock).
    for (run_id, _, began) in executions.started() {
        let run = get_run(&app, &run_id).await;
        let fire: chrono::DateTime<chrono::Utc> = run["scheduled_for"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .expect("scheduled_for");
        assert!(began >= fire, "began {began}, before its fire time: {run}");
        assert!(
            began - fire < chrono::Duration::seconds(3),
            "began {began}, long after its fire time: {run}"
        );
    }
    // The executor really did live five minutes in the past: its own record of when each
    // command began is minutes before the run was queued.
    for run_id in &runs {
        let run = get_run(&app, run_id).await;
        let at = |field: &str| {
            run[field]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .expect("timestamp")
        };
        let behind = at("queued_at") - at("started_at");
        assert!(behind > chrono::Duration::minutes(4), "{run}");
    }
    shutdown.cancel();
    scheduling.await.expect("scheduler stops");
}

#[tokio::test]
async fn two_runs_racing_to_first_contact_pin_one_key_and_the_other_is_refused_before_login() {
    let app = TestApp::spawn().await;
    let first = TestSshd::start();
    let second = TestSshd::start();
    assert_ne!(first.host_key_fingerprint, second.host_key_fingerprint);
    let front = alternating_front([first.port, second.port]).await;
    let _scheduler = start_scheduler(&app).await;
    // Both runs of the device may run at once: they reach it together.
    let (_executor, _) = start_executor(
        &app,
        netcron_executor::ExecutorSettings {
            per_device: 2,
            ..config()
        },
    )
    .await;
    let device = password_device(&app, "new", front, TEST_PASSWORD).await;
    let c = command(&app, &device, json!({"command": "echo hello"})).await;
    let runs = [
        run_now(&app, &device, &c).await,
        run_now(&app, &device, &c).await,
    ];
    let mut outcomes: Vec<Value> = Vec::new();
    for run_id in &runs {
        outcomes.push(finished(&app, run_id).await);
    }
    let succeeded: Vec<&Value> = outcomes
        .iter()
        .filter(|r| r["status"] == "succeeded")
        .collect();
    let refused: Vec<&Value> = outcomes
        .iter()
        .filter(|r| r["error_kind"] == "host_key_mismatch")
        .collect();
    assert_eq!(succeeded.len(), 1, "{outcomes:?}");
    assert_eq!(refused.len(), 1, "{outcomes:?}");
    // The key pinned is the one the succeeding run saw, and only that host saw a login.
    let (_, shown) = crate::support::app::json_of(
        app.get(&format!(
            "/devices/{}",
            device["id"].as_str().unwrap_or_default()
        ))
        .await,
    )
    .await;
    let pinned = shown["host_key_fingerprint"]
        .as_str()
        .expect("pinned")
        .to_owned();
    let (winner, loser) = if pinned == first.host_key_fingerprint {
        (&first, &second)
    } else {
        (&second, &first)
    };
    assert_eq!(pinned, winner.host_key_fingerprint);
    assert!(
        !winner.auth_attempts().is_empty(),
        "the pinned host saw the login"
    );
    assert!(
        loser.auth_attempts().is_empty(),
        "no credential reached the other host: {:?}",
        loser.auth_attempts()
    );
}

#[tokio::test]
async fn a_cancelled_run_whose_task_is_already_on_the_stream_never_executes() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let executions = Executions::new();
    let _scheduler = start_scheduler(&app).await;
    let device = password_device(&app, "host", sshd.port, TEST_PASSWORD).await;
    let c = command(
        &app,
        &device,
        json!({"command": executions.command("true")}),
    )
    .await;
    let run_id = run_now(&app, &device, &c).await;
    // Published, and no executor has read it yet.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while crate::support::pipeline::entries(&app, &crate::support::pipeline::streams(&app).tasks)
        .await
        .is_empty()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the task was not published"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, run) = crate::support::app::json_of(
        app.post(&format!("/runs/{run_id}/cancel"), &json!({}))
            .await,
    )
    .await;
    assert_eq!(status, 200, "{run}");
    assert_eq!(run["status"], "cancelled");
    let again = app
        .post(&format!("/runs/{run_id}/cancel"), &json!({}))
        .await;
    crate::support::app::assert_problem(again, 409, "conflict", None).await;
    // An executor now reads the task: the attempt is fenced, so it is dropped, not run.
    let (_executor, _) = start_executor(&app, config()).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(executions.lines().is_empty(), "{:?}", executions.lines());
    assert_eq!(get_run(&app, &run_id).await["status"], "cancelled");
}
