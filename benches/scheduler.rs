//! Scheduler benchmark (`cargo bench --bench scheduler`): fires/s with 100k schedules, drain
//! time for 10k and 100k simultaneous fires, lateness at a steady 1k fires/s, and RSS with 100k
//! and 1M schedules. Uses DATABASE_URL's server and REDIS_URL (from `.env`), in a database and
//! stream prefix of its own that it removes afterwards. Results go to stdout as Markdown.
//! `PROFILE=1` instead prints per-batch claim and publish timings for 20k fires.

// A benchmark reports on stdout; that is its whole job.
#![allow(clippy::print_stdout)]

mod support;

use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, DurationRound, Utc};
use netcron_common::metrics::Telemetry;
use netcron_scheduler::{ManualClock, Scheduler, SchedulerConfig, Settings, SystemClock};
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
               VALUES ('{command}', '{device}', 'c', 'shell', 'true', 60, 1048576, 1);"
        ))
        .await
        .expect("fixtures");
        let settings = Settings {
            database: netcron_common::config::DatabaseSettings {
                url: db_url,
                auto_migrate: false,
            },
            redis: netcron_common::config::RedisSettings {
                url: redis_url.clone(),
                stream_prefix: format!("bench:{}:", Uuid::new_v4().simple()),
            },
            scheduler: SchedulerConfig::default(),
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
    /// and the stream.
    async fn schedules(&mut self, n: u64, cron: &str, next: DateTime<Utc>) {
        self.db
            .execute_unprepared("TRUNCATE runs, task_outbox; DELETE FROM schedules;")
            .await
            .expect("clear");
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
        let _: () = redis::cmd("DEL")
            .arg(format!("{}tasks", self.settings.redis.stream_prefix))
            .query_async(&mut self.redis)
            .await
            .expect("DEL");
    }

    async fn scheduler(&self, clock: Arc<dyn netcron_scheduler::Clock>) -> Arc<Scheduler> {
        Arc::new(
            Scheduler::connect(&self.settings, clock, &Telemetry::default())
                .await
                .expect("scheduler"),
        )
    }

    async fn finish(mut self) {
        let _: () = redis::cmd("DEL")
            .arg(format!("{}tasks", self.settings.redis.stream_prefix))
            .query_async(&mut self.redis)
            .await
            .expect("DEL");
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
    println!("| measurement | result |\n|---|---|");

    // Drain: N schedules due in the same second, one pass (fire + publish).
    for n in [10_000u64, 100_000] {
        bench.schedules(n, "* * * * * *", start).await;
        let clock = ManualClock::new(start);
        let scheduler = bench.scheduler(Arc::new(clock)).await;
        let t = Instant::now();
        let report = scheduler.tick().await.expect("tick");
        let took = t.elapsed();
        assert_eq!(report.published as u64, n);
        println!(
            "| drain {n} simultaneous fires (claim, insert, advance, publish) | {:.3} s ({:.0} fires/s) |",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64()
        );
    }

    // Sustained: 100k every-second schedules, five consecutive seconds.
    {
        let n = 100_000u64;
        bench.schedules(n, "* * * * * *", start).await;
        let clock = ManualClock::new(start);
        let scheduler = bench.scheduler(Arc::new(clock.clone())).await;
        let seconds = 5;
        let t = Instant::now();
        for _ in 0..seconds {
            let report = scheduler.tick().await.expect("tick");
            assert_eq!(report.published as u64, n);
            clock.advance(Duration::seconds(1));
        }
        let took = t.elapsed();
        let fires = n * seconds;
        println!(
            "| sustained, 100k every-second schedules, {fires} fires | {:.0} fires/s |",
            fires as f64 / took.as_secs_f64()
        );
        let (rss, peak) = rss_mb();
        println!(
            "| process RSS after 100k-schedule passes (current / peak) | {rss:.0} MB / {peak:.0} MB |"
        );
    }

    // Steady 1k fires/s in real time: lateness = published_at - scheduled_for.
    {
        let now = Utc::now();
        bench
            .schedules(1000, "* * * * * *", second(now) + Duration::seconds(2))
            .await;
        let scheduler = bench.scheduler(Arc::new(SystemClock)).await;
        let shutdown = CancellationToken::new();
        let loop_handle = tokio::spawn(scheduler.run(shutdown.clone()));
        tokio::time::sleep(StdDuration::from_secs(12)).await;
        shutdown.cancel();
        let _ = loop_handle.await;
        let row = bench
            .db
            .query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DatabaseBackend::Postgres,
                "SELECT count(*) AS n,
                        percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM o.published_at - r.scheduled_for)) * 1000 AS p50,
                        percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM o.published_at - r.scheduled_for)) * 1000 AS p99,
                        max(extract(epoch FROM o.published_at - r.scheduled_for))::float8 * 1000 AS max
                 FROM runs r JOIN task_outbox o ON o.run_id = r.id WHERE o.published_at IS NOT NULL AND r.scheduled_for > (SELECT min(scheduled_for) FROM runs)",
            ))
            .await
            .expect("lateness")
            .expect("row");
        let n: i64 = row.try_get("", "n").expect("n");
        let p50: f64 = row.try_get("", "p50").expect("p50");
        let p99: f64 = row.try_get("", "p99").expect("p99");
        let max: f64 = row.try_get("", "max").expect("max");
        println!(
            "| lateness at a steady 1k fires/s ({n} fires, first second excluded) | p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms |"
        );
    }

    // RSS with 1M schedules: 10k due per pass, the rest waiting.
    {
        bench
            .schedules(1_000_000, "* * * * * *", start + Duration::days(365))
            .await;
        bench
            .db
            .execute_unprepared(&format!(
                "UPDATE schedules SET next_fire_at = '{}' WHERE id IN (SELECT id FROM schedules LIMIT 10000)",
                start.to_rfc3339()
            ))
            .await
            .expect("due");
        let clock = ManualClock::new(start);
        let scheduler = bench.scheduler(Arc::new(clock.clone())).await;
        let t = Instant::now();
        for _ in 0..3 {
            scheduler.tick().await.expect("tick");
            clock.advance(Duration::seconds(1));
        }
        let took = t.elapsed();
        let (rss, peak) = rss_mb();
        println!(
            "| 1M schedules, 3 passes of 10k due fires | {:.3} s; process RSS {rss:.0} MB (peak {peak:.0} MB) |",
            took.as_secs_f64()
        );
    }
    bench.finish().await;
}
