//! Which Postgres and Redis the test binary uses: one pair for the whole binary, chosen once.
//!
//! `NETCRON_TEST_SERVICES` chooses:
//! - `auto` (the default): the machine's (`DATABASE_URL` and `REDIS_URL`, the environment, then
//!   `.env`) when both answer; else netcron's own private servers for whichever URL names this
//!   machine where nothing listens, from the server binaries installed on the machine, as
//!   `netcron all` does; else containers, when a container engine answers; else the first test
//!   fails saying what to start. `NETCRON_EMBEDDED=always` skips the machine's and `never` skips
//!   netcron's own.
//! - `machine`: the URLs as they are, never anything else.
//! - `embedded`: netcron's own private servers, whatever answers at the URLs.
//! - `containers`: Postgres and Redis in containers (see `containers`), whatever answers at the
//!   URLs.
//!
//! The choice is written once to the binary's standard error, past the test harness's capture,
//! so a script can check which services a run used.

use std::io::Write as _;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::OnceLock;
use std::time::Duration;

use netcron_embedded::Mode;

use crate::support::containers;

pub struct Services {
    /// URL of the server's maintenance database; test databases are created next to it.
    pub postgres_admin: String,
    pub redis: String,
}

/// The explicit choice of `NETCRON_TEST_SERVICES`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Choice {
    Auto,
    Machine,
    Embedded,
    Containers,
}

impl Choice {
    fn from_env() -> Result<Self, String> {
        match std::env::var("NETCRON_TEST_SERVICES").as_deref() {
            Err(_) | Ok("" | "auto") => Ok(Self::Auto),
            Ok("machine") => Ok(Self::Machine),
            Ok("embedded") => Ok(Self::Embedded),
            Ok("containers") => Ok(Self::Containers),
            Ok(other) => Err(format!(
                "NETCRON_TEST_SERVICES={other}: expected auto, machine, embedded or containers"
            )),
        }
    }
}

/// The services of this test binary, started on first use. A failure is kept too: every test
/// fails with the same line, and none starts anything again.
pub fn services() -> &'static Services {
    static SERVICES: OnceLock<Result<Services, String>> = OnceLock::new();
    let chosen = SERVICES.get_or_init(|| {
        let _ = dotenvy::dotenv();
        let pg = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/netcron".into());
        let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let (services, what) = choose(Choice::from_env()?, &pg, &redis)?;
        let _ = writeln!(
            std::io::stderr(),
            "netcron tests: Postgres and Redis {what}: {} and {}",
            without_user(&services.postgres_admin),
            without_user(&services.redis)
        );
        Ok(services)
    });
    chosen.as_ref().unwrap_or_else(|e| panic!("{e}"))
}

/// The services for `choice`, and a few words saying which they are.
fn choose(choice: Choice, pg: &str, redis: &str) -> Result<(Services, String), String> {
    match choice {
        Choice::Machine if reachable(pg, 5432) && reachable(redis, 6379) => Ok((
            Services {
                postgres_admin: server_of(pg),
                redis: redis.to_owned(),
            },
            "of the machine".into(),
        )),
        Choice::Machine => Err(format!(
            "NETCRON_TEST_SERVICES=machine: Postgres ({pg}) or Redis ({redis}) is unreachable: \
             start them (see .ci/run) or set DATABASE_URL/REDIS_URL"
        )),
        Choice::Embedded => match start_embedded(Mode::Always, pg, redis) {
            Some(Ok(services)) => Ok((services, "of netcron's own (embedded)".into())),
            Some(Err(e)) => Err(format!("NETCRON_TEST_SERVICES=embedded: {e}")),
            None => unreachable!("Mode::Always wants both servers"),
        },
        Choice::Containers => containers::start()
            .map(|services| (services, containers::described()))
            .map_err(|e| format!("NETCRON_TEST_SERVICES=containers: {e}")),
        Choice::Auto => auto(pg, redis),
    }
}

/// Today's order: the machine's, netcron's own, containers.
fn auto(pg: &str, redis: &str) -> Result<(Services, String), String> {
    // `NETCRON_EMBEDDED=always`: private servers even where the machine's own answer (a
    // distribution's Postgres that wants a password, say).
    let mode = std::env::var("NETCRON_EMBEDDED")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(Mode::Auto);
    if mode != Mode::Always && reachable(pg, 5432) && reachable(redis, 6379) {
        return choose(Choice::Machine, pg, redis);
    }
    let embedded = match start_embedded(mode, pg, redis) {
        Some(Ok(services)) => return Ok((services, "of netcron's own (embedded)".into())),
        Some(Err(e)) => format!("netcron's own could not start: {e}"),
        None => "netcron's own are off (NETCRON_EMBEDDED=never, or the URLs are not local)".into(),
    };
    containers::start()
        .map(|services| (services, containers::described()))
        .map_err(|e| {
            format!(
                "Postgres ({pg}) or Redis ({redis}) is unreachable; {embedded}; and {e}. Start \
                 Postgres and Redis (see .ci/run), set DATABASE_URL/REDIS_URL, install the \
                 servers (Debian: apt-get install postgresql redis-server) or start a container \
                 engine"
            )
        })
}

/// `url` without its user and password: the line above is for people and scripts, not secrets.
fn without_user(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://{}", &url[at + 1..]),
        _ => url.to_owned(),
    }
}

fn reachable(url: &str, default_port: u16) -> bool {
    let after_scheme = url.split("://").nth(1).unwrap_or(url);
    let authority = after_scheme.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let target = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:{default_port}")
    };
    target
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok())
}

fn server_of(database_url: &str) -> String {
    let (base, _) = database_url.split_once('?').unwrap_or((database_url, ""));
    let cut = base
        .rfind('/')
        .filter(|i| *i > "postgres://".len())
        .unwrap_or(base.len());
    format!("{}/postgres", &base[..cut])
}

/// A private Postgres and Redis for whichever of `pg` and `redis` names this machine where
/// nothing listens, or both under `Mode::Always` (`None` when neither): `netcron all`'s
/// mechanism, one pair for the whole test binary. They are started from a thread of their own
/// that lives as long as the process, because a server's parent-death signal follows the
/// thread that started it (a test's thread ends with the test); they end with the test binary.
fn start_embedded(mode: Mode, pg: &str, redis: &str) -> Option<Result<Services, String>> {
    let wanted = netcron_embedded::wanted(mode, pg, redis);
    if !wanted.any() {
        return None;
    }
    let settings = netcron_embedded::EmbeddedSettings {
        mode,
        data_dir: Some(std::env::temp_dir().join("netcron-test-services")),
        search: None,
        disposable: true,
    };
    let (pg, redis) = (pg.to_owned(), redis.to_owned());
    let (sent, received) = std::sync::mpsc::channel();
    std::thread::spawn(
        move || match netcron_embedded::start(&settings, wanted, &pg, &redis) {
            Ok(servers) => {
                let urls = servers.as_ref().map_or((pg.clone(), redis.clone()), |s| {
                    (
                        s.database_url.clone().unwrap_or(pg),
                        s.redis_url.clone().unwrap_or(redis),
                    )
                });
                let _ = sent.send(Ok(urls));
                let _servers = servers;
                loop {
                    std::thread::park();
                }
            }
            Err(e) => {
                let _ = sent.send(Err(e.to_string()));
            }
        },
    );
    let urls = received.recv().map_err(|e| e.to_string()).and_then(|r| r);
    Some(urls.and_then(|(pg, redis)| {
        if reachable(&pg, 5432) && reachable(&redis, 6379) {
            Ok(Services {
                postgres_admin: server_of(&pg),
                redis,
            })
        } else {
            Err(format!("started, but {pg} or {redis} does not answer"))
        }
    }))
}
