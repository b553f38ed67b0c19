//! Jump hosts: the device's session runs over a socket pair whose far end a pump thread copies
//! to and from a `direct-tcpip` channel on the bastion.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netcron_common::domain::ErrorKind;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use ssh2::{Channel, Session};

use super::login::{connect, login};
use super::terms::{Failure, Limits, Target};
use super::wait::{Step, Waiter};

/// How long a pump may live. A pooled session serves run after run, so every use extends it;
/// it is only a safety net, since the pump ends as soon as the session closes its end.
#[derive(Clone)]
pub(super) struct PumpLease(Arc<Mutex<Instant>>);

impl PumpLease {
    fn new(limits: Limits) -> Self {
        Self(Arc::new(Mutex::new(Self::horizon(limits))))
    }

    fn horizon(limits: Limits) -> Instant {
        // Login, the command, and the longest the session may then wait in the pool.
        Instant::now() + limits.login_timeout + limits.command_timeout + Duration::from_secs(3600)
    }

    /// Another run is about to use the session.
    pub(super) fn extend(&self, limits: Limits) {
        if let Ok(mut until) = self.0.lock() {
            *until = (*until).max(Self::horizon(limits));
        }
    }

    fn until(&self) -> Instant {
        match self.0.lock() {
            Ok(until) => *until,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }
}

/// Connects through `bastion`: logs in there (its own credential and pin), opens a
/// `direct-tcpip` channel to the target and returns one end of a socket pair whose other end a
/// pump thread copies to and from that channel, so the target session runs over it unchanged.
pub(super) fn tunnel(
    bastion: &Target<'_>,
    target: &Target<'_>,
    limits: Limits,
    fingerprint: &mut Option<String>,
) -> Result<(UnixStream, PumpLease), Failure> {
    let name = format!("jump host {}:{}", bastion.host, bastion.port);
    let on_bastion = |f: Failure| {
        // Connect errors already start with the address.
        if f.message.starts_with(bastion.host) {
            Failure::new(f.kind, format!("jump host {}", f.message))
        } else {
            Failure::new(f.kind, format!("{name}: {}", f.message))
        }
    };
    let stream = connect(bastion.host, bastion.port, limits.connect_timeout).map_err(on_bastion)?;
    let _ = stream.set_nodelay(true);
    let (session, waiter) = login(stream, bastion, limits, fingerprint).map_err(on_bastion)?;
    let deadline = Instant::now() + limits.connect_timeout.max(limits.login_timeout);
    let channel = waiter
        .retry(deadline, || {
            session.channel_direct_tcpip(target.host, target.port, None)
        })
        .map_err(|e| {
            let why = match e {
                Step::Expired => "no answer".to_owned(),
                Step::Ssh(e) => e.message().to_owned(),
            };
            Failure::new(
                ErrorKind::Unreachable,
                format!(
                    "{name} could not open a connection to {}:{}: {why}",
                    target.host, target.port
                ),
            )
        })?;
    let (ours, theirs) = UnixStream::pair()
        .map_err(|e| Failure::new(ErrorKind::Internal, format!("socket pair: {e}")))?;
    theirs
        .set_nonblocking(true)
        .map_err(|e| Failure::new(ErrorKind::Internal, format!("socket pair: {e}")))?;
    // The pump lives as long as the target session holds its end (across the runs of a
    // pooled session), and at most until its lease ends.
    let lease = PumpLease::new(limits);
    let until = lease.clone();
    std::thread::Builder::new()
        .name("ssh-jump-pump".into())
        .spawn(move || pump(&session, channel, &waiter, theirs, &until))
        .map_err(|e| Failure::new(ErrorKind::Internal, format!("starting the jump pump: {e}")))?;
    Ok((ours, lease))
}

/// Copies bytes between `local` and the bastion's channel until either side closes. It is
/// one loop because every turn must serve both directions before it may wait on both ends: a
/// direction served apart could wait while the other has bytes ready.
fn pump(
    session: &Session,
    mut channel: Channel,
    waiter: &Waiter,
    mut local: UnixStream,
    until: &PumpLease,
) {
    let mut up: Vec<u8> = Vec::new();
    let mut down: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    let mut local_open = true;
    while Instant::now() < until.until() {
        let mut progressed = false;
        if local_open && up.is_empty() {
            match local.read(&mut buf) {
                Ok(0) => local_open = false,
                Ok(n) => {
                    up.extend_from_slice(&buf[..n]);
                    progressed = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => local_open = false,
            }
        }
        if !up.is_empty() {
            match channel.write(&up) {
                Ok(n) => {
                    up.drain(..n);
                    progressed = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
        }
        if !local_open && up.is_empty() {
            break;
        }
        if down.is_empty() {
            match channel.read(&mut buf) {
                Ok(0) if channel.eof() => break,
                Ok(0) => {}
                Ok(n) => {
                    down.extend_from_slice(&buf[..n]);
                    progressed = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
        }
        if !down.is_empty() {
            match local.write(&down) {
                Ok(n) => {
                    down.drain(..n);
                    progressed = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
        }
        if progressed {
            continue;
        }
        // Wait for the bastion's socket or our end of the pair, briefly: libssh2 may hold
        // bytes it already read, so the loop polls again soon in any case.
        let mut local_flags = PollFlags::empty();
        if local_open && up.is_empty() {
            local_flags |= PollFlags::POLLIN;
        }
        if !down.is_empty() {
            local_flags |= PollFlags::POLLOUT;
        }
        let mut fds = [
            PollFd::new(waiter.socket.as_fd(), waiter.direction()),
            PollFd::new(local.as_fd(), local_flags),
        ];
        let _ = poll(&mut fds, PollTimeout::from(50u16));
    }
    let _ = channel.close();
    let _ = session.disconnect(None, "done", None);
}
