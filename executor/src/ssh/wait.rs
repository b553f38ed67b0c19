//! Waiting on a non-blocking libssh2 session: every call that would block returns `EAGAIN`,
//! and [`Waiter`] polls the socket for the direction libssh2 waits on, never past the phase's
//! deadline. The lowest floor of `ssh`: it knows sockets and libssh2, nothing of a run.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use ssh2::{BlockDirections, Session};

pub(super) enum Step {
    Expired,
    Ssh(ssh2::Error),
}

/// Waits on the session's socket in the direction libssh2 is blocked on.
pub(super) struct Waiter {
    pub(super) session: Session,
    pub(super) socket: OwnedFd,
}

pub(super) struct Expired;

impl Waiter {
    /// Calls `op` until it stops returning `EAGAIN`, waiting for the socket in between.
    pub(super) fn retry<T>(
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
    pub(super) fn direction(&self) -> PollFlags {
        match self.session.block_directions() {
            BlockDirections::Outbound => PollFlags::POLLOUT,
            BlockDirections::Both => PollFlags::POLLIN | PollFlags::POLLOUT,
            BlockDirections::Inbound | BlockDirections::None => PollFlags::POLLIN,
        }
    }

    /// Blocks until the socket is ready in the needed direction, at most until `deadline`.
    pub(super) fn wait(&self, deadline: Instant) -> Result<(), Expired> {
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
