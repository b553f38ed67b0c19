//! One SSH attempt, on a blocking thread: connect (directly, or through a jump host), handshake
//! with the device's algorithm preferences, check the host key, authenticate, then either run
//! one command on an exec channel or drive an interactive CLI on a PTY shell, and collect the
//! output.
//!
//! libssh2's own timeouts apply to each blocking call, so a device that trickles one byte a
//! second would keep a blocking session alive forever. The session is therefore used in
//! non-blocking mode: every libssh2 call that would block returns `EAGAIN`, and [`Waiter`]
//! polls the socket for the direction libssh2 is waiting on, never past the phase's deadline.
//! That gives each phase a real deadline: the TCP connect, the login (handshake, host key and
//! authentication) and the command itself.

use std::io::Read;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use netcron_common::domain::{ErrorKind, RunStatus};
use netcron_common::secret::SecretString;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use ssh2::{BlockDirections, HashType, KeyboardInteractivePrompt, MethodType, Prompt, Session};

use crate::cli::Driver;
use crate::output::{Capture, Scrubber};
use netcron_common::protocol::live::Which;

mod interactive;
mod jump;
pub mod pool;

use interactive::CliSession;
pub use pool::{Discard, Pool, Reuse, SessionKey};

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

/// Modern algorithms, strongest first; libssh2 drops names it does not implement.
const KEX_MODERN: &str = "curve25519-sha256,curve25519-sha256@libssh.org,ecdh-sha2-nistp256,\
ecdh-sha2-nistp384,ecdh-sha2-nistp521,diffie-hellman-group16-sha512,\
diffie-hellman-group18-sha512,diffie-hellman-group14-sha256,\
diffie-hellman-group-exchange-sha256";
const KEX_LEGACY: &str =
    "diffie-hellman-group14-sha1,diffie-hellman-group1-sha1,diffie-hellman-group-exchange-sha1";
const HOSTKEY_MODERN: &str = "ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,\
ecdsa-sha2-nistp521,rsa-sha2-512,rsa-sha2-256";
const HOSTKEY_LEGACY: &str = "ssh-rsa,ssh-dss";
const CIPHER_MODERN: &str = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,\
chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr";
const CIPHER_LEGACY: &str = "aes128-cbc,aes192-cbc,aes256-cbc,3des-cbc";
const MAC_MODERN: &str = "hmac-sha2-256-etm@openssh.com,hmac-sha2-512-etm@openssh.com,\
hmac-sha2-256,hmac-sha2-512";
const MAC_LEGACY: &str = "hmac-sha1,hmac-sha1-96";

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

struct Failure {
    kind: ErrorKind,
    message: String,
}

impl Failure {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// An authenticated session, fresh or from the [`Pool`].
pub(crate) struct Connection {
    session: Session,
    waiter: Waiter,
    /// The key the device presented at login.
    host_key: Option<String>,
    /// The jump host's key, when the session goes through one.
    jump_host_key: Option<String>,
    /// CLI platforms: the shell a previous run left at its base prompt.
    shell: Option<interactive::Shell>,
    /// Through a jump host: how long its pump thread may live, extended at every use.
    pump: Option<jump::PumpLease>,
}

impl Connection {
    /// Leaves politely (a CLI gets `exit`) and sends the disconnect message, within a second.
    fn close(self, why: &str) {
        let deadline = Instant::now() + Duration::from_secs(1);
        if let Some(mut shell) = self.shell {
            let _ = std::io::Write::write(&mut shell.channel, b"exit\n");
            let _ = shell.channel.close();
        }
        let _ = self
            .waiter
            .retry(deadline, || self.session.disconnect(None, why, None));
    }
}

/// How a run went on a connection.
enum Use {
    /// A pooled session turned out unusable before anything of the run was sent to it (dead,
    /// or a CLI not back at its prompt): the run goes on with a fresh one, none the wiser.
    Stale(Discard),
    /// The run happened; its result, and whether the session may serve another run.
    Ran {
        result: Result<(), Failure>,
        reusable: Result<(), Discard>,
    },
}

/// Runs `job` once on `target`, through `jump` when given, on a session from `reuse`'s pool
/// when one matches (else a fresh login, kept for the next run afterwards). Interactive output
/// and the error message leave scrubbed by `scrubber`; exec output is captured with room to
/// scrub it before it is cut (see [`Capture::to_text`]).
pub fn run(
    target: &Target<'_>,
    jump: Option<&Target<'_>>,
    job: &Job<'_>,
    limits: Limits,
    scrubber: &Scrubber<'_>,
    reuse: Option<&Reuse<'_>>,
    live: Option<&crate::live::Tap>,
) -> Attempt {
    let mut attempt = Attempt {
        status: RunStatus::Error,
        exit_code: None,
        exit_signal: None,
        stdout: Capture::new(limits.max_output_bytes, scrubber.lookahead()),
        stderr: Capture::new(limits.max_output_bytes, scrubber.lookahead()),
        error_kind: None,
        error_message: None,
        host_key_fingerprint: None,
        jump_host_key_fingerprint: None,
        lines: None,
    };
    attempt
        .stdout
        .observe(live.map(|tap| tap.observer(Which::Stdout)));
    attempt
        .stderr
        .observe(live.map(|tap| tap.observer(Which::Stderr)));
    match execute(target, jump, job, limits, scrubber, reuse, &mut attempt) {
        Ok(()) => {}
        Err(failure) => {
            attempt.status = RunStatus::Error;
            attempt.error_kind = Some(failure.kind);
            attempt.error_message = Some(failure.message);
        }
    }
    // A message may quote the device (a CLI error line, a prompt).
    attempt.error_message = attempt.error_message.map(|m| scrubber.scrub(&m));
    attempt
}

fn execute(
    target: &Target<'_>,
    jump: Option<&Target<'_>>,
    job: &Job<'_>,
    limits: Limits,
    scrubber: &Scrubber<'_>,
    reuse: Option<&Reuse<'_>>,
    attempt: &mut Attempt,
) -> Result<(), Failure> {
    let keep = reuse.filter(|r| r.keep && r.pool.enabled());
    let mut pooled = keep.and_then(|r| r.pool.checkout(r.device, r.key, target, jump));
    loop {
        let reused = pooled.is_some();
        let mut conn = match pooled.take() {
            Some(conn) => conn,
            None => {
                let conn = connect_and_login(target, jump, limits, attempt)?;
                if let Some(r) = reuse {
                    r.pool.opened();
                }
                conn
            }
        };
        attempt.host_key_fingerprint.clone_from(&conn.host_key);
        attempt
            .jump_host_key_fingerprint
            .clone_from(&conn.jump_host_key);
        if let Some(pump) = &conn.pump {
            pump.extend(limits);
        }
        let used = match job {
            Job::Exec { command, env } => exec(&conn, command, env, limits, reused, attempt),
            Job::Cli {
                driver,
                lines,
                enable_secret,
            } => cli(
                &mut conn,
                driver,
                lines,
                *enable_secret,
                limits,
                scrubber,
                attempt,
            ),
        };
        let (result, reusable) = match used {
            Use::Stale(reason) => {
                if let Some(r) = keep {
                    r.pool.close(conn, reason);
                }
                continue;
            }
            Use::Ran { result, reusable } => (result, reusable),
        };
        match (keep, reusable) {
            (Some(r), Ok(())) => {
                let pins = (target.pinned_host_key, jump.and_then(|j| j.pinned_host_key));
                r.pool.checkin(r.device, r.key, pins, conn);
            }
            (Some(r), Err(reason)) => r.pool.close(conn, reason),
            (None, _) => conn.close("done"),
        }
        return result;
    }
}

/// A fresh connection: TCP (directly or through the jump host), then [`login`]. The keys seen
/// go into `attempt` even when the login fails after the key exchange.
fn connect_and_login(
    target: &Target<'_>,
    jump: Option<&Target<'_>>,
    limits: Limits,
    attempt: &mut Attempt,
) -> Result<Connection, Failure> {
    let mut fingerprint = None;
    let (logged_in, jump_host_key, pump) = match jump {
        None => {
            let stream = connect(target.host, target.port, limits.connect_timeout)?;
            let _ = stream.set_nodelay(true);
            (login(stream, target, limits, &mut fingerprint), None, None)
        }
        Some(bastion) => {
            let mut bastion_key = None;
            let tunnel = jump::tunnel(bastion, target, limits, &mut bastion_key);
            attempt.jump_host_key_fingerprint.clone_from(&bastion_key);
            let (stream, pump) = tunnel?;
            (
                login(stream, target, limits, &mut fingerprint),
                bastion_key,
                Some(pump),
            )
        }
    };
    attempt.host_key_fingerprint.clone_from(&fingerprint);
    let (session, waiter) = logged_in?;
    Ok(Connection {
        session,
        waiter,
        host_key: fingerprint,
        jump_host_key,
        shell: None,
        pump,
    })
}

/// The lines of a CLI job, in the shell a previous run left (brought back to its base prompt
/// first) or in a new one.
fn cli(
    conn: &mut Connection,
    driver: &'static Driver,
    lines: &[String],
    enable_secret: Option<&SecretString>,
    limits: Limits,
    scrubber: &Scrubber<'_>,
    attempt: &mut Attempt,
) -> Use {
    let mut session = match conn.shell.take() {
        Some(shell) => match CliSession::resume(shell, &conn.waiter, driver, scrubber, limits) {
            Ok(session) => session,
            Err(reason) => return Use::Stale(reason),
        },
        None => match CliSession::open(
            &conn.session,
            &conn.waiter,
            driver,
            scrubber,
            limits,
            attempt,
        ) {
            Ok(session) => session,
            Err(failure) => {
                return Use::Ran {
                    result: Err(failure),
                    reusable: Err(Discard::Error),
                };
            }
        },
    };
    let result = session.run(lines, enable_secret, attempt);
    let reusable = match &result {
        // A line that failed on the device is a result like any other; whether the session
        // is back at its prompt is checked before the next run uses it.
        Ok(()) => {
            conn.shell = session.into_shell();
            if conn.shell.is_some() {
                Ok(())
            } else {
                Err(Discard::Prompt)
            }
        }
        Err(_) => Err(Discard::Error),
    };
    Use::Ran { result, reusable }
}

/// Handshake (with the algorithm preferences), host-key check and authentication on an open
/// stream, within the login timeout. `fingerprint` gets the key the server presented.
fn login<S: AsRawFd + AsFd + 'static>(
    stream: S,
    target: &Target<'_>,
    limits: Limits,
    fingerprint: &mut Option<String>,
) -> Result<(Session, Waiter), Failure> {
    let socket: OwnedFd = stream
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| Failure::new(ErrorKind::Internal, format!("cloning the socket: {e}")))?;
    let mut session = Session::new()
        .map_err(|e| Failure::new(ErrorKind::Internal, format!("starting libssh2: {e}")))?;
    set_algorithms(&session, target.legacy_algorithms)?;
    session.set_tcp_stream(stream);
    session.set_blocking(false);
    let waiter = Waiter {
        session: session.clone(),
        socket,
    };

    let login_deadline = Instant::now() + limits.login_timeout;
    waiter
        .retry(login_deadline, || session.handshake())
        .map_err(|e| match e {
            Step::Expired => Failure::new(
                ErrorKind::HandshakeFailed,
                format!(
                    "the server did not complete the SSH handshake within {} s",
                    limits.login_timeout.as_secs_f32()
                ),
            ),
            Step::Ssh(e) => handshake_failure(&e, target.legacy_algorithms),
        })?;

    let seen = session
        .host_key_hash(HashType::Sha256)
        .map(|hash| format!("SHA256:{}", STANDARD_NO_PAD.encode(hash)))
        .ok_or_else(|| Failure::new(ErrorKind::HandshakeFailed, "the server sent no host key"))?;
    *fingerprint = Some(seen.clone());
    if target.pinned_host_key.is_none()
        && let Some(pin) = target.first_contact
    {
        // Nothing secret has been sent yet: the first key is pinned before authentication, so
        // two runs racing to a new device cannot both trust what they see.
        pin(&seen).map_err(|(kind, message)| Failure::new(kind, message))?;
    }
    if let Some(pinned) = target.pinned_host_key
        && pinned != seen
    {
        // Nothing secret has been sent yet: authentication comes after this check.
        return Err(Failure::new(
            ErrorKind::HostKeyMismatch,
            format!(
                "the device presented host key {seen} but {pinned} is pinned; no \
                 credential was sent. If the key changed legitimately, re-pin it on the device"
            ),
        ));
    }

    authenticate(&session, &waiter, target, login_deadline)?;
    Ok((session, waiter))
}

/// Modern key exchange, host-key, cipher and MAC algorithms; the legacy ones appended (so still
/// last in preference) only for devices that opted in. (SHA-1 key exchange and HMAC-SHA1 exist
/// and the legacy host keys exist in libssh2 only because `.cargo/config.toml` compiles them
/// in.)
fn set_algorithms(session: &Session, legacy: bool) -> Result<(), Failure> {
    let list = |modern: &str, old: &str| {
        if legacy {
            format!("{modern},{old}")
        } else {
            modern.to_owned()
        }
    };
    let prefs = [
        (MethodType::Kex, list(KEX_MODERN, KEX_LEGACY)),
        (MethodType::HostKey, list(HOSTKEY_MODERN, HOSTKEY_LEGACY)),
        (MethodType::CryptCs, list(CIPHER_MODERN, CIPHER_LEGACY)),
        (MethodType::CryptSc, list(CIPHER_MODERN, CIPHER_LEGACY)),
        (MethodType::MacCs, list(MAC_MODERN, MAC_LEGACY)),
        (MethodType::MacSc, list(MAC_MODERN, MAC_LEGACY)),
    ];
    for (method, names) in prefs {
        session.method_pref(method, &names).map_err(|e| {
            Failure::new(
                ErrorKind::Internal,
                format!("setting SSH algorithms {names}: {}", e.message()),
            )
        })?;
    }
    Ok(())
}

/// A failed handshake. When key exchange found no algorithm both sides support, says so and
/// points at `legacy_algorithms`.
fn handshake_failure(e: &ssh2::Error, legacy: bool) -> Failure {
    // LIBSSH2_ERROR_KEX_FAILURE: the algorithm lists had nothing in common (or the server hung
    // up during key exchange because of that).
    let kex = e.code() == ssh2::ErrorCode::Session(-5)
        || e.message().contains("exchange encryption keys")
        || e.message().to_ascii_lowercase().contains("agree");
    if !kex {
        return Failure::new(
            ErrorKind::HandshakeFailed,
            format!("SSH handshake failed: {}", e.message()),
        );
    }
    let hint = if legacy {
        "; legacy algorithms were offered too"
    } else {
        ". Only modern algorithms were offered; if the device supports only legacy ones \
         (diffie-hellman-group14-sha1, group1-sha1, ssh-rsa, CBC ciphers), set \
         legacy_algorithms: true on the device"
    };
    Failure::new(
        ErrorKind::HandshakeFailed,
        format!(
            "SSH handshake failed: no common key-exchange, host-key or cipher algorithm with the \
             device ({}){hint}",
            e.message()
        ),
    )
}

/// One command on a new exec channel. On a pooled session (`reused`), a channel that cannot
/// be opened means the session died while idle: nothing was sent, so the run is not harmed.
fn exec(
    conn: &Connection,
    command: &str,
    env: &[(&'static str, String)],
    limits: Limits,
    reused: bool,
    attempt: &mut Attempt,
) -> Use {
    let started = Instant::now();
    let command_deadline = started + limits.command_timeout;
    let (session, waiter) = (&conn.session, &conn.waiter);
    let opened = if reused {
        // A live server answers a channel request within a round trip; one that does not
        // within the login timeout is treated as gone, and the run logs in afresh.
        let deadline = command_deadline.min(started + limits.login_timeout);
        match waiter.retry(deadline, || session.channel_session()) {
            Ok(channel) => Ok(channel),
            Err(_) => return Use::Stale(Discard::Dead),
        }
    } else {
        waiter
            .retry(command_deadline, || session.channel_session())
            .map_err(|e| match e {
                Step::Expired => exec_timed_out(limits),
                Step::Ssh(e) => protocol_failure("opening a session channel", &e),
            })
    };
    let ran = opened.and_then(|channel| {
        run_on(
            channel,
            waiter,
            command,
            env,
            limits,
            command_deadline,
            attempt,
        )
    });
    match ran {
        Ok(closed) => Use::Ran {
            result: Ok(()),
            // A channel the server never closed may still have a command behind it.
            reusable: if closed { Ok(()) } else { Err(Discard::Error) },
        },
        Err(failure) => Use::Ran {
            result: Err(failure),
            reusable: Err(Discard::Error),
        },
    }
}

fn exec_timed_out(limits: Limits) -> Failure {
    Failure::new(
        ErrorKind::Timeout,
        format!(
            "the command did not finish within its timeout of {} s; the output so far is kept",
            limits.command_timeout.as_secs()
        ),
    )
}

fn protocol_failure(what: &str, e: &ssh2::Error) -> Failure {
    Failure::new(ErrorKind::Internal, format!("{what}: {}", e.message()))
}

/// The command on its open channel, to its exit status. Answers whether the channel closed
/// cleanly (the session can serve another run).
fn run_on(
    mut channel: ssh2::Channel,
    waiter: &Waiter,
    command: &str,
    env: &[(&'static str, String)],
    limits: Limits,
    command_deadline: Instant,
    attempt: &mut Attempt,
) -> Result<bool, Failure> {
    for (name, value) in env {
        // A server that does not accept the variable refuses the request; the command runs
        // all the same, without it.
        let _ = waiter.retry(command_deadline, || channel.setenv(name, value));
    }
    waiter
        .retry(command_deadline, || channel.exec(command))
        .map_err(|e| match e {
            Step::Expired => exec_timed_out(limits),
            Step::Ssh(e) => protocol_failure("starting the command", &e),
        })?;

    // stdout and stderr are read in turns, each until it would block, so neither stream's
    // window can fill up while the other is waited on (the classic exec deadlock).
    let mut stderr = channel.stderr();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let out = drain(&mut channel, &mut attempt.stdout, &mut buf)
            .map_err(|e| Failure::new(ErrorKind::Internal, format!("reading stdout: {e}")))?;
        let err = drain(&mut stderr, &mut attempt.stderr, &mut buf)
            .map_err(|e| Failure::new(ErrorKind::Internal, format!("reading stderr: {e}")))?;
        if out || err {
            continue;
        }
        if channel.eof() {
            break;
        }
        if waiter.wait(command_deadline).is_err() {
            // The session is closed by the caller (never reused): the command may still run.
            let _ = channel.close();
            return Err(exec_timed_out(limits));
        }
    }
    // The exit status arrives before the channel closes; a server that never closes the
    // channel after EOF gets a short grace period, then the run is reported without a code.
    let close_deadline = Instant::now() + Duration::from_secs(5).min(limits.command_timeout);
    let _ = waiter.retry(close_deadline, || channel.close());
    let closed = waiter
        .retry(close_deadline, || channel.wait_close())
        .is_ok();
    let signal = channel.exit_signal().ok().and_then(|s| s.exit_signal);
    let code = channel.exit_status().ok();
    match signal {
        Some(signal) => {
            attempt.status = RunStatus::Failed;
            attempt.exit_signal = Some(signal);
        }
        None => {
            attempt.exit_code = code;
            attempt.status = if code == Some(0) {
                RunStatus::Succeeded
            } else {
                RunStatus::Failed
            };
        }
    }
    Ok(closed)
}

/// TCP connect to each resolved address in turn, each with its own timeout.
fn connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, Failure> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| {
            Failure::new(
                ErrorKind::Unreachable,
                format!("cannot resolve {host}: {e}"),
            )
        })?
        .collect();
    let mut last = Failure::new(ErrorKind::Unreachable, format!("{host} has no address"));
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) => {
                last = match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => Failure::new(
                        ErrorKind::ConnectionRefused,
                        format!("{addr} refused the connection: nothing listens on port {port}"),
                    ),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => Failure::new(
                        ErrorKind::Unreachable,
                        format!("no answer from {addr} within {} s", timeout.as_secs_f32()),
                    ),
                    _ => Failure::new(ErrorKind::Unreachable, format!("{addr}: {e}")),
                };
            }
        }
    }
    Err(last)
}

fn authenticate(
    session: &Session,
    waiter: &Waiter,
    target: &Target<'_>,
    deadline: Instant,
) -> Result<(), Failure> {
    let user = target.username;
    let expired = || {
        Failure::new(
            ErrorKind::Timeout,
            "authentication did not complete within the login timeout",
        )
    };
    // `auth_methods` tries the `none` method; a server that accepts it is authenticated.
    let methods = match waiter.retry(deadline, || session.auth_methods(user).map(str::to_owned)) {
        Ok(methods) => methods,
        Err(Step::Expired) => return Err(expired()),
        Err(Step::Ssh(e)) if session.authenticated() => {
            let _ = e;
            return Ok(());
        }
        Err(Step::Ssh(e)) => {
            return Err(Failure::new(
                ErrorKind::AuthFailed,
                format!(
                    "the server refused to list authentication methods: {}",
                    e.message()
                ),
            ));
        }
    };
    let offers = |m: &str| methods.split(',').any(|x| x == m);
    let mut last_error = String::new();
    match target.auth {
        Auth::Password(password) => {
            if offers("password") {
                match waiter.retry(deadline, || {
                    session.userauth_password(user, password.expose())
                }) {
                    Ok(()) => {}
                    Err(Step::Expired) => return Err(expired()),
                    Err(Step::Ssh(e)) => last_error = e.message().to_owned(),
                }
            }
            if !session.authenticated() && offers("keyboard-interactive") {
                let mut answer = AnswerWith(password);
                match waiter.retry(deadline, || {
                    session.userauth_keyboard_interactive(user, &mut answer)
                }) {
                    Ok(()) => {}
                    Err(Step::Expired) => return Err(expired()),
                    Err(Step::Ssh(e)) => last_error = e.message().to_owned(),
                }
            }
        }
        Auth::Key {
            private_key,
            passphrase,
        } => {
            if offers("publickey") {
                match waiter.retry(deadline, || {
                    session.userauth_pubkey_memory(
                        user,
                        None,
                        private_key.expose(),
                        passphrase.as_ref().map(SecretString::expose),
                    )
                }) {
                    Ok(()) => {}
                    Err(Step::Expired) => return Err(expired()),
                    Err(Step::Ssh(e)) => last_error = e.message().to_owned(),
                }
            }
        }
    }
    if session.authenticated() {
        return Ok(());
    }
    let tried = match target.auth {
        Auth::Password(_) => "password",
        Auth::Key { .. } => "private key",
    };
    let mut message = format!("the server rejected the {tried} of user {user}");
    if last_error.is_empty() {
        message.push_str(&format!(" (it offers only: {methods})"));
    } else {
        message.push_str(&format!(": {last_error}"));
    }
    Err(Failure::new(ErrorKind::AuthFailed, message))
}

/// Answers every keyboard-interactive prompt with the password.
struct AnswerWith<'a>(&'a SecretString);

impl KeyboardInteractivePrompt for AnswerWith<'_> {
    fn prompt<'b>(
        &mut self,
        _user: &str,
        _instructions: &str,
        prompts: &[Prompt<'b>],
    ) -> Vec<String> {
        prompts.iter().map(|_| self.0.expose().to_owned()).collect()
    }
}

/// Reads from `reader` until it would block (or a bounded number of chunks, so the other
/// stream gets its turn). Returns whether anything was read.
fn drain(reader: &mut impl Read, capture: &mut Capture, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut progressed = false;
    for _ in 0..16 {
        match reader.read(buf) {
            Ok(0) => break,
            Ok(n) => {
                capture.push(buf.get(..n).unwrap_or_default());
                progressed = true;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(progressed)
}

enum Step {
    Expired,
    Ssh(ssh2::Error),
}

/// Waits on the session's socket in the direction libssh2 is blocked on.
struct Waiter {
    session: Session,
    socket: OwnedFd,
}

struct Expired;

impl Waiter {
    /// Calls `op` until it stops returning `EAGAIN`, waiting for the socket in between.
    fn retry<T>(
        &self,
        deadline: Instant,
        mut op: impl FnMut() -> Result<T, ssh2::Error>,
    ) -> Result<T, Step> {
        loop {
            match op() {
                Ok(v) => return Ok(v),
                Err(e) if is_eagain(&e) => self.wait(deadline).map_err(|_| Step::Expired)?,
                Err(e) => return Err(Step::Ssh(e)),
            }
        }
    }

    /// The poll flags for the direction libssh2 waits on (reading when it says nothing).
    fn direction(&self) -> PollFlags {
        match self.session.block_directions() {
            BlockDirections::Outbound => PollFlags::POLLOUT,
            BlockDirections::Both => PollFlags::POLLIN | PollFlags::POLLOUT,
            BlockDirections::Inbound | BlockDirections::None => PollFlags::POLLIN,
        }
    }

    /// Blocks until the socket is ready in the needed direction, at most until `deadline`.
    fn wait(&self, deadline: Instant) -> Result<(), Expired> {
        let now = Instant::now();
        if now >= deadline {
            return Err(Expired);
        }
        let (flags, cap) = match self.session.block_directions() {
            BlockDirections::Inbound => (PollFlags::POLLIN, 1000),
            BlockDirections::Outbound => (PollFlags::POLLOUT, 1000),
            BlockDirections::Both => (PollFlags::POLLIN | PollFlags::POLLOUT, 1000),
            // libssh2 gave no direction: poll briefly rather than trust readability alone.
            BlockDirections::None => (PollFlags::POLLIN, 10),
        };
        let left = (deadline - now).as_millis().min(cap);
        let timeout = PollTimeout::from(u16::try_from(left).unwrap_or(u16::MAX));
        let mut fds = [PollFd::new(self.socket.as_fd(), flags)];
        // EINTR and other poll errors just lead to another try of the libssh2 call.
        let _ = poll(&mut fds, timeout);
        Ok(())
    }
}

fn is_eagain(e: &ssh2::Error) -> bool {
    // LIBSSH2_ERROR_EAGAIN
    e.code() == ssh2::ErrorCode::Session(-37)
}
