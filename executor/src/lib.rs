//! The `executor` role: consumes the tasks stream, runs commands over SSH and publishes their
//! outcomes to the results stream.
//!
//! Architecture invariant: the executor never knows HTTP; it is the only role that decrypts a
//! secret, and only in memory, for the connection that needs it.
//!
//! This crate is the shell the role will grow into: it starts, waits for shutdown and stops.
//! The SSH runner is tracked in its own issue.

use netcron_common::config::{ConfigError, RedisSettings};
use netcron_common::secret::SecretKey;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug)]
pub struct Settings {
    pub redis: RedisSettings,
    pub secret_key: SecretKey,
}

impl Settings {
    /// # Errors
    /// The first variable that is missing or malformed.
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            redis: RedisSettings::from_env()?,
            secret_key: netcron_common::config::secret_key_from_env()?,
        })
    }
}

/// Runs the executor role until `shutdown` is cancelled.
///
/// # Errors
/// Infrastructure failures that the role cannot recover from.
pub async fn run(_settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    tracing::info!("executor started");
    shutdown.cancelled().await;
    tracing::info!("executor stopped");
    Ok(())
}
