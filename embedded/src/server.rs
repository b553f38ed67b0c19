//! Running the servers: the data directory's layout, the processes and their ends.
//!
//! `<dir>/postgres` (the cluster), `<dir>/redis` (append-only file and pidfile),
//! `<dir>/postgres.log`, `<dir>/redis.log`, `<dir>/ports` (the ports last used, so the URLs
//! stay the same across restarts while those ports are free) and `<dir>/password` (generated
//! once, mode 0600; both servers require it, so other users of the machine cannot use them).
//! `<dir>/lock` is locked by the netcron using the directory, so a second one refuses to start
//! rather than take the first one's servers for orphans.

use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, User};

use crate::config::Wanted;
use crate::error::{Error, Result};
use crate::find;

/// How long a server may take to start or stop.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct Plan<'a> {
    pub dir: PathBuf,
    pub wanted: Wanted,
    pub search: Option<&'a [PathBuf]>,
    pub database: String,
    pub redis_db: Option<String>,
    pub disposable: bool,
}

/// The running private servers. Dropping it stops them (Postgres with a fast shutdown, Redis
/// saving its data) and waits for them to end.
pub struct Servers {
    pub dir: PathBuf,
    /// The URL the roles use instead of `DATABASE_URL`, when Postgres is private.
    pub database_url: Option<String>,
    /// The URL the roles use instead of `REDIS_URL`, when Redis is private.
    pub redis_url: Option<String>,
    children: Vec<Server>,
    /// Held while the servers run; the kernel releases it when the process ends, however.
    _lock: nix::fcntl::Flock<File>,
}

struct Server {
    name: &'static str,
    child: Child,
    stop: Signal,
}

/// The user the servers run as when netcron runs as root: Postgres refuses root, so both run
/// as the `postgres` system user that every distribution's package creates, else `nobody`.
#[derive(Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

pub(crate) fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn run_as() -> Result<Option<RunAs>> {
    if !is_root() {
        return Ok(None);
    }
    for name in ["postgres", "nobody"] {
        if let Ok(Some(user)) = User::from_name(name) {
            return Ok(Some(RunAs {
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
            }));
        }
    }
    Err(Error::Failed(
        "netcron runs as root and Postgres refuses to: create a `postgres` user or run netcron \
         as another user"
            .into(),
    ))
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// `util-linux`'s `setpriv`, which starts each server with a parent-death signal (and, as root,
/// as [`RunAs`]) without `unsafe` code in netcron.
fn setpriv() -> Option<PathBuf> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

struct Launcher {
    setpriv: Option<PathBuf>,
    run_as: Option<RunAs>,
}

impl Launcher {
    /// `program` under `setpriv`: `death` is the signal the kernel sends it when netcron dies.
    /// Each server gets its own process group, so a ctrl-c in the terminal reaches netcron
    /// alone, which then stops the servers after the roles.
    fn command(&self, program: &Path, death: &str) -> Command {
        let mut command = match &self.setpriv {
            Some(setpriv) => {
                let mut c = Command::new(setpriv);
                if let Some(user) = self.run_as {
                    c.arg(format!("--reuid={}", user.uid))
                        .arg(format!("--regid={}", user.gid))
                        .arg("--clear-groups");
                }
                c.args(["--pdeathsig", death, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        command.process_group(0).stdin(Stdio::null());
        command
    }

    /// A directory for a server's files, owned by the user it runs as.
    fn own_dir(&self, path: &Path) -> Result<()> {
        fs::create_dir_all(path).map_err(io(format!("creating {}", path.display())))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))
            .map_err(io(format!("setting the mode of {}", path.display())))?;
        if let Some(user) = self.run_as {
            std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).map_err(io(format!(
                "giving {} to uid {}",
                path.display(),
                user.uid
            )))?;
        }
        Ok(())
    }
}

pub(crate) fn start(plan: Plan<'_>) -> Result<Servers> {
    let Plan {
        dir,
        wanted,
        search,
        database,
        redis_db,
        disposable,
    } = plan;
    let pgdata = dir.join("postgres");
    let cluster = fs::read_to_string(pgdata.join("PG_VERSION"))
        .ok()
        .and_then(|v| v.trim().parse().ok());
    let postgres = wanted
        .postgres
        .then(|| find::postgres(search, cluster))
        .transpose()?;
    let redis = wanted.redis.then(|| find::redis(search)).transpose()?;
    let run_as = run_as()?;
    let setpriv = setpriv();
    if run_as.is_some() && setpriv.is_none() {
        return Err(Error::Failed(
            "netcron runs as root and needs `setpriv` (util-linux) to run Postgres and Redis as \
             an unprivileged user; install util-linux or run netcron as another user"
                .into(),
        ));
    }
    let launcher = Launcher { setpriv, run_as };
    fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    let lock = lock(&dir)?;
    tracing::info!(dir = %dir.display(), postgres = wanted.postgres, redis = wanted.redis,
        "embedded Postgres and Redis in {}", dir.display());
    if cluster.is_some() && !dir.join("password").exists() {
        return Err(Error::Failed(format!(
            "{} is missing, and the Postgres data in {} needs it: restore it, or remove the \
             data directory to start over (its data is lost)",
            dir.join("password").display(),
            pgdata.display()
        )));
    }
    let password = password(&dir)?;
    let (pg_port, redis_port) = ports(&dir)?;
    let mut servers = Servers {
        dir: dir.clone(),
        database_url: None,
        redis_url: None,
        children: Vec::new(),
        _lock: lock,
    };
    if let Some(pg) = postgres {
        stop_stale(&pgdata.join("postmaster.pid"), "postgres", Signal::SIGINT);
        if cluster.is_none() {
            initdb(&launcher, &pg, &dir, &password)?;
        }
        servers
            .children
            .push(start_postgres(&launcher, &pg, &dir, pg_port, disposable)?);
        servers.database_url = Some(format!(
            "postgres://postgres:{password}@127.0.0.1:{pg_port}/{database}"
        ));
        tracing::info!(port = pg_port, version = pg.major, bin = %pg.bin.display(),
            "embedded Postgres started");
    }
    if let Some(program) = redis {
        let redis_dir = dir.join("redis");
        stop_stale(&redis_dir.join("redis.pid"), "redis", Signal::SIGTERM);
        launcher.own_dir(&redis_dir)?;
        servers.children.push(start_redis(
            &launcher, &program, &dir, redis_port, &password, disposable,
        )?);
        let db = redis_db.map(|db| format!("/{db}")).unwrap_or_default();
        servers.redis_url = Some(format!("redis://:{password}@127.0.0.1:{redis_port}{db}"));
        tracing::info!(port = redis_port, "embedded Redis started");
    }
    Ok(servers)
}

/// Locks `<dir>/lock` for this process (and writes its pid there, for the message a second
/// netcron gives).
fn lock(dir: &Path) -> Result<nix::fcntl::Flock<File>> {
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io(format!("opening {}", path.display())))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(mut locked) => {
            let _ = locked.set_len(0);
            let _ = write!(locked, "{}", std::process::id());
            Ok(locked)
        }
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let holder = fs::read_to_string(&path).unwrap_or_default();
            Err(Error::Failed(format!(
                "another netcron (pid {}) runs the embedded servers of {}; give this one its \
                 own NETCRON_DATA_DIR",
                holder.trim(),
                dir.display()
            )))
        }
        Err((_, errno)) => Err(Error::Io {
            what: format!("locking {}", path.display()),
            source: errno.into(),
        }),
    }
}

/// The password both servers require, made once.
fn password(dir: &Path) -> Result<String> {
    let path = dir.join("password");
    if let Ok(text) = fs::read_to_string(&path) {
        return Ok(text.trim().to_owned());
    }
    let bytes: [u8; 16] = rand::random();
    let password: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(io(format!("creating {}", path.display())))?;
    file.write_all(password.as_bytes())
        .map_err(io(format!("writing {}", path.display())))?;
    Ok(password)
}

/// The ports last used when they are still free, else new free ones; remembered in `<dir>/ports`.
fn ports(dir: &Path) -> Result<(u16, u16)> {
    let path = dir.join("ports");
    let saved = fs::read_to_string(&path).unwrap_or_default();
    let remembered = |name: &str| {
        saved.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix('=')?
                .trim()
                .parse::<u16>()
                .ok()
        })
    };
    let free = |port: Option<u16>| -> Result<u16> {
        if let Some(port) = port
            && TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
        {
            return Ok(port);
        }
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io("finding a free port"))?;
        listener
            .local_addr()
            .map(|a| a.port())
            .map_err(io("finding a free port"))
    };
    let pg = free(remembered("postgres"))?;
    let mut redis = free(remembered("redis"))?;
    while redis == pg {
        redis = free(None)?;
    }
    fs::write(&path, format!("postgres={pg}\nredis={redis}\n"))
        .map_err(io(format!("writing {}", path.display())))?;
    Ok((pg, redis))
}

/// Whether `pid` is a live process (a zombie, already dead, is not).
fn alive(pid: i32) -> bool {
    if kill(Pid::from_raw(pid), None).is_err() {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => true,
    }
}

/// Stops a server left running from this data directory by an earlier netcron (its pidfile
/// names a live process of that program), and waits for it to end.
fn stop_stale(pidfile: &Path, program: &str, signal: Signal) {
    let Some(pid) = fs::read_to_string(pidfile)
        .ok()
        .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok())
    else {
        return;
    };
    if !alive(pid) {
        return;
    }
    // Where /proc exists, make sure the pid was not reused by another program.
    if let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline"))
        && !String::from_utf8_lossy(&cmdline).contains(program)
    {
        return;
    }
    tracing::warn!(
        pid,
        "stopping the embedded {program} an earlier netcron left running"
    );
    let _ = kill(Pid::from_raw(pid), signal);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(pid) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

fn log_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io(format!("opening {}", path.display())))
}

/// The last non-empty line of a server's log, for an error message.
fn last_line(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| format!("; its log ({}) ends: {}", path.display(), l.trim()))
        .unwrap_or_default()
}

fn initdb(launcher: &Launcher, pg: &find::Postgres, dir: &Path, password: &str) -> Result<()> {
    let pgdata = dir.join("postgres");
    launcher.own_dir(&pgdata)?;
    // initdb reads the superuser's password from a file, readable by the user it runs as.
    let pwfile = dir.join("initdb.pw");
    fs::write(&pwfile, password).map_err(io(format!("writing {}", pwfile.display())))?;
    fs::set_permissions(&pwfile, fs::Permissions::from_mode(0o600))
        .map_err(io(format!("setting the mode of {}", pwfile.display())))?;
    if let Some(user) = launcher.run_as {
        std::os::unix::fs::chown(&pwfile, Some(user.uid), Some(user.gid)).map_err(io(format!(
            "giving {} to uid {}",
            pwfile.display(),
            user.uid
        )))?;
    }
    let log_path = dir.join("postgres.log");
    let log = log_file(&log_path)?;
    let status = launcher
        .command(&pg.bin.join("initdb"), "KILL")
        .arg("-D")
        .arg(&pgdata)
        .args(["-U", "postgres", "-E", "UTF8", "--no-locale"])
        .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
        .arg(format!("--pwfile={}", pwfile.display()))
        .stdout(log.try_clone().map_err(io("the Postgres log"))?)
        .stderr(log)
        .status();
    let _ = fs::remove_file(&pwfile);
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(Error::Failed(format!(
            "initdb failed ({s}){}",
            last_line(&log_path)
        ))),
        Err(e) => Err(Error::Io {
            what: format!("running {}", pg.bin.join("initdb").display()),
            source: e,
        }),
    }
}

fn start_postgres(
    launcher: &Launcher,
    pg: &find::Postgres,
    dir: &Path,
    port: u16,
    disposable: bool,
) -> Result<Server> {
    let pgdata = dir.join("postgres");
    let log_path = dir.join("postgres.log");
    let log = log_file(&log_path)?;
    // A Unix socket path is limited to about 100 bytes; a longer data directory gets none.
    let socket_dir = if pgdata.as_os_str().len() < 80 {
        pgdata.display().to_string()
    } else {
        String::new()
    };
    let mut command = launcher
        // SIGINT is Postgres' fast shutdown.
        .command(&pg.bin.join("postgres"), "INT");
    if disposable {
        // A test binary's databases live minutes; waiting for the disk on every commit and
        // every CREATE DATABASE is most of their cost.
        for option in [
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
        ] {
            command.args(["-c", option]);
        }
    }
    let child = command
        .arg("-D")
        .arg(&pgdata)
        .args(["-c", "listen_addresses=127.0.0.1", "-p", &port.to_string()])
        .arg("-c")
        .arg(format!("unix_socket_directories={socket_dir}"))
        .stdout(log.try_clone().map_err(io("the Postgres log"))?)
        .stderr(log)
        .spawn()
        .map_err(io(format!(
            "starting {}",
            pg.bin.join("postgres").display()
        )))?;
    let mut server = Server {
        name: "Postgres",
        child,
        stop: Signal::SIGINT,
    };
    let pid = server.child.id().to_string();
    let pidfile = pgdata.join("postmaster.pid");
    // postmaster.pid's eighth line says `ready` once connections are accepted (as `pg_ctl -w`
    // reads it); the first must be this child's pid, not a crashed predecessor's.
    let ready = || {
        let text = fs::read_to_string(&pidfile).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines.first().is_some_and(|l| l.trim() == pid)
            && lines.get(7).is_some_and(|l| l.trim() == "ready")
    };
    wait_ready(&mut server, &log_path, ready)?;
    Ok(server)
}

fn start_redis(
    launcher: &Launcher,
    program: &Path,
    dir: &Path,
    port: u16,
    password: &str,
    disposable: bool,
) -> Result<Server> {
    let redis_dir = dir.join("redis");
    let log_path = dir.join("redis.log");
    let log = log_file(&log_path)?;
    // The configuration goes in on stdin, so the password is in no file and no command line.
    // The append-only file, fsynced every second, as the compose stack runs Redis.
    let persistence = if disposable {
        "appendonly no\nsave \"\""
    } else {
        "appendonly yes\nappendfsync everysec"
    };
    let config = format!(
        "port {port}\nbind 127.0.0.1\nprotected-mode yes\ndaemonize no\ndir {}\n\
         pidfile {}\n{persistence}\nrequirepass {password}\n",
        redis_dir.display(),
        redis_dir.join("redis.pid").display()
    );
    let mut child = launcher
        .command(program, "TERM")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(log.try_clone().map_err(io("the Redis log"))?)
        .stderr(log)
        .spawn()
        .map_err(io(format!("starting {}", program.display())))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(config.as_bytes())
            .map_err(io("giving Redis its configuration"))?;
    }
    let mut server = Server {
        name: "Redis",
        child,
        stop: Signal::SIGTERM,
    };
    let ready = || redis_answers(port, password);
    wait_ready(&mut server, &log_path, ready)?;
    Ok(server)
}

/// Whether Redis answers `PING` after `AUTH` (not `-LOADING` while it reads its data).
fn redis_answers(port: u16, password: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream
        .write_all(format!("AUTH {password}\r\nPING\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 256];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer);
        if text.contains("+PONG") {
            return true;
        }
        if text.matches("\r\n").count() >= 2 {
            break;
        }
    }
    false
}

fn wait_ready(server: &mut Server, log: &Path, ready: impl Fn() -> bool) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = server.child.try_wait() {
            return Err(Error::Failed(format!(
                "the embedded {} exited at start ({status}){}",
                server.name,
                last_line(log)
            )));
        }
        if ready() {
            return Ok(());
        }
        if Instant::now() > deadline {
            server.stop();
            return Err(Error::Failed(format!(
                "the embedded {} was not ready within {} s{}",
                server.name,
                START_TIMEOUT.as_secs(),
                last_line(log)
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Server {
    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let Ok(pid) = i32::try_from(self.child.id()) else {
            return;
        };
        let _ = kill(Pid::from_raw(pid), self.stop);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) {
                tracing::info!("embedded {} stopped", self.name);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        tracing::warn!(
            "embedded {} did not stop within {} s; killed",
            self.name,
            STOP_TIMEOUT.as_secs()
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        // Redis first: it was started last.
        for server in self.children.iter_mut().rev() {
            server.stop();
        }
    }
}
