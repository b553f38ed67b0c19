//! Whether and where `netcron all` runs its own Postgres and Redis.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use netcron_common::config::{self, ConfigError};

/// When netcron starts its own servers (`NETCRON_EMBEDDED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Each server whose URL names this machine, where nothing listens.
    Auto,
    /// Both, whatever the URLs say.
    Always,
    /// Neither: the URLs are used as they are.
    Never,
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            _ => Err("expected auto, always or never".into()),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Always => "always",
            Self::Never => "never",
        })
    }
}

/// The embedded servers' settings.
#[derive(Debug, Clone)]
pub struct EmbeddedSettings {
    pub mode: Mode,
    /// `NETCRON_DATA_DIR`; unset, [`crate::data_dir`] picks the platform's place.
    pub data_dir: Option<PathBuf>,
    /// `NETCRON_EMBEDDED_SEARCH`: replaces every default place the binaries are looked for.
    pub search: Option<Vec<PathBuf>>,
    /// Servers for a test binary: Postgres without `fsync` and Redis without its append-only
    /// file, so that data is lost if the machine (not only netcron) crashes. Never read from the
    /// environment: a deployment cannot ask for it by mistake.
    pub disposable: bool,
}

impl EmbeddedSettings {
    /// # Errors
    /// When `NETCRON_EMBEDDED` is not one of its three values.
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            mode: config::parsed_or("NETCRON_EMBEDDED", Mode::Auto)?,
            data_dir: config::parsed_opt::<PathBuf>("NETCRON_DATA_DIR")?,
            search: config::parsed_opt::<String>("NETCRON_EMBEDDED_SEARCH")?
                .map(|dirs| std::env::split_paths(&dirs).collect()),
            disposable: false,
        })
    }
}

/// Which servers to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Wanted {
    pub postgres: bool,
    pub redis: bool,
}

impl Wanted {
    #[must_use]
    pub fn any(self) -> bool {
        self.postgres || self.redis
    }
}
