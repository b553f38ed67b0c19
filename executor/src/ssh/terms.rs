//! The terms of one attempt: where to connect and as whom ([`Target`], [`Auth`]), what to do
//! once logged in ([`Job`]), within which [`Limits`], and what it produced ([`Attempt`]), or
//! why a connection ended ([`Failure`], [`Discard`], [`Use`]). Every other file of `ssh` reads
//! these; they read none of it.

use std::time::Duration;

use netcron_common::domain::{ErrorKind, RunStatus};
use netcron_common::secret::SecretString;

use crate::cli::Driver;
use crate::output::Capture;

/// How to authenticate.
pub enum Auth {
    /// Tried as `password`, then as `keyboard-interactive` (every prompt answered with it).
    Password(SecretString),
    /// An OpenSSH or PEM private key, optionally encrypted.
    Key {
        private_key: SecretString,
        passphrase: Option<SecretString>,
    },
}

/// Where to connect and as whom.
pub struct Target<'a> {
    pub host: &'a str,
    pub port: u16,
    pub username: &'a str,
    pub auth: &'a Auth,
    /// The pinned `SHA256:` fingerprint; `None` trusts the first key seen.
    pub pinned_host_key: Option<&'a str>,
    /// Also offer SHA-1 key exchange, `ssh-rsa`/`ssh-dss` host keys and CBC ciphers.
    pub legacy_algorithms: bool,
    /// With no pin: pins the key seen, atomically across executors, before authentication;
    /// `Err` refuses the key (another was pinned first, or the pin could not be taken).
    pub first_contact: Option<&'a FirstContactFn>,
}

/// See [`Target::first_contact`].
pub type FirstContactFn = dyn Fn(&str) -> Result<(), (ErrorKind, String)> + Send + Sync;

/// What to do once logged in.
pub enum Job<'a> {
    /// One `exec` request with the whole text (Unix and Windows hosts), with environment
    /// variables the server may accept (OpenSSH: `AcceptEnv NETCRON_*`).
    Exec {
        command: &'a str,
        env: &'a [(&'static str, String)],
    },
    /// An interactive CLI session: each line typed at the prompt in turn.
    Cli {
        driver: &'static Driver,
        lines: Vec<String>,
        enable_secret: Option<&'a SecretString>,
    },
}

/// One line of an interactive session and what it printed (echo and prompt removed).
#[derive(Debug, Clone)]
pub struct CliLine {
    pub command: String,
    pub output: String,
    pub failed: bool,
}

/// Deadlines and caps of one attempt.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connect_timeout: Duration,
    pub login_timeout: Duration,
    pub command_timeout: Duration,
    pub max_output_bytes: usize,
}

/// What one attempt produced. A failed command is a result, not an `Err`.
#[derive(Debug)]
pub struct Attempt {
    pub status: RunStatus,
    pub exit_code: Option<i32>,
    pub exit_signal: Option<String>,
    pub stdout: Capture,
    pub stderr: Capture,
    pub error_kind: Option<ErrorKind>,
    pub error_message: Option<String>,
    pub host_key_fingerprint: Option<String>,
    /// The jump host's key, when the connection went through one.
    pub jump_host_key_fingerprint: Option<String>,
    /// Interactive sessions: each line with its own output.
    pub lines: Option<Vec<CliLine>>,
}

/// Why an attempt ended without a result of the command's own.
pub(super) struct Failure {
    pub(super) kind: ErrorKind,
    pub(super) message: String,
}

impl Failure {
    pub(super) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// Why a pooled session was closed instead of serving another run (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discard {
    /// Its idle time ended.
    Idle,
    /// It was found dead (or unresponsive) before a run used it; the run opened a fresh one.
    Dead,
    /// The device's address, platform, algorithms, credential or jump host changed.
    Changed,
    /// The device's pin no longer allows the key the session saw (a re-pin).
    HostKey,
    /// The run on it ended with a connection-level error (timeout, lost connection, protocol).
    Error,
    /// A CLI session could not be brought back to its base prompt.
    Prompt,
    /// The pool held its maximum of idle sessions; the oldest made room.
    Full,
    /// The executor stopped.
    Shutdown,
}

impl Discard {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Dead => "dead",
            Self::Changed => "changed",
            Self::HostKey => "host_key",
            Self::Error => "error",
            Self::Prompt => "prompt",
            Self::Full => "full",
            Self::Shutdown => "shutdown",
        }
    }
}

/// How a run went on a connection.
pub(super) enum Use {
    /// A pooled session turned out unusable before anything of the run was sent to it (dead,
    /// or a CLI not back at its prompt): the run goes on with a fresh one, none the wiser.
    Stale(Discard),
    /// The run happened; its result, and whether the session may serve another run.
    Ran {
        result: Result<(), Failure>,
        reusable: Result<(), Discard>,
    },
}
