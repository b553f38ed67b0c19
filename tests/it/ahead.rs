//! Runs materialised ahead of their fire time: the scheduler commits and publishes them a
//! horizon early, executors hold them until `not_before`. Counted on the device: every
//! execution appends `<run id> <attempt> <host time>` to a file on the SSH host, so "never
//! early", "once" and "withdrawn ones never run" are checked where they would happen.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use netcron_scheduler::{SchedulerSettings, SystemClock};
use sea_orm::ConnectionTrait as _;
use serde_json::{Value, json};

use crate::support::app::TestApp;
use crate::support::executions::Executions;
use crate::support::pipeline::{
    command, config, get_run, password_device, start_executor, start_scheduler,
};
use crate::support::sshd::{TEST_PASSWORD, TestSshd};

/// Scheduler, executor and the test sshd, with an every-second schedule (overlap `allow`)
/// whose command records its executions on the host.
struct Pipeline {
    app: TestApp,
    executions: Executions,
    schedule: Value,
    _sshd: TestSshd,
    _roles: [crate::support::pipeline::Running; 2],
}

impl Pipeline {
    /// The app, the executions on the host and the schedule; the sshd and the roles live as
    /// long as the pipeline.
    fn parts(&self) -> (&TestApp, &Executions, &Value) {
        (&self.app, &self.executions, &self.schedule)
    }

    async fn start() -> Self {
        let app = TestApp::spawn().await;
        let sshd = TestSshd::start();
        let executions = Executions::new();
        let scheduler = start_scheduler(&app).await;
        let (executor, _) = start_executor(&app, config()).await;
        let schedule = every_second(&app, &sshd, &executions, "allow").await;
        Self {
            app,
            executions,
            schedule,
            _sshd: sshd,
            _roles: [scheduler, executor],
        }
    }
}

/// A device on the test sshd with a command that records its executions, scheduled every
/// second with `overlap`; answers the schedule.
async fn every_second(
    app: &TestApp,
    sshd: &TestSshd,
    executions: &Executions,
    overlap: &str,
) -> Value {
    let device = password_device(app, "ahead", sshd.port, TEST_PASSWORD).await;
    let c = command(
        app,
        &device,
        json!({"command": executions.command("true"), "timeout_s": 5}),
    )
    .await;
    app.schedule(
        &device,
        &c,
        json!({"cron_expression": "* * * * * *", "overlap_policy": overlap}),
    )
    .await
}

fn sid(schedule: &Value) -> &str {
    schedule["id"].as_str().unwrap_or_default()
}

/// The schedule's runs as (id, fire time, status, published), oldest first.
async fn runs_of(app: &TestApp, schedule: &Value) -> Vec<(String, DateTime<Utc>, String, bool)> {
    let rows = app
        .db
        .query_all_raw(sea_orm::Statement::from_sql_and_values(
            sea_orm::DatabaseBackend::Postgres,
            "SELECT r.id::text AS id, r.scheduled_for, r.status,
                    coalesce(o.published_at IS NOT NULL, false) AS published
             FROM runs r LEFT JOIN task_outbox o ON o.run_id = r.id
             WHERE r.schedule_id = $1::uuid ORDER BY r.scheduled_for",
            [sid(schedule).into()],
        ))
        .await
        .expect("runs");
    rows.iter()
        .map(|r| {
            (
                r.try_get("", "id").expect("id"),
                r.try_get("", "scheduled_for").expect("scheduled_for"),
                r.try_get("", "status").expect("status"),
                r.try_get("", "published").expect("published"),
            )
        })
        .collect()
}

async fn db_now(app: &TestApp) -> DateTime<Utc> {
    app.db
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DatabaseBackend::Postgres,
            "SELECT clock_timestamp() AS now",
        ))
        .await
        .expect("now")
        .expect("row")
        .try_get("", "now")
        .expect("now")
}

/// Waits until the schedule has at least `n` runs published ahead of their fire time (and an
/// executor has had a moment to read them); answers their ids.
async fn published_ahead(app: &TestApp, schedule: &Value, n: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let now = db_now(app).await;
        let ahead: Vec<String> = runs_of(app, schedule)
            .await
            .into_iter()
            .filter(|(_, at, status, published)| {
                *at > now + chrono::Duration::milliseconds(1500) && status == "queued" && *published
            })
            .map(|(id, ..)| id)
            .collect();
        if ahead.len() >= n {
            tokio::time::sleep(Duration::from_millis(300)).await;
            return ahead;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {n} runs published ahead: {:?}",
            runs_of(app, schedule).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every execution on the host began at or after its run's fire time, within `late`, and
/// each (run, attempt) executed once. Answers the run ids that executed.
async fn executed_on_time_once(
    app: &TestApp,
    executions: &Executions,
    late: chrono::Duration,
) -> HashSet<String> {
    let mut seen = HashSet::new();
    for (run_id, attempt, began) in executions.started() {
        assert!(
            seen.insert(run_id.clone()),
            "{run_id} executed twice: {:?}",
            executions.lines()
        );
        assert_eq!(attempt, 1);
        let run = get_run(app, &run_id).await;
        let fire: DateTime<Utc> = run["scheduled_for"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("run {run_id} executed but does not exist: {run}"));
        assert!(began >= fire, "began {began}, before its fire time: {run}");
        assert!(
            began - fire < late,
            "began {began}, {} late: {run}",
            began - fire
        );
    }
    seen
}

#[tokio::test]
async fn runs_published_ahead_start_at_their_fire_time_not_before() {
    let pipeline = Pipeline::start().await;
    let (app, executions, schedule) = pipeline.parts();
    // Published seconds ahead, as version 2 tasks carrying their fire time as `not_before`.
    let ahead = published_ahead(app, schedule, 2).await;
    let tasks = app.tasks().await;
    let early = tasks
        .iter()
        .find(|t| ahead.contains(&t.run_id.to_string()))
        .expect("an early task on the stream");
    assert_eq!(early.v, 2);
    assert_eq!(early.not_before, Some(early.scheduled_for));
    let wait = (early.scheduled_for - db_now(app).await)
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_secs(2)).await;
    let ran = executed_on_time_once(app, executions, chrono::Duration::seconds(3)).await;
    assert!(ran.contains(&early.run_id.to_string()), "{ran:?}");
    assert!(ran.len() >= 3, "{ran:?}");
    // The executor reports how late commands started, under the name users graph.
    let text = app.metrics_text().await;
    let count = crate::support::app::metric(&text, "netcron_scheduler_fire_lateness_seconds_count");
    assert!(count >= 3.0, "{count}");
    let within_1s = crate::support::app::metric(
        &text,
        "netcron_scheduler_fire_lateness_seconds_bucket{le=\"1.0\"}",
    );
    assert!(
        within_1s >= count * 0.5,
        "{within_1s} of {count} within 1 s"
    );
}

#[tokio::test]
async fn pausing_withdraws_the_runs_materialised_ahead_and_none_of_them_executes() {
    let pipeline = Pipeline::start().await;
    let (app, executions, schedule) = pipeline.parts();
    // Tasks on the stream, read by the executor and waiting on its timers.
    let ahead = published_ahead(app, schedule, 2).await;
    let (status, paused) = crate::support::app::json_of(
        app.post(&format!("/schedules/{}/pause", sid(schedule)), &json!({}))
            .await,
    )
    .await;
    assert_eq!(status, 200, "{paused}");
    let paused_at = db_now(app).await;
    // Nothing remains queued for a fire time after the pause, and the early runs are gone.
    let left = runs_of(app, schedule).await;
    assert!(
        left.iter().all(|(_, at, ..)| *at <= paused_at),
        "materialised runs survived the pause: {left:?}"
    );
    for id in &ahead {
        assert!(
            left.iter().all(|(left_id, ..)| left_id != id),
            "{id} survived"
        );
    }
    // Well past the horizon: no withdrawn run began on the device, and every run that did
    // begin was for a fire time before the pause, on time and once.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let ran = executed_on_time_once(app, executions, chrono::Duration::seconds(3)).await;
    for id in &ahead {
        assert!(!ran.contains(id), "withdrawn run {id} executed");
    }
    let kept: HashSet<String> = runs_of(app, schedule)
        .await
        .into_iter()
        .map(|(id, ..)| id)
        .collect();
    assert_eq!(ran, kept, "exactly the runs that were kept executed");
    // Resumed, it fires again from now, once per fire time.
    app.post(&format!("/schedules/{}/resume", sid(schedule)), &json!({}))
        .await;
    let before = executions.lines().len();
    executions
        .wait_for(before + 3, Duration::from_secs(15))
        .await;
    executed_on_time_once(app, executions, chrono::Duration::seconds(3)).await;
}

#[tokio::test]
async fn an_edit_withdraws_the_fire_times_it_no_longer_wants_and_keeps_the_rest_once() {
    let pipeline = Pipeline::start().await;
    let (app, executions, schedule) = pipeline.parts();
    let ahead = published_ahead(app, schedule, 3).await;
    let (status, edited) = crate::support::app::json_of(
        app.patch(
            &format!("/schedules/{}", sid(schedule)),
            &json!({"cron_expression": "*/2 * * * * *"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{edited}");
    let edited_at = db_now(app).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let ran = executed_on_time_once(app, executions, chrono::Duration::seconds(3)).await;
    for id in &ahead {
        assert!(!ran.contains(id), "withdrawn run {id} executed");
    }
    let runs = runs_of(app, schedule).await;
    // After the edit, only even seconds: odd ones were withdrawn, even ones materialised again
    // (new runs), and each fire time has one run.
    let after: Vec<_> = runs.iter().filter(|(_, at, ..)| *at > edited_at).collect();
    assert!(after.len() >= 3, "{runs:?}");
    assert!(
        after.iter().all(|(_, at, ..)| at.timestamp() % 2 == 0),
        "{after:?}"
    );
    let mut times: Vec<_> = runs.iter().map(|(_, at, ..)| *at).collect();
    times.dedup();
    assert_eq!(times.len(), runs.len(), "one run per fire time");
    // Every run whose fire time has passed executed, exactly once.
    let now = db_now(app).await - chrono::Duration::seconds(1);
    for (id, at, ..) in runs.iter().filter(|(_, at, ..)| *at < now) {
        assert!(ran.contains(id), "run {id} for {at} did not execute");
    }
}

#[tokio::test]
async fn runs_a_killed_scheduler_committed_ahead_but_never_published_run_once_on_time() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let executions = Executions::new();
    let schedule = every_second(&app, &sshd, &executions, "allow").await;
    // A replica claims and commits a horizon of fire times, then dies before publishing.
    let doomed = app
        .scheduler(SchedulerSettings::default(), Arc::new(SystemClock))
        .await;
    let report = doomed.fire_due().await.expect("fire");
    drop(doomed);
    let committed = runs_of(&app, &schedule).await;
    assert!(
        report.queued >= 4 && committed.len() == report.queued,
        "{committed:?}"
    );
    assert!(committed.iter().all(|(.., published)| !published));
    assert!(app.tasks().await.is_empty());
    // Another replica publishes them; each executes once, at its fire time.
    let (_executor, _) = start_executor(&app, config()).await;
    let _scheduler = start_scheduler(&app).await;
    let last = committed.iter().map(|(_, at, ..)| *at).max().expect("runs");
    let wait = (last - db_now(&app).await).to_std().unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_secs(3)).await;
    let ran = executed_on_time_once(&app, &executions, chrono::Duration::seconds(3)).await;
    for (id, at, ..) in &committed {
        assert!(
            ran.contains(id),
            "committed run {id} for {at} never executed"
        );
    }
    let published: Vec<_> = app
        .tasks()
        .await
        .into_iter()
        .filter(|t| committed.iter().any(|(id, ..)| *id == t.run_id.to_string()))
        .collect();
    assert_eq!(published.len(), committed.len(), "each published once");
}
