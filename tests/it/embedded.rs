//! `netcron all` with nothing listening at its local URLs brings its own Postgres and Redis
//! (issue 27): the real binary, the servers installed on the machine, a data directory of the
//! test's own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::app::{eventually, id};
use crate::support::sshd::free_port;

const TOKEN: &str = "embedded-token-7c1d";
const KEY: &str = "bmV0Y3Jvbi1kZXYta2V5LW5vdC1mb3ItcHJvZCEhISE=";

/// A data directory and the configuration of one `netcron all` over it; the URLs name free
/// loopback ports where nothing listens.
struct Node {
    dir: PathBuf,
    api: u16,
    database_url: String,
    redis_url: String,
}

impl Node {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("netcron-embedded-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("data dir");
        Self {
            dir,
            api: free_port(),
            database_url: format!("postgres://postgres@127.0.0.1:{}/netcron", free_port()),
            redis_url: format!("redis://127.0.0.1:{}", free_port()),
        }
    }

    fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_netcron"));
        command
            .arg("all")
            .env("DATABASE_URL", &self.database_url)
            .env("REDIS_URL", &self.redis_url)
            .env("NETCRON_EMBEDDED", "auto")
            .env("NETCRON_DATA_DIR", self.dir.join("data"))
            .env_remove("NETCRON_EMBEDDED_SEARCH")
            .env("NETCRON_API_ADDR", format!("127.0.0.1:{}", self.api))
            .env("NETCRON_API_TOKEN", TOKEN)
            .env("NETCRON_SECRET_KEY", KEY)
            .env("NETCRON_LOG_FORMAT", "json");
        command
    }

    /// Starts `netcron all` and waits until it is ready.
    async fn start(&self) -> Running {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("netcron.log"))
            .expect("log");
        let child = self
            .command()
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("netcron all");
        let running = Running { child };
        let ready = format!("http://127.0.0.1:{}/ready", self.api);
        // After a crash the start first waits for the old servers to end, then Postgres
        // recovers: on a loaded machine that is more than the usual few seconds.
        eventually("netcron all is ready", Duration::from_secs(90), || async {
            let response = reqwest::get(&ready).await.ok()?;
            response.status().is_success().then_some(())
        })
        .await;
        running
    }

    fn data(&self, file: &str) -> PathBuf {
        self.dir.join("data").join(file)
    }

    /// The pids of the two servers, from their own pidfiles.
    fn server_pids(&self) -> [i32; 2] {
        [
            first_line_pid(&self.data("postgres/postmaster.pid")),
            first_line_pid(&self.data("redis/redis.pid")),
        ]
    }

    /// Live postmasters of this data directory.
    fn postmasters(&self) -> Vec<i32> {
        let needle = format!("-D\0{}\0", self.data("postgres").display());
        std::fs::read_dir("/proc")
            .expect("/proc")
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| alive(*pid))
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
            })
            .collect()
    }

    async fn api(&self, path: &str, body: Option<Value>) -> Value {
        let client = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{}{path}", self.api);
        let request = match body {
            Some(body) => client.post(url).json(&body),
            None => client.get(url),
        };
        let response = request.bearer_auth(TOKEN).send().await.expect("request");
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.expect("JSON")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Running {
    child: Child,
}

impl Running {
    /// SIGTERM, as a service manager stops it; the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        signal(self.child.id(), nix::sys::signal::Signal::SIGTERM);
        self.child.wait().expect("wait")
    }

    /// `kill -9`: netcron gets no chance to stop anything.
    fn crash(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            signal(self.child.id(), nix::sys::signal::Signal::SIGTERM);
            let _ = self.child.wait();
        }
    }
}

fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid"));
    let _ = nix::sys::signal::kill(pid, signal);
}

fn first_line_pid(path: &Path) -> i32 {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {}", path.display()))
}

/// A process that runs (a zombie has ended; only its parent has not collected it).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}

async fn gone(pids: &[i32]) {
    // Longer than netcron's own wait for a server to stop (30 s, then SIGKILL): a loaded
    // machine's Postgres can take seconds over its shutdown checkpoint.
    eventually(
        "the servers have ended",
        Duration::from_secs(40),
        || async { pids.iter().all(|pid| !alive(*pid)).then_some(()) },
    )
    .await;
}

/// A noop run of a new device, through the API; the device's id.
async fn run_once(node: &Node) -> String {
    let cred = node
        .api(
            "/credentials",
            Some(json!({"name": "c", "username": "u", "password": "p"})),
        )
        .await;
    let device = node
        .api(
            "/devices",
            Some(
                json!({"name": "kept", "host": "127.0.0.1", "port": 22, "platform": "linux",
                        "credential_id": cred["id"]}),
            ),
        )
        .await;
    let device_id = id(&device).to_owned();
    let command = node
        .api(
            &format!("/devices/{device_id}/commands"),
            Some(json!({"name": "n", "kind": "noop"})),
        )
        .await;
    let run = node
        .api(
            &format!("/devices/{device_id}/commands/{}/run", id(&command)),
            Some(json!({})),
        )
        .await;
    let path = format!("/runs/{}", id(&run));
    let done = eventually("the run finishes", Duration::from_secs(20), || async {
        let run = node.api(&path, None).await;
        (run["status"] != "queued" && run["status"] != "running").then_some(run)
    })
    .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    device_id
}

#[tokio::test]
async fn netcron_all_runs_on_its_own_servers_stops_them_and_keeps_the_data() {
    let node = Node::new();
    let running = node.start().await;
    let device = run_once(&node).await;
    let pids = node.server_pids();

    let status = running.terminate();
    assert!(status.success(), "{status}");
    gone(&pids).await;
    assert!(node.postmasters().is_empty());

    let running = node.start().await;
    let kept = node.api(&format!("/devices/{device}"), None).await;
    assert_eq!(kept["name"], "kept", "{kept}");
    running.terminate();
}

#[tokio::test]
async fn a_crashed_netcron_leaves_no_server_behind_the_next_start() {
    let node = Node::new();
    let running = node.start().await;
    // Read while they run: a Redis told to stop removes its pidfile on the way out.
    let crashed = node.server_pids();
    running.crash();

    let running = node.start().await;
    gone(&crashed).await;
    let postmasters = node.postmasters();
    assert_eq!(postmasters.len(), 1, "{postmasters:?}");
    assert!(!crashed.contains(&postmasters[0]));
    let pids = node.server_pids();
    running.terminate();
    gone(&pids).await;
}

#[tokio::test]
async fn without_the_server_binaries_netcron_all_names_the_package_and_exits() {
    let node = Node::new();
    let Output { status, stderr, .. } = node
        .command()
        .env("NETCRON_EMBEDDED_SEARCH", "/nonexistent")
        .stdin(Stdio::null())
        .output()
        .expect("netcron all");
    let stderr = String::from_utf8_lossy(&stderr);
    assert!(!status.success());
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("netcron: the embedded Postgres needs `postgres` and `initdb`"),
        "{stderr}"
    );
    let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    if os.contains("ID=debian") || os.contains("ID=ubuntu") {
        assert!(
            last.ends_with("install them: apt-get install -y postgresql redis-server"),
            "{last}"
        );
    }
}

/// A Postgres of this data directory that netcron did not start (an earlier netcron's, on a
/// platform without a parent-death signal) is stopped cleanly and started again as netcron's
/// own child, so that the next crash cannot leave it behind either.
#[tokio::test]
async fn a_server_left_running_is_stopped_and_started_again_as_a_child() {
    let node = Node::new();
    node.start().await.terminate();
    let pg = netcron_embedded::find::postgres(None, None).expect("an installed Postgres");
    let ports = std::fs::read_to_string(node.data("ports")).expect("ports");
    let port = ports
        .lines()
        .find_map(|l| l.strip_prefix("postgres="))
        .expect("the Postgres port");
    let pgdata = node.data("postgres");
    let mut command = if nix::unistd::geteuid().is_root() {
        let user = nix::unistd::User::from_name("postgres")
            .ok()
            .flatten()
            .or_else(|| nix::unistd::User::from_name("nobody").ok().flatten())
            .expect("the user Postgres runs as");
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={}", user.uid))
            .arg(format!("--regid={}", user.gid))
            .args(["--clear-groups", "--"]);
        c.arg(pg.bin.join("postgres"));
        c
    } else {
        Command::new(pg.bin.join("postgres"))
    };
    let mut left = command
        .arg("-D")
        .arg(&pgdata)
        .args(["-c", "listen_addresses=127.0.0.1", "-p", port])
        .args(["-c", "unix_socket_directories="])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("a Postgres netcron did not start");
    let left_pid = i32::try_from(left.id()).expect("pid");
    eventually(
        "the left Postgres is ready",
        Duration::from_secs(20),
        || async {
            let text = std::fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
            let lines: Vec<&str> = text.lines().collect();
            (lines.first()? == &left_pid.to_string() && lines.get(7)?.trim() == "ready")
                .then_some(())
        },
    )
    .await;

    let running = node.start().await;
    let status = left.wait().expect("wait");
    assert!(
        status.success(),
        "stopped cleanly (fast shutdown), not killed: {status}"
    );
    let postmasters = node.postmasters();
    assert_eq!(postmasters.len(), 1, "{postmasters:?}");
    assert_ne!(postmasters[0], left_pid);
    running.terminate();
}

/// One data directory, one netcron: a second refuses instead of taking the first one's
/// servers for orphans.
#[tokio::test]
async fn a_second_netcron_on_the_same_data_directory_refuses_to_start() {
    let node = Node::new();
    let running = node.start().await;
    let pids = node.server_pids();
    let Output { status, stderr, .. } = node
        .command()
        .env("NETCRON_API_ADDR", format!("127.0.0.1:{}", free_port()))
        .stdin(Stdio::null())
        .output()
        .expect("a second netcron all");
    let stderr = String::from_utf8_lossy(&stderr);
    assert!(!status.success());
    assert!(
        stderr.contains("another netcron") && stderr.contains("NETCRON_DATA_DIR"),
        "{stderr}"
    );
    assert!(
        pids.iter().all(|pid| alive(*pid)),
        "the first one's servers still run"
    );
    assert_eq!(node.server_pids(), pids);
    running.terminate();
}
