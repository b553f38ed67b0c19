//! Several Postgres hosts (issues 16 and 24): a private primary and its streaming standby
//! (`initdb`, `pg_basebackup -R`), and netcron's pool given both with
//! `target_session_attrs=read-write`. It writes to the primary; the primary is stopped at once
//! (`-m immediate`) and the standby promoted; the same pool then writes to the new primary,
//! which holds everything written before — and stays there when the old primary comes back.

use std::fs;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use netcron_migration::{Migrator, MigratorTrait as _};
use sea_orm::{ConnectionTrait as _, DatabaseConnection, Statement};

use crate::support::app::eventually;
use crate::support::sites::temp_dir;
use crate::support::sshd::free_port;

fn bin_dir() -> PathBuf {
    fs::read_dir("/usr/lib/postgresql")
        .expect("/usr/lib/postgresql (install postgresql, see .ci/run)")
        .filter_map(Result::ok)
        .map(|d| d.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .max()
        .expect("initdb in /usr/lib/postgresql/*/bin")
}

/// The `postgres` user's uid and gid: Postgres refuses to run as root.
fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("id");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("the postgres user")
    };
    (id("-u"), id("-g"))
}

fn as_postgres(program: &Path, args: &[&str]) -> Output {
    let (uid, gid) = postgres_ids();
    let out = Command::new(program)
        .args(args)
        .uid(uid)
        .gid(gid)
        .current_dir("/tmp")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    assert!(
        out.status.success(),
        "{} {}: {}{}",
        program.display(),
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A private cluster, stopped at once on drop.
struct Cluster {
    data: PathBuf,
    sockets: PathBuf,
    port: u16,
    running: bool,
}

impl Cluster {
    fn start(data: &Path, sockets: &Path, port: u16) -> Cluster {
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            sockets.display()
        );
        let log = data.with_extension("log");
        as_postgres(
            &bin_dir().join("pg_ctl"),
            &[
                "-D",
                &data.display().to_string(),
                "-o",
                &options,
                "-l",
                &log.display().to_string(),
                "-w",
                "start",
            ],
        );
        Cluster {
            data: data.to_path_buf(),
            sockets: sockets.to_path_buf(),
            port,
            running: true,
        }
    }

    /// Starts a crashed cluster again, on its own port, as whatever its data directory says
    /// it is: an old primary comes back a primary, on its own timeline.
    fn restart(&mut self) {
        if !self.running {
            *self = Cluster::start(&self.data.clone(), &self.sockets.clone(), self.port);
        }
    }

    fn pg_ctl(&self, args: &[&str]) {
        let mut all = vec!["-D", self.data.to_str().unwrap_or_default()];
        all.extend_from_slice(args);
        as_postgres(&bin_dir().join("pg_ctl"), &all);
    }

    fn crash(&mut self) {
        if self.running {
            self.pg_ctl(&["-m", "immediate", "stop"]);
            self.running = false;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            let (uid, gid) = postgres_ids();
            let _ = Command::new(bin_dir().join("pg_ctl"))
                .args([
                    "-D",
                    self.data.to_str().unwrap_or_default(),
                    "-m",
                    "immediate",
                    "stop",
                ])
                .uid(uid)
                .gid(gid)
                .current_dir("/tmp")
                .output();
        }
    }
}

async fn marks(db: &DatabaseConnection) -> Vec<String> {
    db.query_all_raw(Statement::from_string(
        sea_orm::DatabaseBackend::Postgres,
        "SELECT type FROM events ORDER BY id",
    ))
    .await
    .expect("SELECT")
    .iter()
    .map(|row| row.try_get::<String>("", "type").expect("type"))
    .collect()
}

async fn mark(db: &DatabaseConnection, what: &str) -> Result<(), sea_orm::DbErr> {
    db.execute_raw(Statement::from_sql_and_values(
        sea_orm::DatabaseBackend::Postgres,
        "INSERT INTO events (id, type, body) VALUES ($1, $2, '{}')",
        [uuid::Uuid::now_v7().into(), what.into()],
    ))
    .await
    .map(drop)
}

/// A private primary in `dir` and its streaming standby.
fn primary_and_standby(dir: &Path) -> (Cluster, Cluster) {
    let (uid, gid) = postgres_ids();
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).expect("chown");
    let primary_data = dir.join("primary");
    let standby_data = dir.join("standby");
    as_postgres(
        &bin_dir().join("initdb"),
        &[
            "-D",
            primary_data.to_str().unwrap_or_default(),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ],
    );
    let primary = Cluster::start(&primary_data, dir, free_port());
    as_postgres(
        &bin_dir().join("pg_basebackup"),
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &primary.port.to_string(),
            "-U",
            "postgres",
            "-D",
            standby_data.to_str().unwrap_or_default(),
            "-R",
            "-X",
            "stream",
            "--no-sync",
        ],
    );
    let standby = Cluster::start(&standby_data, dir, free_port());
    (primary, standby)
}

/// A pool of one host, straight to `cluster`.
async fn direct(cluster: &Cluster) -> DatabaseConnection {
    netcron_store::db::connect(&format!(
        "postgres://postgres@127.0.0.1:{}/postgres",
        cluster.port
    ))
    .await
    .expect("a direct connection")
}

async fn count(db: &DatabaseConnection, what: &str) -> i64 {
    db.query_one_raw(Statement::from_sql_and_values(
        sea_orm::DatabaseBackend::Postgres,
        "SELECT count(*) AS n FROM events WHERE type = $1",
        [what.into()],
    ))
    .await
    .expect("SELECT")
    .expect("a row")
    .try_get::<i64>("", "n")
    .expect("n")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pool_follows_the_primary_of_several_postgres_hosts() {
    let dir = temp_dir("pg");
    let (mut primary, standby) = primary_and_standby(&dir);

    // The standby first: it is skipped, being read-only.
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
        standby.port, primary.port
    );
    let db = netcron_store::db::connect(&url)
        .await
        .expect("connect through several hosts");
    Migrator::up(&db, None)
        .await
        .expect("migrations on the primary");
    mark(&db, "before").await.expect("write to the primary");

    // Fail-over: the primary dies, the standby is promoted.
    primary.crash();
    standby.pg_ctl(&["-w", "promote"]);
    eventually(
        "a write through the same pool",
        Duration::from_secs(30),
        || async { mark(&db, "after").await.ok() },
    )
    .await;
    let seen = marks(&db).await;
    assert_eq!(seen, ["before", "after"], "the new primary has both");
    let direct = direct(&standby).await;
    assert_eq!(marks(&direct).await, ["before", "after"]);
    drop(db);
    drop(direct);
    drop(standby);
    drop(primary);
}

/// The split brain an operator can cause: the old primary started again after the fail-over,
/// read-write on its own timeline, first in the list. The pool stays with the promoted standby
/// it moved to, as long as that one stays acceptable.
#[tokio::test(flavor = "multi_thread")]
async fn the_pool_stays_on_the_new_primary_when_the_old_one_returns() {
    let dir = temp_dir("pg");
    let (mut primary, standby) = primary_and_standby(&dir);
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
        primary.port, standby.port
    );
    let db = netcron_store::db::connect(&url)
        .await
        .expect("connect through several hosts");
    Migrator::up(&db, None)
        .await
        .expect("migrations on the primary");
    mark(&db, "before").await.expect("write to the primary");

    primary.crash();
    standby.pg_ctl(&["-w", "promote"]);
    eventually(
        "a write through the same pool, to the promoted standby",
        Duration::from_secs(30),
        || async { mark(&db, "after").await.ok() },
    )
    .await;

    primary.restart();
    let old = direct(&primary).await;
    let new = direct(&standby).await;
    assert_eq!(
        count(&old, "before").await,
        1,
        "the old primary is back, read-write"
    );
    // Several times the forwarder's poll: every write through the pool lands on the promoted
    // standby, none on the old primary.
    let window = std::time::Instant::now() + Duration::from_secs(5);
    let mut written = 0;
    while std::time::Instant::now() < window {
        if mark(&db, "split").await.is_ok() {
            written += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (on_old, on_new) = (count(&old, "split").await, count(&new, "split").await);
    assert_eq!(
        (on_old, on_new),
        (0, written),
        "rows written through the pool during 5 s: {written}; on the old primary {on_old}, \
         on the promoted standby {on_new}"
    );
    drop((db, old, new, standby, primary));
}

/// A query that needs no table, to show the pool works.
async fn mark_free(db: &DatabaseConnection) {
    db.execute_unprepared("SELECT 1").await.expect("SELECT 1");
}

/// Each database created through several hosts (as `netcron all` does at start) ends its
/// forwarder with the pool that used it; so does a pool dropped without being closed.
#[tokio::test(flavor = "multi_thread")]
async fn creating_databases_through_several_hosts_leaves_no_forwarder_running() {
    let dir = temp_dir("pg");
    let (primary, standby) = primary_and_standby(&dir);
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let before = tasks();
    for n in 0..10 {
        let url = format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/created_{n}?target_session_attrs=read-write",
            standby.port, primary.port
        );
        netcron_store::db::create_database_if_missing(&url)
            .await
            .expect("create the database through the forwarder");
    }
    // A pool dropped without `close` ends its forwarder too.
    let pool = netcron_store::db::connect(&format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/created_0?target_session_attrs=read-write",
        standby.port, primary.port
    ))
    .await
    .expect("a pool through several hosts");
    mark_free(&pool).await;
    drop(pool);
    let after = tasks();
    let left = eventually(
        &format!(
            "every forwarder ended with its pool ({after} tasks alive after 10 creations and \
             a dropped pool, {before} before)"
        ),
        Duration::from_secs(10),
        || async {
            let now = tasks();
            (now <= before).then_some(now)
        },
    )
    .await;
    assert!(left <= before);
    let on_primary = direct(&primary).await;
    let created = on_primary
        .query_one_raw(Statement::from_string(
            sea_orm::DatabaseBackend::Postgres,
            "SELECT count(*) AS n FROM pg_database WHERE datname LIKE 'created_%'",
        ))
        .await
        .expect("SELECT")
        .expect("a row")
        .try_get::<i64>("", "n")
        .expect("n");
    assert_eq!(created, 10);
    drop((on_primary, standby, primary));
}

/// Several hosts without `target_session_attrs` would silently mean `any` — a standby could
/// take the writes — so the start stops with one line naming the setting and an example.
#[test]
fn several_postgres_hosts_without_target_session_attrs_stop_the_start() {
    let dir = temp_dir("pgconf");
    let output = Command::new(env!("CARGO_BIN_EXE_netcron"))
        .arg("migrate")
        .current_dir(&*dir)
        .env(
            "DATABASE_URL",
            "postgres://netcron:hunter2@127.0.0.1:1,127.0.0.1:2/netcron",
        )
        .output()
        .expect("netcron migrate");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("invalid configuration: DATABASE_URL")
            && stderr.contains("?target_session_attrs=read-write"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}
