//! Finding the server binaries where distributions install them, and checking their versions.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::Error;

/// The oldest Postgres major version netcron supports.
pub const POSTGRES_MIN: u32 = 13;
/// The oldest Redis netcron supports: consumer-group behaviour and ACLs the protocol relies on
/// are those of 7.0 (docs/DEPLOY.md).
pub const REDIS_MIN: (u32, u32) = (7, 0);

/// A Postgres installation: the directory holding `postgres` and `initdb`, and its major version.
#[derive(Debug, Clone)]
pub struct Postgres {
    pub bin: PathBuf,
    pub major: u32,
}

/// Where Postgres is looked for, most specific first: `search` when given, else `PATH`, then
/// the versioned directories of Debian/Ubuntu (and the official images), Fedora/RHEL (PGDG),
/// Alpine and Homebrew (newest version first), then the source build's default.
fn postgres_dirs(search: Option<&[PathBuf]>) -> Vec<PathBuf> {
    if let Some(search) = search {
        return search.to_vec();
    }
    let mut dirs = path_dirs();
    dirs.extend(versioned("/usr/lib/postgresql", "", "bin"));
    dirs.extend(versioned("/usr", "pgsql-", "bin"));
    dirs.extend(versioned("/usr/libexec", "postgresql", ""));
    dirs.extend(versioned("/opt/homebrew/opt", "postgresql@", "bin"));
    dirs.extend(versioned("/usr/local/opt", "postgresql@", "bin"));
    dirs.push("/usr/local/pgsql/bin".into());
    dirs
}

fn redis_dirs(search: Option<&[PathBuf]>) -> Vec<PathBuf> {
    if let Some(search) = search {
        return search.to_vec();
    }
    let mut dirs = path_dirs();
    dirs.extend(["/usr/bin", "/usr/local/bin", "/opt/homebrew/bin"].map(PathBuf::from));
    dirs
}

fn path_dirs() -> Vec<PathBuf> {
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default()
}

/// `<parent>/<prefix><version>/<tail>` for every numeric version present, newest first.
fn versioned(parent: &str, prefix: &str, tail: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut found: Vec<(u32, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let version = name.strip_prefix(prefix)?.parse().ok()?;
            Some((version, entry.path().join(tail)))
        })
        .collect();
    found.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
    found.into_iter().map(|(_, dir)| dir).collect()
}

/// The numbers of the first word of `--version`'s output that starts with a digit (after a
/// `v=`, as Redis writes it): `postgres (PostgreSQL) 15.20 (Debian …)` → `[15, 20]`.
fn version(program: &Path) -> Option<Vec<u32>> {
    let output = Command::new(program).arg("--version").output().ok()?;
    parse_version(&String::from_utf8_lossy(&output.stdout))
}

fn parse_version(text: &str) -> Option<Vec<u32>> {
    let word = text
        .split_whitespace()
        .map(|w| w.trim_start_matches("v="))
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
    Some(
        word.split(|c: char| !c.is_ascii_digit())
            .take_while(|part| !part.is_empty())
            .filter_map(|part| part.parse().ok())
            .collect(),
    )
}

/// The Postgres to run: the one of major version `cluster` if the data directory already holds
/// a cluster (its files are readable by that version only), else the newest supported.
///
/// # Errors
/// [`Error::Missing`] when no directory holds both `postgres` and `initdb`;
/// [`Error::Unsupported`] when none found fits.
pub fn postgres(search: Option<&[PathBuf]>, cluster: Option<u32>) -> Result<Postgres, Error> {
    let mut found = Vec::new();
    for dir in postgres_dirs(search) {
        if !dir.join("postgres").is_file() || !dir.join("initdb").is_file() {
            continue;
        }
        if let Some(major) = version(&dir.join("postgres")).and_then(|v| v.first().copied()) {
            found.push(Postgres { bin: dir, major });
        }
    }
    if found.is_empty() {
        return Err(Error::Missing(format!(
            "the embedded Postgres needs `postgres` and `initdb`, found in {}; install them: {}",
            where_looked(
                search,
                "PATH, /usr/lib/postgresql/<version>/bin, /usr/pgsql-<version>/bin, /usr/libexec/postgresql<version>, Homebrew's postgresql@<version>, /usr/local/pgsql/bin"
            ),
            install_hint()
        )));
    }
    let fits = |p: &&Postgres| match cluster {
        Some(major) => p.major == major,
        None => p.major >= POSTGRES_MIN,
    };
    if let Some(best) = found.iter().filter(fits).max_by_key(|p| p.major) {
        return Ok(best.clone());
    }
    let versions: Vec<String> = found
        .iter()
        .map(|p| format!("{} in {}", p.major, p.bin.display()))
        .collect();
    Err(Error::Unsupported(match cluster {
        Some(major) => format!(
            "the embedded Postgres data was made by Postgres {major}, which is not installed \
             (found {}); install Postgres {major}, or upgrade the data with pg_upgrade",
            versions.join(", ")
        ),
        None => format!(
            "Postgres {} is not supported (found {}); netcron needs {POSTGRES_MIN} or later: {}",
            found
                .iter()
                .map(|p| p.major.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            versions.join(", "),
            install_hint()
        ),
    }))
}

/// The `redis-server` to run.
///
/// # Errors
/// [`Error::Missing`] when there is none; [`Error::Unsupported`] when it is older than 7.0.
pub fn redis(search: Option<&[PathBuf]>) -> Result<PathBuf, Error> {
    let mut older = Vec::new();
    for dir in redis_dirs(search) {
        let program = dir.join("redis-server");
        if !program.is_file() {
            continue;
        }
        let Some(v) = version(&program) else { continue };
        let (major, minor) = (
            v.first().copied().unwrap_or(0),
            v.get(1).copied().unwrap_or(0),
        );
        if (major, minor) >= REDIS_MIN {
            return Ok(program);
        }
        older.push(format!("{major}.{minor} in {}", program.display()));
    }
    if older.is_empty() {
        return Err(Error::Missing(format!(
            "the embedded Redis needs `redis-server`, found in {}; install it: {}",
            where_looked(search, "PATH, /usr/bin, /usr/local/bin, /opt/homebrew/bin"),
            install_hint()
        )));
    }
    Err(Error::Unsupported(format!(
        "Redis {} is not supported; netcron needs {}.{} or later: {}",
        older.join(", "),
        REDIS_MIN.0,
        REDIS_MIN.1,
        install_hint()
    )))
}

fn where_looked(search: Option<&[PathBuf]>, default: &str) -> String {
    match search {
        Some(dirs) => format!(
            "none of NETCRON_EMBEDDED_SEARCH ({})",
            std::env::join_paths(dirs)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default()
        ),
        None => format!("none of {default}"),
    }
}

/// The command that installs both servers on this operating system.
#[must_use]
pub fn install_hint() -> String {
    if cfg!(target_os = "macos") {
        return "brew install postgresql@16 redis".into();
    }
    let release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let ids: Vec<String> = release
        .lines()
        .filter_map(|l| l.strip_prefix("ID=").or_else(|| l.strip_prefix("ID_LIKE=")))
        .flat_map(|v| {
            v.trim_matches('"')
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    let any = |names: &[&str]| ids.iter().any(|id| names.contains(&id.as_str()));
    if any(&["debian", "ubuntu"]) {
        "apt-get install -y postgresql redis-server".into()
    } else if any(&["fedora", "rhel", "centos"]) {
        "dnf install -y postgresql-server redis".into()
    } else if any(&["alpine"]) {
        "apk add postgresql redis".into()
    } else {
        format!(
            "install the PostgreSQL server ({POSTGRES_MIN} or later) and Redis ({}.{} or later) \
             from this system's packages",
            REDIS_MIN.0, REDIS_MIN.1
        )
    }
}

#[cfg(test)]
mod tests {
    use super::parse_version;

    #[test]
    fn versions_are_read_as_the_servers_print_them() {
        let debian = "postgres (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)\n";
        assert_eq!(parse_version(debian), Some(vec![15, 20]));
        let homebrew = "postgres (PostgreSQL) 16.4 (Homebrew)\n";
        assert_eq!(parse_version(homebrew), Some(vec![16, 4]));
        let beta = "postgres (PostgreSQL) 18beta1\n";
        assert_eq!(parse_version(beta), Some(vec![18]));
        let redis = "Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64\n";
        assert_eq!(parse_version(redis), Some(vec![7, 0, 15]));
        assert_eq!(parse_version("no version here"), None);
    }
}
