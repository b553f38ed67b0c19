//! What the api role needs to start.

use netcron_common::config::{self, ConfigError, HttpSettings};
use netcron_common::secret::SecretKey;
use netcron_protocol::RedisSettings;
use netcron_store::DatabaseSettings;

#[derive(Clone, Debug)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub http: HttpSettings,
    pub secret_key: SecretKey,
    /// Whether this process also ingests results (`NETCRON_INGEST`, default true); turn it off
    /// when `netcron ingest` runs as its own process.
    pub ingest: bool,
    /// Results per ingest transaction (`NETCRON_INGEST_BATCH`, 1000).
    pub ingest_batch: usize,
    /// Concurrent ingest transactions (`NETCRON_INGEST_WORKERS`, 2).
    pub ingest_workers: usize,
    /// Event detection and webhook delivery (part of ingest).
    pub events: netcron_ingest::events::EventSettings,
    /// Bounds on live-output followers (`NETCRON_LIVE_*`).
    pub live: netcron_services::config::LiveSettings,
    /// Whether to create the database named in `DATABASE_URL` when it is missing (`all` does;
    /// the api alone does not).
    pub create_database: bool,
    /// The console's public address (`NETCRON_PUBLIC_URL`); unset, forms are checked against
    /// `Host` and the standard forwarded headers.
    pub public_url: Option<crate::origin::PublicUrl>,
}

impl Settings {
    /// # Errors
    /// The first variable that is missing or malformed.
    pub fn from_env() -> Result<Self, ConfigError> {
        let (ingest_batch, ingest_workers) = netcron_ingest::batching_from_env()?;
        Ok(Self {
            database: DatabaseSettings::from_env()?,
            redis: RedisSettings::from_env()?,
            http: HttpSettings::from_env()?,
            secret_key: config::secret_key_from_env()?,
            ingest: config::parsed_or("NETCRON_INGEST", true)?,
            ingest_batch,
            ingest_workers,
            events: netcron_ingest::events::EventSettings::from_env()?,
            live: netcron_services::config::LiveSettings::from_env()?,
            create_database: false,
            public_url: config::parsed_opt("NETCRON_PUBLIC_URL")?,
        })
    }
}
