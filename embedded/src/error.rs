//! The crate's one error type.

/// Why the private servers cannot run. Each `Display` is one line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A server binary is not installed; the message names the package.
    #[error("{0}")]
    Missing(String),
    /// Only versions netcron does not support are installed.
    #[error("{0}")]
    Unsupported(String),
    /// A file or directory of the data directory, or a process, could not be used.
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// A server did not start; the message ends with its last log line.
    #[error("{0}")]
    Failed(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
