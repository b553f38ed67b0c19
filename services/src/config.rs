//! The services' settings: one group, `LiveSettings`, the bounds on live-output followers.

use std::time::Duration;

use netcron_common::config::{self, ConfigError};

/// The limits on following (`NETCRON_LIVE_*`).
#[derive(Debug, Clone)]
pub struct LiveSettings {
    /// Followers at once in this process (`NETCRON_LIVE_FOLLOWERS`, 512).
    pub max_followers: usize,
    /// Followers at once per API token or console session (`NETCRON_LIVE_FOLLOWERS_PER_CLIENT`,
    /// 16).
    pub max_per_client: usize,
    /// How long one follow lasts at most (`NETCRON_LIVE_FOLLOW_MAX_S`, 3600).
    pub max_follow: Duration,
}

impl Default for LiveSettings {
    fn default() -> Self {
        Self {
            max_followers: 512,
            max_per_client: 16,
            max_follow: Duration::from_secs(3600),
        }
    }
}

impl LiveSettings {
    /// # Errors
    /// The first variable that is malformed.
    pub fn from_env() -> std::result::Result<Self, ConfigError> {
        let d = Self::default();
        Ok(Self {
            max_followers: config::parsed_or("NETCRON_LIVE_FOLLOWERS", d.max_followers)?,
            max_per_client: config::parsed_or(
                "NETCRON_LIVE_FOLLOWERS_PER_CLIENT",
                d.max_per_client,
            )?,
            max_follow: config::parsed_or("NETCRON_LIVE_FOLLOW_MAX_S", d.max_follow.as_secs())
                .map(Duration::from_secs)?
                .max(Duration::from_secs(1)),
        })
    }
}
