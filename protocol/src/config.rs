//! Where Redis is and how netcron's streams are named there: the settings every role that
//! talks to Redis embeds.

use netcron_common::config::{self, ConfigError};

/// Where Redis is and how netcron's streams are named there.
#[derive(Clone)]
pub struct RedisSettings {
    pub url: String,
    /// Prepended to every stream name (`<prefix>tasks`), so several installations or tests
    /// can share one Redis.
    pub stream_prefix: String,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("stream_prefix", &self.stream_prefix)
            .finish()
    }
}

impl RedisSettings {
    /// With a `redis+sentinel://` URL, starts this process's Sentinel forwarder (see
    /// [`crate::sentinel`]) and answers the `redis://` URL the roles connect to; any other URL
    /// as it is. Call once per process and give the answer to every role.
    ///
    /// # Errors
    /// When the forwarder cannot bind a local port.
    pub async fn resolve(
        &self,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> std::io::Result<String> {
        match crate::sentinel::SentinelUrl::parse(&self.url) {
            Some(Ok(sentinel)) => crate::sentinel::forward(sentinel, shutdown.clone()).await,
            _ => Ok(self.url.clone()),
        }
    }

    /// # Errors
    /// When `REDIS_URL` is missing or not a Redis URL.
    pub fn from_env() -> Result<Self, ConfigError> {
        let url = config::required("REDIS_URL")?;
        if let Some(sentinel) = crate::sentinel::SentinelUrl::parse(&url) {
            sentinel.map_err(|reason| ConfigError {
                name: "REDIS_URL",
                reason: format!("is not a valid redis+sentinel:// URL: it {reason}"),
            })?;
        } else if redis::Client::open(url.as_str()).is_err() {
            return Err(ConfigError {
                name: "REDIS_URL",
                reason: "is not a redis://, rediss:// (TLS) or redis+sentinel:// URL".into(),
            });
        }
        Ok(Self {
            url,
            stream_prefix: config::parsed_or("NETCRON_STREAM_PREFIX", "netcron:".to_owned())?,
        })
    }
}
