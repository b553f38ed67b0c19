//! Authenticated SSH sessions kept open between runs of the same device (issue 17).
//!
//! After a run, its session goes back to the [`Pool`] for `NETCRON_SSH_IDLE_S`; the next run
//! of the same device whose [`SessionKey`] matches (address, platform, algorithm profile,
//! login name, credential — its sealed bytes, which change with every edit — and jump host)
//! and whose pin still allows the key the session saw takes it instead of logging in again.
//! Anything else found for the device is closed at once. A session serves one run at a time:
//! runs of one device at once are bounded by `NETCRON_EXECUTOR_PER_DEVICE`, so at most that many
//! sessions per device are ever kept in one executor. The limit counts runs across executors,
//! not pooled sessions: another executor's idle session to the device is not counted here.
//!
//! A reaper thread closes sessions the moment their idle time is over, and
//! [`Pool::close_all`] closes the rest on shutdown; a session is never handed out past its
//! idle time even if the reaper is late.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::connection::Connection;
use super::terms::{Discard, Target};
use crate::metrics::SessionMetrics;

/// What a pooled session must match to serve a run: a digest of everything that decides which
/// server is reached, as whom and how, except the device's pin, which is compared on its own.
/// The credential enters as its sealed bytes: every edit seals anew (fresh nonce), so an edit
/// changes the key even when the secret stays the same.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionKey([u8; 32]);

impl SessionKey {
    /// `parts` in order, each length-prefixed so that no two lists hash alike.
    pub fn of<'a>(parts: impl IntoIterator<Item = &'a str>) -> Self {
        let mut hash = Sha256::new();
        for part in parts {
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part.as_bytes());
        }
        Self(hash.finalize().into())
    }
}

/// What a run asks of the pool.
pub struct Reuse<'a> {
    pub pool: &'a Pool,
    pub device: Uuid,
    pub key: SessionKey,
    /// `false` when the device has `session_reuse` off: the run logs in and closes, as before.
    pub keep: bool,
}

struct Idle {
    key: SessionKey,
    /// The device's pin when the session logged in (`None`: first contact).
    pin: Option<String>,
    /// The jump host's pin then, likewise.
    jump_pin: Option<String>,
    conn: Connection,
    until: Instant,
}

#[derive(Default)]
struct State {
    devices: HashMap<Uuid, Vec<Idle>>,
    count: usize,
    closed: bool,
}

/// The executor's idle sessions, by device.
pub struct Pool {
    idle: Duration,
    max_idle: usize,
    state: Mutex<State>,
    changed: Condvar,
    metrics: SessionMetrics,
}

impl Pool {
    /// A pool keeping sessions `idle` long, at most `max_idle` of them, with its reaper thread.
    /// `idle` of zero keeps nothing (every run logs in, as without a pool).
    pub fn start(idle: Duration, max_idle: usize, metrics: SessionMetrics) -> Arc<Self> {
        let pool = Arc::new(Self {
            idle,
            max_idle: max_idle.max(1),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            metrics,
        });
        if !idle.is_zero() {
            let weak = Arc::downgrade(&pool);
            // Without the thread sessions would still never be handed out late, but they would
            // hold the device's VTY lines past their idle time; so a failure to start it turns
            // pooling off rather than leaving sessions open.
            let started = std::thread::Builder::new()
                .name("ssh-pool-reaper".into())
                .spawn(move || reap(&weak));
            if let Err(e) = started {
                tracing::error!(error = %e, "cannot start the SSH session reaper; sessions are not reused");
                if let Ok(mut state) = pool.state.lock() {
                    state.closed = true;
                }
            }
        }
        pool
    }

    pub fn enabled(&self) -> bool {
        !self.idle.is_zero()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// A fresh session was logged in.
    pub(super) fn opened(&self) {
        self.metrics.opened.inc();
    }

    /// A session of `device` matching `key` that `target`'s pin allows, most recently used
    /// first. Every other session of the device is closed: it belongs to a configuration
    /// that no longer exists.
    pub(super) fn checkout(
        &self,
        device: Uuid,
        key: SessionKey,
        target: &Target<'_>,
        jump: Option<&Target<'_>>,
    ) -> Option<Connection> {
        let jump_pin = jump.and_then(|j| j.pinned_host_key);
        let now = Instant::now();
        let mut found = None;
        let mut stale = Vec::new();
        {
            let mut state = self.lock();
            let sessions = state.devices.remove(&device).unwrap_or_default();
            let mut kept = Vec::new();
            // Newest last: take from the end so older sessions are left to expire.
            for idle in sessions.into_iter().rev() {
                let verdict = if idle.until <= now {
                    Some(Discard::Idle)
                } else if idle.key != key {
                    Some(Discard::Changed)
                } else if !pin_allows(
                    target.pinned_host_key,
                    idle.pin.as_deref(),
                    idle.conn.host_key.as_deref(),
                ) || !pin_allows(
                    jump_pin,
                    idle.jump_pin.as_deref(),
                    idle.conn.jump_host_key.as_deref(),
                ) {
                    Some(Discard::HostKey)
                } else {
                    None
                };
                match verdict {
                    Some(reason) => stale.push((idle.conn, reason)),
                    None if found.is_none() => found = Some(idle),
                    None => kept.push(idle),
                }
            }
            kept.reverse();
            state.count -= stale.len() + usize::from(found.is_some());
            if !kept.is_empty() {
                state.devices.insert(device, kept);
            }
            self.metrics.pooled.set(gauge(state.count));
        }
        for (conn, reason) in stale {
            self.close(conn, reason);
        }
        let idle = found?;
        // Still at first contact (the pin has not reached the task yet): the key is checked
        // against the Redis pin again, as a fresh login would, so a pin cleared and taken by
        // another key meanwhile is not bypassed.
        if target.pinned_host_key.is_none()
            && let (Some(pin), Some(seen)) = (target.first_contact, idle.conn.host_key.as_deref())
            && pin(seen).is_err()
        {
            self.close(idle.conn, Discard::HostKey);
            return None;
        }
        self.metrics.reused.inc();
        Some(idle.conn)
    }

    /// Keeps `conn` for the next run of `device`, unless the pool is closed.
    pub(super) fn checkin(
        &self,
        device: Uuid,
        key: SessionKey,
        pins: (Option<&str>, Option<&str>),
        conn: Connection,
    ) {
        let mut evicted = None;
        {
            let mut state = self.lock();
            if state.closed || self.idle.is_zero() {
                drop(state);
                self.close(conn, Discard::Shutdown);
                return;
            }
            if state.count >= self.max_idle {
                evicted = take_oldest(&mut state);
            }
            state.devices.entry(device).or_default().push(Idle {
                key,
                pin: pins.0.map(str::to_owned),
                jump_pin: pins.1.map(str::to_owned),
                conn,
                until: Instant::now() + self.idle,
            });
            state.count += 1;
            self.metrics.pooled.set(gauge(state.count));
        }
        self.changed.notify_all();
        if let Some(conn) = evicted {
            self.close(conn, Discard::Full);
        }
    }

    /// Closes `conn` cleanly and counts why.
    pub(super) fn close(&self, conn: Connection, reason: Discard) {
        self.metrics.discarded(reason.as_str());
        conn.close(reason.as_str());
    }

    /// Closes every idle session and refuses new ones: the executor is stopping. Blocks for
    /// up to a second per session (the disconnect message), so call it on a blocking thread.
    pub fn close_all(&self) {
        let sessions: Vec<Idle> = {
            let mut state = self.lock();
            state.closed = true;
            state.count = 0;
            self.metrics.pooled.set(0);
            state.devices.drain().flat_map(|(_, v)| v).collect()
        };
        self.changed.notify_all();
        for idle in sessions {
            self.close(idle.conn, Discard::Shutdown);
        }
    }

    /// Removes the sessions whose idle time is over; answers how long until the next ends.
    fn expired(&self) -> (Vec<Connection>, Option<Duration>) {
        let now = Instant::now();
        let mut state = self.lock();
        let mut gone = Vec::new();
        let mut next: Option<Instant> = None;
        for sessions in state.devices.values_mut() {
            let (old, young): (Vec<Idle>, Vec<Idle>) = std::mem::take(sessions)
                .into_iter()
                .partition(|i| i.until <= now);
            gone.extend(old.into_iter().map(|i| i.conn));
            for i in &young {
                next = Some(next.map_or(i.until, |n| n.min(i.until)));
            }
            *sessions = young;
        }
        state.devices.retain(|_, v| !v.is_empty());
        state.count -= gone.len();
        self.metrics.pooled.set(gauge(state.count));
        (gone, next.map(|n| n.saturating_duration_since(now)))
    }
}

/// Whether a session that logged in under pin `at_login` and saw key `seen` may serve a run
/// whose device (or jump host) is pinned to `now`. The same pin as at login, or first contact
/// since confirmed (the pin is now the key the session saw). A pin cleared or changed since —
/// a re-pin — never reuses: the next run must meet whatever key the server presents now.
fn pin_allows(now: Option<&str>, at_login: Option<&str>, seen: Option<&str>) -> bool {
    match (now, at_login) {
        (now, at_login) if now == at_login => true,
        (Some(now), None) => seen == Some(now),
        _ => false,
    }
}

fn take_oldest(state: &mut State) -> Option<Connection> {
    let (device, index) = state
        .devices
        .iter()
        .flat_map(|(d, v)| {
            v.iter()
                .enumerate()
                .map(move |(i, idle)| (*d, i, idle.until))
        })
        .min_by_key(|(_, _, until)| *until)
        .map(|(d, i, _)| (d, i))?;
    let sessions = state.devices.get_mut(&device)?;
    let idle = sessions.remove(index);
    if sessions.is_empty() {
        state.devices.remove(&device);
    }
    state.count -= 1;
    Some(idle.conn)
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The reaper: sleeps until the earliest idle time ends (or a session arrives), closes what
/// expired. It holds the pool only while it works or waits, so dropping the executor's pool
/// ends it within one wait.
fn reap(weak: &Weak<Pool>) {
    loop {
        let Some(pool) = weak.upgrade() else { return };
        let (gone, next) = pool.expired();
        for conn in gone {
            pool.close(conn, Discard::Idle);
        }
        let state = pool.lock();
        if state.closed {
            return;
        }
        // Bounded, so that a pool dropped while this waits is noticed.
        let wait = next
            .unwrap_or(pool.idle)
            .min(pool.idle)
            .min(Duration::from_secs(5));
        let _ = pool.changed.wait_timeout(state, wait);
    }
}
