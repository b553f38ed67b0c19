//! What the benchmarks share: a fresh, migrated database of their own on DATABASE_URL's server.

use netcron_migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use uuid::Uuid;

pub struct BenchDb {
    /// The server's maintenance database, to drop the bench database afterwards.
    pub admin: DatabaseConnection,
    pub db: DatabaseConnection,
    pub db_name: String,
    pub db_url: String,
    pub redis_url: String,
}

/// Reads DATABASE_URL and REDIS_URL (environment, then `.env`), creates a uniquely named
/// database next to DATABASE_URL's and applies the migrations.
pub async fn fresh_database() -> BenchDb {
    let _ = dotenvy::dotenv();
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let redis_url = std::env::var("REDIS_URL").expect("REDIS_URL");
    let server = &url[..url.rfind('/').expect("database in DATABASE_URL")];
    let admin = netcron_store::db::connect(&format!("{server}/postgres"))
        .await
        .expect("admin");
    let db_name = format!("netcron_bench_{}", Uuid::new_v4().simple());
    admin
        .execute_unprepared(&format!("CREATE DATABASE {db_name}"))
        .await
        .expect("create");
    let db_url = format!("{server}/{db_name}");
    let db = netcron_store::db::connect(&db_url).await.expect("db");
    Migrator::up(&db, None).await.expect("migrate");
    BenchDb {
        admin,
        db,
        db_name,
        db_url,
        redis_url,
    }
}

/// The peer's result for the same drain: see `benches/peers/apscheduler_drain.py`.
// Only the scheduler bench uses the peer; the executor bench shares this module.
#[allow(dead_code)]
#[derive(Debug, serde::Deserialize)]
pub struct PeerDrain {
    pub peer: String,
    pub jobs: u64,
    /// From the common fire time until the last job started.
    pub drain_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Runs the APScheduler 3 peer: `jobs` jobs due in the same second, in a database of its own
/// (created and dropped by the script) on `admin_url`'s server. Blocks for the whole run (tens of
/// seconds for 10k jobs). Any failure (no python3, no network for pip, a failed run) is an `Err`
/// carrying the tail of what went wrong, so the benchmark can report the peer as unavailable.
// Only the scheduler bench calls this; the executor bench shares this module.
#[allow(dead_code)]
pub fn apscheduler_drain(admin_url: &str, jobs: u64) -> Result<PeerDrain, String> {
    use std::path::PathBuf;
    use std::process::Command;

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let peers = root.join("benches/peers");
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let venv = target.join("peers-venv");
    let python = venv.join("bin/python");

    // A copy of the requirements marks a finished install: a venv left half-made by an
    // interrupted pip, or one made for other pins, is installed into again.
    let requirements = std::fs::read_to_string(peers.join("requirements.txt"))
        .map_err(|e| format!("reading benches/peers/requirements.txt: {e}"))?;
    let marker = venv.join("requirements.installed");
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(requirements.as_str()) {
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
        run(Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(peers.join("requirements.txt")))?;
        std::fs::write(&marker, &requirements).map_err(|e| format!("writing {marker:?}: {e}"))?;
    }

    let stdout = run(Command::new(&python)
        .arg(peers.join("apscheduler_drain.py"))
        .args(["--database-url", admin_url, "--jobs", &jobs.to_string()]))?;
    // The script prints exactly one JSON line; anything else on stdout would be a bug there.
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    serde_json::from_str(line).map_err(|e| format!("peer printed {line:?}: {e}"))
}

/// Runs a command to completion; its stdout on success, else the last lines of its stderr.
#[allow(dead_code)] // as for apscheduler_drain
fn run(command: &mut std::process::Command) -> Result<String, String> {
    let program = command.get_program().to_string_lossy().into_owned();
    let out = command.output().map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let tail = lines[lines.len().saturating_sub(15)..].join("\n");
    Err(format!("{program} failed ({}): {tail}", out.status))
}
