//! Where Postgres is: the settings every role that talks to Postgres embeds.

use netcron_common::config::{self, ConfigError};

/// Where Postgres is.
#[derive(Clone)]
pub struct DatabaseSettings {
    /// May carry a password, so it is never logged.
    pub url: String,
    /// Whether `api` and `all` apply pending migrations at start.
    pub auto_migrate: bool,
}

impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("auto_migrate", &self.auto_migrate)
            .finish()
    }
}

impl DatabaseSettings {
    /// # Errors
    /// When `DATABASE_URL` is missing or `NETCRON_AUTO_MIGRATE` is not a boolean.
    pub fn from_env() -> Result<Self, ConfigError> {
        let url = config::required("DATABASE_URL")?;
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ConfigError {
                name: "DATABASE_URL",
                reason: "must start with postgres:// or postgresql://".into(),
            });
        }
        if let Some(Err(reason)) = crate::pgfailover::MultiHost::parse(&url) {
            return Err(ConfigError {
                name: "DATABASE_URL",
                reason,
            });
        }
        Ok(Self {
            url,
            auto_migrate: config::parsed_or("NETCRON_AUTO_MIGRATE", true)?,
        })
    }
}
