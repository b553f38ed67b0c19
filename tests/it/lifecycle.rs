//! The run lifecycle under ordinary pressure: busy devices, stopped ingest, a frozen executor,
//! skewed clocks and a first-contact race. Every promise is counted where it happens: each
//! execution appends `<run id> <attempt>` to a file on the SSH host (the executor passes
//! `NETCRON_RUN_ID` and `NETCRON_ATTEMPT`, which the test sshd accepts), and the test compares
//! those lines with the run history.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use netcron_scheduler::{Scheduler, SchedulerConfig, SkewedClock, SystemClock};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::executor::{
    TERMINAL, command, config, finished, get_run, password_device, run_now, start_executor,
    start_scheduler, wait_for_status,
};
use crate::helpers::TestApp;
use crate::sshd::{TEST_PASSWORD, TestSshd};

/// A file on the SSH host that every execution appends `<run id> <attempt> <unix time>` to,
/// the time read on the host as the command begins.
pub(crate) struct Executions {
    dir: PathBuf,
}

impl Executions {
    pub(crate) fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("netcron-exec-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("executions dir");
        // The test user runs the commands.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        Self { dir }
    }

    /// Shell text that records the execution, then does `then`.
    pub(crate) fn command(&self, then: &str) -> String {
        format!(
            "echo \"$NETCRON_RUN_ID $NETCRON_ATTEMPT $(date +%s.%N)\" >> {}/log; {then}",
            self.dir.display()
        )
    }

    /// Every execution so far, as (run id, attempt, when it began on the host).
    pub(crate) fn started(&self) -> Vec<(String, i64, chrono::DateTime<chrono::Utc>)> {
        std::fs::read_to_string(self.dir.join("log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut fields = l.split_whitespace();
                let run = fields.next()?.to_owned();
                let attempt = fields.next()?.parse().ok()?;
                let at: f64 = fields.next()?.parse().ok()?;
                let at = chrono::DateTime::from_timestamp_micros((at * 1e6) as i64)?;
                Some((run, attempt, at))
            })
            .collect()
    }

    /// Every execution so far, as (run id, attempt).
    pub(crate) fn lines(&self) -> Vec<(String, i64)> {
        self.started()
            .into_iter()
            .map(|(run, attempt, _)| (run, attempt))
            .collect()
    }

    /// How many times each (run, attempt) executed.
    pub(crate) fn counts(&self) -> HashMap<(String, i64), usize> {
        let mut counts = HashMap::new();
        for line in self.lines() {
            *counts.entry(line).or_insert(0) += 1;
        }
        counts
    }

    pub(crate) async fn wait_for(&self, n: usize, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.lines().len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} executions within {within:?}, expected {n}",
                self.lines().len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Executions {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Asserts that each run executed exactly once, as attempt 1, and succeeded.
async fn assert_each_ran_once(app: &TestApp, runs: &[String], executions: &Executions) {
    let counts = executions.counts();
    assert_eq!(
        executions.lines().len(),
        runs.len(),
        "executions on the host: {counts:?}"
    );
    for run_id in runs {
        let run = finished(app, run_id).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        assert_eq!(run["attempt"], 1, "{run}");
        assert_eq!(counts.get(&(run_id.clone(), 1)), Some(&1), "{counts:?}");
    }
}

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
    let app = TestApp::spawn_with(|s| s.ingest = false).await;
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
    let ingesting = tokio::spawn(crate::executor::ingest(&app).run(shutdown.clone()));
    for run_id in &runs {
        wait_for_status(&app, run_id, &TERMINAL, Duration::from_secs(30)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_each_ran_once(&app, &runs, &executions).await;
    shutdown.cancel();
    ingesting.await.expect("ingest stops");
}

/// `netcron executor` as its own process, so it can be frozen with SIGSTOP.
pub(crate) struct ExecutorProcess(Child);

impl ExecutorProcess {
    /// Starts `netcron executor`; with `skew` (libfaketime's `FAKETIME`, e.g. `-5m`) its wall
    /// clock is shifted by preloading libfaketime into the process itself, so the child is the
    /// executor and nothing outlives the test.
    pub(crate) fn start(app: &TestApp, skew: Option<&str>) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_netcron"));
        command
            .arg("executor")
            .env("REDIS_URL", &app.redis_url)
            .env("NETCRON_STREAM_PREFIX", &app.stream_prefix)
            .env("NETCRON_SECRET_KEY", &app.key_text)
            .env("NETCRON_LEASE_TTL_S", "2")
            .env("NETCRON_EXECUTOR_RECLAIM_IDLE_S", "4")
            .env("NETCRON_EXECUTOR_OPS_ADDR", "off")
            .env("NETCRON_LOG", "warn")
            // Never the test harness's own pipes: a process holding them keeps its reader
            // (CI's `tee`) waiting.
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Some(skew) = skew {
            command
                .env("LD_PRELOAD", libfaketime())
                .env("FAKETIME", skew)
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        Self(command.spawn().expect("netcron executor"))
    }

    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.0.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal}");
    }
}

/// Debian's multi-threaded libfaketime (package `faketime`, which `.ci/run` installs).
fn libfaketime() -> PathBuf {
    std::fs::read_dir("/usr/lib")
        .expect("/usr/lib")
        .filter_map(Result::ok)
        .map(|dir| dir.path().join("faketime/libfaketimeMT.so.1"))
        .find(|path| path.exists())
        .expect("libfaketime is missing: apt-get install faketime (see .ci/run)")
}

impl Drop for ExecutorProcess {
    fn drop(&mut self) {
        self.signal("CONT");
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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
    let config = SchedulerConfig {
        requeue_cron: "* * * * * *".into(),
        lease_confirm: Duration::from_secs(2),
        ..SchedulerConfig::default()
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
    let (status, _) = crate::helpers::json_of(
        app.patch(
            &format!("/schedules/{}", schedule["id"].as_str().unwrap_or_default()),
            &json!({"enabled": false}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    let (_, page) = crate::helpers::json_of(
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

/// A TCP front that sends connections to two backends in turn: one device address behind
/// which two hosts with different host keys answer (a spoofed address, a failover pair that
/// does not share its keys).
async fn alternating_front(backends: [u16; 2]) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let mut turn = 0usize;
        while let Ok((mut inbound, _)) = listener.accept().await {
            let backend = backends[turn % 2];
            turn += 1;
            tokio::spawn(async move {
                if let Ok(mut outbound) =
                    tokio::net::TcpStream::connect(("127.0.0.1", backend)).await
                {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    port
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
        netcron_executor::ExecutorConfig {
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
    let (_, shown) = crate::helpers::json_of(
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
    while crate::executor::entries(&app, &crate::executor::streams(&app).tasks)
        .await
        .is_empty()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the task was not published"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, run) = crate::helpers::json_of(
        app.post(&format!("/runs/{run_id}/cancel"), &json!({}))
            .await,
    )
    .await;
    assert_eq!(status, 200, "{run}");
    assert_eq!(run["status"], "cancelled");
    let again = app
        .post(&format!("/runs/{run_id}/cancel"), &json!({}))
        .await;
    crate::helpers::assert_problem(again, 409, "conflict", None).await;
    // An executor now reads the task: the attempt is fenced, so it is dropped, not run.
    let (_executor, _) = start_executor(&app, config()).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(executions.lines().is_empty(), "{:?}", executions.lines());
    assert_eq!(get_run(&app, &run_id).await["status"], "cancelled");
}
