//! What detection and delivery share: the event types, their settings, and the statement
//! helper. Imports nothing from either of them.

use std::time::Duration;

use netcron_common::config::{self, ConfigError};

use crate::webhook_policy::{self, WebhookPolicy};

/// Event types, as they appear in the `type` field and in webhooks' `event_types`.
pub const DEVICE_UNREACHABLE: &str = "device_unreachable";
pub const DEVICE_RECOVERED: &str = "device_recovered";
pub const HOST_KEY_CHANGED: &str = "host_key_changed";
pub const SCHEDULE_AUTO_PAUSED: &str = "schedule_auto_paused";
pub const RUN_FAILED: &str = "run_failed";
/// Written by the scheduler's zone watch rather than detected here; published like the others.
pub use netcron_protocol::ZONE_WITHOUT_EXECUTORS;
pub const EVENT_TYPES: [&str; 6] = [
    DEVICE_UNREACHABLE,
    DEVICE_RECOVERED,
    HOST_KEY_CHANGED,
    SCHEDULE_AUTO_PAUSED,
    RUN_FAILED,
    ZONE_WITHOUT_EXECUTORS,
];

/// The known type `kind` names, as the `'static` string metric labels need; `None` for a type
/// this version does not know.
pub(super) fn known_type(kind: &str) -> Option<&'static str> {
    EVENT_TYPES.iter().copied().find(|k| *k == kind)
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
        })
    }

    /// How often the retention pass runs: a 24th of the retention, between a second and an
    /// hour, so a retention of days is applied hourly and a short one (tests) promptly.
    #[must_use]
    pub fn retention_interval(&self) -> Duration {
        (self.retention / 24).clamp(Duration::from_secs(1), Duration::from_secs(3600))
    }
}

pub(super) use netcron_store::db::stmt;
