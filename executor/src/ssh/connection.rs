//! An authenticated session ([`Connection`]): opened fresh (TCP directly or through the jump
//! host, then the login), and closed politely.

use std::time::{Duration, Instant};

use ssh2::Session;

use super::interactive::Shell;
use super::jump::{self, PumpLease};
use super::login::{connect, login};
use super::terms::{Attempt, Failure, Limits, Target};
use super::wait::Waiter;

/// An authenticated session, fresh or from the pool (`super::pool::Pool`).
pub(crate) struct Connection {
    pub(super) session: Session,
    pub(super) waiter: Waiter,
    /// The key the device presented at login.
    pub(super) host_key: Option<String>,
    /// The jump host's key, when the session goes through one.
    pub(super) jump_host_key: Option<String>,
    /// CLI platforms: the shell a previous run left at its base prompt.
    pub(super) shell: Option<Shell>,
    /// Through a jump host: how long its pump thread may live, extended at every use.
    pub(super) pump: Option<PumpLease>,
}

impl Connection {
    /// Leaves politely (a CLI gets `exit`) and sends the disconnect message, within a second.
    pub(super) fn close(self, why: &str) {
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

/// A fresh connection: TCP (directly or through the jump host), then [`login`]. The keys seen
/// go into `attempt` even when the login fails after the key exchange.
pub(super) fn connect_and_login(
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
