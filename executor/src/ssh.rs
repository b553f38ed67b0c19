//! One SSH attempt, on a blocking thread: connect (directly, or through a jump host), handshake
//! with the device's algorithm preferences, check the host key, authenticate, then either run
//! one command on an exec channel or drive an interactive CLI on a PTY shell, and collect the
//! output.
//!
//! libssh2's own timeouts apply to each blocking call, so a device that trickles one byte a
//! second would keep a blocking session alive forever. The session is therefore used in
//! non-blocking mode: every libssh2 call that would block returns `EAGAIN`, and `wait::Waiter`
//! polls the socket for the direction libssh2 is waiting on, never past the phase's deadline.
//! That gives each phase a real deadline: the TCP connect, the login (handshake, host key and
//! authentication) and the command itself.
//!
//! Its files, each using only those after it: this one (`run`: a pooled session or a fresh
//! one, the job, the session given back or closed); `pool` (sessions kept between runs);
//! `jobs` (an exec, or a CLI's lines); `connection` (a session opened and closed);
//! `interactive` (the CLI in its PTY shell); `jump` (the tunnel through a bastion); `login`
//! (TCP, handshake, host key, authentication); `wait` (the socket polled under a deadline);
//! `terms` (what an attempt is given and what it gives back).

use netcron_common::domain::RunStatus;
use netcron_protocol::live::Which;

use crate::output::{Capture, Scrubber};

mod connection;
mod interactive;
mod jobs;
mod jump;
mod login;
pub mod pool;
mod terms;
mod wait;

use connection::connect_and_login;
use terms::{Failure, Use};

pub use pool::{Pool, Reuse, SessionKey};
pub use terms::{Attempt, Auth, FirstContactFn, Job, Limits, Target};

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
            Job::Exec { command, env } => jobs::exec(&conn, command, env, limits, reused, attempt),
            Job::Cli {
                driver,
                lines,
                enable_secret,
            } => jobs::cli(
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
