//! Promises under partial failure (issue 24): a request cut off between Postgres and Redis, a
//! transition that stopped halfway, Redis forgetting its last writes, a reply lost on the way
//! back. Every execution is counted on the SSH host (see `lifecycle::Executions`) and compared
//! with the run history: a run is never stranded, and no execution goes unrecorded.

use std::time::Duration;

use netcron_protocol::lease::{Leases, Start};
use netcron_protocol::{EXECUTOR_GROUP, RunResult};
use redis::AsyncCommands as _;
use sea_orm::{ConnectionTrait as _, TransactionTrait as _};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::app::TestApp;
use crate::support::executions::Executions;
use crate::support::executor_process::ExecutorProcess;
use crate::support::pipeline::{
    Running, TERMINAL, command, config, get_run, ingest, password_device, run_now, start_executor,
    start_scheduler, streams, wait_for_status,
};
use crate::support::sshd::{TEST_PASSWORD, TestSshd};

fn uuid(text: &str) -> uuid::Uuid {
    text.parse().expect("uuid")
}

/// A scheduler and an executor of `app`, and a device on a real sshd whose command records
/// each execution on the host, then runs `shell`.
struct Host {
    /// Kept for the test's length: the device's server.
    _sshd: TestSshd,
    executions: Executions,
    device: Value,
    command: Value,
    _scheduler: Running,
    _executor: Running,
}

impl Host {
    async fn start(app: &TestApp, shell: &str) -> Self {
        let sshd = TestSshd::start();
        let executions = Executions::new();
        let _scheduler = start_scheduler(app).await;
        let (_executor, _) = start_executor(app, config()).await;
        let device = password_device(app, "host", sshd.port, TEST_PASSWORD).await;
        let command = command(
            app,
            &device,
            json!({"command": executions.command(shell), "timeout_s": 20}),
        )
        .await;
        Self {
            _sshd: sshd,
            executions,
            device,
            command,
            _scheduler,
            _executor,
        }
    }

    async fn run(&self, app: &TestApp) -> String {
        run_now(app, &self.device, &self.command).await
    }
}

/// A field of a run's lease hash, once it is there.
async fn lease_field(app: &TestApp, run_id: &str, field: &str) -> String {
    let key = streams(app).run_key(uuid(run_id));
    crate::support::app::eventually(
        &format!("lease field {field}"),
        Duration::from_secs(10),
        || async {
            let value: Option<String> = app.redis().await.hget(&key, field).await.ok()?;
            value
        },
    )
    .await
}

/// A device busy with a 3 s command, and a second run queued behind it.
async fn busy_device_with_a_run_behind(app: &TestApp) -> (Host, String, String) {
    let host = Host::start(app, "sleep 3").await;
    let first = host.run(app).await;
    host.executions.wait_for(1, Duration::from_secs(30)).await;
    let behind = host.run(app).await;
    (host, first, behind)
}

/// How many times `run_id` executed on the host, per attempt.
fn executed(executions: &Executions, run_id: &str) -> Vec<i64> {
    executions
        .lines()
        .into_iter()
        .filter(|(run, _)| run == run_id)
        .map(|(_, attempt)| attempt)
        .collect()
}

#[tokio::test]
async fn a_cancel_cut_off_while_the_run_row_is_locked_never_strands_the_run() {
    let app = TestApp::spawn().await;
    let (host, first, behind) = busy_device_with_a_run_behind(&app).await;
    let executions = &host.executions;

    // Any slow transaction holds the row: here one that sleeps for 4 s.
    let db = app.db.clone();
    let locked = behind.clone();
    let holder = tokio::spawn(async move {
        let txn = db.begin().await.expect("begin");
        txn.execute_unprepared(&format!(
            "SELECT id FROM runs WHERE id = '{locked}' FOR UPDATE"
        ))
        .await
        .expect("lock");
        tokio::time::sleep(Duration::from_secs(4)).await;
        txn.commit().await.expect("commit");
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The client gives up after a second: the request is cut off wherever it was.
    let cut = app
        .request(reqwest::Method::POST, &format!("/runs/{behind}/cancel"))
        .timeout(Duration::from_secs(1))
        .send()
        .await;
    assert!(cut.is_err(), "the cancel waited for the row: {cut:?}");
    holder.await.expect("lock holder");

    wait_for_status(&app, &first, &TERMINAL, Duration::from_secs(30)).await;
    // Cancelled, or still runnable and then run: never left queued behind a fence.
    let run = wait_for_status(&app, &behind, &TERMINAL, Duration::from_secs(40)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ran = executed(executions, &behind);
    match run["status"].as_str() {
        Some("cancelled") => assert!(ran.is_empty(), "a cancelled run executed: {ran:?}"),
        Some("succeeded") => assert_eq!(ran.len(), 1, "{run}"),
        other => panic!("unexpected end {other:?}: {run}"),
    }
}

#[tokio::test]
async fn a_cancel_interrupted_after_it_was_recorded_is_finished_and_nothing_runs() {
    let app = TestApp::spawn().await;
    let (host, first, behind) = busy_device_with_a_run_behind(&app).await;
    let executions = &host.executions;

    // What a cancel leaves when its process dies right after step 1: the request, no fence.
    app.db
        .execute_unprepared(&format!(
            "INSERT INTO cancel_requests (run_id, attempt, requested_at)
             VALUES ('{behind}', 1, now() - interval '5 seconds')"
        ))
        .await
        .expect("a recorded cancel");

    let run = wait_for_status(&app, &behind, &TERMINAL, Duration::from_secs(30)).await;
    assert_eq!(run["status"], "cancelled", "{run}");
    wait_for_status(&app, &first, &TERMINAL, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        executed(executions, &behind).is_empty(),
        "{:?}",
        executions.lines()
    );
    let left: Vec<sea_orm::QueryResult> = app
        .db
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DatabaseBackend::Postgres,
            "SELECT run_id FROM cancel_requests",
        ))
        .await
        .expect("requests");
    assert!(left.is_empty(), "the request is settled");
}

#[tokio::test]
async fn a_fence_without_a_recorded_cancel_gives_the_run_its_next_attempt() {
    let app = TestApp::spawn().await;
    let (host, _, behind) = busy_device_with_a_run_behind(&app).await;
    let executions = &host.executions;

    // A fence whose transition never reached Postgres: a withdrawal that rolled back, or a
    // cancel from a version that fenced first.
    let leases = Leases::new(streams(&app), 60);
    assert!(
        leases
            .cancel(&mut app.redis().await, uuid(&behind), 1)
            .await
            .expect("fence")
    );

    let run = wait_for_status(&app, &behind, &TERMINAL, Duration::from_secs(40)).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["attempt"], 2, "{run}");
    assert!(
        run["attempts"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("fenced")),
        "{run}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(executed(executions, &behind), vec![2]);
}

#[tokio::test]
async fn an_attempt_started_again_after_redis_lost_its_lease_is_recorded_as_a_repeat() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let executions = Executions::new();
    let scheduler = start_scheduler(&app).await;
    let first_executor = ExecutorProcess::start(&app, None);
    let device = password_device(&app, "host", sshd.port, TEST_PASSWORD).await;
    let c = command(
        &app,
        &device,
        json!({"command": executions.command("sleep 3; echo done"), "timeout_s": 30}),
    )
    .await;
    let run_id = run_now(&app, &device, &c).await;
    executions.wait_for(1, Duration::from_secs(30)).await;

    // The scheduler published the task; its re-queue pass (every second here) would find the
    // lease gone before the second executor starts the attempt again and re-queue the run as
    // attempt 2 — correct, but not the case under test, which is that moment's other outcome.
    scheduler.stop().await;
    // What an asynchronous fail-over leaves: the task entry is there, but the lease and the
    // task's delivery are gone (the group's last-delivered id one entry back).
    first_executor.signal("STOP");
    let s = streams(&app);
    let mut redis = app.redis().await;
    let key = s.run_key(uuid(&run_id));
    let entry: String = redis
        .hget(&key, "x")
        .await
        .expect("the lease names its entry");
    let _: () = redis.del(&key).await.expect("DEL lease");
    let _: () = redis::cmd("XACK")
        .arg(&s.tasks)
        .arg(EXECUTOR_GROUP)
        .arg(&entry)
        .query_async(&mut redis)
        .await
        .expect("XACK");
    let _: () = redis::cmd("XGROUP")
        .arg("SETID")
        .arg(&s.tasks)
        .arg(EXECUTOR_GROUP)
        .arg("0")
        .query_async(&mut redis)
        .await
        .expect("XGROUP SETID");
    // Another executor reads the task again and starts the same attempt.
    let (_second, second_name) = start_executor(&app, config()).await;
    executions.wait_for(2, Duration::from_secs(30)).await;
    first_executor.signal("CONT");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let run = loop {
        let run = get_run(&app, &run_id).await;
        let repeats = run["attempts"]
            .as_array()
            .map_or(0, |a| a.iter().filter(|e| e["repeat"] == true).count());
        if run["status"] == "succeeded" && repeats == 1 {
            break run;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "both executions of attempt 1 ran on the host ({:?}), the history must show both: {run}",
            executions.lines()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(executed(&executions, &run_id), vec![1, 1]);
    assert_eq!(run["attempt"], 1, "{run}");
    let repeat = run["attempts"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["repeat"] == true))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(repeat["attempt"], 1, "{run}");
    assert_eq!(repeat["status"], "succeeded", "{run}");
    let executors = [
        run["executor_id"].as_str().unwrap_or_default(),
        repeat["executor_id"].as_str().unwrap_or_default(),
    ];
    assert!(executors.contains(&second_name.as_str()), "{run}");
    assert_ne!(executors[0], executors[1], "{run}");
}

/// A task entry read by `consumer`, as an executor holds it before starting it.
async fn delivered_task(app: &TestApp, consumer: &str) -> String {
    let s = streams(app);
    let mut redis = app.redis().await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&s.tasks)
        .arg(EXECUTOR_GROUP)
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut redis)
        .await
        .unwrap_or(());
    let entry: String = redis
        .xadd(&s.tasks, "*", &[("v", "1")])
        .await
        .expect("XADD");
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(EXECUTOR_GROUP)
        .arg(consumer)
        .arg("STREAMS")
        .arg(&s.tasks)
        .arg(">")
        .query_async(&mut redis)
        .await
        .expect("XREADGROUP");
    entry
}

fn started_report(run_id: uuid::Uuid, holder: &str) -> RunResult {
    RunResult {
        v: netcron_protocol::RESULT_VERSION,
        run_id,
        attempt: 1,
        executor_id: holder.to_owned(),
        started_at: chrono::Utc::now(),
        outcome: None,
        kind: None,
    }
}

#[tokio::test]
async fn a_start_retried_after_its_reply_was_lost_keeps_its_lease() {
    let app = TestApp::spawn().await;
    let leases = Leases::new(streams(&app), 60);
    let entry = delivered_task(&app, "exec-a").await;
    let report = started_report(uuid::Uuid::now_v7(), "exec-a");
    let mut redis = app.redis().await;
    let first = leases
        .start(&mut redis, &entry, 3000, &report, true)
        .await
        .expect("start");
    assert_eq!(first, Start::Started);
    // The same holder asking again for the same entry: its first reply was lost.
    let again = leases
        .start(&mut redis, &entry, 3000, &report, true)
        .await
        .expect("start");
    assert_eq!(again, Start::Started, "a retry is not another executor");
    // Another holder is still refused.
    let other = started_report(report.run_id, "exec-b");
    let refused = leases
        .start(&mut redis, &entry, 3000, &other, true)
        .await
        .expect("start");
    assert_eq!(refused, Start::Held);
}

#[tokio::test]
async fn renewing_a_lease_renews_its_key_so_a_long_command_keeps_it() {
    let app = TestApp::spawn().await;
    let leases = Leases::new(streams(&app), 60);
    let entry = delivered_task(&app, "exec-a").await;
    let report = started_report(uuid::Uuid::now_v7(), "exec-a");
    let mut redis = app.redis().await;
    leases
        .start(&mut redis, &entry, 3000, &report, false)
        .await
        .expect("start");
    let key = streams(&app).run_key(report.run_id);
    // The key is about to reach its safety expiry while the command still runs.
    let _: () = redis.expire(&key, 2).await.expect("EXPIRE");
    let lost = leases
        .renew(&mut redis, "exec-a", 3000, &[(report.run_id, 1)])
        .await
        .expect("renew");
    assert!(lost.is_empty());
    let ttl: i64 = redis.ttl(&key).await.expect("TTL");
    assert!(
        ttl > 50,
        "the renewal renewed the key's expiry too: {ttl} s left"
    );
}

#[tokio::test]
async fn a_finished_attempt_waits_for_ingest_however_long_and_is_not_run_again() {
    let app = TestApp::spawn_with(|s| s.run_ingest = false).await;
    let host = Host::start(&app, "true").await;
    let executions = &host.executions;
    let run_id = host.run(&app).await;
    executions.wait_for(1, Duration::from_secs(30)).await;
    // The outcome is published (the lease names its entry on the results stream).
    lease_field(&app, &run_id, "o").await;
    let key = streams(&app).run_key(uuid(&run_id));
    let mut redis = app.redis().await;
    // The outcome waits for ingest: its key must outlive any ingest outage, so it has no
    // expiry (a key that expired would make the run look lost and run it again).
    let ttl: i64 = redis.ttl(&key).await.expect("TTL");
    assert_eq!(ttl, -1, "a done key waiting for ingest does not expire");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(get_run(&app, &run_id).await["status"], "queued");

    let shutdown = CancellationToken::new();
    let ingesting = tokio::spawn(ingest(&app).run(shutdown.clone()));
    let run = wait_for_status(&app, &run_id, &TERMINAL, Duration::from_secs(30)).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["attempt"], 1, "{run}");
    assert_eq!(executed(executions, &run_id), vec![1]);
    // Stored: now the key goes.
    crate::support::app::eventually(
        "the stored key expires",
        Duration::from_secs(10),
        || async {
            let ttl: i64 = redis.clone().ttl(&key).await.ok()?;
            (ttl > 0).then_some(())
        },
    )
    .await;
    shutdown.cancel();
    ingesting.await.expect("ingest stops");
}

#[tokio::test]
async fn an_outcome_redis_lost_before_ingest_read_it_is_run_again_as_the_next_attempt() {
    let app = TestApp::spawn_with(|s| s.run_ingest = false).await;
    let host = Host::start(&app, "true").await;
    let executions = &host.executions;
    let run_id = host.run(&app).await;
    executions.wait_for(1, Duration::from_secs(30)).await;
    lease_field(&app, &run_id, "o").await;
    // Redis loses the outcome (and the `started` report) before ingest read them.
    let _: i64 = app
        .redis()
        .await
        .del(&streams(&app).results)
        .await
        .expect("DEL results");

    let shutdown = CancellationToken::new();
    let ingesting = tokio::spawn(ingest(&app).run(shutdown.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let run = loop {
        let run = get_run(&app, &run_id).await;
        if TERMINAL.contains(&run["status"].as_str().unwrap_or_default()) {
            break run;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a run whose outcome Redis lost must not wait forever: {run}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["attempt"], 2, "{run}");
    assert_eq!(executed(executions, &run_id), vec![1, 2]);
    shutdown.cancel();
    ingesting.await.expect("ingest stops");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_start_waits_until_a_replica_holds_its_lease() {
    use crate::support::sentinel::Server;
    let dir = crate::support::sites::temp_dir("wait");
    let plain = "save \"\"\nappendonly no\nrepl-diskless-sync-delay 0\n";
    let master = Server::start(&dir, "master", plain, false);
    let replica = Server::start(
        &dir,
        "replica",
        &format!("{plain}replicaof 127.0.0.1 {}\n", master.port),
        false,
    );
    crate::support::app::eventually("the replica in sync", Duration::from_secs(30), || async {
        let info: String = replica
            .query(redis::cmd("INFO").arg("replication"))
            .await
            .ok()?;
        info.contains("master_link_status:up").then_some(())
    })
    .await;
    let app =
        TestApp::spawn_with(|s| s.redis.url = format!("redis://127.0.0.1:{}", master.port)).await;
    let sshd = TestSshd::start();
    let executions = Executions::new();
    let _scheduler = start_scheduler(&app).await;
    let (_executor, _) = start_executor(
        &app,
        netcron_executor::ExecutorSettings {
            start_replicas: 1,
            start_wait: Duration::from_secs(3),
            ..config()
        },
    )
    .await;
    let device = password_device(&app, "host", sshd.port, TEST_PASSWORD).await;
    let c = command(
        &app,
        &device,
        json!({"command": executions.command("sleep 2"), "timeout_s": 20}),
    )
    .await;
    let unreplicated = |text: &str| {
        crate::support::app::metric(text, "netcron_executor_unreplicated_starts_total")
    };

    // The replica answers: the lease is on it before the command starts.
    let first = run_now(&app, &device, &c).await;
    executions.wait_for(1, Duration::from_secs(30)).await;
    let key = streams(&app).run_key(uuid(&first));
    let on_replica: Option<String> = replica
        .query(redis::cmd("HGET").arg(&key).arg("s"))
        .await
        .expect("HGET on the replica");
    assert_eq!(on_replica.as_deref(), Some("leased"));
    wait_for_status(&app, &first, &TERMINAL, Duration::from_secs(30)).await;
    assert_eq!(unreplicated(&app.metrics_text().await), 0.0);

    // The replica is frozen: the start waits for it (3 s), then runs anyway, counted.
    let pid = replica.pid().expect("replica pid").to_string();
    let stop = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .expect("kill -STOP");
    assert!(stop.success());
    let asked = chrono::Utc::now();
    let second = run_now(&app, &device, &c).await;
    executions.wait_for(2, Duration::from_secs(30)).await;
    let _ = std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status();
    let began = executions
        .started()
        .into_iter()
        .find(|(run, ..)| *run == second)
        .map(|(_, _, at)| at)
        .expect("the second run executed");
    assert!(
        (began - asked).num_milliseconds() >= 2500,
        "the command began {} ms after it was asked for, before the replica could hold its lease",
        (began - asked).num_milliseconds()
    );
    let run = wait_for_status(&app, &second, &TERMINAL, Duration::from_secs(30)).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(unreplicated(&app.metrics_text().await), 1.0);
}

#[tokio::test]
async fn a_dead_lettered_task_waits_for_ingest_and_is_not_taken_for_a_lost_one() {
    let app = TestApp::spawn_with(|s| s.run_ingest = false).await;
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
    let s = streams(&app);
    // The run's task, as published, is replaced by one no executor can read (a version from
    // the future), before any executor is there.
    let published =
        crate::support::app::eventually("the task published", Duration::from_secs(10), || async {
            crate::support::pipeline::entries(&app, &s.tasks)
                .await
                .into_iter()
                .find(|(_, m)| m.get("run_id") == Some(&run_id))
                .map(|(id, _)| id)
        })
        .await;
    let mut redis = app.redis().await;
    let _: i64 = redis.xdel(&s.tasks, &[&published]).await.expect("XDEL");
    let unreadable: String = redis
        .xadd(
            &s.tasks,
            "*",
            &[("v", "99"), ("run_id", run_id.as_str()), ("body", "{}")],
        )
        .await
        .expect("XADD");
    app.db
        .execute_unprepared(&format!(
            "UPDATE task_outbox SET stream_id = '{unreadable}' WHERE run_id = '{run_id}'"
        ))
        .await
        .expect("outbox row");

    let (_executor, _) = start_executor(&app, config()).await;
    crate::support::app::eventually("dead-lettered", Duration::from_secs(10), || async {
        let dead = crate::support::pipeline::entries(&app, &s.dead_letter).await;
        (!dead.is_empty()).then_some(())
    })
    .await;
    // Several re-queue passes (every second) while the error outcome waits for ingest: the
    // acknowledged task is not lost, and the run is not started again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let run = get_run(&app, &run_id).await;
    assert_eq!(run["status"], "queued", "{run}");
    assert_eq!(run["attempt"], 1, "{run}");
    assert!(executions.lines().is_empty(), "{:?}", executions.lines());

    let shutdown = CancellationToken::new();
    let ingesting = tokio::spawn(ingest(&app).run(shutdown.clone()));
    let run = wait_for_status(&app, &run_id, &TERMINAL, Duration::from_secs(30)).await;
    assert_eq!(run["status"], "error", "{run}");
    assert_eq!(run["attempt"], 1, "{run}");
    assert!(
        run["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("dead-lettered")),
        "{run}"
    );
    shutdown.cancel();
    ingesting.await.expect("ingest stops");
}
