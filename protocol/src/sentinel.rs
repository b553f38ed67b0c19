//! Redis Sentinel, for every role: `REDIS_URL=redis+sentinel://[user:password@]host:port[,host:port…]/<service>`.
//!
//! The redis crate (1.8) can ask Sentinel for the master, but only when a client is made: the
//! `ConnectionManager` every role holds reconnects to the address it was built with, so after a
//! fail-over it would keep reaching the old master. Rather than wrap every connection of every
//! role, the process runs a small forwarder on `127.0.0.1`: each connection accepted there is
//! piped to the master the Sentinels name *now* — an address that answers `ROLE` as a
//! master; a Sentinel naming a replica is passed over for the next one — and when they name
//! another one every piped connection is closed, so the roles' connection managers reconnect —
//! through the forwarder, to the new master. The roles are given `redis://[user:password@]127.0.0.1:<port>` and know
//! nothing else.
//!
//! What a fail-over can cost is what Redis replication allows: writes acknowledged by the old
//! master and not yet replicated are lost. netcron's protocol treats that as Redis losing data
//! (docs/PROTOCOL.md): a lost task or lease is found by the re-queue pass and the run gets a new
//! attempt. TLS to Redis through Sentinel is not supported (the forwarder would have to
//! terminate it); use `rediss://` to a fail-over endpoint instead.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The scheme of a Sentinel `REDIS_URL`.
pub const SCHEME: &str = "redis+sentinel://";

/// How often the Sentinels are asked for the master.
const POLL: Duration = Duration::from_millis(500);

/// A parsed `redis+sentinel://` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelUrl {
    /// `user:password@` for the Redis servers (not the Sentinels), or empty.
    pub userinfo: String,
    pub sentinels: Vec<String>,
    pub service: String,
}

impl std::fmt::Debug for SentinelUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelUrl")
            .field("sentinels", &self.sentinels)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl SentinelUrl {
    /// `None` for a URL of another scheme; `Some(Err)` for a malformed Sentinel URL.
    pub fn parse(url: &str) -> Option<Result<SentinelUrl, String>> {
        let rest = url.strip_prefix(SCHEME)?;
        Some((|| {
            let (authority, service) = rest
                .split_once('/')
                .ok_or("must end with /<service name> (the Sentinels' master name)")?;
            let service = service.trim_end_matches('/');
            if service.is_empty() || service.contains(['/', '?', '#']) {
                return Err("must end with /<service name> (the Sentinels' master name)".into());
            }
            let (userinfo, hosts) = match authority.rsplit_once('@') {
                Some((u, h)) => (format!("{u}@"), h),
                None => (String::new(), authority),
            };
            let sentinels: Vec<String> = hosts
                .split(',')
                .filter(|h| !h.is_empty())
                .map(|h| {
                    if h.rsplit_once(':')
                        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
                    {
                        h.to_owned()
                    } else {
                        format!("{h}:26379")
                    }
                })
                .collect();
            if sentinels.is_empty() {
                return Err("names no Sentinel (host:port, comma-separated)".into());
            }
            Ok(SentinelUrl {
                userinfo,
                sentinels,
                service: service.to_owned(),
            })
        })())
    }
}

/// Asks the Sentinels in turn for the master of `service`; the first address that answers
/// `ROLE` as a master wins. A Sentinel can name a replica — one that has not yet seen a
/// fail-over, or an old master that came back demoted — and a client sent there would have
/// its writes refused (`READONLY`), so that answer is passed over for the next Sentinel's.
/// `refused` holds the addresses passed over since they last answered as a master, so each is
/// logged once, not every poll.
async fn master_of(url: &SentinelUrl, refused: &Mutex<HashSet<SocketAddr>>) -> Option<SocketAddr> {
    for sentinel in &url.sentinels {
        let asked = async {
            let client = redis::Client::open(format!("redis://{sentinel}")).ok()?;
            let mut conn = client.get_multiplexed_async_connection().await.ok()?;
            let (host, port): (String, u16) = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&url.service)
                .query_async(&mut conn)
                .await
                .ok()?;
            tokio::net::lookup_host((host.as_str(), port))
                .await
                .ok()?
                .next()
        };
        let Ok(Some(addr)) = tokio::time::timeout(Duration::from_secs(2), asked).await else {
            continue;
        };
        let role = tokio::time::timeout(Duration::from_secs(2), role_of(url, addr))
            .await
            .ok()
            .flatten();
        if role.as_deref() == Some("master") {
            if let Ok(mut refused) = refused.lock() {
                refused.remove(&addr);
            }
            return Some(addr);
        }
        let first_time = refused
            .lock()
            .map(|mut refused| refused.insert(addr))
            .unwrap_or(true);
        if first_time {
            tracing::warn!(
                %sentinel,
                named = %addr,
                role = role.as_deref().unwrap_or("no answer"),
                "a Sentinel names a master that does not answer as one; asking the next Sentinel"
            );
        }
    }
    None
}

/// What the Redis server at `addr` says it is (`master`, `slave`/`replica`, …), asked with the
/// URL's credentials: `ROLE`'s first element, or, for a user whose ACL refuses `ROLE` (the
/// executor's documented ACL allows `HELLO` but not `ROLE`), the `role` field of `HELLO`, which
/// says the same.
async fn role_of(url: &SentinelUrl, addr: SocketAddr) -> Option<String> {
    let client = redis::Client::open(format!("redis://{}{addr}", url.userinfo)).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    // A refused command may come back as a value (`ServerError`) rather than as an `Err`, so
    // only an array counts as ROLE's answer.
    if let Ok(redis::Value::Array(role)) = redis::cmd("ROLE").query_async(&mut conn).await
        && let Some(role) = role.first().and_then(text)
    {
        return Some(role);
    }
    let hello: redis::Value = redis::cmd("HELLO").query_async(&mut conn).await.ok()?;
    hello
        .as_map_iter()?
        .find(|(key, _)| text(key).as_deref() == Some("role"))
        .and_then(|(_, role)| text(role))
}

fn text(value: &redis::Value) -> Option<String> {
    match value {
        redis::Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        redis::Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    }
}

/// Starts the forwarder (see [`netcron_common::forward`]) until `shutdown`; answers the `redis://` URL
/// the roles use instead of `url`.
///
/// # Errors
/// When no local port can be bound.
pub async fn forward(url: SentinelUrl, shutdown: CancellationToken) -> std::io::Result<String> {
    let userinfo = url.userinfo.clone();
    let refused = Arc::new(Mutex::new(HashSet::new()));
    let local = netcron_common::forward::start(
        "Redis master changed (Sentinel)",
        POLL,
        move |_| {
            let url = url.clone();
            let refused = Arc::clone(&refused);
            async move { master_of(&url, &refused).await }
        },
        shutdown,
    )
    .await?;
    Ok(format!("redis://{userinfo}{local}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_name_the_sentinels_and_the_service() {
        let url = SentinelUrl::parse("redis+sentinel://u:p@s1:26380,s2/mymaster")
            .expect("sentinel scheme")
            .expect("valid");
        assert_eq!(url.sentinels, ["s1:26380", "s2:26379"]);
        assert_eq!(url.service, "mymaster");
        assert_eq!(url.userinfo, "u:p@");
        assert!(SentinelUrl::parse("redis://h:6379").is_none());
        assert!(
            SentinelUrl::parse("redis+sentinel://s1:26379")
                .expect("scheme")
                .is_err()
        );
        assert!(
            SentinelUrl::parse("redis+sentinel:///svc")
                .expect("scheme")
                .is_err()
        );
    }
}
