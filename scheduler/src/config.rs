//! The scheduler role's settings: `Settings` is what `netcron scheduler` needs to start,
//! `SchedulerSettings` how the scheduler behaves. Every field has an environment variable,
//! named in the settings catalog (`netcron_common::catalog`), the one source of `--help` and
//! the docs.

use std::time::Duration as StdDuration;

use chrono::Duration;
use netcron_common::config::{self, ConfigError};
use netcron_protocol::RedisSettings;
use netcron_store::DatabaseSettings;

/// How the scheduler behaves; every field has an environment variable (see the README).
#[derive(Debug, Clone)]
pub struct SchedulerSettings {
    /// How far ahead of their fire time runs are materialised and published
    /// (`NETCRON_SCHEDULER_HORIZON_MS`, 5000; 0 fires at the fire time itself).
    pub horizon: Duration,
    /// Schedules claimed per transaction.
    pub batch_size: u64,
    /// Claim transactions run concurrently during a pass (and the publisher beside them);
    /// Postgres spreads them over its cores.
    pub fire_workers: usize,
    /// Runs published per outbox transaction.
    pub publish_batch: u64,
    /// A fire time older than this when it is processed is a misfire.
    pub misfire_grace: Duration,
    /// The longest the loop sleeps without a fire time or a notification, as a safety net.
    pub max_idle: StdDuration,
    /// How long a run's expired lease must stay unrenewed, seen on two re-queue passes, before
    /// the run is re-queued as its next attempt (`NETCRON_LEASE_CONFIRM_S`, 15). Executors
    /// renew every sixth of their lease, so a Redis stall, which expires every lease at once,
    /// is renewed away before the second look.
    pub lease_confirm: StdDuration,
    /// A queued run whose task entry is unknown (published by an older version) and that no
    /// executor began is published again after this long (`NETCRON_QUEUED_LEASE_S`, 900).
    pub queued_lease: Duration,
    /// How often the scheduler measures its clock against Postgres'.
    pub clock_sync: StdDuration,
    pub retention_max_age: Duration,
    pub retention_per_schedule: u64,
    /// Configuration versions kept per device, newest first (`NETCRON_CONFIG_VERSIONS_KEEP`,
    /// 1000; 0 keeps every version).
    pub config_versions_keep: u64,
    /// 6-field cron expressions (with seconds) of the housekeeping jobs, in UTC.
    pub retention_cron: String,
    pub requeue_cron: String,
    pub trim_cron: String,
    /// Entries of the events and dead-letter streams older than this are trimmed by the trim
    /// job (`NETCRON_STREAM_RETENTION_DAYS`, 7; fractions allowed).
    pub stream_retention: StdDuration,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self {
            horizon: Duration::seconds(5),
            batch_size: 1000,
            fire_workers: 2,
            publish_batch: 1000,
            misfire_grace: Duration::seconds(60),
            max_idle: StdDuration::from_secs(30),
            lease_confirm: StdDuration::from_secs(15),
            queued_lease: Duration::minutes(15),
            clock_sync: StdDuration::from_secs(30),
            retention_max_age: Duration::days(90),
            retention_per_schedule: 10_000,
            config_versions_keep: 1000,
            retention_cron: "0 17 3 * * *".into(),
            requeue_cron: "*/10 * * * * *".into(),
            trim_cron: "0 * * * * *".into(),
            stream_retention: StdDuration::from_secs(7 * 86_400),
        }
    }
}

impl SchedulerSettings {
    /// # Errors
    /// The first variable that is set but malformed.
    pub fn from_env() -> Result<Self, ConfigError> {
        let d = Self::default();
        let secs = |name, default: Duration| -> Result<Duration, ConfigError> {
            config::parsed_or(name, default.num_seconds()).map(Duration::seconds)
        };
        let cron = |name: &'static str, default: String| -> Result<String, ConfigError> {
            let text = config::parsed_or(name, default)?;
            tokio_cron_scheduler::Job::new_async(text.as_str(), |_, _| Box::pin(async {}))
                .map(|_| text.clone())
                .map_err(|e| ConfigError {
                    name,
                    reason: format!("`{text}` is not a cron expression: {e}"),
                })
        };
        let horizon_ms: u32 = config::parsed_or(
            "NETCRON_SCHEDULER_HORIZON_MS",
            u32::try_from(d.horizon.num_milliseconds()).unwrap_or(5000),
        )?;
        Ok(Self {
            horizon: Duration::milliseconds(i64::from(horizon_ms)),
            batch_size: config::parsed_or("NETCRON_SCHEDULER_BATCH", d.batch_size)?,
            fire_workers: config::parsed_or("NETCRON_SCHEDULER_WORKERS", d.fire_workers)?.max(1),
            publish_batch: config::parsed_or("NETCRON_PUBLISH_BATCH", d.publish_batch)?,
            misfire_grace: secs("NETCRON_MISFIRE_GRACE_S", d.misfire_grace)?,
            max_idle: d.max_idle,
            lease_confirm: config::parsed_or("NETCRON_LEASE_CONFIRM_S", d.lease_confirm.as_secs())
                .map(StdDuration::from_secs)?,
            clock_sync: d.clock_sync,
            queued_lease: secs("NETCRON_QUEUED_LEASE_S", d.queued_lease)?,
            retention_max_age: Duration::from_std(config::days_or("NETCRON_RETENTION_DAYS", 90.0)?)
                .unwrap_or(d.retention_max_age),
            retention_per_schedule: config::parsed_or(
                "NETCRON_RETENTION_PER_SCHEDULE",
                d.retention_per_schedule,
            )?,
            config_versions_keep: config::parsed_or(
                "NETCRON_CONFIG_VERSIONS_KEEP",
                d.config_versions_keep,
            )?,
            retention_cron: cron("NETCRON_RETENTION_CRON", d.retention_cron)?,
            requeue_cron: cron("NETCRON_REQUEUE_CRON", d.requeue_cron)?,
            trim_cron: cron("NETCRON_TRIM_CRON", d.trim_cron)?,
            stream_retention: config::days_or("NETCRON_STREAM_RETENTION_DAYS", 7.0)?,
        })
    }
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub scheduler: SchedulerSettings,
}

impl Settings {
    /// # Errors
    /// The first variable that is missing or malformed.
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            database: DatabaseSettings::from_env()?,
            redis: RedisSettings::from_env()?,
            scheduler: SchedulerSettings::from_env()?,
        })
    }
}
