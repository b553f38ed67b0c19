//! The `scheduler` role: turns due cron fire times into runs and publishes them to the tasks
//! stream.
//!
//! Each schedule carries its next fire time in Postgres. A pass claims the schedules due within
//! a short horizon (`NETCRON_SCHEDULER_HORIZON_MS`) in batches (`FOR UPDATE SKIP LOCKED`),
//! inserts one run per fire time (`UNIQUE (schedule_id, scheduled_for)` makes a repeat a no-op),
//! advances the next fire time and commits; the outbox then publishes committed runs to the
//! tasks stream at once, each with its fire time as `not_before`, and executors hold them
//! until then. So the database work of a fire is done before its fire time, not after it.
//! Between passes the loop sleeps until the horizon reaches the earliest next fire time, and
//! wakes at once on `NOTIFY` from the API when a schedule changes or a manual run is queued.
//! Nothing is held in memory per schedule.
//!
//! Architecture invariant: the scheduler never knows HTTP and never decrypts a secret; it copies
//! ciphertext from Postgres into task messages.

pub mod clock;
pub mod config;
mod error;
pub mod fire;
pub mod housekeeping;
pub mod metrics;
pub mod plan;
pub mod zones;

use std::sync::Arc;
use std::time::Duration as StdDuration;

use netcron_common::metrics::Telemetry;
use netcron_common::startup::{Waiting, wait_for};
use netcron_lifecycle::{outbox, requeue, runs};
use netcron_protocol::lease::Leases;
use netcron_protocol::{EXECUTOR_GROUP, INGEST_GROUP, Streams};
use netcron_store::db::{RUN_QUEUED_CHANNEL, SCHEDULE_CHANGED_CHANNEL};
use redis::aio::ConnectionManager;
use sea_orm::DatabaseConnection;
use sqlx::postgres::PgListener;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

pub use clock::{Clock, DatabaseClock, ManualClock, SkewedClock, SystemClock};
pub use config::{SchedulerSettings, Settings};
pub use error::{Error, Result};
pub use fire::FireReport;
pub use metrics::Metrics;

/// The safety-net lifetime of a lease key the scheduler writes (a revoked attempt): a day.
const LEASE_SAFETY_TTL_S: u64 = 24 * 3600;

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TickReport {
    pub fired: FireReport,
    pub published: usize,
}

/// A scheduler replica. Any number may run against one database.
pub struct Scheduler {
    db: DatabaseConnection,
    redis_client: redis::Client,
    redis: Mutex<Option<ConnectionManager>>,
    streams: Streams,
    config: SchedulerSettings,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
    specs: fire::SpecCache,
    requeuer: Mutex<netcron_lifecycle::requeue::Requeuer>,
    /// The clock to keep in step with Postgres, when the scheduler follows it.
    database_clock: Option<Arc<DatabaseClock>>,
    zones: zones::ZoneWatch,
}

impl Scheduler {
    /// Connects to Postgres; Redis is connected on first use, so a scheduler starts (and fires
    /// into the outbox) while Redis is down.
    ///
    /// # Errors
    /// When Postgres cannot be reached or `REDIS_URL` is malformed.
    pub async fn connect(
        settings: &Settings,
        clock: Arc<dyn Clock>,
        telemetry: &Telemetry,
    ) -> Result<Self> {
        let db = netcron_store::db::connect(&settings.database.url).await?;
        let redis_client = redis::Client::open(settings.redis.url.as_str())?;
        netcron_store::db::add_readiness_check(telemetry, &db);
        netcron_protocol::gauges::add_readiness_check(telemetry, &redis_client);
        let streams = Streams::new(&settings.redis.stream_prefix);
        let leases = Leases::new(streams.clone(), LEASE_SAFETY_TTL_S);
        let requeuer = netcron_lifecycle::requeue::Requeuer::new(
            leases,
            settings.scheduler.lease_confirm,
            settings.scheduler.queued_lease.to_std().unwrap_or_default(),
        );
        Ok(Self {
            db,
            redis_client,
            redis: Mutex::new(None),
            streams: streams.clone(),
            config: settings.scheduler.clone(),
            clock,
            metrics: Metrics::new(telemetry),
            specs: fire::SpecCache::default(),
            requeuer: Mutex::new(requeuer),
            database_clock: None,
            zones: zones::ZoneWatch::new(streams.clone(), telemetry),
        })
    }

    /// Like [`Scheduler::connect`], with time taken from Postgres: `base` (the system clock in
    /// production) corrected by its measured offset to the database's clock.
    ///
    /// # Errors
    /// As [`Scheduler::connect`].
    pub async fn connect_following_database(
        settings: &Settings,
        base: Arc<dyn Clock>,
        telemetry: &Telemetry,
    ) -> Result<Self> {
        let clock = DatabaseClock::new(base);
        let mut scheduler = Self::connect(settings, clock.clone(), telemetry).await?;
        let offset = clock.sync(&scheduler.db).await?;
        if offset.num_milliseconds().abs() > 1000 {
            tracing::warn!(
                offset_ms = offset.num_milliseconds(),
                "this host's clock differs from Postgres'; the scheduler follows Postgres"
            );
        }
        scheduler.database_clock = Some(clock);
        Ok(scheduler)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn streams(&self) -> &Streams {
        &self.streams
    }

    async fn redis(&self) -> Result<ConnectionManager> {
        let mut guard = self.redis.lock().await;
        if let Some(conn) = guard.as_ref() {
            return Ok(conn.clone());
        }
        let conn = ConnectionManager::new(self.redis_client.clone()).await?;
        *guard = Some(conn.clone());
        Ok(conn)
    }

    /// Fires one batch of schedules due now, without publishing.
    ///
    /// # Errors
    /// When the database fails; nothing is half-done, the batch's transaction rolls back.
    pub async fn fire_due(&self) -> Result<FireReport> {
        fire::fire_due(
            &self.db,
            self.clock.now(),
            self.config.horizon,
            self.config.batch_size,
            self.config.misfire_grace,
            &self.metrics,
            &self.specs,
        )
        .await
    }

    /// Publishes every pending run to the tasks stream. `fire_workers` publishers run at once,
    /// each on its own batches (`SKIP LOCKED`), so a large backlog uses both Postgres cores.
    ///
    /// # Errors
    /// When the database or Redis fails; unpublished runs stay pending for the next pass.
    pub async fn publish_pending(&self) -> Result<usize> {
        runs::release_waiting(&self.db).await?;
        self.publish_outbox().await
    }

    /// [`Scheduler::publish_pending`] without releasing waiting `queue` runs first: what a
    /// pass does after each committed batch.
    async fn publish_outbox(&self) -> Result<usize> {
        let redis = self.redis().await?;
        let publisher = |mut redis: ConnectionManager| async move {
            let mut total = 0;
            loop {
                let clock = Arc::clone(&self.clock);
                let batch = outbox::publish_batch(
                    &self.db,
                    &mut redis,
                    &self.streams,
                    self.config.publish_batch,
                    move || clock.now(),
                )
                .await?;
                self.metrics.published(&batch, self.clock.now());
                let n = batch.rows;
                total += n;
                if (n as u64) < self.config.publish_batch {
                    return Ok::<usize, Error>(total);
                }
            }
        };
        let published = futures::future::join_all(
            (0..self.config.fire_workers).map(|_| publisher(redis.clone())),
        )
        .await;
        let mut total = 0;
        for n in published {
            total += n?;
        }
        Ok(total)
    }

    /// One pass: fires everything due now and publishes it. `fire_workers` claim loops run
    /// concurrently, each taking disjoint batches (`SKIP LOCKED`), while the publisher drains
    /// the outbox behind them, so a large backlog keeps both Postgres cores busy.
    ///
    /// # Errors
    /// See [`Scheduler::fire_due`] and [`Scheduler::publish_pending`].
    pub async fn tick(&self) -> Result<TickReport> {
        // Runs of `queue` schedules whose predecessor ended enter the outbox once per pass.
        runs::release_waiting(&self.db).await?;
        let firing = std::sync::atomic::AtomicUsize::new(self.config.fire_workers);
        // Each committed batch wakes the publisher at once (a `Notify` keeps one permit, so a
        // wake-up sent while the publisher is busy is not lost); no polling loop.
        let committed = tokio::sync::Notify::new();
        let fire_loop = || async {
            let mut total = FireReport::default();
            let result = loop {
                match self.fire_due().await {
                    Ok(batch) => {
                        total.claimed += batch.claimed;
                        total.queued += batch.queued;
                        total.missed += batch.missed;
                        total.skipped += batch.skipped;
                        committed.notify_one();
                        if (batch.claimed as u64) < self.config.batch_size {
                            break Ok(total);
                        }
                    }
                    Err(e) => break Err(e),
                }
            };
            firing.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            committed.notify_one();
            result
        };
        let publisher = async {
            let mut published = 0;
            loop {
                let n = self.publish_outbox().await?;
                published += n;
                if firing.load(std::sync::atomic::Ordering::Acquire) == 0 {
                    break;
                }
                if n == 0 {
                    committed.notified().await;
                }
            }
            Ok::<usize, Error>(published + self.publish_outbox().await?)
        };
        let fires = futures::future::join_all((0..self.config.fire_workers).map(|_| fire_loop()));
        let (fired, published) = tokio::join!(fires, publisher);
        let mut report = TickReport {
            published: published?,
            ..TickReport::default()
        };
        for batch in fired {
            let batch = batch?;
            report.fired.claimed += batch.claimed;
            report.fired.queued += batch.queued;
            report.fired.missed += batch.missed;
            report.fired.skipped += batch.skipped;
        }
        // The claim loops ran until a batch came back short, so every schedule due at the
        // start of the pass was claimed by it: no counting query needed.
        self.metrics
            .due_backlog
            .set(i64::try_from(report.fired.claimed).unwrap_or(i64::MAX));
        Ok(report)
    }

    /// One re-queue pass (see [`netcron_lifecycle::requeue`]): runs whose lease expired, or
    /// whose task and lease Redis lost, become their next attempt. Answers how many.
    ///
    /// # Errors
    /// When the database or Redis fails.
    pub async fn requeue_lost(&self) -> Result<u64> {
        let mut redis = self.redis().await?;
        let report = self
            .requeuer
            .lock()
            .await
            .pass(&self.db, &mut redis)
            .await?;
        requeue::tidy_outbox(&self.db).await?;
        let n = report.requeued as u64;
        self.metrics.requeued_total.inc_by(n);
        Ok(n)
    }

    /// See [`runs::apply_retention`].
    ///
    /// # Errors
    /// When the database fails.
    pub async fn apply_retention(&self) -> Result<u64> {
        let runs = runs::apply_retention(
            &self.db,
            self.clock.now(),
            self.config.retention_max_age,
            self.config.retention_per_schedule,
        )
        .await?;
        let versions =
            housekeeping::trim_config_versions(&self.db, self.config.config_versions_keep).await?;
        if versions > 0 {
            tracing::info!(versions, "old configuration versions deleted");
        }
        Ok(runs)
    }

    /// Trims the tasks and results streams behind their consumer groups, and the events and
    /// dead-letter streams by age (they are also capped by length where they are written).
    ///
    /// # Errors
    /// When Redis fails.
    pub async fn trim_streams(&self) -> Result<u64> {
        let mut redis = self.redis().await?;
        let mut removed = 0;
        for stream in [&self.streams.tasks, &self.streams.results] {
            removed += housekeeping::trim_stream(&mut redis, stream).await?;
        }
        for zone in zones::known(&self.db).await? {
            if !zone.is_default() {
                let stream = self.streams.zone_tasks(&zone);
                removed += housekeeping::trim_stream(&mut redis, &stream).await?;
            }
        }
        for stream in [&self.streams.events, &self.streams.dead_letter] {
            removed +=
                housekeeping::trim_stream_by_age(&mut redis, stream, self.config.stream_retention)
                    .await?;
        }
        Ok(removed)
    }

    /// One pass of the zone watch (see [`zones`]): answers each zone's state.
    ///
    /// # Errors
    /// When the database or Redis fails.
    pub async fn watch_zones(
        &self,
    ) -> Result<
        Vec<(
            netcron_common::domain::Zone,
            netcron_protocol::zones::ZoneState,
        )>,
    > {
        let mut redis = self.redis().await?;
        self.zones.pass(&self.db, &mut redis).await
    }

    async fn listen(&self) -> Result<PgListener> {
        let mut listener = PgListener::connect_with(self.db.get_postgres_connection_pool()).await?;
        listener
            .listen_all([SCHEDULE_CHANGED_CHANNEL, RUN_QUEUED_CHANNEL])
            .await?;
        Ok(listener)
    }

    /// How long to sleep before the next pass: until the horizon reaches the earliest fire
    /// time (see [`fire::next_wake`]), at most `max_idle`.
    async fn idle_time(&self) -> Result<StdDuration> {
        let now = self.clock.now();
        let next = fire::next_wake(&self.db, now, self.config.horizon).await?;
        let wait = next
            .map(|t| (t - now).to_std().unwrap_or(StdDuration::ZERO))
            .unwrap_or(self.config.max_idle);
        Ok(wait.min(self.config.max_idle))
    }

    /// Runs passes until `shutdown` is cancelled, with the housekeeping jobs alongside.
    /// Database and Redis failures are logged and retried with backoff; they never end the loop.
    ///
    /// # Errors
    /// When the housekeeping jobs cannot be started.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> Result<()> {
        let mut jobs = self.start_housekeeping().await?;
        let mut listener: Option<PgListener> = None;
        let mut backoff = StdDuration::from_millis(100);
        tracing::info!("scheduler started");
        let mut synced = std::time::Instant::now();
        while !shutdown.is_cancelled() {
            if let Some(clock) = &self.database_clock
                && synced.elapsed() >= self.config.clock_sync
            {
                synced = std::time::Instant::now();
                if let Err(e) = clock.sync(&self.db).await {
                    tracing::warn!(error = %e, "cannot measure the clock against Postgres");
                }
            }
            if listener.is_none() {
                match self.listen().await {
                    Ok(l) => listener = Some(l),
                    Err(e) => tracing::warn!(error = %e, "cannot LISTEN for schedule changes"),
                }
            }
            let wait = match self.tick().await {
                Ok(report) => {
                    backoff = StdDuration::from_millis(100);
                    // Every pass's counts are in the metrics; at `info` this line would repeat
                    // every second for every-second schedules (14 MB of log a day).
                    if report.fired.claimed > 0 || report.published > 0 {
                        tracing::debug!(
                            claimed = report.fired.claimed,
                            queued = report.fired.queued,
                            missed = report.fired.missed,
                            skipped = report.fired.skipped,
                            published = report.published,
                            "scheduler pass"
                        );
                    }
                    match self.idle_time().await {
                        Ok(wait) => wait,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot read the next fire time");
                            backoff
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "scheduler pass failed");
                    let wait = backoff;
                    backoff = (backoff * 2).min(StdDuration::from_secs(30));
                    wait
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
                notified = wait_for_notification(listener.as_mut()) => {
                    if notified.is_err() {
                        listener = None;
                    }
                }
            }
        }
        let _ = jobs.shutdown().await;
        tracing::info!("scheduler stopped");
        Ok(())
    }

    async fn start_housekeeping(self: &Arc<Self>) -> Result<tokio_cron_scheduler::JobScheduler> {
        use tokio_cron_scheduler::{Job, JobScheduler};
        let jobs_err = |e: tokio_cron_scheduler::JobSchedulerError| Error::Jobs(e.to_string());
        let jobs = JobScheduler::new().await.map_err(jobs_err)?;
        let me = Arc::clone(self);
        jobs.add(
            Job::new_async(self.config.requeue_cron.as_str(), move |_, _| {
                let me = Arc::clone(&me);
                Box::pin(async move {
                    match me.requeue_lost().await {
                        Ok(0) => {}
                        Ok(n) => tracing::warn!(runs = n, "re-queued runs whose attempt was lost"),
                        Err(e) => tracing::warn!(error = %e, "re-queue job failed"),
                    }
                })
            })
            .map_err(jobs_err)?,
        )
        .await
        .map_err(jobs_err)?;
        let me = Arc::clone(self);
        jobs.add(
            Job::new_async(self.config.retention_cron.as_str(), move |_, _| {
                let me = Arc::clone(&me);
                Box::pin(async move {
                    match me.apply_retention().await {
                        Ok(n) => tracing::info!(runs = n, "run-history retention applied"),
                        Err(e) => tracing::warn!(error = %e, "retention job failed"),
                    }
                })
            })
            .map_err(jobs_err)?,
        )
        .await
        .map_err(jobs_err)?;
        let me = Arc::clone(self);
        jobs.add(
            Job::new_async(self.config.trim_cron.as_str(), move |_, _| {
                let me = Arc::clone(&me);
                Box::pin(async move {
                    if let Err(e) = me.trim_streams().await {
                        tracing::warn!(error = %e, "stream trim job failed");
                    }
                })
            })
            .map_err(jobs_err)?,
        )
        .await
        .map_err(jobs_err)?;
        let me = Arc::clone(self);
        jobs.add(
            Job::new_async(zones::WATCH_CRON, move |_, _| {
                let me = Arc::clone(&me);
                Box::pin(async move {
                    if let Err(e) = me.watch_zones().await {
                        tracing::warn!(error = %e, "zone watch failed");
                    }
                })
            })
            .map_err(jobs_err)?,
        )
        .await
        .map_err(jobs_err)?;
        jobs.start().await.map_err(jobs_err)?;
        Ok(jobs)
    }
}

/// Resolves on the next notification; never, when there is no listener.
async fn wait_for_notification(listener: Option<&mut PgListener>) -> Result<()> {
    match listener {
        Some(l) => {
            l.recv().await?;
            Ok(())
        }
        None => std::future::pending().await,
    }
}

/// Runs the scheduler role until `shutdown` is cancelled.
///
/// # Errors
/// When Postgres cannot be reached at start or the housekeeping jobs cannot start.
pub async fn run(
    settings: Settings,
    telemetry: Telemetry,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Postgres being down at start is waited out like any later outage, so a container that
    // starts before its database does not crash-loop.
    let Some(scheduler) = wait_for(
        Waiting {
            what: "scheduler cannot reach Postgres",
            dependency: "postgres",
            telemetry: Some(&telemetry),
        },
        &shutdown,
        |_| true,
        || Scheduler::connect_following_database(&settings, Arc::new(SystemClock), &telemetry),
    )
    .await?
    else {
        return Ok(());
    };
    let scheduler = Arc::new(scheduler);
    netcron_protocol::gauges::sample_streams(
        &telemetry,
        scheduler.redis_client.clone(),
        scheduler.streams.clone(),
        vec![
            (scheduler.streams.tasks.clone(), EXECUTOR_GROUP),
            (scheduler.streams.results.clone(), INGEST_GROUP),
        ],
        shutdown.clone(),
    );
    scheduler.run(shutdown).await?;
    Ok(())
}
