//! The ingest role's settings: `Settings` is what `netcron ingest` needs to start,
//! `IngestSettings` how results are ingested and events detected and delivered — the part the
//! api embeds when it ingests in-process. Every field has an environment variable, named in
//! the settings catalog (`netcron_common::catalog`), the one source of `--help` and the docs.

use std::time::Duration;

use netcron_common::config::{self, ConfigError};
use netcron_common::secret::SecretKey;
use netcron_protocol::RedisSettings;
use netcron_store::DatabaseSettings;

use crate::webhook_policy::{self, WebhookPolicy};

/// What `netcron ingest` needs.
#[derive(Clone, Debug)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    /// Opens webhook signing secrets.
    pub secret_key: SecretKey,
    pub ingest: IngestSettings,
}

impl Settings {
    /// # Errors
    /// The first variable that is missing or malformed.
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            database: DatabaseSettings::from_env()?,
            redis: RedisSettings::from_env()?,
            secret_key: config::secret_key_from_env()?,
            ingest: IngestSettings::from_env()?,
        })
    }
}

/// How results are ingested, wherever ingest runs (`netcron ingest`, or in the api).
#[derive(Clone, Debug)]
pub struct IngestSettings {
    /// Results read per transaction (`NETCRON_INGEST_BATCH`, 1000).
    pub batch: usize,
    /// Concurrent ingest transactions (`NETCRON_INGEST_WORKERS`, 2).
    pub workers: usize,
    pub events: EventSettings,
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            batch: 1000,
            workers: 2,
            events: EventSettings::default(),
        }
    }
}

impl IngestSettings {
    /// # Errors
    /// The first variable that is malformed.
    pub fn from_env() -> Result<Self, ConfigError> {
        let d = Self::default();
        Ok(Self {
            batch: config::parsed_or("NETCRON_INGEST_BATCH", d.batch)?.max(1),
            workers: config::parsed_or("NETCRON_INGEST_WORKERS", d.workers)?.max(1),
            events: EventSettings::from_env()?,
        })
    }
}

/// How events are detected and delivered; every field has an environment variable.
#[derive(Debug, Clone)]
pub struct EventSettings {
    /// Consecutive runs that could not reach a device before it is reported unreachable
    /// (`NETCRON_UNREACHABLE_AFTER`, 3), so one blip is not an outage.
    pub unreachable_after: i32,
    /// First webhook retry delay, doubled per attempt up to an hour
    /// (`NETCRON_WEBHOOK_RETRY_BASE_MS`, 5000).
    pub webhook_retry_base: Duration,
    /// Attempts before a delivery is given up (`NETCRON_WEBHOOK_MAX_ATTEMPTS`, 8).
    pub webhook_max_attempts: i32,
    /// One POST's timeout (`NETCRON_WEBHOOK_TIMEOUT_S`, 10).
    pub webhook_timeout: Duration,
    /// Which non-public addresses webhooks may reach (`NETCRON_WEBHOOK_ALLOW`, empty: public
    /// addresses only).
    pub webhook_policy: WebhookPolicy,
    /// Published events and finished webhook deliveries older than this are deleted
    /// (`NETCRON_EVENTS_RETENTION_DAYS`, 30; fractions allowed).
    pub retention: Duration,
    /// Audit log entries older than this are deleted (`NETCRON_AUDIT_RETENTION_DAYS`, 365).
    pub audit_retention: Duration,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            unreachable_after: 3,
            webhook_retry_base: Duration::from_secs(5),
            webhook_max_attempts: 8,
            webhook_timeout: Duration::from_secs(10),
            webhook_policy: WebhookPolicy::default(),
            retention: Duration::from_secs(30 * 86_400),
            audit_retention: Duration::from_secs(365 * 86_400),
        }
    }
}

impl EventSettings {
    /// # Errors
    /// The first variable that is malformed.
    pub fn from_env() -> Result<Self, ConfigError> {
        let d = Self::default();
        Ok(Self {
            unreachable_after: config::parsed_or("NETCRON_UNREACHABLE_AFTER", d.unreachable_after)?
                .max(1),
            webhook_retry_base: config::parsed_or("NETCRON_WEBHOOK_RETRY_BASE_MS", 5000u64)
                .map(Duration::from_millis)?,
            webhook_max_attempts: config::parsed_or(
                "NETCRON_WEBHOOK_MAX_ATTEMPTS",
                d.webhook_max_attempts,
            )?
            .max(1),
            webhook_timeout: config::parsed_or("NETCRON_WEBHOOK_TIMEOUT_S", 10u64)
                .map(Duration::from_secs)?,
            webhook_policy: config::parsed_opt(webhook_policy::VARIABLE)?
                .unwrap_or(d.webhook_policy),
            retention: config::days_or("NETCRON_EVENTS_RETENTION_DAYS", 30.0)?,
            audit_retention: config::days_or("NETCRON_AUDIT_RETENTION_DAYS", 365.0)?,
        })
    }

    /// How often the retention pass runs: a 24th of the retention, between a second and an
    /// hour, so a retention of days is applied hourly and a short one (tests) promptly.
    #[must_use]
    pub fn retention_interval(&self) -> Duration {
        (self.retention / 24).clamp(Duration::from_secs(1), Duration::from_secs(3600))
    }
}
