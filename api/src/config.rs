//! The api role's settings: `Settings` is what `netcron api` needs to start, including the
//! ingest settings it embeds (the api ingests in-process unless `NETCRON_INGEST=false`, and
//! checks webhook addresses with ingest's policy either way). Every field has an environment
//! variable, named in the settings catalog (`netcron_common::catalog`), the one source of
//! `--help` and the docs.

use netcron_common::config::{self, ConfigError, HttpSettings};
use netcron_common::secret::SecretKey;
use netcron_ingest::IngestSettings;
use netcron_protocol::RedisSettings;
use netcron_services::config::LiveSettings;
use netcron_store::DatabaseSettings;

#[derive(Clone, Debug)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub http: HttpSettings,
    pub secret_key: SecretKey,
    /// Whether this process also ingests results (`NETCRON_INGEST`, default true); turn it off
    /// when `netcron ingest` runs as its own process.
    pub run_ingest: bool,
    /// Ingest's own settings, the same type `netcron ingest` reads.
    pub ingest: IngestSettings,
    /// Bounds on live-output followers (`NETCRON_LIVE_*`).
    pub live: LiveSettings,
    /// Whether to create the database named in `DATABASE_URL` when it is missing (`all` does;
    /// the api alone does not).
    pub create_database: bool,
    /// The console's public address (`NETCRON_PUBLIC_URL`); unset, forms are checked against
    /// `Host` and the standard forwarded headers.
    pub public_url: Option<crate::origin::PublicUrl>,
    /// The OpenID Connect providers people may sign in with (`NETCRON_OIDC_PROVIDERS`).
    pub oidc: crate::oidc::Providers,
}

impl Settings {
    /// # Errors
    /// The first variable that is missing or malformed.
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            database: DatabaseSettings::from_env()?,
            redis: RedisSettings::from_env()?,
            http: HttpSettings::from_env()?,
            secret_key: config::secret_key_from_env()?,
            run_ingest: config::parsed_or("NETCRON_INGEST", true)?,
            ingest: IngestSettings::from_env()?,
            live: LiveSettings::from_env()?,
            create_database: false,
            public_url: config::parsed_opt("NETCRON_PUBLIC_URL")?,
            oidc: config::parsed_secret_opt("NETCRON_OIDC_PROVIDERS")?.unwrap_or_default(),
        })
    }
}
