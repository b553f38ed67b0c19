//! What the api role needs to start.

use netcron_common::config::{self, ConfigError, DatabaseSettings, HttpSettings, RedisSettings};
use netcron_common::secret::SecretKey;

#[derive(Clone, Debug)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub http: HttpSettings,
    pub secret_key: SecretKey,
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
        })
    }
}
