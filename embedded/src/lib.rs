//! A private Postgres and Redis for single-node netcron (`netcron all`): when the configured
//! URLs name this machine and nothing listens there, or when asked, netcron runs the servers
//! installed on the machine as its own child processes, under a data directory, and stops
//! them when it stops.
//!
//! No orphans: every server is a child of the running netcron. On Linux each is started
//! through `setpriv --pdeathsig`, so the kernel stops it when netcron dies, even by `kill -9`;
//! and a server still running from this data directory's pidfiles (another platform, or a
//! race with that signal) is stopped cleanly and started again as a child at the next start,
//! never adopted — an adopted server would not be a child, so nothing would stop it after the
//! next crash.
//!
//! Invariant: no Postgres or Redis client. Readiness is read from Postgres' own
//! `postmaster.pid` and from Redis' answer to `PING` on a bare socket; the database is created
//! by the role, as `netcron all` always does.

mod config;
mod error;
pub mod find;
mod server;

use std::path::{Path, PathBuf};

pub use config::{EmbeddedSettings, Mode, Wanted};
pub use error::{Error, Result};
pub use server::Servers;

/// Decides which servers to start: with [`Mode::Auto`], each whose URL names this machine
/// (`127.0.0.1`, `localhost`, `::1`, one host, plain `redis://`) where nothing accepts a
/// connection.
#[must_use]
pub fn wanted(mode: Mode, database_url: &str, redis_url: &str) -> Wanted {
    match mode {
        Mode::Never => Wanted::default(),
        Mode::Always => Wanted {
            postgres: true,
            redis: true,
        },
        Mode::Auto => Wanted {
            postgres: ["postgres://", "postgresql://"]
                .iter()
                .find_map(|scheme| database_url.strip_prefix(scheme))
                .is_some_and(|rest| local_and_closed(rest, 5432)),
            redis: redis_url
                .strip_prefix("redis://")
                .is_some_and(|rest| local_and_closed(rest, 6379)),
        },
    }
}

/// The host and port of a URL after its scheme, when it names one host.
fn host_port(rest: &str, default_port: u16) -> Option<(String, u16)> {
    let authority = rest.split(['/', '?']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if hostport.contains(',') {
        return None;
    }
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        }
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => default_port,
    };
    Some((host.to_ascii_lowercase(), port))
}

fn local_and_closed(rest: &str, default_port: u16) -> bool {
    let Some((host, port)) = host_port(rest, default_port) else {
        return false;
    };
    let addrs: Vec<std::net::IpAddr> = match host.as_str() {
        "127.0.0.1" => vec![[127, 0, 0, 1].into()],
        "::1" => vec![std::net::Ipv6Addr::LOCALHOST.into()],
        "localhost" => vec![[127, 0, 0, 1].into(), std::net::Ipv6Addr::LOCALHOST.into()],
        _ => return false,
    };
    // Only a refusal means "nothing there": a timeout or another error is left to the roles'
    // own waiting and reporting.
    addrs.into_iter().all(|ip| {
        std::net::TcpStream::connect_timeout(
            &(ip, port).into(),
            std::time::Duration::from_millis(500),
        )
        .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
    })
}

/// The configured database name (the URL's path), `netcron` when it has none.
fn database_name(database_url: &str) -> String {
    database_url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(_, path)| path.split('?').next().unwrap_or_default().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "netcron".into())
}

/// The data directory: `NETCRON_DATA_DIR`; as root `/var/lib/netcron` (a home directory such as
/// `/root` is closed to the unprivileged user Postgres runs as); else `$XDG_DATA_HOME/netcron`,
/// `~/.local/share/netcron`, or `./.netcron` without a home.
///
/// # Errors
/// When the working directory is needed and unreadable.
pub fn data_dir(settings: &EmbeddedSettings) -> Result<PathBuf> {
    let dir = if let Some(dir) = &settings.data_dir {
        dir.clone()
    } else if server::is_root() {
        PathBuf::from("/var/lib/netcron")
    } else if let Some(xdg) =
        std::env::var_os("XDG_DATA_HOME").filter(|x| Path::new(x).is_absolute())
    {
        PathBuf::from(xdg).join("netcron")
    } else if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        PathBuf::from(home).join(".local/share/netcron")
    } else {
        PathBuf::from(".netcron")
    };
    std::path::absolute(&dir).map_err(|source| Error::Io {
        what: format!("the data directory {}", dir.display()),
        source,
    })
}

/// Starts the `wanted` servers under the data directory and answers them with the URLs the
/// roles must use instead of `database_url` / `redis_url` (same database name and Redis
/// database). Blocks until both accept connections. Call it from the thread that lives as long
/// as the process (the main thread): on Linux a child is stopped when the thread that started
/// it ends.
///
/// # Errors
/// When a binary is missing or unsupported (one line naming the package), or a server does not
/// start (with the end of its log).
pub fn start(
    settings: &EmbeddedSettings,
    wanted: Wanted,
    database_url: &str,
    redis_url: &str,
) -> Result<Option<Servers>> {
    if !wanted.any() {
        return Ok(None);
    }
    let dir = data_dir(settings)?;
    let redis_db = redis_url
        .strip_prefix("redis://")
        .and_then(|rest| rest.split_once('/'))
        .map(|(_, db)| db.to_owned())
        .filter(|db| !db.is_empty());
    server::start(server::Plan {
        dir,
        wanted,
        search: settings.search.as_deref(),
        database: database_name(database_url),
        redis_db,
        disposable: settings.disposable,
    })
    .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_come_from_one_host_urls_only() {
        assert_eq!(
            host_port("postgres:pw@127.0.0.1:5433/netcron", 5432),
            Some(("127.0.0.1".into(), 5433))
        );
        assert_eq!(
            host_port("localhost/netcron", 5432),
            Some(("localhost".into(), 5432))
        );
        assert_eq!(host_port("[::1]:6380", 6379), Some(("::1".into(), 6380)));
        assert_eq!(host_port("a@db1:5432,db2:5432/x", 5432), None);
    }

    #[test]
    fn the_database_name_is_the_urls_path() {
        assert_eq!(database_name("postgres://u@h:1/app?sslmode=disable"), "app");
        assert_eq!(database_name("postgres://u@h:1"), "netcron");
    }

    #[test]
    fn remote_hosts_are_never_embedded() {
        let wanted = wanted(
            Mode::Auto,
            "postgres://u@db.example.net:5432/netcron",
            "redis+sentinel://s:26379/m",
        );
        assert_eq!(wanted, Wanted::default());
    }
}
