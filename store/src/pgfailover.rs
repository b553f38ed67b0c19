//! Several Postgres hosts, as libpq takes them for fail-over:
//! `postgres://user:pw@db1:5432,db2:5432/netcron?target_session_attrs=read-write`.
//!
//! sqlx (0.9) connects to one host only and knows no `target_session_attrs`. So [`forward`]
//! runs a small forwarder on `127.0.0.1`, as `netcron_protocol::sentinel` does for Redis: every second
//! it asks whether the host in use is still acceptable (`read-write`: `SHOW
//! transaction_read_only` is `off`; `primary`: not in recovery; `any`: answers). While it is,
//! it stays in use, whatever the others answer: an old primary that comes back read-write
//! after a fail-over (the split brain an operator can cause) does not take the pools back.
//! When it is not, the hosts are asked in order and the first acceptable one becomes the one:
//! every piped connection is closed, so the pool opens new ones — to the new primary. The
//! pool is given `postgres://user:pw@127.0.0.1:<port>/netcron?<the other parameters>`.
//!
//! Several hosts need `target_session_attrs`: without it any host that answers would do, a
//! standby included, so such a URL is a configuration error rather than libpq's `any`.
//!
//! With `sslmode=require` TLS still runs end to end (the forwarder pipes bytes); `verify-full`
//! cannot, since the pool's host is then `127.0.0.1`.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often the hosts are asked which one to use.
const POLL: Duration = Duration::from_secs(1);

/// What a host must be to be used (libpq's `target_session_attrs`, the values that matter for
/// a writer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attrs {
    Any,
    ReadWrite,
    Primary,
}

/// Why a URL of several hosts needs `target_session_attrs`, with an example.
const SEVERAL_HOSTS_NEED_ATTRS: &str = "names several hosts but no target_session_attrs, so \
    any host that answers could take the writes, a standby included; for example \
    DATABASE_URL=postgres://netcron:secret@db1:5432,db2:5432/netcron?target_session_attrs=read-write";

/// A Postgres URL with several hosts or `target_session_attrs`.
#[derive(Clone, PartialEq, Eq)]
pub struct MultiHost {
    /// `user:password@`, or empty.
    userinfo: String,
    /// `host:port` of each, in the order given.
    pub hosts: Vec<String>,
    /// `/database?…` without `target_session_attrs`.
    rest: String,
    pub attrs: Attrs,
}

impl std::fmt::Debug for MultiHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultiHost")
            .field("hosts", &self.hosts)
            .field("attrs", &self.attrs)
            .finish_non_exhaustive()
    }
}

impl MultiHost {
    /// `None` for a URL with one host and no `target_session_attrs`; `Some(Err)` for one this
    /// cannot follow.
    pub fn parse(url: &str) -> Option<Result<MultiHost, String>> {
        let (_, rest) = url.split_once("://")?;
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(split);
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((u, h)) => (format!("{u}@"), h),
            None => (String::new(), authority),
        };
        let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
        let mut attrs = None;
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.strip_prefix("target_session_attrs=") {
                Some(value) => attrs = Some(value.to_owned()),
                None => kept.push(pair),
            }
        }
        if !hosts.contains(',') && attrs.is_none() {
            return None;
        }
        Some((|| {
            if hosts.contains(',') && attrs.is_none() {
                return Err(SEVERAL_HOSTS_NEED_ATTRS.into());
            }
            let attrs = match attrs.as_deref().unwrap_or("any") {
                "any" => Attrs::Any,
                "read-write" => Attrs::ReadWrite,
                "primary" => Attrs::Primary,
                other => {
                    return Err(format!(
                        "target_session_attrs={other} is not supported (netcron writes: use \
                         read-write, primary or any)"
                    ));
                }
            };
            let hosts: Vec<String> = hosts
                .split(',')
                .filter(|h| !h.is_empty())
                .map(|h| {
                    if h.rsplit_once(':')
                        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
                    {
                        h.to_owned()
                    } else {
                        format!("{h}:5432")
                    }
                })
                .collect();
            if hosts.is_empty() {
                return Err("names no host".into());
            }
            let query = if kept.is_empty() {
                String::new()
            } else {
                format!("?{}", kept.join("&"))
            };
            Ok(MultiHost {
                userinfo,
                hosts,
                rest: format!("{path}{query}"),
                attrs,
            })
        })())
    }

    fn url_for(&self, host: &str) -> String {
        format!("postgres://{}{host}{}", self.userinfo, self.rest)
    }
}

/// Whether `host` is one to use now.
async fn acceptable(multi: &MultiHost, host: &str) -> bool {
    use sqlx::Connection as _;
    let asked = async {
        let mut conn = sqlx::postgres::PgConnection::connect(&multi.url_for(host))
            .await
            .ok()?;
        let ok = match multi.attrs {
            Attrs::Any => true,
            Attrs::ReadWrite => {
                let ro: String = sqlx::query_scalar("SHOW transaction_read_only")
                    .fetch_one(&mut conn)
                    .await
                    .ok()?;
                ro == "off"
            }
            Attrs::Primary => {
                let standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
                    .fetch_one(&mut conn)
                    .await
                    .ok()?;
                !standby
            }
        };
        let _ = conn.close().await;
        Some(ok)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(3), asked).await,
        Ok(Some(true))
    )
}

/// The host to use now: `current` while it stays acceptable, otherwise the first acceptable
/// host in the order given.
async fn choose(multi: &MultiHost, current: Option<String>) -> Option<String> {
    if let Some(current) = current {
        if acceptable(multi, &current).await {
            return Some(current);
        }
        for host in multi.hosts.iter().filter(|h| **h != current) {
            if acceptable(multi, host).await {
                return Some(host.clone());
            }
        }
        return None;
    }
    for host in &multi.hosts {
        if acceptable(multi, host).await {
            return Some(host.clone());
        }
    }
    None
}

/// Starts the forwarder (see [`netcron_common::forward`]) until `shutdown`; answers the single-host URL
/// the pool uses instead. The first host is the first acceptable one in the order given; it
/// stays the one while it stays acceptable. No acceptable host keeps the last one: connections
/// to it fail until one is.
///
/// # Errors
/// When no local port can be bound.
pub async fn forward(multi: MultiHost, shutdown: CancellationToken) -> std::io::Result<String> {
    let (userinfo, rest) = (multi.userinfo.clone(), multi.rest.clone());
    let local = netcron_common::forward::start(
        "Postgres host changed (target_session_attrs)",
        POLL,
        move |current| {
            let multi = multi.clone();
            async move { choose(&multi, current).await }
        },
        shutdown,
    )
    .await?;
    Ok(format!("postgres://{userinfo}{local}{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_hosts_and_session_attributes_are_understood() {
        let m = MultiHost::parse(
            "postgres://u:p@db1:5433,db2/netcron?sslmode=require&target_session_attrs=read-write",
        )
        .expect("multi-host")
        .expect("valid");
        assert_eq!(m.hosts, ["db1:5433", "db2:5432"]);
        assert_eq!(m.attrs, Attrs::ReadWrite);
        assert_eq!(
            m.url_for("db2:5432"),
            "postgres://u:p@db2:5432/netcron?sslmode=require"
        );
        assert!(MultiHost::parse("postgres://u:p@db1:5432/netcron").is_none());
        assert!(
            MultiHost::parse("postgres://db1,db2/n?target_session_attrs=standby")
                .expect("multi-host")
                .is_err()
        );
    }

    #[test]
    fn several_hosts_without_session_attributes_are_refused_with_an_example() {
        let reason = MultiHost::parse("postgres://u:hunter2@db1,db2/netcron")
            .expect("multi-host")
            .expect_err("several hosts need target_session_attrs");
        assert!(
            reason.contains("?target_session_attrs=read-write"),
            "{reason}"
        );
        assert!(!reason.contains("hunter2"), "{reason}");
    }
}
