//! The per-device limit across executors (issue 24): two or three executors, each its own
//! consumer, against one real sshd. The device counts its own concurrent sessions: every
//! command increments a counter file under `flock`, records the highest value seen, sleeps,
//! and decrements it — so the limit is checked on the SSH host, not in netcron's tables. Also:
//! the Redis semaphore on its own, a slot held by someone else, a dead executor's slot, and
//! Redis refusing the slot script while a run waits.

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use netcron_protocol::slots::{Held, Slots};
use redis::AsyncCommands as _;
use serde_json::{Value, json};

use crate::support::app::{TestApp, eventually};
use crate::support::executions::Executions;
use crate::support::pipeline::{
    Running, TERMINAL, command, config, get_run, password_device, run_now, start_executor,
    start_scheduler, wait_for_status,
};
use crate::support::sshd::{TEST_PASSWORD, TestSshd};
use netcron_executor::ExecutorSettings;

/// Counts the commands running at once on the SSH host.
struct Concurrency {
    dir: PathBuf,
    executions: Executions,
}

impl Concurrency {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("netcron-slots-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("counter dir");
        // The test user runs the commands.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        Self {
            dir,
            executions: Executions::new(),
        }
    }

    /// Shell text that records the execution, counts itself in for `secs`, then records when
    /// it ended (`<run id> <unix time>` in `ends`).
    fn command(&self, secs: u32) -> String {
        let d = self.dir.display();
        let counted = format!(
            "flock {d}/lock sh -c 'n=$(( $(cat {d}/cur 2>/dev/null || echo 0) + 1 )); \
             echo $n > {d}/cur; m=$(cat {d}/max 2>/dev/null || echo 0); \
             if [ $n -gt $m ]; then echo $n > {d}/max; fi'; \
             sleep {secs}; \
             flock {d}/lock sh -c 'echo $(( $(cat {d}/cur) - 1 )) > {d}/cur'; \
             echo \"$NETCRON_RUN_ID $(date +%s.%N)\" >> {d}/ends"
        );
        self.executions.command(&counted)
    }

    /// The most commands seen running at once.
    fn max(&self) -> u32 {
        std::fs::read_to_string(self.dir.join("max"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    }

    /// When each run's command ended on the host.
    fn ends(&self) -> Vec<(String, DateTime<Utc>)> {
        std::fs::read_to_string(self.dir.join("ends"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (run, at) = l.split_once(' ')?;
                let at: f64 = at.trim().parse().ok()?;
                Some((
                    run.to_owned(),
                    DateTime::from_timestamp_micros((at * 1e6) as i64)?,
                ))
            })
            .collect()
    }

    /// For each command but the first, in order: from the end of the previous command on the
    /// host to the moment its executor started the run (its slots held, its lease being
    /// taken), in ms, and whether the two ran on different executors.
    fn hand_overs(&self, runs: &[Value]) -> Vec<(i64, bool)> {
        let mut starts = self.executions.started();
        starts.sort_by_key(|(_, _, at)| *at);
        let ends = self.ends();
        let of = |id: &str| runs.iter().find(|r| r["id"] == id);
        starts
            .windows(2)
            .filter_map(|w| {
                let (prev, next) = (of(&w[0].0)?, of(&w[1].0)?);
                let (_, ended) = ends.iter().find(|(run, _)| *run == w[0].0)?;
                let started: DateTime<Utc> = next["started_at"].as_str()?.parse().ok()?;
                let across = prev["executor_id"] != next["executor_id"];
                Some(((started - *ended).num_milliseconds(), across))
            })
            .collect()
    }
}

impl Drop for Concurrency {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An executor of this test: one command at a time on a device (or `per_device`), few global
/// slots, so that queued runs spread over every executor instead of one reading them all.
fn executor_config(per_device: usize, concurrency: usize) -> ExecutorSettings {
    ExecutorSettings {
        per_device,
        concurrency,
        ..config()
    }
}

/// Queues `n` runs of `c` on `device` and waits until each has ended; answers the runs.
async fn queue_and_finish(app: &TestApp, device: &Value, c: &Value, n: usize) -> Vec<Value> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(run_now(app, device, c).await);
    }
    let mut runs = Vec::new();
    for id in &ids {
        runs.push(wait_for_status(app, id, &TERMINAL, Duration::from_secs(90)).await);
    }
    runs
}

/// Asserts that every run succeeded and executed exactly once on the host, as attempt 1.
fn assert_each_ran_once(runs: &[Value], executions: &Executions) {
    let counts = executions.counts();
    assert_eq!(
        executions.lines().len(),
        runs.len(),
        "executions on the host: {counts:?}"
    );
    for run in runs {
        assert_eq!(run["status"], "succeeded", "{run}");
        assert_eq!(run["attempt"], 1, "{run}");
        let id = run["id"].as_str().unwrap_or_default().to_owned();
        assert_eq!(counts.get(&(id, 1)), Some(&1), "{counts:?}");
    }
}

/// Which executors ran `runs`, each once.
fn executors_of(runs: &[Value]) -> std::collections::BTreeSet<String> {
    runs.iter()
        .filter_map(|r| r["executor_id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn three_executors_run_one_command_at_a_time_on_a_device_with_per_device_1() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let host = Concurrency::new();
    let _scheduler = start_scheduler(&app).await;
    let mut executors: Vec<Running> = Vec::new();
    for _ in 0..3 {
        executors.push(start_executor(&app, executor_config(1, 1)).await.0);
    }
    let device = password_device(&app, "one-vty", sshd.port, TEST_PASSWORD).await;
    let c = command(
        &app,
        &device,
        json!({"command": host.command(1), "timeout_s": 10}),
    )
    .await;

    let runs = queue_and_finish(&app, &device, &c, 6).await;

    assert_eq!(host.max(), 1, "commands at once on the device");
    assert_each_ran_once(&runs, &host.executions);
    assert!(
        executors_of(&runs).len() >= 2,
        "the runs went to one executor only: {runs:?}"
    );
    // Measured: 5-25 ms within an executor, 5-100 ms across (each waiter polls at most every
    // 100 ms); a second and a half allows for a loaded machine, not for waiting out a lease.
    let hand_overs = host.hand_overs(&runs);
    eprintln!("hand-overs (ms, across executors?): {hand_overs:?}");
    assert!(
        hand_overs.iter().all(|(ms, _)| *ms < 1500),
        "a free device waited: {hand_overs:?}"
    );
}

#[tokio::test]
async fn per_device_2_across_two_executors_runs_two_at_a_time_never_more() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let host = Concurrency::new();
    let _scheduler = start_scheduler(&app).await;
    let mut executors: Vec<Running> = Vec::new();
    for _ in 0..2 {
        executors.push(start_executor(&app, executor_config(2, 2)).await.0);
    }
    let device = password_device(&app, "two-vty", sshd.port, TEST_PASSWORD).await;
    let c = command(
        &app,
        &device,
        json!({"command": host.command(1), "timeout_s": 10}),
    )
    .await;

    let runs = queue_and_finish(&app, &device, &c, 6).await;

    assert_eq!(host.max(), 2, "commands at once on the device");
    assert_each_ran_once(&runs, &host.executions);
}

/// An executor that dies holding the device's slot (its task aborted, like `kill -9`: nothing
/// is released) keeps it only until its lease lapses (`NETCRON_LEASE_TTL_S`, 3 s here); then
/// the other executor runs the device's next command.
#[tokio::test]
async fn the_slot_of_a_killed_executor_is_freed_by_its_lease_and_the_other_executor_proceeds() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let host = Concurrency::new();
    let _scheduler = start_scheduler(&app).await;
    let (doomed, doomed_name) = start_executor(&app, executor_config(1, 1)).await;
    let device = password_device(&app, "one-vty", sshd.port, TEST_PASSWORD).await;
    let long = command(
        &app,
        &device,
        json!({"command": host.command(6), "timeout_s": 20}),
    )
    .await;
    let first = run_now(&app, &device, &long).await;
    let running = wait_for_status(&app, &first, &["running"], Duration::from_secs(10)).await;
    assert_eq!(running["executor_id"], doomed_name.as_str());
    doomed.crash();
    let killed_at = Utc::now();

    let (_survivor, survivor_name) = start_executor(&app, executor_config(1, 1)).await;
    let short = command(
        &app,
        &device,
        json!({"command": host.executions.command("true"), "timeout_s": 10}),
    )
    .await;
    let second = run_now(&app, &device, &short).await;
    let done = wait_for_status(&app, &second, &TERMINAL, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["executor_id"], survivor_name.as_str(), "{done}");

    let began = host
        .executions
        .started()
        .into_iter()
        .find(|(run, _, _)| *run == second)
        .map(|(_, _, at)| at)
        .expect("the second run executed on the host");
    let waited = began - killed_at;
    eprintln!(
        "the second run began {} ms after the kill",
        waited.num_milliseconds()
    );
    // The dead executor renewed its slot every half second until the kill, so the slot lapsed
    // 2.5 to 3 s after it; the second run must not begin before, and not long after.
    assert!(
        waited >= chrono::Duration::milliseconds(2000),
        "the second run began {waited} after the kill, while the dead executor's slot was live"
    );
    assert!(
        waited <= chrono::Duration::milliseconds(6000),
        "the second run began {waited} after the kill"
    );
}

/// The semaphore itself, on the real Redis: a limit, not a mutex; a retried acquisition keeps
/// its slot; a renewal extends only what is still held and never brings back a released
/// slot; an expired holder is dropped by the next acquisition; the key expires with its last
/// holder.
#[tokio::test]
async fn the_redis_semaphore_counts_live_holders_up_to_its_limit() {
    let app = TestApp::spawn().await;
    let mut redis = app.redis().await;
    let slots = Slots::new();
    let streams = netcron_protocol::Streams::new(&app.stream_prefix);
    let key = streams.device_slots(uuid::Uuid::new_v4());
    let holder = |name: &str| Held {
        key: key.clone(),
        token: name.to_owned(),
    };
    let (a, b, c) = (holder("a"), holder("b"), holder("c"));
    let lease = 30_000;

    assert!(
        slots
            .try_acquire(&mut redis, &a, 2, lease)
            .await
            .expect("a")
    );
    assert!(
        slots
            .try_acquire(&mut redis, &b, 2, lease)
            .await
            .expect("b")
    );
    assert!(
        !slots
            .try_acquire(&mut redis, &c, 2, lease)
            .await
            .expect("c")
    );
    // A retry after a lost reply finds its own slot.
    assert!(
        slots
            .try_acquire(&mut redis, &a, 2, lease)
            .await
            .expect("a again")
    );
    let held: usize = redis.zcard(&key).await.expect("ZCARD");
    assert_eq!(held, 2);
    let ttl: i64 = redis.pttl(&key).await.expect("PTTL");
    assert!(ttl > 0 && ttl <= 30_000, "key expiry {ttl} ms");

    slots.release(&mut redis, &a).await.expect("release a");
    assert!(
        slots
            .try_acquire(&mut redis, &c, 2, lease)
            .await
            .expect("c")
    );
    let both = [a.clone(), b.clone()];
    let lost = slots.renew(&mut redis, &both, lease).await.expect("renew");
    assert_eq!(lost, vec![&a], "only the released slot is reported lost");
    let back: Option<f64> = redis.zscore(&key, "a").await.expect("ZSCORE");
    assert_eq!(back, None, "a renewal brought back a released slot");

    // A holder that stops renewing (its executor died) leaves by its lease alone.
    let short = streams.device_slots(uuid::Uuid::new_v4());
    let dead = Held {
        key: short.clone(),
        token: "dead".into(),
    };
    let next = Held {
        key: short.clone(),
        token: "next".into(),
    };
    assert!(
        slots
            .try_acquire(&mut redis, &dead, 1, 300)
            .await
            .expect("dead")
    );
    assert!(
        !slots
            .try_acquire(&mut redis, &next, 1, 300)
            .await
            .expect("next")
    );
    eventually(
        "the dead holder's slot expires",
        Duration::from_secs(5),
        || {
            let slots = slots.clone();
            let next = next.clone();
            let mut redis = redis.clone();
            async move {
                slots
                    .try_acquire(&mut redis, &next, 1, 300)
                    .await
                    .expect("next")
                    .then_some(())
            }
        },
    )
    .await;
    let held: Vec<String> = redis.zrange(&short, 0, -1).await.expect("ZRANGE");
    assert_eq!(held, vec!["next".to_owned()]);
    eventually(
        "the key expires with its last holder",
        Duration::from_secs(5),
        || {
            let mut redis = redis.clone();
            let short = short.clone();
            async move { (!redis.exists::<_, bool>(&short).await.expect("EXISTS")).then_some(()) }
        },
    )
    .await;
}

/// A slot held by anyone else — here written straight into the device's semaphore — keeps the
/// executor's run waiting, without taking the executor's only global slot from another
/// device's run; the moment it is given back, the run starts.
#[tokio::test]
async fn a_run_waits_while_the_device_slot_is_held_elsewhere_and_starts_once_it_is_freed() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let host = Concurrency::new();
    let _scheduler = start_scheduler(&app).await;
    let (_executor, _) = start_executor(&app, executor_config(1, 1)).await;
    let device = password_device(&app, "held", sshd.port, TEST_PASSWORD).await;
    let device_id: uuid::Uuid = device["id"].as_str().expect("id").parse().expect("uuid");
    let key = netcron_protocol::Streams::new(&app.stream_prefix).device_slots(device_id);
    let mut redis = app.redis().await;
    let elsewhere = Held {
        key: key.clone(),
        token: "another-executor:1".into(),
    };
    assert!(
        Slots::new()
            .try_acquire(&mut redis, &elsewhere, 1, 600_000)
            .await
            .expect("hold the slot")
    );
    let c = command(
        &app,
        &device,
        json!({"command": host.executions.command("true"), "timeout_s": 10}),
    )
    .await;
    let run = run_now(&app, &device, &c).await;
    // The executor has the task (it is pending on the stream) and waits for the slot; give
    // it time to start wrongly.
    eventually(
        "the executor holds the task",
        Duration::from_secs(10),
        || {
            let app = &app;
            async move {
                let pending: redis::streams::StreamPendingReply = app
                    .redis()
                    .await
                    .xpending(crate::support::pipeline::streams(app).tasks, "executors")
                    .await
                    .expect("XPENDING");
                (pending.count() == 1).then_some(())
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(host.executions.lines().len(), 0, "ran without the slot");
    assert_eq!(get_run(&app, &run).await["status"], "queued");
    // The waiting run holds no global slot: another device's run goes through meanwhile.
    let other = password_device(&app, "free", sshd.port, TEST_PASSWORD).await;
    let o = command(&app, &other, json!({"command": "true", "timeout_s": 10})).await;
    let other_run = run_now(&app, &other, &o).await;
    let other_done = wait_for_status(&app, &other_run, &TERMINAL, Duration::from_secs(10)).await;
    assert_eq!(other_done["status"], "succeeded", "{other_done}");
    assert_eq!(get_run(&app, &run).await["status"], "queued");

    let freed_at = Utc::now();
    Slots::new()
        .release(&mut redis, &elsewhere)
        .await
        .expect("release");
    let done = wait_for_status(&app, &run, &TERMINAL, Duration::from_secs(10)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let started: DateTime<Utc> = done["started_at"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("started_at");
    let delay = (started - freed_at).num_milliseconds();
    eprintln!("the run started {delay} ms after the slot was freed");
    assert!(
        delay < 1500,
        "the run started {delay} ms after the slot was freed"
    );
}

/// An executor whose Redis user may not run `ZCARD` (a command of the acquire script):
/// Redis answers every try for a slot with an error, as it does while it is failing.
struct RefusingUser {
    name: String,
    url: String,
    admin_url: String,
    redis: redis::aio::MultiplexedConnection,
}

impl RefusingUser {
    async fn create(app: &TestApp) -> Self {
        let name = format!("slots-{}", uuid::Uuid::new_v4().simple());
        let mut redis = app.redis().await;
        let () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(&name)
            .arg("on")
            .arg(">slots-pw")
            .arg(format!("~{}*", app.stream_prefix))
            .arg("resetchannels")
            .arg("+@all")
            .arg("-zcard")
            .query_async(&mut redis)
            .await
            .expect("ACL SETUSER");
        // In place of whatever user the app's URL names (a private Redis has a password).
        let rest = app
            .redis_url
            .split_once("://")
            .map_or(app.redis_url.as_str(), |(_, rest)| rest);
        let address = rest.rsplit_once('@').map_or(rest, |(_, address)| address);
        let url = format!("redis://{name}:slots-pw@{address}");
        Self {
            name,
            url,
            admin_url: app.redis_url.clone(),
            redis,
        }
    }

    /// Redis works again for this user.
    async fn heal(&mut self) {
        let () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(&self.name)
            .arg("+zcard")
            .query_async(&mut self.redis)
            .await
            .expect("ACL SETUSER");
    }
}

impl Drop for RefusingUser {
    fn drop(&mut self) {
        let _ = redis::Client::open(self.admin_url.as_str()).and_then(|c| {
            let mut conn = c.get_connection()?;
            redis::cmd("ACL")
                .arg("DELUSER")
                .arg(&self.name)
                .query::<()>(&mut conn)
        });
    }
}

/// Redis failing while a run waits for its device slot is waited out, as every Redis failure
/// of the executor is: the run does not start without the slot, and starts once Redis answers.
#[tokio::test]
async fn a_run_waits_out_redis_failing_while_it_asks_for_the_device_slot() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let host = Concurrency::new();
    let _scheduler = start_scheduler(&app).await;
    let mut user = RefusingUser::create(&app).await;
    let settings = netcron_executor::Settings {
        redis: netcron_protocol::RedisSettings {
            url: user.url.clone(),
            stream_prefix: app.stream_prefix.clone(),
        },
        secret_key: app.key.clone(),
        executor: executor_config(1, 4),
    };
    let metrics = netcron_executor::ExecutorMetrics::new(&app.telemetry);
    let executor = netcron_executor::Executor::connect(settings, &app.telemetry, metrics)
        .await
        .expect("executor");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    tokio::spawn(async move { executor.run(shutdown).await.expect("executor loop") });

    let device = password_device(&app, "refused", sshd.port, TEST_PASSWORD).await;
    let c = command(
        &app,
        &device,
        json!({"command": host.executions.command("true"), "timeout_s": 10}),
    )
    .await;
    let run = run_now(&app, &device, &c).await;
    eventually(
        "the executor holds the task",
        Duration::from_secs(10),
        || {
            let app = &app;
            async move {
                let pending: redis::streams::StreamPendingReply = app
                    .redis()
                    .await
                    .xpending(crate::support::pipeline::streams(app).tasks, "executors")
                    .await
                    .expect("XPENDING");
                (pending.count() == 1).then_some(())
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(host.executions.lines().len(), 0, "ran without the slot");
    assert_eq!(get_run(&app, &run).await["status"], "queued");

    user.heal().await;
    let done = wait_for_status(&app, &run, &TERMINAL, Duration::from_secs(15)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(host.executions.lines().len(), 1);
}
