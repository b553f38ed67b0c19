//! Scheduler benchmark (`cargo bench --bench scheduler`), end to end: the scheduler loop, an
//! executor and ingest run in this process on the real clock, and lateness is what users feel,
//! from a run's fire time to its command's start (`runs.started_at`, the executor's report;
//! `noop` commands, so no device is involved).
//!
//! - burst: 10k fires due in the same second, beside APScheduler 3 + SQLAlchemyJobStore
//!   draining 10k jobs due in the same second on the same Postgres (`benches/peers`), and the
//!   ratio of their drain times;
//! - sustained: fires/s with 100k every-second schedules, every fire a committed and published
//!   run (passes driven by a manual clock, as fast as they go);
//! - steady: lateness at 1k fires/s (1000 every-second schedules), then the same with 999k
//!   more schedules in the table that are not due, and the process RSS.
//!
//! Uses DATABASE_URL's server and REDIS_URL (from `.env`), in a database and stream prefix of
//! its own that it removes afterwards. Results go to stdout as Markdown. `BENCH_SECONDS` (60)
//! sets the length of the sustained and steady phases; `PHASES` (`burst,sustained,steady`)
//! which phases run (`steady,small` skips the 1M-schedule one). `PROFILE=1` instead prints per-batch
//! claim and publish timings for 20k fires.

// A benchmark reports on stdout; that is its whole job.
#![allow(clippy::print_stdout)]

mod support;

use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, DurationRound, Timelike, Utc};
use netcron_common::metrics::Telemetry;
use netcron_common::secret::SecretKey;
use netcron_scheduler::{ManualClock, Scheduler, SchedulerSettings, Settings};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn rss_mb() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

struct Lateness {
    count: i64,
    p50: f64,
    p99: f64,
    max: f64,
    last: Option<DateTime<Utc>>,
}

async fn stop(shutdown: CancellationToken, handles: Vec<tokio::task::JoinHandle<()>>) {
    shutdown.cancel();
    for h in handles {
        let _ = h.await;
    }
}

struct Bench {
    admin: DatabaseConnection,
    db: DatabaseConnection,
    db_name: String,
    settings: Settings,
    command_id: Uuid,
    redis: redis::aio::MultiplexedConnection,
}

impl Bench {
    async fn new() -> Self {
        let support::BenchDb {
            admin,
            db,
            db_name,
            db_url,
            redis_url,
        } = support::fresh_database().await;
        let (cred, device, command) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        db.execute_unprepared(&format!(
            "INSERT INTO credentials (id, name, username, kind, secret) VALUES ('{cred}', 'c', 'u', 'password', '\\x01');
             INSERT INTO devices (id, name, host, port, platform, credential_id) VALUES ('{device}', 'd', '127.0.0.1', 22, 'linux', '{cred}');
             INSERT INTO commands (id, device_id, name, kind, command, timeout_s, max_output_bytes, max_attempts)
               VALUES ('{command}', '{device}', 'c', 'noop', '', 60, 1048576, 1);"
        ))
        .await
        .expect("fixtures");
        let settings = Settings {
            database: netcron_store::DatabaseSettings {
                url: db_url,
                auto_migrate: false,
            },
            redis: netcron_protocol::RedisSettings {
                url: redis_url.clone(),
                stream_prefix: format!("bench:{}:", Uuid::new_v4().simple()),
            },
            scheduler: SchedulerSettings::default(),
        };
        let redis = redis::Client::open(redis_url)
            .expect("redis")
            .get_multiplexed_async_connection()
            .await
            .expect("redis");
        Self {
            admin,
            db,
            db_name,
            settings,
            command_id: command,
            redis,
        }
    }

    /// Replaces every schedule with `n` copies of `cron`, all next due at `next`, and clears runs
    /// and the streams.
    async fn schedules(&mut self, n: u64, cron: &str, next: DateTime<Utc>) {
        self.db
            .execute_unprepared("TRUNCATE runs, task_outbox; DELETE FROM schedules;")
            .await
            .expect("clear");
        self.clear_streams().await;
        self.add_schedules(n, cron, next).await;
    }

    /// Adds `n` copies of `cron`, next due at `next`.
    async fn add_schedules(&mut self, n: u64, cron: &str, next: DateTime<Utc>) {
        self.db
            .execute_unprepared(&format!(
                "INSERT INTO schedules (id, command_id, cron_expression, timezone, overlap_policy, next_fire_at)
                 SELECT gen_random_uuid(), '{}', '{cron}', 'UTC', 'allow', '{}'
                 FROM generate_series(1, {n});
                 ANALYZE schedules;",
                self.command_id,
                next.to_rfc3339()
            ))
            .await
            .expect("schedules");
    }

    async fn clear_streams(&mut self) {
        let p = &self.settings.redis.stream_prefix;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{p}*"))
            .query_async(&mut self.redis)
            .await
            .expect("KEYS");
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL")
                .arg(keys)
                .query_async(&mut self.redis)
                .await
                .expect("DEL");
        }
    }

    /// Drops the tasks published so far (the sustained phase has no executor reading them).
    async fn trim_tasks(&mut self) {
        let _: () = redis::cmd("XTRIM")
            .arg(format!("{}tasks", self.settings.redis.stream_prefix))
            .arg("MAXLEN")
            .arg(0)
            .query_async(&mut self.redis)
            .await
            .expect("XTRIM");
    }

    /// Scheduler loop, executor and ingest on the real clock, until the token is cancelled.
    fn pipeline(&self) -> (CancellationToken, Vec<tokio::task::JoinHandle<()>>) {
        let shutdown = CancellationToken::new();
        let telemetry = Telemetry::default();
        let key = SecretKey::from_base64(&SecretKey::generate_base64()).expect("key");
        let mut handles = Vec::new();
        let settings = self.settings.clone();
        let (t, s) = (telemetry.clone(), shutdown.clone());
        handles.push(tokio::spawn(async move {
            netcron_scheduler::run(settings, t, s)
                .await
                .expect("scheduler");
        }));
        let executor = netcron_executor::Settings {
            redis: self.settings.redis.clone(),
            secret_key: key.clone(),
            executor: netcron_executor::ExecutorSettings::default(),
        };
        let (t, s) = (telemetry.clone(), shutdown.clone());
        handles.push(tokio::spawn(async move {
            netcron_executor::run(executor, t, s)
                .await
                .expect("executor");
        }));
        let ingest = netcron_ingest::Settings {
            database: self.settings.database.clone(),
            redis: self.settings.redis.clone(),
            secret_key: key,
            ingest: netcron_ingest::IngestSettings::default(),
        };
        let (t, s) = (telemetry, shutdown.clone());
        handles.push(tokio::spawn(async move {
            netcron_ingest::run(ingest, t, s).await.expect("ingest");
        }));
        (shutdown, handles)
    }

    /// Waits until `n` runs fired in `[from, until)` have a start recorded (at most `within`),
    /// then answers their lateness.
    async fn lateness(
        &self,
        n: i64,
        (from, until): (DateTime<Utc>, DateTime<Utc>),
        within: StdDuration,
    ) -> Lateness {
        let deadline = Instant::now() + within;
        loop {
            let row = self
                .db
                .query_one_raw(sea_orm::Statement::from_sql_and_values(
                    sea_orm::DatabaseBackend::Postgres,
                    "SELECT count(*) AS n,
                            coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - scheduled_for)), 0) * 1000 AS p50,
                            coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - scheduled_for)), 0) * 1000 AS p99,
                            coalesce(max(extract(epoch FROM started_at - scheduled_for))::float8, 0) * 1000 AS max,
                            max(started_at) AS last
                     FROM runs WHERE started_at IS NOT NULL
                       AND scheduled_for >= $1 AND scheduled_for < $2",
                    [from.into(), until.into()],
                ))
                .await
                .expect("lateness")
                .expect("row");
            let count: i64 = row.try_get("", "n").expect("n");
            if count >= n || Instant::now() > deadline {
                return Lateness {
                    count,
                    p50: row.try_get("", "p50").expect("p50"),
                    p99: row.try_get("", "p99").expect("p99"),
                    max: row.try_get("", "max").expect("max"),
                    last: row.try_get("", "last").expect("last"),
                };
            }
            tokio::time::sleep(StdDuration::from_millis(200)).await;
        }
    }

    async fn scheduler(&self, clock: Arc<dyn netcron_scheduler::Clock>) -> Arc<Scheduler> {
        self.scheduler_with(SchedulerSettings::default(), clock)
            .await
    }

    async fn scheduler_with(
        &self,
        config: SchedulerSettings,
        clock: Arc<dyn netcron_scheduler::Clock>,
    ) -> Arc<Scheduler> {
        let settings = Settings {
            scheduler: config,
            ..self.settings.clone()
        };
        Arc::new(
            Scheduler::connect(&settings, clock, &Telemetry::default())
                .await
                .expect("scheduler"),
        )
    }

    async fn finish(mut self) {
        self.clear_streams().await;
        let _ = self.db.close().await;
        let _ = self
            .admin
            .execute_unprepared(&format!("DROP DATABASE {} WITH (FORCE)", self.db_name))
            .await;
    }
}

fn second(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(Duration::seconds(1)).expect("truncate")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut bench = Bench::new().await;
    let start = second(Utc::now()) + Duration::days(1);
    if std::env::var("PROFILE").is_ok() {
        bench.schedules(20_000, "* * * * * *", start).await;
        let clock = ManualClock::new(start);
        let scheduler = bench.scheduler(Arc::new(clock)).await;
        for i in 0..20 {
            let t = Instant::now();
            let r = scheduler.fire_due().await.expect("fire");
            if i % 4 == 0 {
                println!("fire batch {i}: {} in {:?}", r.claimed, t.elapsed());
            }
        }
        let t = Instant::now();
        let n = scheduler.publish_pending().await.expect("publish");
        println!("publish {n} in {:?}", t.elapsed());
        bench.finish().await;
        return;
    }
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let phases = std::env::var("PHASES").unwrap_or_else(|_| "burst,sustained,steady".into());
    println!("| measurement | netcron | peer (same run) | ratio |\n|---|---|---|---|");

    // Burst: 10k fires due in the same second T, each started by the executor.
    if phases.contains("burst") {
        let n = 10_000u64;
        let fire = second(Utc::now()) + Duration::seconds(12);
        // Fires once a year, at T.
        let cron = format!(
            "{} {} {} {} * *",
            fire.second(),
            fire.minute(),
            fire.hour(),
            fire.format("%-d %-m")
        );
        bench.schedules(n, &cron, fire).await;
        let (shutdown, handles) = bench.pipeline();
        let got = bench
            .lateness(
                n as i64,
                (fire, fire + Duration::seconds(1)),
                StdDuration::from_secs(60),
            )
            .await;
        stop(shutdown, handles).await;
        assert_eq!(got.count, n as i64, "every fire started");
        let drain = got.last.map_or(f64::NAN, |l| (l - fire).as_seconds_f64());
        let url = &bench.settings.database.url;
        let admin_url = format!("{}/postgres", &url[..url.rfind('/').unwrap_or(url.len())]);
        let peer = support::apscheduler_drain(&admin_url, n);
        let (peer_text, ratio) = match &peer {
            Ok(p) => (
                format!(
                    "{}: drained in {:.3} s (p50 {:.0} ms, p99 {:.0} ms)",
                    p.peer, p.drain_s, p.p50_ms, p.p99_ms
                ),
                format!("{:.1}x faster", p.drain_s / drain),
            ),
            Err(e) => (format!("peer unavailable: {e}"), "-".into()),
        };
        println!(
            "| 10k fires due in the same second, fire time to command start | all started within {drain:.3} s (p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms) | {peer_text} | {ratio} |",
            got.p50, got.p99, got.max
        );
    }

    // Sustained: 100k every-second schedules, passes as fast as they go for `seconds`.
    if phases.contains("sustained") {
        let n = 100_000u64;
        bench.schedules(n, "* * * * * *", start).await;
        let clock = ManualClock::new(start);
        // The work per fire is the same with or without the horizon, only earlier; without it
        // the first pass does not also materialise five seconds (500k runs) at once.
        let scheduler = bench
            .scheduler_with(
                SchedulerSettings {
                    horizon: Duration::zero(),
                    ..SchedulerSettings::default()
                },
                Arc::new(clock.clone()),
            )
            .await;
        // The first pass warms the caches; the rate is measured after it.
        scheduler.tick().await.expect("tick");
        bench.trim_tasks().await;
        clock.advance(Duration::seconds(1));
        let t = Instant::now();
        let mut fires = 0u64;
        while t.elapsed() < StdDuration::from_secs(seconds) {
            let report = scheduler.tick().await.expect("tick");
            assert_eq!(report.published as u64, n);
            fires += report.fired.queued as u64;
            bench.trim_tasks().await;
            clock.advance(Duration::seconds(1));
        }
        let took = t.elapsed();
        println!(
            "| sustained, 100k every-second schedules, {fires} fires committed and published in {:.0} s | {:.0} fires/s | - | - |",
            took.as_secs_f64(),
            fires as f64 / took.as_secs_f64()
        );
    }

    // Steady 1k fires/s on the real clock, with 1k schedules, then among 1M.
    for total in [1_000u64, 1_000_000] {
        if !phases.contains("steady") || (total > 1000 && phases.contains("small")) {
            continue;
        }
        // The idle ones first (a million take a while to insert), then the 1000 due ones.
        bench
            .schedules(total - 1000, "0 0 0 1 1 *", start + Duration::days(365))
            .await;
        let first = second(Utc::now()) + Duration::seconds(8);
        bench.add_schedules(1000, "* * * * * *", first).await;
        let (shutdown, handles) = bench.pipeline();
        // The first two seconds warm up the connections; `seconds` are measured after them.
        let from = first + Duration::seconds(2);
        let until = from + Duration::seconds(i64::try_from(seconds).unwrap_or(60));
        let wait = (until - Utc::now()).to_std().unwrap_or_default();
        tokio::time::sleep(wait + StdDuration::from_secs(2)).await;
        let got = bench
            .lateness(
                i64::try_from(seconds * 1000).unwrap_or(i64::MAX),
                (from, until),
                StdDuration::from_secs(30),
            )
            .await;
        stop(shutdown, handles).await;
        let (rss, peak) = rss_mb();
        println!(
            "| steady 1k fires/s for {seconds} s, {total} schedules in the table ({} fires), fire time to command start | p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; process RSS {rss:.0} MB (peak {peak:.0} MB) | - | - |",
            got.count, got.p50, got.p99, got.max
        );
    }
    bench.finish().await;
}
