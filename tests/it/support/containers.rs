//! Postgres and Redis in containers, with testcontainers: what `NETCRON_TEST_SERVICES=containers`
//! asks for, and what `auto` comes to on a machine with a container engine and neither the
//! servers nor their binaries. The engine is Docker, or podman through its Docker-compatible API
//! (`podman system service`).
//!
//! The engine is the one testcontainers talks to: `DOCKER_HOST`, else the first of Docker's
//! sockets that exists (`/var/run/docker.sock`, then rootless Docker's). Its answer to
//! `GET /_ping` is checked first, so a missing engine fails with one line saying what to start
//! instead of a connection error from deep inside the first test. podman's sockets
//! (`$XDG_RUNTIME_DIR/podman/podman.sock`, `/run/podman/podman.sock`) are found too, but only
//! named in that line: testcontainers reads the engine's address from `DOCKER_HOST` alone, and
//! this crate forbids the `unsafe` that setting a variable in a running process needs.
//!
//! Images: `NETCRON_TEST_POSTGRES_IMAGE` and `NETCRON_TEST_REDIS_IMAGE` (`name:tag`), else the
//! versions `docker-compose.yml` runs, `postgres:16` and `redis:7` (the modules' own defaults,
//! Postgres 11 and Redis 5, are older than netcron supports).
//!
//! Removal: testcontainers-rs has no Ryuk; a container is removed when its handle is dropped,
//! and a static's never is. So the containers carry a label naming this process's session, and
//! a reaper (`fixtures/container_reaper.py`, python3 as the fake devices) waits for the end of
//! its standard input, which comes when this process ends however it ends, then removes every
//! container with that label. `TESTCONTAINERS_COMMAND=keep` keeps them, as testcontainers does.

use std::io::{Read as _, Write as _};
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use testcontainers_modules::postgres::Postgres;
use testcontainers_modules::redis::Redis;
use testcontainers_modules::testcontainers::core::IntoContainerPort as _;
use testcontainers_modules::testcontainers::runners::SyncRunner as _;
use testcontainers_modules::testcontainers::{Image, ImageExt as _};

use crate::support::services::Services;

/// The label every container of this process carries; its value is the session.
const LABEL: &str = "netcron.test.session";

/// The engine testcontainers will talk to, as it resolves it (`DOCKER_HOST`, then the first
/// Docker socket that exists, then `/var/run/docker.sock`).
pub fn host() -> String {
    if let Ok(host) = std::env::var("DOCKER_HOST") {
        return host;
    }
    let runtime = std::env::var("XDG_RUNTIME_DIR").ok();
    let home = std::env::var("HOME").ok();
    let docker = [
        Some("/var/run/docker.sock".to_owned()),
        runtime.map(|d| format!("{d}/.docker/run/docker.sock")),
        home.as_ref()
            .map(|h| format!("{h}/.docker/run/docker.sock")),
        home.map(|h| format!("{h}/.docker/desktop/docker.sock")),
    ];
    let found = docker
        .into_iter()
        .flatten()
        .find(|p| std::path::Path::new(p).exists());
    format!(
        "unix://{}",
        found.as_deref().unwrap_or("/var/run/docker.sock")
    )
}

/// This process's session: the label value of its containers.
static SESSION: OnceLock<String> = OnceLock::new();

/// How the test binary says it uses containers: the engine and the session, so a script can
/// tell this run's containers from any other's.
pub fn described() -> String {
    format!(
        "in containers ({}, session {})",
        host(),
        SESSION.get().map_or("none", String::as_str)
    )
}

/// Starts Postgres and Redis in containers that end with this process.
///
/// # Errors
/// A line saying what is missing: the engine (and where podman answers instead), the reaper,
/// or why a container did not start.
pub fn start() -> Result<Services, String> {
    let host = host();
    if let Err(e) = ping(&host) {
        return Err(missing_engine(&host, &e));
    }
    let session = SESSION
        .get_or_init(|| uuid::Uuid::new_v4().simple().to_string())
        .clone();
    reap_at_exit(&host, &session)?;
    let postgres = image("NETCRON_TEST_POSTGRES_IMAGE", "postgres:16");
    let redis = image("NETCRON_TEST_REDIS_IMAGE", "redis:7");
    // SyncRunner runs a runtime of its own, which may not start inside a test's runtime: each
    // container starts from a thread of its own, both at once.
    let pg = {
        let session = session.clone();
        std::thread::spawn(move || run(Postgres::default(), &postgres, &session, 5432))
    };
    let redis = {
        let session = session.clone();
        std::thread::spawn(move || run(Redis::default(), &redis, &session, 6379))
    };
    let joined = |t: std::thread::JoinHandle<Result<String, String>>| {
        t.join()
            .map_err(|_| "a container's start panicked".to_owned())?
    };
    let (pg, redis) = (joined(pg)?, joined(redis)?);
    Ok(Services {
        postgres_admin: format!("postgres://postgres:postgres@{pg}/postgres"),
        redis: format!("redis://{redis}"),
    })
}

/// `name:tag` from `variable`, else `default`; the tag follows the last `:` after the last `/`
/// (a registry's port is not a tag).
fn image(variable: &str, default: &str) -> (String, String) {
    let reference = std::env::var(variable)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned());
    let slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[slash..].rfind(':') {
        Some(colon) => (
            reference[..slash + colon].to_owned(),
            reference[slash + colon + 1..].to_owned(),
        ),
        None => (reference, "latest".to_owned()),
    }
}

/// Starts `module` from `image`, labelled with `session`, and keeps it for the life of the
/// process; returns the `host:port` where its `port` is published.
fn run<I: Image + 'static>(
    module: I,
    (name, tag): &(String, String),
    session: &str,
    port: u16,
) -> Result<String, String> {
    let reference = format!("{name}:{tag}");
    let container = module
        .with_name(name)
        .with_tag(tag)
        .with_label(LABEL, session)
        .start()
        .map_err(|e| format!("{reference} did not start: {e}"))?;
    // podman (4.3) reports a port published on every address with an empty `HostIp`, which
    // testcontainers takes for neither IPv4 nor IPv6: then the engine's own answer says.
    let published = match container.get_host_port_ipv4(port.tcp()) {
        Ok(published) => published,
        Err(e) => published_port(container.id(), port)
            .ok_or_else(|| format!("{reference} publishes no port for {port}: {e}"))?,
    };
    // testcontainers' address of the engine's host, else loopback. Inside a container (a
    // `/.dockerenv`, as on CI here) it takes the `bridge` network's gateway: right for a Docker
    // socket shared into a CI container, and right here too, where that network is podman's own
    // bridge on this machine; loopback is for an engine beside the tests whose gateway is not.
    let named = match container.get_host().map_err(|e| e.to_string())?.to_string() {
        localhost if localhost == "localhost" => "127.0.0.1".to_owned(),
        host => host,
    };
    let address = [named.as_str(), "127.0.0.1"]
        .into_iter()
        .map(|host| format!("{host}:{published}"))
        .find(|address| answers(address))
        .ok_or_else(|| format!("{reference} does not answer at {named}:{published}"))?;
    // The reaper removes it when the process ends; dropping the handle would remove it when
    // the first test that needed it ends.
    std::mem::forget(container);
    Ok(address)
}

/// The host port where the container `id` publishes `port`, as the engine says.
fn published_port(id: &str, port: u16) -> Option<u16> {
    let (_, body) = request(&host(), "GET", &format!("/containers/{id}/json")).ok()?;
    let inspected: serde_json::Value = serde_json::from_str(&body).ok()?;
    inspected["NetworkSettings"]["Ports"][format!("{port}/tcp")]
        .as_array()?
        .iter()
        .find_map(|binding| binding["HostPort"].as_str()?.parse().ok())
}

/// Whether something accepts a TCP connection at `address` (`host:port`).
fn answers(address: &str) -> bool {
    use std::net::ToSocketAddrs as _;
    address
        .to_socket_addrs()
        .ok()
        .into_iter()
        .flatten()
        .any(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
}

/// The line for an engine that does not answer at `host`.
fn missing_engine(host: &str, error: &str) -> String {
    let podman = [
        std::env::var("XDG_RUNTIME_DIR")
            .ok()
            .map(|d| format!("{d}/podman/podman.sock")),
        Some("/run/podman/podman.sock".to_owned()),
    ]
    .into_iter()
    .flatten()
    .map(|p| format!("unix://{p}"))
    .find(|p| *p != host && ping(p).is_ok());
    match podman {
        Some(podman) => format!(
            "no container engine answers at {host} ({error}), podman does at {podman}: run the \
             tests with DOCKER_HOST={podman}"
        ),
        None => format!(
            "no container engine answers at {host} ({error}): start Docker, or podman's API \
             (podman system service --time=0 unix:///run/podman/podman.sock) and set \
             DOCKER_HOST=unix:///run/podman/podman.sock"
        ),
    }
}

/// Starts the reaper of `session`'s containers; it keeps its end of a pipe whose other end
/// closes only when this process ends.
fn reap_at_exit(host: &str, session: &str) -> Result<(), String> {
    static STDIN: OnceLock<std::process::ChildStdin> = OnceLock::new();
    if std::env::var("TESTCONTAINERS_COMMAND").as_deref() == Ok("keep") {
        return Ok(());
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/it/support/fixtures/container_reaper.py"
    );
    let mut reaper = Command::new("python3")
        .args([script, host, LABEL, session])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        // Its own process group: a Ctrl-C that stops the tests must not stop their clean-up.
        .process_group(0)
        .spawn()
        .map_err(|e| format!("the containers' reaper did not start: {e}"))?;
    let stdin = reaper.stdin.take().expect("piped stdin");
    let _ = STDIN.set(stdin);
    Ok(())
}

/// `GET /_ping`: `Ok` when the engine answers `OK`.
fn ping(host: &str) -> Result<(), String> {
    match request(host, "GET", "/_ping")? {
        (200, body) if body.trim() == "OK" => Ok(()),
        (status, body) => Err(format!("/_ping answered {status} {body}")),
    }
}

/// One HTTP/1.0 request to the engine's API at `host` (`unix://` or plain `tcp://`): the
/// status and the body. HTTP/1.0 keeps the answer whole (no chunks) and ends it by closing.
fn request(host: &str, method: &str, path: &str) -> Result<(u16, String), String> {
    let message = format!("{method} {path} HTTP/1.0\r\nHost: docker\r\n\r\n");
    let timeout = Some(Duration::from_secs(30));
    let mut answer = Vec::new();
    if let Some(socket) = host.strip_prefix("unix://") {
        let mut stream = std::os::unix::net::UnixStream::connect(socket)
            .map_err(|e| format!("{socket}: {e}"))?;
        stream
            .set_read_timeout(timeout)
            .map_err(|e| e.to_string())?;
        stream
            .write_all(message.as_bytes())
            .map_err(|e| e.to_string())?;
        stream.read_to_end(&mut answer).map_err(|e| e.to_string())?;
    } else if let Some(address) = host.strip_prefix("tcp://") {
        let address = address.trim_end_matches('/');
        let mut stream =
            std::net::TcpStream::connect(address).map_err(|e| format!("{address}: {e}"))?;
        stream
            .set_read_timeout(timeout)
            .map_err(|e| e.to_string())?;
        stream
            .write_all(message.as_bytes())
            .map_err(|e| e.to_string())?;
        stream.read_to_end(&mut answer).map_err(|e| e.to_string())?;
    } else {
        return Err(format!(
            "{host}: only unix:// and tcp:// engines are supported"
        ));
    }
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {head}"))?;
    Ok((status, body.to_owned()))
}
