//! Redis Sentinel (issue 16): a master, a replica and a Sentinel of their own; the api, ingest
//! and the scheduler in this process and a `netcron executor` process all given
//! `redis+sentinel://`. The master is killed while a run's command is running; Sentinel
//! promotes the replica, and every run — before, across and after the fail-over — executes
//! exactly once, as its first attempt.

use std::fs;
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use netcron_common::sentinel::SentinelUrl;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::executor::{command, finished, run_now, start_scheduler, wait_for_status};
use crate::helpers::{TestApp, eventually};
use crate::lifecycle::Executions;
use crate::sites::{Site, SiteExecutor, temp_dir};
use crate::sshd::{TEST_PASSWORD, TEST_USER, TestSshd, free_port};

const SERVICE: &str = "nczmaster";

/// A redis-server (or Sentinel) of this test, killed on drop.
pub(crate) struct Server {
    pub(crate) port: u16,
    child: Option<Child>,
}

impl Server {
    pub(crate) fn start(dir: &std::path::Path, name: &str, config: &str, sentinel: bool) -> Server {
        let port = free_port();
        let path = dir.join(format!("{name}.conf"));
        fs::write(
            &path,
            format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {}\nlogfile {}/{name}.log\n{config}",
                dir.display(),
                dir.display()
            ),
        )
        .expect("write config");
        let mut command = Command::new("redis-server");
        command.arg(&path);
        if sentinel {
            command.arg("--sentinel");
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (install redis-server, see .ci/run)");
        let server = Server {
            port,
            child: Some(child),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "{name} did not start: {}",
                fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// `kill -9`: the master dies with whatever it had not replicated.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server's process id (to freeze it with SIGSTOP).
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}", self.port))?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        cmd.query_async(&mut conn).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The port Sentinel names as the master now.
async fn master_port(sentinel: &Server) -> Option<u16> {
    let answer: (String, u16) = sentinel
        .query(
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(SERVICE),
        )
        .await
        .ok()?;
    Some(answer.1)
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_survive_a_sentinel_fail_over_each_executed_once() {
    let dir = temp_dir("sentinel");
    // No 5 s wait for more replicas before the first (diskless) full sync.
    let plain = "save \"\"\nappendonly no\nrepl-diskless-sync-delay 0\n";
    let mut master = Server::start(&dir, "master", plain, false);
    let replica = Server::start(
        &dir,
        "replica",
        &format!("{plain}replicaof 127.0.0.1 {}\n", master.port),
        false,
    );
    let sentinel = Server::start(
        &dir,
        "sentinel",
        &format!(
            "sentinel monitor {SERVICE} 127.0.0.1 {} 1\n\
             sentinel down-after-milliseconds {SERVICE} 1000\n\
             sentinel failover-timeout {SERVICE} 5000\n",
            master.port
        ),
        true,
    );
    // The replica must hold the master's data before anything is written that the test
    // expects to survive: a replica promoted in the middle of its first sync comes up empty.
    eventually("the replica in sync", Duration::from_secs(30), || async {
        let info: String = replica
            .query(redis::cmd("INFO").arg("replication"))
            .await
            .ok()?;
        info.contains("master_link_status:up").then_some(())
    })
    .await;
    // Sentinel learns the replica from the master's INFO; until it knows one it cannot fail
    // over.
    eventually(
        "Sentinel knows the replica",
        Duration::from_secs(30),
        || async {
            let replicas: Vec<redis::Value> = sentinel
                .query(redis::cmd("SENTINEL").arg("replicas").arg(SERVICE))
                .await
                .ok()?;
            (!replicas.is_empty()).then_some(())
        },
    )
    .await;

    let url = format!("redis+sentinel://127.0.0.1:{}/{SERVICE}", sentinel.port);
    let forwarding = CancellationToken::new();
    let local = netcron_common::sentinel::forward(
        SentinelUrl::parse(&url).expect("scheme").expect("valid"),
        forwarding.clone(),
    )
    .await
    .expect("forwarder");
    let app = TestApp::spawn_with(|s| s.redis.url = local.clone()).await;
    let _scheduler = start_scheduler(&app).await;
    let site = Site {
        zone: "default",
        netns: None,
        redis_host: Ipv4Addr::LOCALHOST,
    };
    // The executor process is given the Sentinel URL itself (its own forwarder).
    let executor = SiteExecutor::start(&site, &url, &app);

    let sshd = TestSshd::start();
    let executions = Executions::new();
    let cred = app
        .create(
            "/credentials",
            json!({"name": "c", "username": TEST_USER, "password": TEST_PASSWORD}),
        )
        .await;
    let device = app
        .create(
            "/devices",
            json!({"name": "d", "host": "127.0.0.1", "port": sshd.port, "platform": "linux",
                   "credential_id": cred["id"]}),
        )
        .await;
    let quick = command(
        &app,
        &device,
        json!({"command": executions.command("echo quick")}),
    )
    .await;
    let slow = command(
        &app,
        &device,
        json!({"command": executions.command("sleep 4; echo slow"), "timeout_s": 60}),
    )
    .await;

    let before = run_now(&app, &device, &quick).await;
    let run = finished(&app, &before).await;
    assert_eq!(run["status"], "succeeded", "{run}\n{}", executor.log());

    // The master dies while the slow run's command runs.
    let across = run_now(&app, &device, &slow).await;
    executions.wait_for(2, Duration::from_secs(30)).await;
    let old = master.port;
    master.kill();
    eventually(
        "Sentinel promotes the replica",
        Duration::from_secs(30),
        || async { (master_port(&sentinel).await == Some(replica.port)).then_some(()) },
    )
    .await;
    assert_ne!(old, replica.port);
    let run = wait_for_status(
        &app,
        &across,
        &["succeeded", "failed", "error"],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{run}\n{}", executor.log());

    let after = run_now(&app, &device, &quick).await;
    let run = wait_for_status(
        &app,
        &after,
        &["succeeded", "failed", "error"],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{run}\n{}", executor.log());

    // Each run executed once, as its first attempt: nothing lost, nothing repeated.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counts = executions.counts();
    let across_run = finished(&app, &across).await;
    assert_eq!(
        executions.lines().len(),
        3,
        "{counts:?}\nthe run across the fail-over: {across_run}\n{}",
        executor.log()
    );
    for run_id in [&before, &across, &after] {
        let run = finished(&app, run_id).await;
        assert_eq!(run["attempt"], 1, "{run}");
        assert_eq!(counts.get(&(run_id.clone(), 1)), Some(&1), "{counts:?}");
    }
    assert!(
        executor.log().contains("Redis master changed"),
        "the executor's forwarder followed the fail-over:\n{}",
        executor.log()
    );
    drop(executor);
    forwarding.cancel();
    drop(sentinel);
    drop(replica);
}

/// A Sentinel of the test's own, on loopback, that names `master_port` as the master of every
/// service, right or wrong, and answers `+OK` to anything else (the client's handshake). The
/// thing under test is our client of it; the Redis servers it names are real.
async fn fake_sentinel(master_port: u16) -> u16 {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut read = tokio::io::BufReader::new(read);
                loop {
                    // A command is an array of bulk strings: `*N`, then `$len` and the bytes.
                    let mut line = String::new();
                    if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let n: usize = line.trim().trim_start_matches('*').parse().unwrap_or(0);
                    let mut args = Vec::new();
                    for _ in 0..n {
                        line.clear();
                        if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let len: usize = line.trim().trim_start_matches('$').parse().unwrap_or(0);
                        let mut arg = vec![0; len + 2];
                        if read.read_exact(&mut arg).await.is_err() {
                            return;
                        }
                        arg.truncate(len);
                        args.push(String::from_utf8_lossy(&arg).to_uppercase());
                    }
                    let reply = if args.first().map(String::as_str) == Some("SENTINEL") {
                        let port = master_port.to_string();
                        format!("*2\r\n$9\r\n127.0.0.1\r\n${}\r\n{port}\r\n", port.len())
                    } else {
                        "+OK\r\n".to_owned()
                    };
                    if write.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// The role of the server a connection through `local` reaches, from `HELLO` (which the
/// executor's ACL allows): `master` or `replica`.
async fn role_through(local: &str) -> Option<String> {
    let client = redis::Client::open(local).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    let hello: redis::Value = redis::cmd("HELLO").query_async(&mut conn).await.ok()?;
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    hello
        .as_map_iter()?
        .find(|(key, _)| text(key).as_deref() == Some("role"))
        .and_then(|(_, role)| text(role))
}

/// The first Sentinel names a replica (a stale or lying Sentinel); the client checks the role
/// of the address it is given and asks the next Sentinel, so no client is sent to the replica.
/// The URL's user has the executor's documented ACL, which allows `HELLO` but not `ROLE`.
#[tokio::test(flavor = "multi_thread")]
async fn a_sentinel_that_names_a_replica_is_not_followed() {
    let dir = temp_dir("sentinel-role");
    let plain = "save \"\"\nappendonly no\nrepl-diskless-sync-delay 0\n\
                 user default on nopass ~* &* +@all\n\
                 user exec on >pw -@all +ping +hello +auth +time\n";
    let master = Server::start(&dir, "master", plain, false);
    let replica = Server::start(
        &dir,
        "replica",
        &format!("{plain}replicaof 127.0.0.1 {}\n", master.port),
        false,
    );
    let stale = fake_sentinel(replica.port).await;
    let right = fake_sentinel(master.port).await;
    let url = format!("redis+sentinel://exec:pw@127.0.0.1:{stale},127.0.0.1:{right}/{SERVICE}");
    let forwarding = CancellationToken::new();
    let local = netcron_common::sentinel::forward(
        SentinelUrl::parse(&url).expect("scheme").expect("valid"),
        forwarding.clone(),
    )
    .await
    .expect("forwarder");
    // Over several of the forwarder's polls, every connection reaches the master.
    let mut roles = Vec::new();
    for _ in 0..10 {
        roles.push(role_through(&local).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        roles.iter().all(|r| r.as_deref() == Some("master")),
        "roles reached through the forwarder: {roles:?}"
    );
    forwarding.cancel();
    drop(replica);
    drop(master);
}
