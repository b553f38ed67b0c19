//! Counting semaphores shared by every process that reaches one Redis: a limit that holds
//! across executors, not per process.
//!
//! A semaphore is a sorted set (for a device's slots `<prefix>slots:device:<device id>`, see
//! [`Streams::device_slots`]): one member per slot held, named by a token unique to that
//! holding, scored by the Redis time (milliseconds) until which the slot is held. A holder
//! renews its slots while it uses them and removes its member when done; one that dies stops
//! renewing, and its member is dropped by the next acquisition after its expiry — a dead
//! holder's slots leave by themselves, within one lease.
//!
//! Every decision is taken inside one Lua script, on the Redis server's own clock (`TIME`), so
//! no host's clock or skew takes part, as with the run leases ([`super::lease`]). The key's own
//! expiry is kept at least as late as its latest member's (it is only ever extended, so
//! holders with different leases do not cut each other's), so a set whose holders all died
//! vanishes too.
//!
//! The limit is the caller's, given with each acquisition: the set only counts. Processes
//! configured with different limits each hold themselves to their own.

use super::Streams;

/// The time of the Redis server in milliseconds.
const NOW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

/// KEYS: the semaphore. ARGV: limit, token, lease ms. Drops expired holders, then adds `token`
/// while fewer than `limit` hold a slot. A token that already holds one (a retry after a lost
/// reply) keeps it and has its lease extended. Answers 1 (held) or 0 (full).
const ACQUIRE: &str = r"
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[2]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])
  if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
  return 1
end
return 0
";

/// KEYS: semaphores. ARGV: lease ms, then one token per key. Extends each token's lease; a
/// token no longer in its set (it expired and was dropped, or was released meanwhile) is not
/// added back — that could hold a released slot for a whole lease. A token past its expiry
/// but not yet dropped is renewed: nobody took its slot. Answers the 1-based positions of the
/// tokens that were not held.
const RENEW: &str = r"
local ttl = tonumber(ARGV[1])
local lost = {}
for i, key in ipairs(KEYS) do
  if redis.call('ZSCORE', key, ARGV[1 + i]) then
    redis.call('ZADD', key, now + ttl, ARGV[1 + i])
    if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
  else
    table.insert(lost, i)
  end
end
return lost
";

impl Streams {
    /// The semaphore of a device's slots (`NETCRON_EXECUTOR_PER_DEVICE`), shared by every
    /// executor (see [`crate::slots`]). Per device, not per zone: a device is in one
    /// zone at a time, and a device moved between zones stays one device.
    pub fn device_slots(&self, device_id: uuid::Uuid) -> String {
        format!("{}slots:device:{device_id}", self.prefix)
    }
}

/// One slot held: the semaphore's key and the holder's token in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Held {
    pub key: String,
    pub token: String,
}

/// The semaphore scripts. Cheap to clone; one per process is enough.
#[derive(Clone)]
pub struct Slots {
    acquire: redis::Script,
    renew: redis::Script,
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slots").finish_non_exhaustive()
    }
}

impl Default for Slots {
    fn default() -> Self {
        Self::new()
    }
}

impl Slots {
    pub fn new() -> Self {
        Self {
            acquire: redis::Script::new(&format!("{NOW}{ACQUIRE}")),
            renew: redis::Script::new(&format!("{NOW}{RENEW}")),
        }
    }

    /// Takes a slot of `held.key` for `held.token` for `lease_ms` if fewer than `limit` are
    /// held; answers whether it did. Never waits: the caller decides how to.
    ///
    /// # Errors
    /// When Redis fails; then the slot may or may not be held, and retrying with the same
    /// token settles it.
    pub async fn try_acquire<C: redis::aio::ConnectionLike + Send>(
        &self,
        conn: &mut C,
        held: &Held,
        limit: usize,
        lease_ms: u64,
    ) -> redis::RedisResult<bool> {
        let got: i64 = self
            .acquire
            .key(&held.key)
            .arg(limit)
            .arg(&held.token)
            .arg(lease_ms.max(1))
            .invoke_async(conn)
            .await?;
        Ok(got == 1)
    }

    /// Extends the leases of `held` by `lease_ms` from now, in one call; answers those that
    /// were no longer held (their holder was silent past a lease).
    ///
    /// # Errors
    /// When Redis fails.
    pub async fn renew<'a, C: redis::aio::ConnectionLike + Send>(
        &self,
        conn: &mut C,
        held: &'a [Held],
        lease_ms: u64,
    ) -> redis::RedisResult<Vec<&'a Held>> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let mut call = self.renew.prepare_invoke();
        call.arg(lease_ms.max(1));
        for h in held {
            call.key(&h.key).arg(&h.token);
        }
        let lost: Vec<usize> = call.invoke_async(conn).await?;
        Ok(lost
            .into_iter()
            .filter_map(|i| held.get(i.checked_sub(1)?))
            .collect())
    }

    /// Gives a slot back.
    ///
    /// # Errors
    /// When Redis fails; the slot then leaves when its lease ends.
    pub async fn release<C: redis::aio::ConnectionLike + Send>(
        &self,
        conn: &mut C,
        held: &Held,
    ) -> redis::RedisResult<()> {
        redis::cmd("ZREM")
            .arg(&held.key)
            .arg(&held.token)
            .query_async(conn)
            .await
    }
}
