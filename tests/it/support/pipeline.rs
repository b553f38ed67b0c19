//! The pipeline around the roles under test: the scheduler and executor started in this
//! process (`Running`), test-sized executor settings, devices and commands made through the
//! API, a run started and waited for, and the streams read directly.

use std::sync::Arc;
use std::time::Duration;

use netcron_executor::{Executor, ExecutorSettings, Settings as ExecutorRole};
use netcron_protocol::Streams;
use netcron_scheduler::{SchedulerSettings, SystemClock};
use redis::AsyncCommands as _;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::app::{TestApp, id, json_of};
use crate::support::sshd::{TEST_PASSWORD, TEST_USER, TestSshd};

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
    // Tests count entries on the streams, so the trim job (every minute by default,
    // dropping entries every consumer group has acknowledged) must not run in the middle of
    // one: it is set to a day that comes every four years.
    //
    // Lost attempts are looked for every second, and a lease seen expired is re-queued when it
    // stays so for two seconds (executors' leases last three, see `config`).
    let config = SchedulerSettings {
        trim_cron: "0 0 0 29 2 *".into(),
        requeue_cron: "* * * * * *".into(),
        lease_confirm: Duration::from_secs(2),
        ..SchedulerSettings::default()
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
pub(crate) fn config() -> ExecutorSettings {
    ExecutorSettings {
        connect_timeout: Duration::from_secs(2),
        login_timeout: Duration::from_secs(3),
        reclaim_idle: Duration::from_secs(4),
        lease_ttl: Duration::from_secs(3),
        grace: Duration::from_secs(10),
        retry_base: Duration::from_millis(50),
        block: Duration::from_millis(500),
        ..ExecutorSettings::default()
    }
}

pub(crate) async fn start_executor(app: &TestApp, config: ExecutorSettings) -> (Running, String) {
    start_executor_via(app, &app.redis_url, config).await
}

/// An executor that reaches the test's Redis at `redis_url` (through a proxy, say).
pub(crate) async fn start_executor_via(
    app: &TestApp,
    redis_url: &str,
    config: ExecutorSettings,
) -> (Running, String) {
    let settings = ExecutorRole {
        redis: netcron_protocol::RedisSettings {
            url: redis_url.to_owned(),
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
        &netcron_protocol::RedisSettings {
            url: app.redis_url.clone(),
            stream_prefix: app.stream_prefix.clone(),
        },
        app.key.clone(),
        netcron_ingest::IngestSettings {
            batch: 100,
            workers: 1,
            ..netcron_ingest::IngestSettings::default()
        },
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

/// A device on `port` whose credential is the private key `key` (with its passphrase).
pub(crate) async fn key_device(
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
pub(crate) async fn outcomes_of(app: &TestApp, run_id: &str) -> Vec<Value> {
    entries(app, &streams(app).results)
        .await
        .into_iter()
        .filter(|(_, m)| m.get("run_id").map(String::as_str) == Some(run_id))
        .filter_map(|(_, m)| serde_json::from_str::<Value>(m.get("body")?).ok())
        .filter(|b| !b["outcome"].is_null())
        .collect()
}

/// This machine's host name as `hostname` prints it: what a command run on the test sshd
/// prints.
pub(crate) fn hostname() -> String {
    let out = std::process::Command::new("hostname")
        .output()
        .expect("hostname");
    String::from_utf8_lossy(&out.stdout).into_owned()
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
