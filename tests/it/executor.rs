//! The executor against a real OpenSSH sshd (and fake servers for the failure modes), through
//! the whole pipeline: API → outbox → scheduler → tasks stream → executor → results stream →
//! ingest → API.

use std::sync::Arc;
use std::time::Duration;

use netcron_common::protocol::Streams;
use netcron_executor::{Executor, ExecutorConfig, Settings as ExecutorSettings};
use netcron_scheduler::{SchedulerConfig, SystemClock};
use redis::AsyncCommands as _;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::helpers::{TestApp, id, json_of};
use crate::sshd::{
    AUTH_ATTEMPT_MARKERS, Blackhole, CLIENT_KEY_PASSPHRASE, GarbageServer, SilentServer,
    SshdOptions, TEST_PASSWORD, TEST_USER, TestSshd, free_port,
};

/// A role running in the background, stopped (not gracefully awaited) when dropped.
pub(crate) struct Running {
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops gracefully and waits for the role to end.
    pub(crate) async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            handle.await.expect("role ends");
        }
    }

    /// Ends the role at once, like `kill -9`: nothing is acknowledged or published.
    pub(crate) fn crash(mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub(crate) async fn start_scheduler(app: &TestApp) -> Running {
    // These tests count entries on the streams, so the trim job (every minute by default,
    // dropping entries every consumer group has acknowledged) must not run in the middle of
    // one: it is set to a day that comes every four years.
    //
    // Lost attempts are looked for every second, and a lease seen expired is re-queued when it
    // stays so for two seconds (executors' leases last three, see `config`).
    let config = SchedulerConfig {
        trim_cron: "0 0 0 29 2 *".into(),
        requeue_cron: "* * * * * *".into(),
        lease_confirm: Duration::from_secs(2),
        ..SchedulerConfig::default()
    };
    let scheduler = app.scheduler(config, Arc::new(SystemClock)).await;
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let handle = tokio::spawn(async move {
        scheduler.run(token).await.expect("scheduler loop");
    });
    Running {
        shutdown,
        handle: Some(handle),
    }
}

/// Test-sized timeouts: failures show up within seconds.
pub(crate) fn config() -> ExecutorConfig {
    ExecutorConfig {
        connect_timeout: Duration::from_secs(2),
        login_timeout: Duration::from_secs(3),
        reclaim_idle: Duration::from_secs(4),
        lease_ttl: Duration::from_secs(3),
        grace: Duration::from_secs(10),
        retry_base: Duration::from_millis(50),
        block: Duration::from_millis(500),
        ..ExecutorConfig::default()
    }
}

pub(crate) async fn start_executor(app: &TestApp, config: ExecutorConfig) -> (Running, String) {
    let settings = ExecutorSettings {
        redis: netcron_common::config::RedisSettings {
            url: app.redis_url.clone(),
            stream_prefix: app.stream_prefix.clone(),
        },
        secret_key: app.key.clone(),
        executor: config,
    };
    let metrics = netcron_executor::ExecutorMetrics::new(&app.telemetry);
    let executor = Executor::connect(settings, &app.telemetry, metrics)
        .await
        .expect("executor");
    let consumer = executor.consumer().to_owned();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let handle = tokio::spawn(async move {
        executor.run(token).await.expect("executor loop");
    });
    (
        Running {
            shutdown,
            handle: Some(handle),
        },
        consumer,
    )
}

/// Ingest as its own role, for tests that start it when they want outcomes stored.
pub(crate) fn ingest(app: &TestApp) -> netcron_ingest::Ingest {
    netcron_ingest::Ingest::new(
        app.db.clone(),
        &netcron_common::config::RedisSettings {
            url: app.redis_url.clone(),
            stream_prefix: app.stream_prefix.clone(),
        },
        app.key.clone(),
        100,
        1,
        &app.telemetry,
    )
    .expect("ingest")
}

/// Scheduler and executor for one test.
pub(crate) async fn pipeline(app: &TestApp) -> (Running, Running) {
    let scheduler = start_scheduler(app).await;
    let (executor, _) = start_executor(app, config()).await;
    (scheduler, executor)
}

pub(crate) async fn password_device(app: &TestApp, name: &str, port: u16, password: &str) -> Value {
    let cred = app
        .create(
            "/credentials",
            json!({"name": format!("{name}-cred"), "username": TEST_USER, "password": password}),
        )
        .await;
    device_with(app, name, port, &cred).await
}

async fn key_device(
    app: &TestApp,
    name: &str,
    port: u16,
    key: &str,
    passphrase: Option<&str>,
) -> Value {
    let mut body = json!({"name": format!("{name}-cred"), "username": TEST_USER,
                          "kind": "private_key", "private_key": key});
    if let Some(p) = passphrase {
        body["passphrase"] = json!(p);
    }
    let cred = app.create("/credentials", body).await;
    device_with(app, name, port, &cred).await
}

async fn device_with(app: &TestApp, name: &str, port: u16, cred: &Value) -> Value {
    app.create(
        "/devices",
        json!({"name": name, "host": "127.0.0.1", "port": port, "platform": "linux",
               "credential_id": cred["id"]}),
    )
    .await
}

pub(crate) async fn command(app: &TestApp, device: &Value, body: Value) -> Value {
    let mut body = body;
    if body.get("name").is_none() {
        body["name"] = json!(format!("c-{}", uuid::Uuid::new_v4().simple()));
    }
    app.create(&format!("/devices/{}/commands", id(device)), body)
        .await
}

pub(crate) async fn run_now(app: &TestApp, device: &Value, command: &Value) -> String {
    let (status, run) = json_of(
        app.post(
            &format!("/devices/{}/commands/{}/run", id(device), id(command)),
            &json!({}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 202, "{run}");
    id(&run).to_owned()
}

pub(crate) async fn get_run(app: &TestApp, run_id: &str) -> Value {
    let (status, run) = json_of(app.get(&format!("/runs/{run_id}")).await).await;
    assert_eq!(status, 200, "{run}");
    run
}

pub(crate) const TERMINAL: [&str; 6] = [
    "succeeded",
    "failed",
    "error",
    "missed",
    "skipped",
    "cancelled",
];

pub(crate) async fn wait_for_status(
    app: &TestApp,
    run_id: &str,
    wanted: &[&str],
    within: Duration,
) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let run = get_run(app, run_id).await;
        let status = run["status"].as_str().unwrap_or_default();
        if wanted.contains(&status) {
            return run;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "run did not reach {wanted:?} within {within:?}: {run}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn finished(app: &TestApp, run_id: &str) -> Value {
    wait_for_status(app, run_id, &TERMINAL, Duration::from_secs(30)).await
}

/// Runs `text` once on a password device of `sshd` and returns the finished run.
pub(crate) async fn run_shell(app: &TestApp, sshd: &TestSshd, body: Value) -> Value {
    let device = password_device(app, "host", sshd.port, TEST_PASSWORD).await;
    let command = command(app, &device, body).await;
    let run = run_now(app, &device, &command).await;
    finished(app, &run).await
}

pub(crate) fn streams(app: &TestApp) -> Streams {
    Streams::new(&app.stream_prefix)
}

/// Every entry of a stream as (id, field map of strings).
pub(crate) async fn entries(
    app: &TestApp,
    stream: &str,
) -> Vec<(String, std::collections::HashMap<String, String>)> {
    let mut redis = app.redis().await;
    let reply: redis::streams::StreamRangeReply = redis.xrange_all(stream).await.expect("XRANGE");
    reply
        .ids
        .into_iter()
        .map(|e| {
            let map = e
                .map
                .iter()
                .filter_map(|(k, v)| match v {
                    redis::Value::BulkString(b) => {
                        Some((k.clone(), String::from_utf8_lossy(b).into_owned()))
                    }
                    _ => None,
                })
                .collect();
            (e.id, map)
        })
        .collect()
}

/// The `finished` result events for `run_id` on the results stream.
async fn outcomes_of(app: &TestApp, run_id: &str) -> Vec<Value> {
    entries(app, &streams(app).results)
        .await
        .into_iter()
        .filter(|(_, m)| m.get("run_id").map(String::as_str) == Some(run_id))
        .filter_map(|(_, m)| serde_json::from_str::<Value>(m.get("body")?).ok())
        .filter(|b| !b["outcome"].is_null())
        .collect()
}

fn hostname() -> String {
    let out = std::process::Command::new("hostname")
        .output()
        .expect("hostname");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn key_auth_runs_the_command_and_pins_the_host_key_on_first_use() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let (_s, _e) = pipeline(&app).await;
    let device = key_device(&app, "key-host", sshd.port, &sshd.client_key, None).await;
    assert!(device["host_key_fingerprint"].is_null());
    let command = command(&app, &device, json!({"command": "hostname"})).await;
    let run_id = run_now(&app, &device, &command).await;
    let run = finished(&app, &run_id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["exit_code"], 0);
    assert_eq!(run["stdout"], hostname());
    assert_eq!(run["stderr"], "");
    assert_eq!(run["truncated"], false);
    assert!(run["duration_ms"].as_i64().is_some_and(|ms| ms >= 0));
    assert!(run["started_at"].is_string() && run["finished_at"].is_string());
    assert_eq!(run["attempts"].as_array().map(Vec::len), Some(1), "{run}");
    let (_, device) = json_of(app.get(&format!("/devices/{}", id(&device))).await).await;
    assert_eq!(device["host_key_fingerprint"], sshd.host_key_fingerprint);

    let (status, page) = json_of(app.get(&format!("/devices/{}/results", id(&device))).await).await;
    assert_eq!(status, 200);
    assert_eq!(page["items"][0]["id"], run_id.as_str());
    // Lists carry sizes, not output.
    assert_eq!(page["items"][0]["stdout_bytes"], hostname().len());
    assert!(page["items"][0].get("stdout").is_none());
    let output = app.get(&format!("/runs/{run_id}/output")).await;
    assert_eq!(output.status(), 200);
    assert_eq!(output.text().await.expect("body"), hostname());
}

#[tokio::test]
async fn password_auth_succeeds_and_a_wrong_password_is_auth_failed() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let (_s, _e) = pipeline(&app).await;
    let good = password_device(&app, "good", sshd.port, TEST_PASSWORD).await;
    let bad = password_device(&app, "bad", sshd.port, "not-the-password").await;
    let c_good = command(&app, &good, json!({"command": "echo $USER"})).await;
    let c_bad = command(&app, &bad, json!({"command": "echo $USER"})).await;
    let r_good = run_now(&app, &good, &c_good).await;
    let r_bad = run_now(&app, &bad, &c_bad).await;
    let run = finished(&app, &r_good).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["stdout"], format!("{TEST_USER}\n"));
    let run = finished(&app, &r_bad).await;
    assert_eq!(run["status"], "error", "{run}");
    assert_eq!(run["error_kind"], "auth_failed", "{run}");
    assert!(
        run["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("rejected")),
        "{run}"
    );
    // Authentication errors are never retried, even with attempts to spare.
    assert_eq!(run["attempts"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn an_encrypted_key_needs_its_passphrase() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let (_s, _e) = pipeline(&app).await;
    let right = key_device(
        &app,
        "right",
        sshd.port,
        &sshd.client_key_encrypted,
        Some(CLIENT_KEY_PASSPHRASE),
    )
    .await;
    let wrong = key_device(
        &app,
        "wrong",
        sshd.port,
        &sshd.client_key_encrypted,
        Some("nope-nope"),
    )
    .await;
    let stranger = key_device(&app, "stranger", sshd.port, &sshd.unauthorized_key, None).await;
    let mut runs = Vec::new();
    for device in [&right, &wrong, &stranger] {
        let c = command(&app, device, json!({"command": "true"})).await;
        runs.push(run_now(&app, device, &c).await);
    }
    let run = finished(&app, &runs[0]).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    for r in &runs[1..] {
        let run = finished(&app, r).await;
        assert_eq!(run["error_kind"], "auth_failed", "{run}");
    }
}

#[tokio::test]
async fn keyboard_interactive_is_answered_with_the_password() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start_with(SshdOptions {
        keyboard_interactive_only: true,
        ..SshdOptions::default()
    });
    let (_s, _e) = pipeline(&app).await;
    let run = run_shell(&app, &sshd, json!({"command": "echo kbd"})).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["stdout"], "kbd\n");
}

#[tokio::test]
async fn connection_failures_are_told_apart_within_their_timeouts() {
    let app = TestApp::spawn().await;
    let (_s, _e) = pipeline(&app).await;
    let closed = free_port();
    let blackhole = Blackhole::start();
    let silent = SilentServer::start();
    let garbage = GarbageServer::start();
    let cases = [
        (closed, "connection_refused"),
        (blackhole.port, "unreachable"),
        (silent.port, "handshake_failed"),
        (garbage.port, "handshake_failed"),
    ];
    let mut runs = Vec::new();
    for (i, (port, _)) in cases.iter().enumerate() {
        let device = password_device(&app, &format!("d{i}"), *port, TEST_PASSWORD).await;
        let c = command(&app, &device, json!({"command": "true"})).await;
        runs.push(run_now(&app, &device, &c).await);
    }
    for ((_, kind), run_id) in cases.iter().zip(&runs) {
        let run = finished(&app, run_id).await;
        assert_eq!(run["status"], "error", "{run}");
        assert_eq!(run["error_kind"], *kind, "{run}");
        assert!(run["error_message"].as_str().is_some_and(|m| !m.is_empty()));
        // Connect timeout 2 s, login timeout 3 s: every failure is known within them.
        let ms = run["duration_ms"].as_i64().expect("duration");
        assert!(ms < 4500, "{kind} took {ms} ms");
    }
}

#[tokio::test]
async fn transient_errors_are_retried_up_to_max_attempts() {
    let app = TestApp::spawn().await;
    let (_s, _e) = pipeline(&app).await;
    let device = password_device(&app, "gone", free_port(), TEST_PASSWORD).await;
    let c = command(&app, &device, json!({"command": "true", "max_attempts": 3})).await;
    let run = finished(&app, &run_now(&app, &device, &c).await).await;
    assert_eq!(run["error_kind"], "connection_refused", "{run}");
    let attempts = run["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 3, "{run}");
    assert!(
        attempts
            .iter()
            .all(|a| a["error_kind"] == "connection_refused")
    );
}

#[tokio::test]
async fn a_command_past_its_timeout_is_cut_and_keeps_its_output() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let (_s, _e) = pipeline(&app).await;
    let run = run_shell(
        &app,
        &sshd,
        json!({"command": "echo partial; sleep 30; echo never", "timeout_s": 1}),
    )
    .await;
    assert_eq!(run["status"], "error", "{run}");
    assert_eq!(run["error_kind"], "timeout");
    assert_eq!(run["stdout"], "partial\n");
    let ms = run["duration_ms"].as_i64().expect("duration");
    assert!((1000..5000).contains(&ms), "{ms} ms");
}

#[tokio::test]
async fn output_past_the_cap_is_truncated() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let (_s, _e) = pipeline(&app).await;
    let run = run_shell(
        &app,
        &sshd,
        json!({"command": "head -c 10000000 /dev/zero | tr '\\0' x", "max_output_bytes": 65536}),
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["truncated"], true);
    let stdout = run["stdout"].as_str().expect("stdout");
    assert_eq!(stdout.len(), 65536);
    assert!(stdout.bytes().all(|b| b == b'x'));
}

/// Output processing runs on a blocking thread under a deadline: one that is missed ends the
/// run with a clear error instead of holding up the executor.
#[tokio::test]
async fn output_processing_past_its_deadline_ends_the_run_with_an_error() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let _scheduler = start_scheduler(&app).await;
    let (_executor, _) = start_executor(
        &app,
        ExecutorConfig {
            processing_timeout: Duration::from_millis(1),
            ..config()
        },
    )
    .await;
    let device = password_device(&app, "host", sshd.port, TEST_PASSWORD).await;
    let big = command(
        &app,
        &device,
        json!({"name": "big", "command": "head -c 20000000 /dev/zero | tr '\\0' x"}),
    )
    .await;
    let run = finished(&app, &run_now(&app, &device, &big).await).await;
    assert_eq!(run["status"], "error", "{}", run["error_message"]);
    assert_eq!(run["error_kind"], "internal");
    assert_eq!(
        run["error_message"],
        "processing the output took longer than 1 ms (NETCRON_EXECUTOR_PROCESSING_TIMEOUT_S)"
    );
    // The executor goes on: the next run of the device succeeds.
    let small = command(
        &app,
        &device,
        json!({"name": "small", "command": "echo fine"}),
    )
    .await;
    let run = finished(&app, &run_now(&app, &device, &small).await).await;
    // On a loaded machine even `fine` can take longer than 1 ms to reach its blocking thread;
    // either way the run ended, on the same executor, which is what this checks.
    assert!(
        run["stdout"] == "fine\n"
            || run["error_message"]
                == "processing the output took longer than 1 ms (NETCRON_EXECUTOR_PROCESSING_TIMEOUT_S)",
        "{run}"
    );
}

#[tokio::test]
async fn large_stdout_and_stderr_together_do_not_deadlock() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let (_s, _e) = pipeline(&app).await;
    // Both streams far beyond the SSH window (2 MiB), written at the same time.
    let run = run_shell(
        &app,
        &sshd,
        json!({"command": "head -c 3000000 /dev/zero | tr '\\0' o & head -c 3000000 /dev/zero | tr '\\0' e >&2; wait",
               "max_output_bytes": 4000000, "timeout_s": 20}),
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{}", run["error_message"]);
    assert_eq!(run["truncated"], false);
    assert_eq!(run["stdout"].as_str().map(str::len), Some(3_000_000));
    assert_eq!(run["stderr"].as_str().map(str::len), Some(3_000_000));
}

#[tokio::test]
async fn exit_codes_signals_and_bad_bytes_are_recorded() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let (_s, _e) = pipeline(&app).await;
    let device = password_device(&app, "host", sshd.port, TEST_PASSWORD).await;
    let exit = command(&app, &device, json!({"command": "echo oops >&2; exit 3"})).await;
    let signal = command(&app, &device, json!({"command": "kill -TERM $$"})).await;
    let bytes = command(&app, &device, json!({"command": "printf 'a\\377b\\000c'"})).await;
    let echo = command(
        &app,
        &device,
        json!({"command": format!("echo 'pw is {TEST_PASSWORD}'")}),
    )
    .await;
    let r_exit = run_now(&app, &device, &exit).await;
    let r_signal = run_now(&app, &device, &signal).await;
    let r_bytes = run_now(&app, &device, &bytes).await;
    let r_echo = run_now(&app, &device, &echo).await;

    let run = finished(&app, &r_exit).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["exit_code"], 3);
    assert_eq!(run["stderr"], "oops\n");

    let run = finished(&app, &r_signal).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["exit_signal"], "TERM", "{run}");
    assert!(run["exit_code"].is_null());

    let run = finished(&app, &r_bytes).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["stdout"], "a\u{FFFD}b\u{FFFD}c");

    // A device that echoes the password back does not get it stored.
    let run = finished(&app, &r_echo).await;
    assert_eq!(run["stdout"], "pw is ********\n", "{run}");
}

#[tokio::test]
async fn a_changed_host_key_stops_the_run_before_authentication() {
    let app = TestApp::spawn().await;
    let mut sshd = TestSshd::start();
    let (_s, _e) = pipeline(&app).await;
    let device = password_device(&app, "host", sshd.port, TEST_PASSWORD).await;
    let c = command(&app, &device, json!({"command": "true"})).await;
    let first = finished(&app, &run_now(&app, &device, &c).await).await;
    assert_eq!(first["status"], "succeeded", "{first}");
    let old_key = sshd.host_key_fingerprint.clone();

    sshd.restart_with_new_host_key();
    assert_ne!(sshd.host_key_fingerprint, old_key);
    let log_before = sshd.log();
    let run = finished(&app, &run_now(&app, &device, &c).await).await;
    assert_eq!(run["status"], "error", "{run}");
    assert_eq!(run["error_kind"], "host_key_mismatch", "{run}");
    let message = run["error_message"].as_str().expect("message");
    assert!(
        message.contains(&sshd.host_key_fingerprint) && message.contains(&old_key),
        "{message}"
    );
    let log = sshd.log();
    let new_lines = log.strip_prefix(&log_before).unwrap_or(&log);
    for marker in AUTH_ATTEMPT_MARKERS {
        assert!(
            !new_lines.contains(marker),
            "sshd saw an authentication attempt: {new_lines}"
        );
    }
    // The pin is unchanged, and re-pinning (clearing it) lets the next run trust the new key.
    let (_, d) = json_of(app.get(&format!("/devices/{}", id(&device))).await).await;
    assert_eq!(d["host_key_fingerprint"], old_key);
    let (status, _) = json_of(
        app.patch(
            &format!("/devices/{}", id(&device)),
            &json!({"host_key_fingerprint": null}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    let run = finished(&app, &run_now(&app, &device, &c).await).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let (_, d) = json_of(app.get(&format!("/devices/{}", id(&device))).await).await;
    assert_eq!(d["host_key_fingerprint"], sshd.host_key_fingerprint);
}

#[tokio::test]
async fn runs_on_one_device_take_turns() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let (_s, _e) = pipeline(&app).await;
    let device = password_device(&app, "host", sshd.port, TEST_PASSWORD).await;
    let c = command(&app, &device, json!({"command": "sleep 0.5"})).await;
    let a = run_now(&app, &device, &c).await;
    let b = run_now(&app, &device, &c).await;
    let a = finished(&app, &a).await;
    let b = finished(&app, &b).await;
    let span = |r: &Value| {
        let (Some(start), Some(end)) = (
            r["attempts"][0]["started_at"].as_str(),
            r["finished_at"].as_str(),
        ) else {
            panic!("times of {r}")
        };
        (
            chrono::DateTime::parse_from_rfc3339(start).expect("start"),
            chrono::DateTime::parse_from_rfc3339(end).expect("end"),
        )
    };
    let (a0, a1) = span(&a);
    let (b0, b1) = span(&b);
    assert!(
        a1 <= b0 || b1 <= a0,
        "runs overlapped: {a0}..{a1} and {b0}..{b1}"
    );
}

/// The executor dies mid-command (its task aborted, like `kill -9`: nothing is published). Its
/// lease expires, and the run comes back as attempt 2 on another executor: the repeat is
/// unavoidable (the command may have run) and recorded.
#[tokio::test]
async fn a_run_of_a_crashed_executor_is_queued_again_as_its_next_attempt() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let scheduler = start_scheduler(&app).await;
    let (first, first_name) = start_executor(&app, config()).await;
    let device = password_device(&app, "host", sshd.port, TEST_PASSWORD).await;
    let c = command(&app, &device, json!({"command": "sleep 2; echo done"})).await;
    let run_id = run_now(&app, &device, &c).await;
    let running = wait_for_status(&app, &run_id, &["running"], Duration::from_secs(10)).await;
    assert_eq!(running["executor_id"], first_name.as_str());
    first.crash();

    let (_second, second_name) = start_executor(&app, config()).await;
    let run = wait_for_status(&app, &run_id, &TERMINAL, Duration::from_secs(30)).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["stdout"], "done\n");
    assert_eq!(run["executor_id"], second_name.as_str());
    assert_eq!(run["attempt"], 2, "{run}");
    let lost = &run["attempts"][0];
    assert_eq!(lost["attempt"], 1, "{run}");
    assert_eq!(lost["executor_id"], first_name.as_str(), "{run}");
    assert!(lost["requeued_at"].is_string(), "{run}");
    // Give a late duplicate every chance to show up, then count outcomes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(outcomes_of(&app, &run_id).await.len(), 1);
    scheduler.stop().await;
}

#[tokio::test]
async fn shutdown_lets_in_flight_runs_finish() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let _scheduler = start_scheduler(&app).await;
    let (executor, _) = start_executor(&app, config()).await;
    let device = password_device(&app, "host", sshd.port, TEST_PASSWORD).await;
    let c = command(&app, &device, json!({"command": "sleep 1; echo finished"})).await;
    let run_id = run_now(&app, &device, &c).await;
    wait_for_status(&app, &run_id, &["running"], Duration::from_secs(10)).await;
    executor.stop().await;
    let run = finished(&app, &run_id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["stdout"], "finished\n");
}

#[tokio::test]
async fn a_task_on_the_stream_twice_runs_once() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let (_s, _e) = pipeline(&app).await;
    let device = password_device(&app, "host", sshd.port, TEST_PASSWORD).await;
    let c = command(&app, &device, json!({"command": "echo once"})).await;
    let run_id = run_now(&app, &device, &c).await;
    finished(&app, &run_id).await;
    // Publish the same task again, as the outbox does when unsure.
    let tasks = entries(&app, &streams(&app).tasks).await;
    let (_, fields) = tasks.last().expect("task entry").clone();
    let mut redis = app.redis().await;
    let items: Vec<(String, String)> = fields.into_iter().collect();
    let _: String = redis
        .xadd(&streams(&app).tasks, "*", &items)
        .await
        .expect("XADD");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(outcomes_of(&app, &run_id).await.len(), 1);
}

#[tokio::test]
async fn duplicated_and_late_results_change_nothing() {
    let app = TestApp::spawn().await;
    let (_s, _e) = pipeline(&app).await;
    let device = password_device(&app, "host", free_port(), TEST_PASSWORD).await;
    let c = command(&app, &device, json!({"kind": "noop"})).await;
    let run_id = run_now(&app, &device, &c).await;
    let before = finished(&app, &run_id).await;
    assert_eq!(before["status"], "succeeded", "{before}");

    // Replay every result of the run (its started event and its outcome), and add a stale
    // started event of an older attempt and a conflicting outcome.
    let results = entries(&app, &streams(&app).results).await;
    let mut redis = app.redis().await;
    let mine: Vec<_> = results
        .iter()
        .filter(|(_, m)| m["run_id"] == run_id)
        .collect();
    assert!(!mine.is_empty(), "the run's results are on the stream");
    for (_, fields) in mine {
        let mut body: Value = serde_json::from_str(&fields["body"]).expect("body");
        let items: Vec<(String, String)> = fields.clone().into_iter().collect();
        let _: String = redis
            .xadd(&streams(&app).results, "*", &items)
            .await
            .expect("XADD");
        if !body["outcome"].is_null() {
            body["outcome"]["status"] = json!("failed");
            body["outcome"]["exit_code"] = json!(9);
            let items = [
                ("v", "1".to_owned()),
                ("run_id", run_id.clone()),
                ("body", body.to_string()),
            ];
            let _: String = redis
                .xadd(&streams(&app).results, "*", &items)
                .await
                .expect("XADD");
        }
    }
    wait_until_ingested(&app).await;
    let after = get_run(&app, &run_id).await;
    assert_eq!(after, before);
    let (_, page) = json_of(app.get(&format!("/runs?device_id={}", id(&device))).await).await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1));
}

/// Waits until the ingest group has acknowledged everything on the results stream.
pub(crate) async fn wait_until_ingested(app: &TestApp) {
    let mut redis = app.redis().await;
    for _ in 0..100 {
        let pending: redis::streams::StreamPendingReply = redis
            .xpending(&streams(app).results, "ingest")
            .await
            .expect("XPENDING");
        let info: redis::streams::StreamInfoGroupsReply = redis
            .xinfo_groups(&streams(app).results)
            .await
            .expect("XINFO GROUPS");
        let lag_free = info.groups.iter().all(|g| g.lag == Some(0));
        if pending.count() == 0 && lag_free {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("results were not ingested");
}

#[tokio::test]
async fn malformed_tasks_are_dead_lettered_and_the_executor_keeps_going() {
    let app = TestApp::spawn().await;
    let (_s, _e) = pipeline(&app).await;
    let device = password_device(&app, "host", free_port(), TEST_PASSWORD).await;
    let c = command(&app, &device, json!({"kind": "noop"})).await;
    let first = run_now(&app, &device, &c).await;
    finished(&app, &first).await;

    // Entries a consumer cannot read: no version, a version nobody reads (naming a real run),
    // a body that is not JSON.
    let s = streams(&app);
    let orphan = run_now(&app, &device, &c).await;
    finished(&app, &orphan).await;
    let mut redis = app.redis().await;
    let garbage: [(&str, &str); 1] = [("hello", "world")];
    let _: String = redis.xadd(&s.tasks, "*", &garbage).await.expect("XADD");
    let future = [("v", "99"), ("run_id", orphan.as_str()), ("body", "{}")];
    let _: String = redis.xadd(&s.tasks, "*", &future).await.expect("XADD");
    let not_json = [("v", "1"), ("run_id", "nope"), ("body", "{\"v\":")];
    let _: String = redis.xadd(&s.tasks, "*", &not_json).await.expect("XADD");

    let after = run_now(&app, &device, &c).await;
    let run = finished(&app, &after).await;
    assert_eq!(
        run["status"], "succeeded",
        "the executor keeps going: {run}"
    );

    let dead = entries(&app, &s.dead_letter).await;
    assert_eq!(dead.len(), 3, "{dead:?}");
    let reasons: Vec<&str> = dead.iter().map(|(_, m)| m["dl_reason"].as_str()).collect();
    assert!(reasons[0].contains("no `v`"), "{reasons:?}");
    assert!(reasons[1].contains("version `99`"), "{reasons:?}");
    assert!(reasons[2].contains("not a valid task"), "{reasons:?}");
    assert_eq!(dead[1].1["run_id"], orphan, "original fields are kept");
    assert!(dead.iter().all(|(_, m)| m["dl_source"] == s.tasks));
}

#[tokio::test]
async fn malformed_results_are_dead_lettered_and_ingest_keeps_going() {
    let app = TestApp::spawn().await;
    let (_s, _e) = pipeline(&app).await;
    let device = password_device(&app, "host", free_port(), TEST_PASSWORD).await;
    let c = command(&app, &device, json!({"kind": "noop"})).await;
    let s = streams(&app);
    let mut redis = app.redis().await;
    let bad: [(&str, &str); 2] = [("v", "1"), ("body", "[]")];
    let _: String = redis.xadd(&s.results, "*", &bad).await.expect("XADD");
    let run = finished(&app, &run_now(&app, &device, &c).await).await;
    assert_eq!(run["status"], "succeeded");
    wait_until_ingested(&app).await;
    let dead = entries(&app, &s.dead_letter).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].1["dl_source"], s.results);
    assert!(
        dead[0].1["dl_reason"].contains("not a valid result"),
        "{dead:?}"
    );
}

#[tokio::test]
async fn secrets_are_never_on_a_stream_in_plaintext() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let (_s, _e) = pipeline(&app).await;
    let run = run_shell(&app, &sshd, json!({"command": "true"})).await;
    assert_eq!(run["status"], "succeeded");
    let s = streams(&app);
    for stream in [&s.tasks, &s.results] {
        let found = entries(&app, stream).await;
        assert!(!found.is_empty(), "{stream} has entries to check");
        for (_, fields) in found {
            for value in fields.values() {
                assert!(
                    !value.contains(TEST_PASSWORD),
                    "{stream} holds the password"
                );
            }
        }
    }
}

#[tokio::test]
async fn an_every_second_schedule_runs_hostname_end_to_end() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let (_s, _e) = pipeline(&app).await;
    let device = key_device(&app, "e2e", sshd.port, &sshd.client_key, None).await;
    let c = command(
        &app,
        &device,
        json!({"name": "hostname", "command": "hostname"}),
    )
    .await;
    app.schedule(&device, &c, json!({"cron_expression": "* * * * * *"}))
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let items = loop {
        let (status, page) = json_of(
            app.get(&format!(
                "/devices/{}/results?status=succeeded",
                id(&device)
            ))
            .await,
        )
        .await;
        assert_eq!(status, 200);
        let items = page["items"].as_array().cloned().unwrap_or_default();
        if items.len() >= 3 {
            break items;
        }
        assert!(tokio::time::Instant::now() < deadline, "{page}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for run in &items {
        assert_eq!(run["trigger"], "scheduled");
        let output = app.get(&format!("/runs/{}/output", id(run))).await;
        assert_eq!(output.text().await.expect("body"), hostname());
    }
}
