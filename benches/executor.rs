//! Executor benchmark (`cargo bench --bench executor`): runs/s through the whole pipeline —
//! outbox → scheduler's publisher → tasks stream → executor → results stream → ingest →
//! Postgres — for SSH commands against a local OpenSSH sshd at several concurrencies, next to
//! the ceiling that sshd allows (OpenSSH's own client, same concurrency), plus netcron's CPU
//! time per SSH run, and runs/s of the built-in `noop` kind that skips SSH.
//!
//! Uses DATABASE_URL's server and REDIS_URL (from `.env`) in a database and stream prefix of its
//! own, and starts its own sshd (`/usr/sbin/sshd`) on a free loopback port that accepts the
//! current user with a fresh key. Results go to stdout as Markdown. `SSH_RUNS` (default 200)
//! and `NOOP_RUNS` (default 80000) size the workloads; `CONCURRENCY` (default `1,16,64,200`)
//! picks the levels. Login and command timeouts default to 300 s (`LOGIN_TIMEOUT_S`,
//! `COMMAND_TIMEOUT_S`) so that only the server limits throughput: at concurrency 200 the local
//! sshd needs about a minute per connection, longer than the product's defaults allow.
//!
//! The concurrency levels measure fresh connections (session reuse off, `NETCRON_SSH_IDLE_S`
//! = 0), as against the OpenSSH client without multiplexing. The session-reuse section then
//! measures `SSH_RUNS` runs on one device (at per-device concurrency `SAME_DEVICE`, default
//! `1,8`) and over 20 devices (concurrency 20), reuse off and on, beside OpenSSH with
//! `ControlMaster=auto`/`ControlPersist` running the same command at the same concurrency with
//! one control socket per device. `REUSE_ONLY=1` runs only that section; `REUSE_MODES` (default
//! `off,on`) picks the modes measured there, `PEER=0` leaves out ControlMaster and `WIDE=0` the
//! 20-device workload, so that `REUSE_ONLY=1 REUSE_MODES=on PEER=0 WIDE=0 SAME_DEVICE=1` runs
//! nothing but reused sessions on one device (for a profiler).

// A benchmark reports on stdout; that is its whole job.
#![allow(clippy::print_stdout)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netcron_common::metrics::Telemetry;
use netcron_common::secret::SecretKey;
use netcron_executor::{Executor, ExecutorMetrics, ExecutorSettings, Settings as ExecutorRole};
use netcron_ingest::Ingest;
use netcron_protocol::RedisSettings;
use netcron_scheduler::{Scheduler, SchedulerSettings, Settings, SystemClock};
use netcron_store::DatabaseSettings;
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement, TransactionTrait};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// CPU seconds (user + system) this process has used so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let after = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Sshd {
    child: Child,
    dir: PathBuf,
    port: u16,
    key: PathBuf,
    user: String,
}

impl Sshd {
    fn start() -> Self {
        let dir =
            std::env::temp_dir().join(format!("netcron-bench-sshd-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("sshd dir");
        let keygen = |path: &Path| {
            let ok = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(path)
                .status()
                .expect("ssh-keygen")
                .success();
            assert!(ok, "ssh-keygen failed");
        };
        keygen(&dir.join("host_key"));
        keygen(&dir.join("client_key"));
        std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).expect("keys");
        // The tests' user (a plain /bin/sh account) when it exists: a login shell that runs
        // profile scripts (root's pyenv hooks here) would dominate the cost of every session.
        let user = if Command::new("id")
            .arg("netcron-test")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            "netcron-test".to_owned()
        } else {
            String::from_utf8(Command::new("id").arg("-un").output().expect("id").stdout)
                .expect("user")
                .trim()
                .to_owned()
        };
        // sshd reads authorized_keys as that user.
        use std::os::unix::fs::PermissionsExt as _;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755));
        let _ = std::fs::set_permissions(
            dir.join("authorized_keys"),
            std::fs::Permissions::from_mode(0o644),
        );
        let port = free_port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nPubkeyAuthentication yes\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
             PermitRootLogin prohibit-password\nUseDNS no\nPrintMotd no\nLogLevel ERROR\n\
             MaxStartups 1000\nMaxSessions 1000\n",
            d = dir.display()
        );
        std::fs::write(dir.join("sshd_config"), config).expect("config");
        let _ = std::fs::create_dir_all("/run/sshd");
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-f"])
            .arg(dir.join("sshd_config"))
            .arg("-E")
            .arg(dir.join("sshd.log"))
            .stdin(Stdio::null())
            .spawn()
            .expect("start sshd");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            key: dir.join("client_key"),
            dir,
            port,
            user,
        }
    }

    /// `n` runs of `ssh … true` with OpenSSH's client, `concurrency` at a time; runs/s and
    /// failures.
    fn openssh_ceiling(&self, n: usize, concurrency: usize) -> (f64, usize) {
        let script = format!(
            "seq {n} | xargs -P {concurrency} -I{{}} sh -c 'ssh -q -i {key} -p {port} \
             -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
             -o KexAlgorithms=curve25519-sha256 -o HostKeyAlgorithms=ssh-ed25519 \
             -o ControlMaster=no {user}@127.0.0.1 true || echo FAIL'",
            key = self.key.display(),
            port = self.port,
            user = self.user,
        );
        let started = Instant::now();
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .output()
            .expect("xargs");
        let elapsed = started.elapsed().as_secs_f64();
        let failures = String::from_utf8_lossy(&out.stdout).matches("FAIL").count();
        (n as f64 / elapsed, failures)
    }
}

impl Sshd {
    /// `n` runs of `ssh … true` through OpenSSH connection multiplexing (`ControlMaster=auto`,
    /// `ControlPersist`), one control socket per device, run `i` on device `i % devices`,
    /// `concurrency` at a time. The masters are started (and so logged in) before the clock
    /// starts, as netcron's sessions are warmed. Runs/s and failures.
    fn openssh_control_master(&self, n: usize, concurrency: usize, devices: usize) -> (f64, usize) {
        // A short directory: a control socket's path (plus the 17 characters ssh appends while
        // creating it) must fit in a sockaddr_un's 108 bytes.
        let suffix = Uuid::new_v4().simple().to_string();
        let sockets = PathBuf::from(format!("/tmp/cm-{}", suffix.get(..8).unwrap_or("x")));
        std::fs::create_dir_all(&sockets).expect("control socket dir");
        // Options first: whatever follows the destination is the remote command.
        let ssh = format!(
            "ssh -q -i {key} -p {port} -o BatchMode=yes -o StrictHostKeyChecking=no \
             -o UserKnownHostsFile=/dev/null -o KexAlgorithms=curve25519-sha256 \
             -o HostKeyAlgorithms=ssh-ed25519 -o ControlMaster=auto -o ControlPersist=120",
            key = self.key.display(),
            port = self.port,
        );
        let to = format!("{}@127.0.0.1", self.user);
        for d in 0..devices {
            let warm = format!("{ssh} -o ControlPath={}/{d} {to} true", sockets.display());
            let _ = Command::new("sh").arg("-c").arg(warm).status();
        }
        let script = format!(
            "seq 0 {last} | xargs -P {concurrency} -I{{}} sh -c '{ssh} \
             -o ControlPath={dir}/$(({{}} % {devices})) {to} true || echo FAIL'",
            last = n.saturating_sub(1),
            dir = sockets.display(),
        );
        let started = Instant::now();
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .output()
            .expect("xargs");
        let elapsed = started.elapsed().as_secs_f64();
        for d in 0..devices {
            let stop = format!(
                "{ssh} -o ControlPath={}/{d} -O exit {to}",
                sockets.display()
            );
            let _ = Command::new("sh")
                .arg("-c")
                .arg(stop)
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&sockets);
        let failures = String::from_utf8_lossy(&out.stdout).matches("FAIL").count();
        (n as f64 / elapsed, failures)
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Bench {
    admin: DatabaseConnection,
    db: DatabaseConnection,
    db_name: String,
    db_url: String,
    redis: RedisSettings,
    key: SecretKey,
    key_text: String,
}

impl Bench {
    async fn new() -> Self {
        let support::BenchDb {
            admin,
            db,
            db_name,
            db_url,
            redis_url,
        } = support::fresh_database().await;
        let key_text = SecretKey::generate_base64();
        Self {
            admin,
            db,
            db_name,
            db_url,
            redis: RedisSettings {
                url: redis_url,
                stream_prefix: format!("bench:{}:", Uuid::new_v4().simple()),
            },
            key: SecretKey::from_base64(&key_text).expect("key"),
            key_text,
        }
    }

    /// A credential for `user` with `private_key`, and `devices` devices on `port` with one
    /// command each. Returns `(device_id, command_id)` pairs.
    async fn fleet(
        &self,
        user: &str,
        private_key: &str,
        port: u16,
        devices: usize,
        kind: &str,
    ) -> Vec<(Uuid, Uuid)> {
        let cred = Uuid::now_v7();
        let sealed = self.key.seal(
            private_key,
            &netcron_common::secret::context::credential(cred, "secret"),
        );
        self.db
            .execute_raw(Statement::from_sql_and_values(
                sea_orm::DatabaseBackend::Postgres,
                "INSERT INTO credentials (id, name, username, kind, secret) VALUES ($1, $2, $3, 'private_key', $4)",
                vec![cred.into(), cred.to_string().into(), user.into(), sealed.into()],
            ))
            .await
            .expect("credential");
        let mut pairs = Vec::new();
        for _ in 0..devices {
            let (device, command) = (Uuid::now_v7(), Uuid::now_v7());
            self.db
                .execute_raw(Statement::from_sql_and_values(
                    sea_orm::DatabaseBackend::Postgres,
                    "INSERT INTO devices (id, name, host, port, platform, credential_id)
                       VALUES ($1, $2, '127.0.0.1', $3, 'linux', $4);
                     ",
                    vec![
                        device.into(),
                        device.to_string().into(),
                        i32::from(port).into(),
                        cred.into(),
                    ],
                ))
                .await
                .expect("device");
            self.db
                .execute_raw(Statement::from_sql_and_values(
                    sea_orm::DatabaseBackend::Postgres,
                    "INSERT INTO commands (id, device_id, name, kind, command, timeout_s, max_output_bytes, max_attempts)
                       VALUES ($1, $2, 'c', $3, 'true', $4, 65536, 1)",
                    vec![
                        command.into(),
                        device.into(),
                        kind.into(),
                        i32::try_from(env_usize("COMMAND_TIMEOUT_S", 300))
                            .unwrap_or(300)
                            .into(),
                    ],
                ))
                .await
                .expect("command");
            pairs.push((device, command));
        }
        pairs
    }

    /// Queues `n` runs spread over `fleet` (like `n` manual runs) in one transaction; returns
    /// their ids.
    async fn enqueue(&self, fleet: &[(Uuid, Uuid)], n: usize) -> Vec<Uuid> {
        let ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
        let devices: Vec<Uuid> = (0..n).map(|i| fleet[i % fleet.len()].0).collect();
        let commands: Vec<Uuid> = (0..n).map(|i| fleet[i % fleet.len()].1).collect();
        let txn = self.db.begin().await.expect("txn");
        let stmt = |sql: &str, values: Vec<sea_orm::Value>| {
            Statement::from_sql_and_values(sea_orm::DatabaseBackend::Postgres, sql, values)
        };
        txn.execute_raw(stmt(
            "INSERT INTO runs (id, command_id, device_id, trigger, scheduled_for, status)
             SELECT id, c, d, 'manual', now(), 'queued'
             FROM unnest($1::uuid[], $2::uuid[], $3::uuid[]) AS t(id, c, d)",
            vec![ids.clone().into(), commands.into(), devices.into()],
        ))
        .await
        .expect("runs");
        txn.execute_raw(stmt(
            "INSERT INTO task_outbox (run_id) SELECT unnest($1::uuid[])",
            vec![ids.clone().into()],
        ))
        .await
        .expect("outbox");
        txn.execute_raw(stmt(
            "SELECT pg_notify($1, '')",
            vec![netcron_store::db::RUN_QUEUED_CHANNEL.into()],
        ))
        .await
        .expect("notify");
        txn.commit().await.expect("commit");
        ids
    }

    /// Waits until every run in `ids` has ended; returns how many did not succeed. Polls a
    /// cheap index-only count (the bench's database holds nothing else), so the waiting does
    /// not compete with the pipeline for Postgres.
    async fn wait(&self, ids: &[Uuid]) -> i64 {
        let stmt = |sql: &str, values: Vec<sea_orm::Value>| {
            Statement::from_sql_and_values(sea_orm::DatabaseBackend::Postgres, sql, values)
        };
        loop {
            let row = self
                .db
                .query_one_raw(stmt(
                    "SELECT count(*) AS open FROM runs WHERE status IN ('queued', 'running')",
                    vec![],
                ))
                .await
                .expect("count")
                .expect("row");
            let open: i64 = row.try_get("", "open").expect("open");
            if open == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let row = self
            .db
            .query_one_raw(stmt(
                "SELECT count(*) AS bad FROM runs WHERE id = ANY($1) AND status <> 'succeeded'",
                vec![ids.to_vec().into()],
            ))
            .await
            .expect("count")
            .expect("row");
        row.try_get("", "bad").expect("bad")
    }

    /// `error_kind: count, …` of the runs that did not succeed, with one message each.
    async fn error_kinds(&self, ids: &[Uuid]) -> String {
        let rows = self
            .db
            .query_all_raw(Statement::from_sql_and_values(
                sea_orm::DatabaseBackend::Postgres,
                "SELECT coalesce(error_kind, status) AS kind, count(*) AS n, min(error_message) AS example
                 FROM runs WHERE id = ANY($1) AND status <> 'succeeded' GROUP BY 1 ORDER BY 2 DESC",
                vec![ids.to_vec().into()],
            ))
            .await
            .expect("error kinds");
        rows.iter()
            .map(|r| {
                let kind: String = r.try_get("", "kind").unwrap_or_default();
                let n: i64 = r.try_get("", "n").unwrap_or_default();
                let example: Option<String> = r.try_get("", "example").unwrap_or_default();
                format!("{kind}: {n} ({})", example.unwrap_or_default())
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn executor(
        &self,
        concurrency: usize,
    ) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        self.executor_with(concurrency, 1, Duration::ZERO).await
    }

    /// An executor with `per_device` slots per device, keeping sessions `idle` long.
    async fn executor_with(
        &self,
        concurrency: usize,
        per_device: usize,
        idle: Duration,
    ) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let settings = ExecutorRole {
            redis: self.redis.clone(),
            secret_key: SecretKey::from_base64(&self.key_text).expect("key"),
            executor: ExecutorSettings {
                concurrency,
                login_timeout: Duration::from_secs(
                    env_usize("LOGIN_TIMEOUT_S", 300).try_into().unwrap_or(300),
                ),
                block: Duration::from_millis(200),
                per_device,
                ssh_idle: idle,
                ..ExecutorSettings::default()
            },
        };
        let telemetry = Telemetry::default();
        let metrics = ExecutorMetrics::new(&telemetry);
        let executor = Executor::connect(settings, &telemetry, metrics)
            .await
            .expect("executor");
        let token = CancellationToken::new();
        let t = token.clone();
        let handle = tokio::spawn(async move {
            executor.run(t).await.expect("executor");
        });
        (token, handle)
    }

    async fn drop_all(self) {
        self.db.close().await.ok();
        let _ = self
            .admin
            .execute_unprepared(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.db_name
            ))
            .await;
        if let Ok(client) = redis::Client::open(self.redis.url.as_str())
            && let Ok(mut conn) = client.get_multiplexed_async_connection().await
        {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}*", self.redis.stream_prefix))
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            for chunk in keys.chunks(1000) {
                let _: redis::RedisResult<()> =
                    redis::cmd("DEL").arg(chunk).query_async(&mut conn).await;
            }
        }
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let ssh_runs = env_usize("SSH_RUNS", 200);
    let noop_runs = env_usize("NOOP_RUNS", 80_000);
    let levels: Vec<usize> = std::env::var("CONCURRENCY")
        .unwrap_or_else(|_| "1,16,64,200".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let reuse_only = std::env::var("REUSE_ONLY").is_ok_and(|v| v == "1");
    let same_device: Vec<usize> = std::env::var("SAME_DEVICE")
        .unwrap_or_else(|_| "1,8".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let bench = Bench::new().await;
    let shutdown = CancellationToken::new();

    // The rest of the pipeline: the scheduler (its outbox publisher) and result ingest.
    let settings = Settings {
        database: DatabaseSettings {
            url: bench.db_url.clone(),
            auto_migrate: false,
        },
        redis: bench.redis.clone(),
        scheduler: SchedulerSettings::default(),
    };
    let scheduler = Arc::new(
        Scheduler::connect(&settings, Arc::new(SystemClock), &Telemetry::default())
            .await
            .expect("scheduler"),
    );
    let s = shutdown.clone();
    let scheduler_task = tokio::spawn(async move {
        let _ = scheduler.run(s).await;
    });
    let ingest = Ingest::new(
        bench.db.clone(),
        &bench.redis,
        bench.key.clone(),
        netcron_ingest::IngestSettings::default(),
        &Telemetry::default(),
    )
    .expect("ingest");
    let ingest_task = tokio::spawn(ingest.run(shutdown.clone()));

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("# Executor benchmark\n");
    println!("{cores} cores; {ssh_runs} SSH runs per level, {noop_runs} noop runs.\n");

    if !reuse_only {
        fresh_phases(&bench, ssh_runs, noop_runs, &levels).await;
    }
    reuse_phase(&bench, ssh_runs, &same_device).await;
    shutdown.cancel();
    let _ = scheduler_task.await;
    let _ = ingest_task.await;
    bench.drop_all().await;
}

/// Session reuse: one device, then 20 devices; reuse off, on, and OpenSSH `ControlMaster`.
async fn reuse_phase(bench: &Bench, ssh_runs: usize, same_device: &[usize]) {
    // `REUSE_MODES=on PEER=0` measures reuse alone, e.g. under a profiler.
    let modes: Vec<String> = std::env::var("REUSE_MODES")
        .unwrap_or_else(|_| "off,on".into())
        .split(',')
        .map(|m| m.trim().to_owned())
        .collect();
    let peer = std::env::var("PEER").map_or(true, |v| v != "0");
    let sshd = Sshd::start();
    let key = std::fs::read_to_string(&sshd.key).expect("key");
    println!(
        "\n## Session reuse: {ssh_runs} SSH runs (`true`), reuse off vs on vs OpenSSH ControlMaster\n"
    );
    println!(
        "| workload | concurrency | reuse off runs/s | reuse on runs/s | on/off | ControlMaster runs/s | on/ControlMaster | errors (off, on, CM) | netcron CPU ms/run (off, on) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut workloads: Vec<(String, usize, usize, usize)> = same_device
        .iter()
        .map(|&c| ("1 device".to_owned(), 1, c, c))
        .collect();
    if std::env::var("WIDE").map_or(true, |v| v != "0") {
        workloads.push(("20 devices".to_owned(), 20, 20, 1));
    }
    let mut errors = Vec::new();
    for (name, devices, concurrency, per_device) in workloads {
        let fleet = bench
            .fleet(&sshd.user, &key, sshd.port, devices, "shell")
            .await;
        let mut measured = Vec::new();
        for (mode, idle) in [("off", Duration::ZERO), ("on", Duration::from_secs(30))] {
            if !modes.iter().any(|m| m == mode) {
                measured.push((f64::NAN, 0, f64::NAN));
                continue;
            }
            let (token, handle) = bench.executor_with(concurrency, per_device, idle).await;
            // Warm-up: one run per session the workload will hold (and the pipeline's caches).
            let warm = bench.enqueue(&fleet, concurrency.max(devices)).await;
            bench.wait(&warm).await;
            let ids = bench.enqueue(&fleet, ssh_runs).await;
            let cpu0 = cpu_seconds();
            let started = Instant::now();
            let bad = bench.wait(&ids).await;
            let elapsed = started.elapsed().as_secs_f64();
            let cpu = cpu_seconds() - cpu0;
            token.cancel();
            let _ = handle.await;
            if bad > 0 {
                errors.push((name.clone(), bench.error_kinds(&ids).await));
            }
            measured.push((
                ssh_runs as f64 / elapsed,
                bad,
                cpu / ssh_runs as f64 * 1000.0,
            ));
        }
        let (cm, cm_failures) = if peer {
            sshd.openssh_control_master(ssh_runs, concurrency, devices)
        } else {
            (f64::NAN, 0)
        };
        let (off, on) = (measured[0], measured[1]);
        println!(
            "| {name} | {concurrency} | {:.0} | {:.0} | {:.1}x | {cm:.0} | {:.0}% | {}, {}, {cm_failures} | {:.2}, {:.2} |",
            off.0,
            on.0,
            on.0 / off.0,
            on.0 / cm * 100.0,
            off.1,
            on.1,
            off.2,
            on.2
        );
    }
    for (name, kinds) in errors {
        println!("\nErrors ({name}): {kinds}");
    }
}

/// The fresh-connection phases: noop pipeline, then SSH at each concurrency level against the
/// OpenSSH client's ceiling (no reuse on either side).
async fn fresh_phases(bench: &Bench, ssh_runs: usize, noop_runs: usize, levels: &[usize]) {
    // No-op runs: the pipeline without SSH.
    let fleet = bench.fleet("nobody", "unused", 22, 1, "noop").await;
    let (token, handle) = bench.executor(64).await;
    let warm = bench.enqueue(&fleet, 1000).await;
    bench.wait(&warm).await;
    // The clock starts when the queued runs have committed: what is measured is the pipeline,
    // not the bulk insert that stands in for a burst of fires.
    let ids = bench.enqueue(&fleet, noop_runs).await;
    let cpu0 = cpu_seconds();
    let started = Instant::now();
    let bad = bench.wait(&ids).await;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    println!("## noop runs end to end\n");
    println!(
        "| runs | seconds | runs/s | not succeeded | netcron CPU µs/run |\n|---|---|---|---|---|"
    );
    println!(
        "| {noop_runs} | {elapsed:.2} | {:.0} | {bad} | {:.0} |\n",
        noop_runs as f64 / elapsed,
        cpu / noop_runs as f64 * 1e6
    );
    token.cancel();
    let _ = handle.await;

    // SSH runs against a local sshd.
    let sshd = Sshd::start();
    let key = std::fs::read_to_string(&sshd.key).expect("key");
    println!(
        "SSH user `{}` (login shell of that account runs each command).\n",
        sshd.user
    );
    println!("## SSH runs (`true`) against a local OpenSSH sshd (MaxStartups/MaxSessions 1000)\n");
    println!(
        "| concurrency | OpenSSH client runs/s (ceiling) | OpenSSH failures | netcron runs/s | % of ceiling | netcron errors | netcron CPU ms/run |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut errors = Vec::new();
    for &c in levels {
        let (ceiling, failures) = sshd.openssh_ceiling(ssh_runs, c);
        // One device per concurrent slot: the per-device limit (1) would serialise otherwise.
        let fleet = bench.fleet(&sshd.user, &key, sshd.port, c, "shell").await;
        let (token, handle) = bench.executor(c).await;
        let warm = bench.enqueue(&fleet, c.min(16)).await;
        bench.wait(&warm).await;
        let ids = bench.enqueue(&fleet, ssh_runs).await;
        let cpu0 = cpu_seconds();
        let started = Instant::now();
        let bad = bench.wait(&ids).await;
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu0;
        let rate = ssh_runs as f64 / elapsed;
        println!(
            "| {c} | {ceiling:.0} | {failures} | {rate:.0} | {:.0}% | {bad} | {:.2} |",
            rate / ceiling * 100.0,
            cpu / ssh_runs as f64 * 1000.0
        );
        token.cancel();
        let _ = handle.await;
        if bad > 0 {
            errors.push((c, bench.error_kinds(&ids).await));
        }
    }
    drop(sshd);
    for (c, kinds) in errors {
        println!("\nErrors at concurrency {c}: {kinds}");
    }
}
