//! The executor role's settings: `Settings` is what `netcron executor` needs to start,
//! `ExecutorSettings` how the executor behaves and `LiveSettings` how it publishes live
//! output. Every field has an environment variable, named in the settings catalog
//! (`netcron_common::catalog`), the one source of `--help` and the docs.

use std::time::Duration;

use netcron_common::config::{self, ConfigError};
use netcron_common::domain::Zones;
use netcron_common::secret::SecretKey;
use netcron_protocol::RedisSettings;

/// How the executor behaves; every field has an environment variable (see the README).
#[derive(Debug, Clone)]
pub struct ExecutorSettings {
    /// Commands running at once in this process (`NETCRON_EXECUTOR_CONCURRENCY`, 64).
    pub concurrency: usize,
    /// Commands running at once on one device (`NETCRON_EXECUTOR_PER_DEVICE`, 1): network
    /// gear has few VTY lines.
    pub per_device: usize,
    /// How long an SSH session stays open after a run for the device's next run
    /// (`NETCRON_SSH_IDLE_S`, 5; 0 logs in for every run).
    pub ssh_idle: Duration,
    /// TCP connect timeout (`NETCRON_SSH_CONNECT_TIMEOUT_S`, 10).
    pub connect_timeout: Duration,
    /// Handshake plus authentication (`NETCRON_SSH_LOGIN_TIMEOUT_S`, 30).
    pub login_timeout: Duration,
    /// A task delivered to a consumer that has not touched it for this long is taken over by
    /// another executor (`NETCRON_EXECUTOR_RECLAIM_IDLE_S`, 60). Live executors refresh their
    /// tasks every quarter of it, so a long command is never mistaken for a dead executor.
    pub reclaim_idle: Duration,
    /// A task delivered more often than this goes to the dead-letter stream and its run ends
    /// `error` (`NETCRON_EXECUTOR_MAX_DELIVERIES`, 5).
    pub max_deliveries: u64,
    /// How long a run's lease lasts without renewal (`NETCRON_LEASE_TTL_S`, 30). The executor
    /// renews it every sixth of that while the command runs; a run whose lease stays expired
    /// is re-queued by the scheduler as its next attempt.
    pub lease_ttl: Duration,
    /// The safety-net lifetime of a run's lease key and of a first-contact host-key pin
    /// (`NETCRON_EXECUTOR_DONE_TTL_S`, 86400). Ingest deletes a run's key as soon as it stored
    /// the outcome, so keys normally live only while their run is in flight; this only bounds
    /// keys whose outcome never reached ingest.
    pub done_ttl: Duration,
    /// On SIGTERM, how long in-flight runs may take to finish (`NETCRON_EXECUTOR_GRACE_S`, 30).
    pub grace: Duration,
    /// How long decoding, scrubbing, normalizing and parsing one run's output may take on its
    /// blocking thread before the run ends `error` (`NETCRON_EXECUTOR_PROCESSING_TIMEOUT_S`,
    /// 60). 2 x 100 MiB takes about a second.
    pub processing_timeout: Duration,
    /// First retry delay for transient errors, doubled each attempt, with full jitter
    /// (`NETCRON_RETRY_BASE_MS`, 1000), capped at `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// How long one XREADGROUP waits for new tasks.
    pub block: Duration,
    /// Tasks read ahead of their `not_before` that this process holds at most
    /// (`NETCRON_EXECUTOR_HOLD_AHEAD`, 10000). The scheduler publishes runs a few seconds
    /// before their fire time; while this many wait, the executor reads no more, so the rest
    /// stay on the stream for other executors.
    pub hold_ahead: usize,
    /// The consumer name: unique per process (host, pid and a random suffix).
    pub consumer: String,
    /// The zones whose tasks this executor runs (`NETCRON_EXECUTOR_ZONES`, `default`): it
    /// reads their streams and no other, and announces itself alive in each.
    pub zones: Zones,
    /// Replicas that must hold a run's lease before its command starts
    /// (`NETCRON_EXECUTOR_START_REPLICAS`, 0: none asked). After the start script the
    /// executor sends `WAIT` for that many replicas, at most `start_wait`: a fail-over to an
    /// acknowledging replica then keeps the lease, so no other executor starts the same
    /// attempt. A start not acknowledged in time still runs (counted and logged); a master
    /// with `min-replicas-to-write` refuses the start itself instead.
    pub start_replicas: u32,
    /// How long that `WAIT` may take (`NETCRON_EXECUTOR_START_WAIT_MS`, 100).
    pub start_wait: Duration,
    /// How live output is published (`NETCRON_LIVE_CHANNEL`, `NETCRON_LIVE_END_TTL_S`).
    pub live: LiveSettings,
}

impl Default for ExecutorSettings {
    fn default() -> Self {
        Self {
            concurrency: 64,
            per_device: 1,
            ssh_idle: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            login_timeout: Duration::from_secs(30),
            reclaim_idle: Duration::from_secs(60),
            lease_ttl: Duration::from_secs(30),
            done_ttl: Duration::from_secs(24 * 3600),
            max_deliveries: 5,
            grace: Duration::from_secs(30),
            processing_timeout: Duration::from_secs(60),
            retry_base: Duration::from_millis(1000),
            retry_max: Duration::from_secs(30),
            block: Duration::from_secs(2),
            hold_ahead: 10_000,
            consumer: consumer_name(),
            zones: Zones::default(),
            start_replicas: 0,
            start_wait: Duration::from_millis(100),
            live: LiveSettings::default(),
        }
    }
}

impl ExecutorSettings {
    /// # Errors
    /// The first variable that is malformed.
    pub fn from_env() -> std::result::Result<Self, ConfigError> {
        let d = Self::default();
        let secs = |name, default: Duration| {
            config::parsed_or(name, default.as_secs()).map(Duration::from_secs)
        };
        Ok(Self {
            concurrency: config::parsed_or("NETCRON_EXECUTOR_CONCURRENCY", d.concurrency)?.max(1),
            per_device: config::parsed_or("NETCRON_EXECUTOR_PER_DEVICE", d.per_device)?.max(1),
            ssh_idle: secs("NETCRON_SSH_IDLE_S", d.ssh_idle)?,
            connect_timeout: secs("NETCRON_SSH_CONNECT_TIMEOUT_S", d.connect_timeout)?
                .max(Duration::from_secs(1)),
            login_timeout: secs("NETCRON_SSH_LOGIN_TIMEOUT_S", d.login_timeout)?
                .max(Duration::from_secs(1)),
            reclaim_idle: secs("NETCRON_EXECUTOR_RECLAIM_IDLE_S", d.reclaim_idle)?
                .max(Duration::from_secs(4)),
            max_deliveries: config::parsed_or("NETCRON_EXECUTOR_MAX_DELIVERIES", d.max_deliveries)?
                .max(1),
            grace: secs("NETCRON_EXECUTOR_GRACE_S", d.grace)?,
            processing_timeout: secs(
                "NETCRON_EXECUTOR_PROCESSING_TIMEOUT_S",
                d.processing_timeout,
            )?
            .max(Duration::from_secs(1)),
            lease_ttl: secs("NETCRON_LEASE_TTL_S", d.lease_ttl)?.max(Duration::from_secs(1)),
            done_ttl: secs("NETCRON_EXECUTOR_DONE_TTL_S", d.done_ttl)?.max(Duration::from_secs(60)),
            retry_base: config::parsed_or("NETCRON_RETRY_BASE_MS", 1000u64)
                .map(Duration::from_millis)?,
            retry_max: config::parsed_or("NETCRON_RETRY_MAX_MS", 30_000u64)
                .map(Duration::from_millis)?,
            block: d.block,
            hold_ahead: config::parsed_or("NETCRON_EXECUTOR_HOLD_AHEAD", d.hold_ahead)?.max(1),
            consumer: d.consumer,
            zones: config::parsed_or("NETCRON_EXECUTOR_ZONES", d.zones)?,
            start_replicas: config::parsed_or("NETCRON_EXECUTOR_START_REPLICAS", d.start_replicas)?,
            start_wait: config::parsed_or("NETCRON_EXECUTOR_START_WAIT_MS", 100u64)
                .map(Duration::from_millis)?
                .max(Duration::from_millis(1)),
            live: LiveSettings {
                channel: config::parsed_or("NETCRON_LIVE_CHANNEL", d.live.channel)?.max(1),
                end_ttl: config::parsed_or("NETCRON_LIVE_END_TTL_S", d.live.end_ttl.as_secs())
                    .map(Duration::from_secs)?
                    .max(Duration::from_secs(1)),
            },
        })
    }
}

/// `<host>-<pid>-<random>`: readable in `XINFO CONSUMERS`, and unique even when a restarted
/// process gets the same pid.
pub fn consumer_name() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "executor".into());
    let suffix: u32 = rand::random();
    format!("{host}-{}-{:08x}", std::process::id(), suffix)
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub redis: RedisSettings,
    pub secret_key: SecretKey,
    pub executor: ExecutorSettings,
}

impl Settings {
    /// # Errors
    /// The first variable that is missing or malformed.
    pub fn from_env() -> std::result::Result<Self, ConfigError> {
        Ok(Self {
            redis: RedisSettings::from_env()?,
            secret_key: config::secret_key_from_env()?,
            executor: ExecutorSettings::from_env()?,
        })
    }
}

/// How live output is published (`NETCRON_LIVE_*`).
#[derive(Debug, Clone)]
pub struct LiveSettings {
    /// Chunks in flight from the SSH thread; beyond this, chunks are dropped
    /// (`NETCRON_LIVE_CHANNEL`, 256; 1 forces drops, for fault tests).
    pub channel: usize,
    /// How long a live stream is kept after its attempt's end (`NETCRON_LIVE_END_TTL_S`, 30).
    pub end_ttl: Duration,
}

impl Default for LiveSettings {
    fn default() -> Self {
        Self {
            channel: 256,
            end_ttl: Duration::from_secs(30),
        }
    }
}
