//! The two jobs a logged-in connection does: one command on an exec channel (stdout and
//! stderr drained in turns, to the exit status), or the lines of an interactive CLI in its PTY
//! shell ([`super::interactive`]).

use std::io::Read;
use std::time::{Duration, Instant};

use netcron_common::domain::{ErrorKind, RunStatus};
use netcron_common::secret::SecretString;

use super::connection::Connection;
use super::interactive::CliSession;
use super::terms::{Attempt, Discard, Failure, Limits, Use};
use super::wait::{Step, Waiter};
use crate::cli::Driver;
use crate::output::{Capture, Scrubber};

/// The lines of a CLI job, in the shell a previous run left (brought back to its base prompt
/// first) or in a new one.
pub(super) fn cli(
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

/// One command on a new exec channel. On a pooled session (`reused`), a channel that cannot
/// be opened means the session died while idle: nothing was sent, so the run is not harmed.
pub(super) fn exec(
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
