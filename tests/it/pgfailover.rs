//! Several Postgres hosts (issue 16): a private primary and its streaming standby (`initdb`,
//! `pg_basebackup -R`), and netcron's pool given both with `target_session_attrs=read-write`,
//! the standby first. It writes to the primary; the primary is stopped at once (`-m
//! immediate`) and the standby promoted; the same pool then writes to the new primary, which
//! holds everything written before.

use std::fs;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use netcron_migration::{Migrator, MigratorTrait as _};
use sea_orm::{ConnectionTrait as _, DatabaseConnection, Statement};

use crate::helpers::eventually;
use crate::sites::temp_dir;
use crate::sshd::free_port;

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
            port,
            running: true,
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

#[tokio::test(flavor = "multi_thread")]
async fn the_pool_follows_the_primary_of_several_postgres_hosts() {
    let dir = temp_dir("pg");
    let (uid, gid) = postgres_ids();
    std::os::unix::fs::chown(&*dir, Some(uid), Some(gid)).expect("chown");
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
    let mut primary = Cluster::start(&primary_data, &dir, free_port());
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
    let standby = Cluster::start(&standby_data, &dir, free_port());

    // The standby first: it is skipped, being read-only.
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
        standby.port, primary.port
    );
    let db = netcron_common::db::connect(&url)
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
    let direct = netcron_common::db::connect(&format!(
        "postgres://postgres@127.0.0.1:{}/postgres",
        standby.port
    ))
    .await
    .expect("the promoted standby");
    assert_eq!(marks(&direct).await, ["before", "after"]);
    drop(db);
    drop(direct);
    drop(standby);
    drop(primary);
}
