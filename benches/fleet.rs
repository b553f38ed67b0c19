//! Fleet-job benchmark (`cargo bench --bench fleet`, issue 26): one job over many devices,
//! through the whole product in this process — the api role (its router on a real TCP socket,
//! with ingest), the scheduler loop and an executor, as `netcron all` composes them, on one
//! tokio runtime with two worker threads, on the real clock. In-process rather than the real
//! binary so the bench can restart the scheduler with another horizon between fires and read
//! Postgres and Redis directly while the job runs; `scripts/fleet-bench` is the black-box one.
//!
//! Phases (`PHASES`, default `parallel,pipeline,spread,page`):
//!
//! - `pipeline`: `DEVICES` (10,000) `noop` devices, bulk-inserted with SQL, one job targeting
//!   them by tag and a schedule firing once at a known instant T (the scheduler's real fire
//!   path, `scheduler/src/fire.rs`). From T: when the job run and all its device runs exist
//!   (polled every 2 ms: they are written in one transaction), when the last task is on the
//!   tasks stream (the id of the stream's last entry is Redis' clock in ms, and XLEN counts
//!   them), when the last command started and when the job run ended. Three fires with the
//!   scheduler's horizon 0 (the fire is processed at T itself, the strict reading) and three
//!   with the default 5 s horizon (materialised ahead of T).
//! - `parallel`: `MP_DEVICES` (300) `shell` devices spread over `SSHDS` (3) loopback sshd
//!   instances, a job with `max_parallel` `MAX_PARALLEL` (16) started by hand; each command
//!   appends its start and end to a file on the SSH host (as `tests/it/jobs.rs` counts), and the
//!   most commands running at once is computed from those spans.
//! - `spread`: a job with `spread_s` `SPREAD_S` (30) over the same `DEVICES` noop devices, fired
//!   twice by schedules; a histogram of `runs.started_at` − fire time, and whether each device
//!   got the same offset on both fires.
//! - `page`: `GET /job-runs/{id}`, its device runs (first page and the last keyset page) and the
//!   console's job-run page and grid fragment for the pipeline phase's 10,000-device job run,
//!   `PAGE_REQUESTS` (200) each, one at a time, p50/p99/max.
//!
//! Uses DATABASE_URL's server and REDIS_URL (from `.env`) in a database and stream prefix of its
//! own that it removes afterwards. Results go to stdout as Markdown.

// A benchmark reports on stdout; that is its whole job.
#![allow(clippy::print_stdout)]

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, DurationRound, Timelike, Utc};
use netcron_api::{Application, Settings as ApiSettings};
use netcron_common::config::HttpSettings;
use netcron_common::metrics::Telemetry;
use netcron_common::secret::{SecretKey, SecretString};
use netcron_protocol::RedisSettings;
use netcron_scheduler::SchedulerSettings;
use netcron_store::DatabaseSettings;
use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseConnection, Statement};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const TOKEN: &str = "fleet-bench-token";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn stmt(sql: &str, values: Vec<sea_orm::Value>) -> Statement {
    Statement::from_sql_and_values(DatabaseBackend::Postgres, sql, values)
}

/// A private OpenSSH sshd on a free loopback port that accepts one key for the tests' plain
/// account (or the current user), with `MaxStartups`/`MaxSessions` 1000 and `AcceptEnv
/// NETCRON_*` (the executor passes the run id).
struct Sshd {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Sshd {
    fn start(client_key: &Path) -> Self {
        let dir =
            std::env::temp_dir().join(format!("netcron-fleet-sshd-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("sshd dir");
        keygen(&dir.join("host_key"));
        std::fs::copy(
            client_key.with_extension("pub"),
            dir.join("authorized_keys"),
        )
        .expect("authorized_keys");
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
             MaxStartups 1000\nMaxSessions 1000\nAcceptEnv NETCRON_*\n",
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
            std::thread::sleep(StdDuration::from_millis(50));
        }
        Self { child, dir, port }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn keygen(path: &Path) {
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen")
        .success();
    assert!(ok, "ssh-keygen failed");
}

/// The account commands run as: the tests' plain /bin/sh account when it exists (a login
/// shell with profile scripts would dominate every session), else the current user.
fn ssh_user() -> String {
    if Command::new("id")
        .arg("netcron-test")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return "netcron-test".to_owned();
    }
    String::from_utf8(Command::new("id").arg("-un").output().expect("id").stdout)
        .expect("user")
        .trim()
        .to_owned()
}

/// Commands' start and end on the SSH host, as `tests/it/jobs.rs` records them.
struct Spans {
    dir: PathBuf,
}

impl Spans {
    fn new() -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("netcron-fleet-spans-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("spans dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        Self { dir }
    }

    fn command(&self, then: &str) -> String {
        let log = self.dir.join("log");
        let log = log.display();
        format!(
            "echo \"$NETCRON_RUN_ID start $(date +%s.%N)\" >> {log}; {then}; \
             echo \"$NETCRON_RUN_ID end $(date +%s.%N)\" >> {log}"
        )
    }

    /// (run id, start, end) of every command that ended.
    fn spans(&self) -> Vec<(String, f64, f64)> {
        let text = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
        let mut starts: HashMap<String, f64> = HashMap::new();
        let mut out = Vec::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [run, what, at] = f[..] else { continue };
            let Ok(at) = at.parse::<f64>() else { continue };
            match what {
                "start" => {
                    starts.insert(run.to_owned(), at);
                }
                _ => {
                    if let Some(s) = starts.get(run) {
                        out.push((run.to_owned(), *s, at));
                    }
                }
            }
        }
        out
    }

    /// The most commands that ran at the same time.
    fn most_at_once(spans: &[(String, f64, f64)]) -> i32 {
        let mut edges: Vec<(f64, i32)> = spans
            .iter()
            .flat_map(|(_, s, e)| [(*s, 1), (*e, -1)])
            .collect();
        // An end at the same instant as a start counts first.
        edges.sort_by(|a, b| a.partial_cmp(b).expect("times"));
        let (mut now, mut most) = (0i32, 0i32);
        for (_, d) in edges {
            now += d;
            most = most.max(now);
        }
        most
    }
}

impl Drop for Spans {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Bench {
    admin: DatabaseConnection,
    db: DatabaseConnection,
    db_name: String,
    db_url: String,
    redis_settings: RedisSettings,
    redis: redis::aio::MultiplexedConnection,
    base: String,
    http: reqwest::Client,
    shutdown: CancellationToken,
    handles: Vec<tokio::task::JoinHandle<()>>,
    client_key: PathBuf,
    credential: String,
}

/// What one fire of the pipeline phase measured, in seconds from the fire time T.
struct Fire {
    job_run: Uuid,
    exists: f64,
    pass: f64,
    published: f64,
    published_n: i64,
    started_p50: f64,
    started_p99: f64,
    started_max: f64,
    finished: f64,
    counts: String,
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
        let key = SecretKey::from_base64(&SecretKey::generate_base64()).expect("key");
        let redis_settings = RedisSettings {
            url: redis_url.clone(),
            stream_prefix: format!("bench:{}:", Uuid::new_v4().simple()),
        };
        let settings = ApiSettings {
            database: DatabaseSettings {
                url: db_url.clone(),
                auto_migrate: false,
            },
            redis: redis_settings.clone(),
            http: HttpSettings {
                addr: "127.0.0.1:0".parse().expect("addr"),
                tokens: vec![SecretString::new(TOKEN)],
            },
            secret_key: key.clone(),
            run_ingest: true,
            create_database: false,
            public_url: None,
            oidc: netcron_api::oidc::Providers::default(),
            live: netcron_api::LiveSettings::default(),
            ingest: netcron_ingest::IngestSettings::default(),
        };
        let shutdown = CancellationToken::new();
        let app = Application::build(settings, Telemetry::default())
            .await
            .expect("api");
        let base = format!("http://127.0.0.1:{}", app.port());
        let mut handles = Vec::new();
        let s = shutdown.clone();
        handles.push(tokio::spawn(async move {
            app.run_until_stopped(s).await.expect("api");
        }));
        let executor = netcron_executor::Settings {
            redis: redis_settings.clone(),
            secret_key: key.clone(),
            executor: netcron_executor::ExecutorSettings::default(),
        };
        let s = shutdown.clone();
        handles.push(tokio::spawn(async move {
            netcron_executor::run(executor, Telemetry::default(), s)
                .await
                .expect("executor");
        }));
        let redis = redis::Client::open(redis_url)
            .expect("redis")
            .get_multiplexed_async_connection()
            .await
            .expect("redis");
        let keys = std::env::temp_dir().join(format!("netcron-fleet-key-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&keys).expect("key dir");
        let client_key = keys.join("client_key");
        keygen(&client_key);
        let mut bench = Self {
            admin,
            db,
            db_name,
            db_url,
            redis_settings,
            redis,
            base,
            http: reqwest::Client::new(),
            shutdown,
            handles,
            client_key,
            credential: String::new(),
        };
        let private_key = std::fs::read_to_string(&bench.client_key).expect("key");
        let cred = bench
            .post(
                "/credentials",
                json!({"name": "fleet", "username": ssh_user(), "private_key": private_key}),
            )
            .await;
        bench.credential = cred["id"].as_str().expect("credential id").to_owned();
        bench
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .expect("POST");
        let status = response.status();
        let body: Value = response.json().await.expect("json");
        assert!(status.is_success(), "POST {path}: {status} {body}");
        body
    }

    async fn get(&self, path: &str) -> Value {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("GET");
        let status = response.status();
        let body: Value = response.json().await.expect("json");
        assert!(status.is_success(), "GET {path}: {status} {body}");
        body
    }

    /// The scheduler role with this horizon, until the token is cancelled.
    fn scheduler(&self, horizon_ms: i64) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let settings = netcron_scheduler::Settings {
            database: DatabaseSettings {
                url: self.db_url.clone(),
                auto_migrate: false,
            },
            redis: self.redis_settings.clone(),
            scheduler: SchedulerSettings {
                horizon: Duration::milliseconds(horizon_ms),
                ..SchedulerSettings::default()
            },
        };
        let token = CancellationToken::new();
        let s = token.clone();
        let handle = tokio::spawn(async move {
            netcron_scheduler::run(settings, Telemetry::default(), s)
                .await
                .expect("scheduler");
        });
        (token, handle)
    }

    /// `n` devices named `<prefix>-<i>`, tagged `tag`, on `ports` in turn, in one statement.
    async fn devices(&self, prefix: &str, tag: &str, n: u64, ports: &[u16]) {
        let ports: Vec<i32> = ports.iter().map(|p| i32::from(*p)).collect();
        let cred = Uuid::parse_str(&self.credential).expect("uuid");
        self.db
            .execute_raw(stmt(
                "INSERT INTO devices (id, name, host, port, platform, credential_id, tags)
                 SELECT gen_random_uuid(), $1 || '-' || g, '127.0.0.1',
                        ($2::int[])[1 + g % cardinality($2::int[])], 'linux', $3, ARRAY[$4]
                 FROM generate_series(0, $5 - 1) g",
                vec![
                    prefix.into(),
                    ports.into(),
                    cred.into(),
                    tag.into(),
                    i64::try_from(n).unwrap_or(0).into(),
                ],
            ))
            .await
            .expect("devices");
        self.db
            .execute_unprepared("ANALYZE devices")
            .await
            .expect("analyze");
    }

    /// A schedule of `job` firing once, at `at` (a yearly cron on that second), announced to
    /// the scheduler as the API does.
    async fn schedule_at(&self, job: Uuid, at: DateTime<Utc>) -> Uuid {
        let id = Uuid::now_v7();
        let cron = format!(
            "{} {} {} {} * *",
            at.second(),
            at.minute(),
            at.hour(),
            at.format("%-d %-m")
        );
        self.db
            .execute_raw(stmt(
                "INSERT INTO schedules (id, command_id, cron_expression, timezone, overlap_policy,
                                        next_fire_at)
                 VALUES ($1, $2, $3, 'UTC', 'allow', $4)",
                vec![id.into(), job.into(), cron.into(), at.into()],
            ))
            .await
            .expect("schedule");
        self.db
            .execute_raw(stmt(
                "SELECT pg_notify($1, $2)",
                vec![
                    netcron_store::db::SCHEDULE_CHANGED_CHANNEL.into(),
                    id.to_string().into(),
                ],
            ))
            .await
            .expect("notify");
        id
    }

    /// The default zone's tasks stream: the milliseconds of the last id it generated (Redis'
    /// clock when the newest task was added) and how many entries were ever added to it (both
    /// from `XINFO STREAM`, which the scheduler's trimming of consumed entries does not lower).
    async fn last_task(&mut self) -> (Option<i64>, i64) {
        let stream = format!("{}tasks", self.redis_settings.stream_prefix);
        let info: redis::RedisResult<HashMap<String, redis::Value>> = redis::cmd("XINFO")
            .arg("STREAM")
            .arg(&stream)
            .query_async(&mut self.redis)
            .await;
        let Ok(info) = info else {
            return (None, 0);
        };
        let text = |key: &str| -> Option<String> {
            match info.get(key)? {
                redis::Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
                redis::Value::SimpleString(s) => Some(s.clone()),
                redis::Value::Int(i) => Some(i.to_string()),
                _ => None,
            }
        };
        let ms = text("last-generated-id").and_then(|id| id.split('-').next()?.parse().ok());
        let added = text("entries-added")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        (ms, added)
    }

    /// Fires `job` once at a time a few seconds ahead (T) and measures the fire from T.
    async fn fire(&mut self, job: Uuid, n: i64) -> Fire {
        let (_, len_before) = self.last_task().await;
        let at = Utc::now()
            .duration_trunc(Duration::seconds(1))
            .expect("truncate")
            + Duration::seconds(8);
        let schedule = self.schedule_at(job, at).await;
        // The job run and its device runs commit together: the first sight of the job run is
        // the moment they all exist.
        let deadline = Instant::now() + StdDuration::from_secs(60);
        let (job_run, created_at, exists_at) = loop {
            let row = self
                .db
                .query_one_raw(stmt(
                    "SELECT id, created_at FROM job_runs WHERE schedule_id = $1",
                    vec![schedule.into()],
                ))
                .await
                .expect("poll");
            if let Some(row) = row {
                let seen = Utc::now();
                let id: Uuid = row.try_get("", "id").expect("id");
                let created: DateTime<Utc> = row.try_get("", "created_at").expect("created");
                break (id, created, seen);
            }
            assert!(Instant::now() < deadline, "the schedule did not fire");
            tokio::time::sleep(StdDuration::from_millis(2)).await;
        };
        let count: i64 = self
            .db
            .query_one_raw(stmt(
                "SELECT count(*) AS n FROM runs WHERE job_run_id = $1",
                vec![job_run.into()],
            ))
            .await
            .expect("count")
            .expect("row")
            .try_get("", "n")
            .expect("n");
        assert_eq!(count, n, "every device run exists when the job run does");
        let deadline = Instant::now() + StdDuration::from_secs(300);
        loop {
            let run = self.get(&format!("/job-runs/{job_run}")).await;
            if run["status"] != "running" {
                break;
            }
            assert!(Instant::now() < deadline, "the job run did not end: {run}");
            tokio::time::sleep(StdDuration::from_millis(100)).await;
        }
        let (last_ms, len_after) = self.last_task().await;
        let row = self
            .db
            .query_one_raw(stmt(
                "SELECT
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM r.started_at - $2)) AS p50,
                   percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM r.started_at - $2)) AS p99,
                   max(extract(epoch FROM r.started_at - $2))::float8 AS max,
                   extract(epoch FROM (SELECT finished_at FROM job_runs WHERE id = $1) - $2)::float8 AS finished,
                   (SELECT string_agg(status || ' ' || n, ', ') FROM
                      (SELECT status, count(*) AS n FROM runs WHERE job_run_id = $1 GROUP BY status) s)
                      AS counts
                 FROM runs r WHERE r.job_run_id = $1",
                vec![job_run.into(), at.into()],
            ))
            .await
            .expect("lateness")
            .expect("row");
        let secs = |t: DateTime<Utc>| (t - at).as_seconds_f64();
        Fire {
            job_run,
            exists: secs(exists_at),
            pass: (exists_at - created_at).as_seconds_f64(),
            published: last_ms.map_or(f64::NAN, |ms| (ms - at.timestamp_millis()) as f64 / 1e3),
            published_n: len_after - len_before,
            started_p50: row.try_get("", "p50").expect("p50"),
            started_p99: row.try_get("", "p99").expect("p99"),
            started_max: row.try_get("", "max").expect("max"),
            finished: row.try_get("", "finished").expect("finished"),
            counts: row.try_get("", "counts").expect("counts"),
        }
    }

    async fn finish(mut self) {
        self.shutdown.cancel();
        for h in std::mem::take(&mut self.handles) {
            let _ = h.await;
        }
        let p = &self.redis_settings.stream_prefix;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{p}*"))
            .query_async(&mut self.redis)
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<()> = redis::cmd("DEL")
                .arg(keys)
                .query_async(&mut self.redis)
                .await;
        }
        if let Some(dir) = self.client_key.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
        let _ = self.db.close().await;
        let _ = self
            .admin
            .execute_unprepared(&format!("DROP DATABASE {} WITH (FORCE)", self.db_name))
            .await;
    }
}

fn uuid_of(v: &Value) -> Uuid {
    Uuid::parse_str(v["id"].as_str().expect("id")).expect("uuid")
}

/// p50, p99 and max of `samples` (ms).
fn percentiles(samples: &mut [f64]) -> (f64, f64, f64) {
    samples.sort_by(|a, b| a.partial_cmp(b).expect("times"));
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(i).copied().unwrap_or(f64::NAN)
    };
    (at(0.5), at(0.99), at(1.0))
}

async fn parallel_phase(bench: &Bench) {
    let n = env_u64("MP_DEVICES", 300);
    let m = env_u64("MAX_PARALLEL", 16);
    let sshds: Vec<Sshd> = (0..env_u64("SSHDS", 3))
        .map(|_| Sshd::start(&bench.client_key))
        .collect();
    let ports: Vec<u16> = sshds.iter().map(|s| s.port).collect();
    bench.devices("mp", "mp", n, &ports).await;
    let spans = Spans::new();
    let (token, handle) = bench.scheduler(5000);
    let job = bench
        .post(
            "/jobs",
            json!({"name": "mp", "target": {"tags_all": ["mp"]}, "max_parallel": m,
                   "timeout_s": 300, "command": spans.command("sleep 0.2")}),
        )
        .await;
    let started = Instant::now();
    let run = bench
        .post(&format!("/jobs/{}/runs", uuid_of(&job)), json!({}))
        .await;
    let run_id = uuid_of(&run);
    let deadline = Instant::now() + StdDuration::from_secs(600);
    let run = loop {
        let run = bench.get(&format!("/job-runs/{run_id}")).await;
        if run["status"] != "running" {
            break run;
        }
        assert!(Instant::now() < deadline, "the job run did not end: {run}");
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    };
    let elapsed = started.elapsed().as_secs_f64();
    token.cancel();
    let _ = handle.await;
    let seen = spans.spans();
    let distinct: std::collections::HashSet<&str> =
        seen.iter().map(|(r, _, _)| r.as_str()).collect();
    let most = Spans::most_at_once(&seen);
    // How full the window was: command-seconds over (elapsed × max_parallel).
    let busy: f64 = seen.iter().map(|(_, s, e)| e - s).sum();
    let first = seen
        .iter()
        .map(|(_, s, _)| *s)
        .fold(f64::INFINITY, f64::min);
    let last = seen
        .iter()
        .map(|(_, _, e)| *e)
        .fold(f64::NEG_INFINITY, f64::max);
    let window = last - first;
    println!(
        "\n### max_parallel, counted on the SSH host\n\n{n} `shell` devices over {} loopback sshd \
         instances, `max_parallel` {m}, each command `sleep 0.2` between a start and an end line \
         written on the host.\n",
        ports.len()
    );
    println!(
        "| devices | max_parallel | most at once on the host | commands seen (distinct runs) | job run | start to end | first start to last end | mean commands at once |\n|---|---|---|---|---|---|---|---|"
    );
    println!(
        "| {n} | {m} | **{most}** | {} ({}) | {} {} | {elapsed:.1} s | {window:.1} s | {:.1} |",
        seen.len(),
        distinct.len(),
        run["status"].as_str().unwrap_or("?"),
        run["counts"],
        busy / window
    );
    drop(sshds);
}

async fn pipeline_phase(bench: &mut Bench, n: u64) -> Option<Uuid> {
    let job = bench
        .post(
            "/jobs",
            json!({"name": "fleet-noop", "kind": "noop", "target": {"tags_all": ["fleet"]},
                   "command": "true"}),
        )
        .await;
    let job = uuid_of(&job);
    println!(
        "\n### {n} devices, one fire (job run and device runs from the scheduler's fire path)\n\n\
         Seconds from the fire time T. *exists*: the job run and all {n} device runs visible \
         (one transaction; polled every 2 ms); *pass*: from the fire pass's start (its `now`, \
         the job run's `created_at`) to that; *published*: the last task's entry id on the \
         tasks stream (tasks added in brackets); *started*: commands' start (`runs.started_at`), \
         p50/p99/max; *ended*: the job run's `finished_at`.\n"
    );
    println!(
        "| horizon | fire | exists | pass | published | started p50 / p99 / max | ended | device runs |\n|---|---|---|---|---|---|---|---|"
    );
    let mut last = None;
    let fires = env_u64("FIRES", 3);
    for horizon in [0i64, 5000] {
        let (token, handle) = bench.scheduler(horizon);
        for i in 1..=fires {
            let f = bench.fire(job, i64::try_from(n).unwrap_or(0)).await;
            println!(
                "| {horizon} ms | {i} | {:+.3} | {:.3} | {:+.3} ({}) | {:+.3} / {:+.3} / {:+.3} | {:+.3} | {} |",
                f.exists,
                f.pass,
                f.published,
                f.published_n,
                f.started_p50,
                f.started_p99,
                f.started_max,
                f.finished,
                f.counts
            );
            last = Some(f.job_run);
        }
        token.cancel();
        let _ = handle.await;
    }
    last
}

async fn spread_phase(bench: &mut Bench, n: u64) {
    let spread = env_u64("SPREAD_S", 30);
    let buckets = env_u64("BUCKETS", 15).max(1);
    let job = bench
        .post(
            "/jobs",
            json!({"name": "fleet-spread", "kind": "noop", "target": {"tags_all": ["fleet"]},
                   "command": "true", "spread_s": spread}),
        )
        .await;
    let job = uuid_of(&job);
    let (token, handle) = bench.scheduler(5000);
    let mut runs = Vec::new();
    for _ in 0..2 {
        let f = bench.fire(job, i64::try_from(n).unwrap_or(0)).await;
        runs.push(f.job_run);
    }
    token.cancel();
    let _ = handle.await;
    let width = spread as f64 / buckets as f64;
    let mut table: Vec<Vec<(i64, f64, f64)>> = Vec::new();
    for run in &runs {
        let rows = bench
            .db
            .query_all_raw(stmt(
                "SELECT least(floor(extract(epoch FROM r.started_at - j.scheduled_for) / $2),
                              $3 - 1)::bigint AS b,
                        count(*) AS n,
                        min(extract(epoch FROM r.started_at - j.scheduled_for))::float8 AS lo,
                        max(extract(epoch FROM r.started_at - j.scheduled_for))::float8 AS hi
                 FROM runs r JOIN job_runs j ON j.id = r.job_run_id
                 WHERE r.job_run_id = $1 GROUP BY 1 ORDER BY 1",
                vec![
                    (*run).into(),
                    width.into(),
                    i64::try_from(buckets).unwrap_or(1).into(),
                ],
            ))
            .await
            .expect("histogram");
        let mut col = vec![(0i64, f64::NAN, f64::NAN); usize::try_from(buckets).unwrap_or(1)];
        for r in rows {
            let b: i64 = r.try_get("", "b").expect("b");
            if let Some(slot) = usize::try_from(b).ok().and_then(|b| col.get_mut(b)) {
                *slot = (
                    r.try_get("", "n").expect("n"),
                    r.try_get("", "lo").expect("lo"),
                    r.try_get("", "hi").expect("hi"),
                );
            }
        }
        table.push(col);
    }
    println!(
        "\n### spread_s {spread}: command starts after the fire time, {n} devices, two fires\n\n\
         Buckets of {width:.1} s of `runs.started_at` − the job run's fire time; expected {:.0} \
         per bucket if even.\n",
        n as f64 / buckets as f64
    );
    println!(
        "| bucket | fire 1 devices | fire 1 first / last start (s) | fire 2 devices | fire 2 first / last start (s) |\n|---|---|---|---|---|"
    );
    for (b, (first, second)) in table[0].iter().zip(&table[1]).enumerate() {
        let lo = b as f64 * width;
        let (n1, lo1, hi1) = *first;
        let (n2, lo2, hi2) = *second;
        println!(
            "| {lo:.1}–{:.1} s | {n1} | {lo1:.3} / {hi1:.3} | {n2} | {lo2:.3} / {hi2:.3} |",
            lo + width
        );
    }
    for (i, col) in table.iter().enumerate() {
        let counts: Vec<i64> = col.iter().map(|c| c.0).collect();
        println!(
            "\nfire {}: per-bucket count min {} / max {} (mean {:.0})",
            i + 1,
            counts.iter().min().copied().unwrap_or(0),
            counts.iter().max().copied().unwrap_or(0),
            n as f64 / buckets as f64
        );
    }
    let row = bench
        .db
        .query_one_raw(stmt(
            "SELECT count(*) AS devices,
                    count(*) FILTER (WHERE a.scheduled_for - ja.scheduled_for
                                         = b.scheduled_for - jb.scheduled_for) AS same,
                    count(*) FILTER (WHERE abs(extract(epoch FROM
                        (a.started_at - ja.scheduled_for) - (b.started_at - jb.scheduled_for))) < 1)
                        AS started_within_1s,
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM a.started_at - a.scheduled_for)) AS late_p99,
                    min(extract(epoch FROM a.started_at - a.scheduled_for))::float8 AS late_min,
                    max(extract(epoch FROM a.started_at - a.scheduled_for))::float8 AS late_max
             FROM runs a JOIN job_runs ja ON ja.id = a.job_run_id
             JOIN runs b ON b.device_id = a.device_id JOIN job_runs jb ON jb.id = b.job_run_id
             WHERE a.job_run_id = $1 AND b.job_run_id = $2",
            vec![runs[0].into(), runs[1].into()],
        ))
        .await
        .expect("same offsets")
        .expect("row");
    let devices: i64 = row.try_get("", "devices").expect("devices");
    let same: i64 = row.try_get("", "same").expect("same");
    let within: i64 = row.try_get("", "started_within_1s").expect("within");
    let p99: f64 = row.try_get("", "late_p99").expect("p99");
    let max: f64 = row.try_get("", "late_max").expect("max");
    let min: f64 = row.try_get("", "late_min").expect("min");
    println!(
        "\nsame device, same offset on both fires: **{same} of {devices}** devices (scheduled \
         offset identical); started within 1 s of the same offset on both: {within}; fire 1's \
         start after each device's own slot: min {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        min * 1e3,
        p99 * 1e3,
        max * 1e3
    );
}

async fn page_phase(bench: &Bench, job_run: Uuid) {
    let requests = env_u64("PAGE_REQUESTS", 200);
    // The last keyset page: walk the cursors first.
    let mut cursor: Option<String> = None;
    let mut deep = None;
    let mut seen = 0usize;
    loop {
        let path = match &cursor {
            None => format!("/job-runs/{job_run}/runs?limit=100"),
            Some(c) => format!("/job-runs/{job_run}/runs?limit=100&cursor={c}"),
        };
        let page = bench.get(&path).await;
        seen += page["items"].as_array().map_or(0, Vec::len);
        match page["next_cursor"].as_str() {
            Some(c) => {
                deep = Some((seen, c.to_owned()));
                cursor = Some(c.to_owned());
            }
            None => break,
        }
    }
    let (deep_at, deep_cursor) = deep.expect("more than one page");
    // A console session, as a browser gets one.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let signed = client
        .post(format!("{}/console/sign-in", bench.base))
        .header("Origin", &bench.base)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!("token={TOKEN}&next=/console"))
        .send()
        .await
        .expect("sign in");
    let cookie = signed
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("netcron_session="))
        .and_then(|v| v.split(';').next())
        .expect("session cookie")
        .to_owned();
    let targets = [
        (
            "REST `GET /job-runs/{id}`",
            format!("/job-runs/{job_run}"),
            false,
        ),
        (
            "REST `GET /job-runs/{id}/runs?limit=100`, first page",
            format!("/job-runs/{job_run}/runs?limit=100"),
            false,
        ),
        (
            "REST `GET /job-runs/{id}/runs?limit=100&cursor=…`, last page",
            format!("/job-runs/{job_run}/runs?limit=100&cursor={deep_cursor}"),
            false,
        ),
        (
            "console `/console/job-runs/{id}` (whole page, grid of every device)",
            format!("/console/job-runs/{job_run}"),
            true,
        ),
        (
            "console `/console/job-runs/{id}/grid` (htmx fragment)",
            format!("/console/job-runs/{job_run}/grid"),
            true,
        ),
    ];
    println!(
        "\n### The job-run page of a {}-device job run\n\n{requests} requests each, one at a time, \
         over TCP to the api's router (reqwest); the last page starts after {deep_at} device \
         runs. Target: under 100 ms.\n",
        seen
    );
    println!("| request | bytes | p50 | p99 | max |\n|---|---|---|---|---|");
    for (label, path, console) in targets {
        let mut samples = Vec::new();
        let mut bytes = 0usize;
        for i in 0..requests + 5 {
            let request = client.get(format!("{}{path}", bench.base));
            let request = if console {
                request.header("Cookie", &cookie)
            } else {
                request.bearer_auth(TOKEN)
            };
            let t = Instant::now();
            let response = request.send().await.expect("GET");
            let status = response.status();
            let body = response.bytes().await.expect("body");
            let ms = t.elapsed().as_secs_f64() * 1e3;
            assert!(status.is_success(), "GET {path}: {status}");
            bytes = body.len();
            // The first five warm the connection and the caches.
            if i >= 5 {
                samples.push(ms);
            }
        }
        let (p50, p99, max) = percentiles(&mut samples);
        println!("| {label} | {bytes} | {p50:.1} ms | {p99:.1} ms | {max:.1} ms |");
    }
    grid_statements(bench, job_run, requests.min(50)).await;
}

/// Where the console grid's time goes: its statements alone, as the grid makes them (whole
/// `runs` rows of the job run, then the devices by id with a 10,000-value `IN`), beside one
/// narrow statement with only what a cell shows.
async fn grid_statements(bench: &Bench, job_run: Uuid, n: u64) {
    use netcron_store::entity::{device, run};
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
    let mut whole = Vec::new();
    let mut names = Vec::new();
    let mut narrow = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let runs = run::Entity::find()
            .filter(run::Column::JobRunId.eq(job_run))
            .order_by_asc(run::Column::Id)
            .limit(10_000)
            .all(&bench.db)
            .await
            .expect("runs");
        whole.push(t.elapsed().as_secs_f64() * 1e3);
        let ids: Vec<Uuid> = runs.iter().map(|r| r.device_id).collect();
        let t = Instant::now();
        let devices = device::Entity::find()
            .filter(device::Column::Id.is_in(ids))
            .all(&bench.db)
            .await
            .expect("devices");
        names.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(devices.len(), runs.len());
        let t = Instant::now();
        let rows = bench
            .db
            .query_all_raw(stmt(
                "SELECT r.id, r.status, r.error_message, d.name FROM runs r
                 JOIN devices d ON d.id = r.device_id
                 WHERE r.job_run_id = $1 ORDER BY r.id LIMIT 10000",
                vec![job_run.into()],
            ))
            .await
            .expect("narrow");
        narrow.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(rows.len(), runs.len());
    }
    println!(
        "\nThe console grid's statements alone ({n} times each, from this process, rows decoded):\n\n\
         | statement | p50 | p99 |\n|---|---|---|"
    );
    for (label, samples) in [
        (
            "whole `runs` rows of the job run (the grid's `device_runs`, limit 10,000)",
            &mut whole,
        ),
        (
            "devices by id, `IN` of 10,000 values (the grid's name lookup)",
            &mut names,
        ),
        (
            "one narrow statement: run id, status, error, device name (join)",
            &mut narrow,
        ),
    ] {
        let (p50, p99, _) = percentiles(samples);
        println!("| {label} | {p50:.1} ms | {p99:.1} ms |");
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let phases = std::env::var("PHASES").unwrap_or_else(|_| "parallel,pipeline,spread,page".into());
    let n = env_u64("DEVICES", 10_000);
    let mut bench = Bench::new().await;
    println!(
        "## Fleet jobs — `cargo bench --bench fleet` ({})\n",
        Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    if phases.contains("parallel") {
        parallel_phase(&bench).await;
    }
    let needs_fleet = ["pipeline", "spread", "page"]
        .iter()
        .any(|p| phases.contains(p));
    if needs_fleet {
        let t = Instant::now();
        bench.devices("n", "fleet", n, &[22]).await;
        println!(
            "\n({n} noop devices inserted in {:.1} s, not measured)",
            t.elapsed().as_secs_f64()
        );
    }
    let mut job_run = None;
    if phases.contains("pipeline") || phases.contains("page") {
        job_run = pipeline_phase(&mut bench, n).await;
    }
    if phases.contains("spread") {
        spread_phase(&mut bench, n).await;
    }
    if phases.contains("page")
        && let Some(job_run) = job_run
    {
        page_phase(&bench, job_run).await;
    }
    bench.finish().await;
}
