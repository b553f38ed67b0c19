//! Zones on Redis: which executors are alive in a zone, and what waits on its tasks stream.
//!
//! An executor announces itself in each of its zones' sorted set
//! `<prefix>executors:<zone>` ([`Streams::zone_executors`]): member its consumer name, score
//! the Redis time (milliseconds) until which it counts as alive. It renews that every
//! [`PRESENCE_RENEW`] for [`PRESENCE_TTL`] and removes itself when it stops. A consumer group
//! cannot tell this by itself: its consumers stay listed after their process died, and before
//! Redis 7.2 an `XREADGROUP` that finds nothing does not even refresh a consumer's idle time,
//! so an idle live executor and a dead one look alike there.
//!
//! The scheduler [`observe`]s each zone: live executors, tasks not yet delivered to any
//! executor (queued), tasks delivered and not acknowledged (held: running or waiting for a
//! device slot), and the age of the oldest queued task. A zone with queued tasks and no live
//! executor is reported, not failed: its runs wait on the stream (the re-queue pass leaves a
//! waiting task alone) until an executor of the zone comes.

use std::sync::LazyLock;

use netcron_common::domain::Zone;

use super::Streams;

/// How long an executor counts as alive after its last renewal.
pub const PRESENCE_TTL: std::time::Duration = std::time::Duration::from_secs(15);

/// How often an executor renews its presence: three renewals fit in [`PRESENCE_TTL`], so one
/// slow Redis round trip does not make it look dead.
pub const PRESENCE_RENEW: std::time::Duration = std::time::Duration::from_secs(5);

/// KEYS: the presence sets of the executor's zones. ARGV: consumer name, ttl ms. Scores are
/// the Redis server's time, so no host's clock takes part; expired members are dropped on the
/// way, and a set nobody renews vanishes by itself.
const BEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + ttl, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  redis.call('PEXPIRE', key, ttl * 4)
end
return 0
";

/// KEYS: tasks stream, presence set. ARGV: consumer group. Answers `{live executors, queued,
/// held, age of the oldest queued task in ms}`. Queued is the group's `lag` when Redis knows
/// it, else counted (at most 100,000); without a group every entry is queued.
const OBSERVE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf')
if redis.call('EXISTS', KEYS[1]) == 0 then return {live, 0, 0, 0} end
local last, held, lag, grouped = '0-0', 0, false, false
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local f = {}
  for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
  if f['name'] == ARGV[1] then
    grouped = true
    last, held, lag = f['last-delivered-id'], f['pending'], f['lag']
  end
end
local first = redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', 1)
if #first == 0 then return {live, 0, held, 0} end
local queued = lag
if not grouped then
  queued = redis.call('XLEN', KEYS[1])
elseif type(queued) ~= 'number' then
  queued = #redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', 100000)
end
local ms = tonumber(string.match(first[1][1], '^(%d+)-')) or now
return {live, queued, held, math.max(0, now - ms)}
";

static BEAT_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(BEAT));
static OBSERVE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(OBSERVE));

/// Announces `consumer` as alive in each of `zones` for [`PRESENCE_TTL`].
///
/// # Errors
/// When Redis fails.
pub async fn announce<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    streams: &Streams,
    zones: &[Zone],
    consumer: &str,
) -> redis::RedisResult<()> {
    let mut call = BEAT_SCRIPT.prepare_invoke();
    for zone in zones {
        call.key(streams.zone_executors(zone));
    }
    call.arg(consumer)
        .arg(u64::try_from(PRESENCE_TTL.as_millis()).unwrap_or(u64::MAX));
    call.invoke_async::<i64>(conn).await.map(|_| ())
}

/// Removes `consumer` from `zones` (it is stopping), so a zone left without executors shows
/// at once rather than after [`PRESENCE_TTL`].
///
/// # Errors
/// When Redis fails.
pub async fn withdraw<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    streams: &Streams,
    zones: &[Zone],
    consumer: &str,
) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    for zone in zones {
        pipe.cmd("ZREM")
            .arg(streams.zone_executors(zone))
            .arg(consumer)
            .ignore();
    }
    pipe.query_async(conn).await
}

/// What waits in a zone, and who serves it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ZoneState {
    /// Executors of the zone that renewed their presence within [`PRESENCE_TTL`].
    pub executors: u64,
    /// Tasks on the zone's stream that no executor has taken yet.
    pub queued: u64,
    /// Tasks delivered to an executor and not acknowledged (running, or waiting for a slot).
    pub held: u64,
    /// How long the oldest queued task has waited, by Redis' clock (0 when none waits).
    pub oldest_queued_ms: u64,
}

impl ZoneState {
    /// Work waits and nobody is there to take it.
    pub fn without_executors(&self) -> bool {
        self.executors == 0 && self.queued > 0
    }
}

/// Observes `zone` (see [`OBSERVE`]) for the executors' consumer `group`.
///
/// # Errors
/// When Redis fails.
pub async fn observe<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    streams: &Streams,
    zone: &Zone,
    group: &str,
) -> redis::RedisResult<ZoneState> {
    let answer: Vec<i64> = OBSERVE_SCRIPT
        .key(streams.zone_tasks(zone))
        .key(streams.zone_executors(zone))
        .arg(group)
        .invoke_async(conn)
        .await?;
    let at = |i: usize| answer.get(i).map_or(0, |n| u64::try_from(*n).unwrap_or(0));
    Ok(ZoneState {
        executors: at(0),
        queued: at(1),
        held: at(2),
        oldest_queued_ms: at(3),
    })
}
