//! Run leases and first-contact host-key pins: the Redis side of the run lifecycle.
//!
//! Every decision about a lease is taken inside one of these Lua scripts, atomically, on the
//! Redis server's own clock (`TIME`): an executor's clock, the scheduler's clock and any skew
//! between them decide nothing. Executors reach only Redis, so Redis is where they hold runs.
//!
//! A run's lease is the hash `<prefix>run:<run id>` with fields `a` (attempt), `s` (state), `h`
//! (holder: the executor's consumer name), `e` (lease expiry, milliseconds of Redis time) and
//! `x` (the task entry the attempt came from). States:
//!
//! - `leased`: an executor began the attempt's command and renews `e` while it runs;
//! - `done`: the outcome is on the results stream (set in the same script that adds it);
//! - `revoked`: the scheduler found the lease expired twice in a row and re-queues the run as
//!   a new attempt; the old holder can no longer renew, and no copy of the old attempt starts;
//! - `cancelled`: the run was cancelled before it started;
//! - `stored`: ingest stored the outcome; the key expires [`STORED_TTL_S`] later.
//!
//! Keys therefore live while a run is in flight, plus ingest's lag, plus [`STORED_TTL_S`]
//! (a copy of a finished attempt's task read within that time is dropped; netcron itself never
//! publishes a second copy of an attempt, see `Task::publish_once`). The `EXPIRE` on every other
//! write is only a safety net for keys whose run vanished.

use redis::FromRedisValue as _;
use uuid::Uuid;

use super::{RunResult, Streams};

/// The time of the Redis server in milliseconds.
const NOW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

/// KEYS: run key, tasks stream, results stream. ARGV: attempt, holder, entry id, lease ms,
/// group, safety ttl s, then the started event's `v`, `run_id`, `body` (empty `v`: none).
const START: &str = r"
local pending = redis.call('XPENDING', KEYS[2], ARGV[5], ARGV[3], ARGV[3], 1)
if #pending == 0 then return 'gone' end
local cur = redis.call('HMGET', KEYS[1], 'a', 's', 'e', 'h', 'x')
local attempt = tonumber(ARGV[1])
if cur[1] then
  local a = tonumber(cur[1])
  if a > attempt then return 'superseded' end
  if a == attempt then
    if cur[2] == 'leased' and tonumber(cur[3]) > now then
      -- The same holder asking again for the same entry is a retry whose reply was lost: the
      -- lease is already its own (and `started` already published), so it may run.
      if cur[4] == ARGV[2] and cur[5] == ARGV[3] then
        redis.call('HSET', KEYS[1], 'e', now + tonumber(ARGV[4]))
        return 'started'
      end
      return 'held'
    end
    return 'began:' .. cur[2]
  end
end
redis.call('HSET', KEYS[1], 'a', ARGV[1], 's', 'leased', 'h', ARGV[2],
           'e', now + tonumber(ARGV[4]), 'x', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[6])
if ARGV[7] ~= '' then
  redis.call('XADD', KEYS[3], '*', 'v', ARGV[7], 'run_id', ARGV[8], 'body', ARGV[9])
end
return 'started'
";

/// KEYS: tasks stream, results stream. ARGV: group, holder, safety ttl s, result version, then
/// per no-op task: run key, attempt, entry id, run id, outcome body. Each task whose entry is
/// pending and whose attempt has not begun starts and finishes at once (lease `done`, outcome
/// added); the others are only acknowledged. Answers 1/0 (ran) per task.
const NOOPS: &str = r"
local out = {}
for i = 5, #ARGV, 5 do
  local key, attempt, entry = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local ran = 0
  if #redis.call('XPENDING', KEYS[1], ARGV[1], entry, entry, 1) > 0 then
    local a = redis.call('HGET', key, 'a')
    if not a or tonumber(a) < attempt then
      local o = redis.call('XADD', KEYS[2], '*', 'v', ARGV[4], 'run_id', ARGV[i + 3], 'body', ARGV[i + 4])
      redis.call('HSET', key, 'a', ARGV[i + 1], 's', 'done', 'h', ARGV[2], 'e', now, 'x', entry, 'o', o)
      redis.call('PERSIST', key)
      ran = 1
    end
    redis.call('XACK', KEYS[1], ARGV[1], entry)
  end
  table.insert(out, ran)
end
return out
";

/// KEYS: run keys. ARGV: holder, lease ms, safety ttl s, then one attempt per key. Answers
/// the 1-based positions of the keys whose lease this holder no longer has. A renewal also
/// renews the key's own safety expiry, so a command that runs longer than it keeps its lease.
const RENEW: &str = r"
local lost = {}
for i, key in ipairs(KEYS) do
  local cur = redis.call('HMGET', key, 'a', 's', 'h')
  if cur[1] == ARGV[3 + i] and cur[2] == 'leased' and cur[3] == ARGV[1] then
    redis.call('HSET', key, 'e', now + tonumber(ARGV[2]))
    redis.call('EXPIRE', key, ARGV[3])
  else
    table.insert(lost, i)
  end
end
return lost
";

/// KEYS: run key, tasks stream, results stream, large-results counter. ARGV: attempt, holder,
/// entry id, group, safety ttl s, then the outcome's `v`, `run_id`, `body`, then the size
/// above which a result counts as large. The outcome is always published: one of a revoked
/// lease is recorded by ingest as superseded, never dropped. A `done` key keeps the outcome's
/// entry id (`o`) and does not expire: it lasts until ingest stored the outcome, however long
/// ingest is away, and the re-queue pass can tell an outcome that waits from one Redis lost.
const FINISH: &str = r"
local o = redis.call('XADD', KEYS[3], '*', 'v', ARGV[6], 'run_id', ARGV[7], 'body', ARGV[8])
if string.len(ARGV[8]) > tonumber(ARGV[9]) then redis.call('INCR', KEYS[4]) end
redis.call('XACK', KEYS[2], ARGV[4], ARGV[3])
local cur = redis.call('HMGET', KEYS[1], 'a', 's', 'h')
if cur[1] == ARGV[1] and cur[2] == 'leased' and cur[3] == ARGV[2] then
  redis.call('HSET', KEYS[1], 's', 'done', 'o', o)
  redis.call('PERSIST', KEYS[1])
  return 1
end
return 0
";

/// KEYS: tasks stream, results stream. ARGV: group, then triples (run key, attempt, entry id
/// or ''). Answers per run a pair: state and lease expiry (or 0).
const CHECK: &str = r"
local function id_of(text)
  local ms, seq = string.match(text, '^(%d+)-(%d+)$')
  return { tonumber(ms or 0), tonumber(seq or 0) }
end
local function after(a, b)
  return a[1] > b[1] or (a[1] == b[1] and a[2] > b[2])
end
local delivered = nil
local groups = redis.pcall('XINFO', 'GROUPS', KEYS[1])
if type(groups) == 'table' and not groups.err then
  for _, g in ipairs(groups) do
    local name, last = nil, nil
    for i = 1, #g, 2 do
      if g[i] == 'name' then name = g[i + 1] end
      if g[i] == 'last-delivered-id' then last = g[i + 1] end
    end
    if name == ARGV[1] then delivered = id_of(last) end
  end
end
local out = {}
for i = 2, #ARGV, 3 do
  local key, attempt, entry = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local cur = redis.call('HMGET', key, 'a', 's', 'e', 'o')
  local state, expiry = nil, 0
  if cur[1] and tonumber(cur[1]) > attempt then
    state = 'ahead'
  elseif cur[1] and tonumber(cur[1]) == attempt then
    expiry = tonumber(cur[3] or 0)
    if cur[2] == 'leased' then
      if expiry > now then state = 'alive' else state = 'expired' end
    elseif cur[2] == 'done' and cur[4] and #redis.call('XRANGE', KEYS[2], cur[4], cur[4]) == 0 then
      -- The outcome is neither stored (Postgres still has the run in flight) nor on the
      -- results stream: Redis lost it.
      state = 'outcome_lost'
    else
      state = cur[2]
    end
  elseif entry == '' then
    state = 'unknown'
  elseif #redis.call('XRANGE', KEYS[1], entry, entry) == 0 then
    state = 'lost'
  elseif delivered == nil or after(id_of(entry), delivered) then
    state = 'waiting'
  elseif #redis.call('XPENDING', KEYS[1], ARGV[1], entry, entry, 1) > 0 then
    state = 'waiting'
  else
    state = 'lost'
  end
  table.insert(out, state)
  table.insert(out, expiry)
end
return out
";

/// KEYS: run keys. ARGV: safety ttl s, then pairs (attempt, expiry seen or 0, or -1 for a
/// `done` attempt whose outcome was lost). Revokes each attempt whose lease is still the
/// expired one seen (or that never had a key, or is fenced), so neither its holder nor any
/// copy of its task can go on with it. Answers 1/0 per key.
const REVOKE: &str = r"
local out = {}
for i, key in ipairs(KEYS) do
  local attempt, seen = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local cur = redis.call('HMGET', key, 'a', 's', 'e')
  local ok = 0
  if cur[1] == false or tonumber(cur[1]) < attempt then
    if seen == 0 then ok = 1 end
  elseif tonumber(cur[1]) == attempt then
    if cur[2] == 'revoked' or cur[2] == 'cancelled' then
      ok = 1
    elseif cur[2] == 'leased' and tonumber(cur[3]) == seen and seen <= now then
      ok = 1
    elseif cur[2] == 'done' and seen == -1 then
      ok = 1
    end
  end
  if ok == 1 then
    redis.call('HSET', key, 'a', attempt, 's', 'revoked')
    redis.call('EXPIRE', key, ARGV[1])
  end
  table.insert(out, ok)
end
return out
";

/// KEYS: run keys. ARGV: ttl s, then one attempt per key. Marks the `done` attempts whose
/// outcomes ingest has read `stored` for a while; a key of another attempt, or one still
/// leased, is not touched.
const STORED: &str = r"
for i, key in ipairs(KEYS) do
  local cur = redis.call('HMGET', key, 'a', 's')
  if cur[1] == ARGV[1 + i] and cur[2] == 'done' then
    redis.call('HSET', key, 's', 'stored')
    redis.call('EXPIRE', key, ARGV[1])
  end
end
return 0
";

/// KEYS: run key. ARGV: attempt, safety ttl s. Cancels an attempt that has not begun.
const CANCEL: &str = r"
local cur = redis.call('HMGET', KEYS[1], 'a', 's')
if cur[1] and tonumber(cur[1]) >= tonumber(ARGV[1]) and cur[2] ~= 'cancelled' then
  return 0
end
redis.call('HSET', KEYS[1], 'a', ARGV[1], 's', 'cancelled')
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
";

/// KEYS: run key, results stream. ARGV: attempt, holder, then the outcome's `v`, `run_id`,
/// `body`. Publishes the error outcome of a dead-lettered task and, unless its attempt (or a
/// later one) already has a key, records the attempt `done` with that outcome, so the re-queue
/// pass waits for ingest instead of taking the acknowledged task for a lost one.
const DEAD: &str = r"
local o = redis.call('XADD', KEYS[2], '*', 'v', ARGV[3], 'run_id', ARGV[4], 'body', ARGV[5])
local a = redis.call('HGET', KEYS[1], 'a')
if not a or tonumber(a) < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'a', ARGV[1], 's', 'done', 'h', ARGV[2], 'e', now, 'o', o)
  redis.call('PERSIST', KEYS[1])
end
return o
";

/// How long a run's key stays after ingest stored its outcome.
pub const STORED_TTL_S: u64 = 120;

fn script(body: &str) -> redis::Script {
    redis::Script::new(&format!("{NOW}{body}"))
}

/// What an executor may do with a task it is about to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// The lease is ours and the `started` event is on the results stream: run the command.
    Started,
    /// The task entry is no longer pending: its run finished or was dropped already.
    Gone,
    /// A newer attempt of the run exists.
    Superseded,
    /// Another executor holds a live lease on this very attempt.
    Held,
    /// This attempt began before (`done`, `revoked`, `cancelled`, or an expired lease): it
    /// never runs twice; the scheduler re-queues a lost attempt as a new one.
    Began(String),
}

/// What the scheduler found about a run it believes queued or running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A live lease: an executor is running it.
    Alive,
    /// A lease that expired at `expiry` (Redis milliseconds) without being renewed.
    Expired {
        expiry: i64,
    },
    /// The outcome is on the results stream, waiting for ingest.
    Done,
    Revoked,
    Cancelled,
    /// Redis knows a newer attempt than Postgres (a restored database); left alone.
    Ahead,
    /// The task waits on the stream, undelivered or held by an executor before it starts.
    Waiting,
    /// Neither a lease nor the task: the task or its outcome was lost with Redis' data.
    Lost,
    /// The attempt finished (`done`), but its outcome is no longer on the results stream
    /// although Postgres has not stored it: Redis lost it.
    OutcomeLost,
    /// No lease and no task entry id to look for (published by an older version).
    Unknown,
}

/// A run the scheduler checks: its id, attempt and the task entry that carried it.
#[derive(Debug, Clone)]
pub struct Probe {
    pub run_id: Uuid,
    pub attempt: i32,
    pub entry_id: Option<String>,
}

/// The lease scripts of one stream prefix. An executor's are built on its zone's names
/// ([`Streams::for_zone`]), so the scripts it runs (start, no-ops, finish) acknowledge on the
/// zone's tasks stream; [`Leases::check`], which the scheduler runs across zones, is told the
/// stream.
#[derive(Clone)]
pub struct Leases {
    streams: Streams,
    group: &'static str,
    start: redis::Script,
    renew: redis::Script,
    finish: redis::Script,
    check: redis::Script,
    revoke: redis::Script,
    cancel: redis::Script,
    stored: redis::Script,
    noops: redis::Script,
    /// Safety-net lifetime of a run key whose run vanished (seconds).
    pub safety_ttl_s: u64,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases")
            .field("streams", &self.streams)
            .finish_non_exhaustive()
    }
}

impl Leases {
    pub fn new(streams: Streams, safety_ttl_s: u64) -> Self {
        Self {
            streams,
            group: super::EXECUTOR_GROUP,
            start: script(START),
            renew: script(RENEW),
            finish: script(FINISH),
            check: script(CHECK),
            revoke: script(REVOKE),
            cancel: script(CANCEL),
            stored: script(STORED),
            noops: script(NOOPS),
            safety_ttl_s: safety_ttl_s.max(60),
        }
    }

    pub fn streams(&self) -> &Streams {
        &self.streams
    }

    /// Takes the lease of `started`'s attempt for `holder`, and publishes `started` (a result
    /// without outcome) in the same step, unless `announce` is false (no-op commands).
    ///
    /// # Errors
    /// When Redis fails.
    pub async fn start<C: redis::aio::ConnectionLike + Send>(
        &self,
        conn: &mut C,
        entry_id: &str,
        lease_ms: u64,
        started: &RunResult,
        announce: bool,
    ) -> redis::RedisResult<Start> {
        let mut call = self.start.prepare_invoke();
        call.key(self.streams.run_key(started.run_id))
            .key(&self.streams.tasks)
            .key(&self.streams.results)
            .arg(started.attempt)
            .arg(&started.executor_id)
            .arg(entry_id)
            .arg(lease_ms)
            .arg(self.group)
            .arg(self.safety_ttl_s);
        if announce {
            for (_, value) in started.fields() {
                call.arg(value);
            }
        } else {
            call.arg("").arg("").arg("");
        }
        let answer: String = call.invoke_async(conn).await?;
        Ok(match answer.as_str() {
            "started" => Start::Started,
            "gone" => Start::Gone,
            "superseded" => Start::Superseded,
            "held" => Start::Held,
            other => Start::Began(other.trim_start_matches("began:").to_owned()),
        })
    }

    /// Starts and finishes no-op runs in one step (see the `NOOPS` script): `results` are
    /// their outcomes with the entries that carried them. Answers, per run, whether it ran.
    ///
    /// # Errors
    /// When Redis fails; then nothing happened.
    pub async fn run_noops<C: redis::aio::ConnectionLike + Send>(
        &self,
        conn: &mut C,
        results: &[(String, RunResult)],
    ) -> redis::RedisResult<Vec<bool>> {
        let Some((_, first)) = results.first() else {
            return Ok(Vec::new());
        };
        let mut call = self.noops.prepare_invoke();
        call.key(&self.streams.tasks)
            .key(&self.streams.results)
            .arg(self.group)
            .arg(&first.executor_id)
            .arg(self.safety_ttl_s)
            .arg(super::RESULT_VERSION);
        for (entry_id, result) in results {
            call.arg(self.streams.run_key(result.run_id))
                .arg(result.attempt)
                .arg(entry_id)
                .arg(result.run_id.to_string())
                .arg(result.body());
        }
        let ran: Vec<i64> = call.invoke_async(conn).await?;
        Ok(ran.into_iter().map(|r| r == 1).collect())
    }

    /// Renews `holder`'s leases on `(run, attempt)`; answers the runs whose lease it lost.
    ///
    /// # Errors
    /// When Redis fails.
    pub async fn renew<C: redis::aio::ConnectionLike + Send>(
        &self,
        conn: &mut C,
        holder: &str,
        lease_ms: u64,
        held: &[(Uuid, i32)],
    ) -> redis::RedisResult<Vec<(Uuid, i32)>> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let mut call = self.renew.prepare_invoke();
        call.arg(holder).arg(lease_ms).arg(self.safety_ttl_s);
        for (run_id, attempt) in held {
            call.key(self.streams.run_key(*run_id))
                .arg(attempt.to_string());
        }
        let lost: Vec<usize> = call.invoke_async(conn).await?;
        Ok(lost
            .into_iter()
            .filter_map(|i| held.get(i.checked_sub(1)?).copied())
            .collect())
    }

    /// Publishes `result` (with its outcome), acknowledges its task entry and marks the lease
    /// `done`, in one step. Answers whether the lease was still this executor's.
    ///
    /// # Errors
    /// When Redis fails; then nothing happened.
    pub async fn finish<C: redis::aio::ConnectionLike + Send>(
        &self,
        conn: &mut C,
        entry_id: &str,
        result: &RunResult,
        body: &str,
    ) -> redis::RedisResult<bool> {
        let mut call = self.finish.prepare_invoke();
        call.key(self.streams.run_key(result.run_id))
            .key(&self.streams.tasks)
            .key(&self.streams.results)
            .key(&self.streams.results_large)
            .arg(result.attempt)
            .arg(&result.executor_id)
            .arg(entry_id)
            .arg(self.group)
            .arg(self.safety_ttl_s);
        for (_, value) in result.fields_with(body) {
            call.arg(value);
        }
        call.arg(super::stream::LARGE_RESULT_BYTES);
        let ours: i64 = call.invoke_async(conn).await?;
        Ok(ours == 1)
    }

    /// What Redis knows about each of `probes`, in order; their tasks were published to
    /// `tasks` (one zone's stream).
    ///
    /// # Errors
    /// When Redis fails.
    pub async fn check<C: redis::aio::ConnectionLike + Send>(
        &self,
        conn: &mut C,
        tasks: &str,
        probes: &[Probe],
    ) -> redis::RedisResult<Vec<Found>> {
        if probes.is_empty() {
            return Ok(Vec::new());
        }
        let mut call = self.check.prepare_invoke();
        call.key(tasks).key(&self.streams.results).arg(self.group);
        for p in probes {
            call.arg(self.streams.run_key(p.run_id))
                .arg(p.attempt)
                .arg(p.entry_id.as_deref().unwrap_or(""));
        }
        let flat: Vec<redis::Value> = call.invoke_async(conn).await?;
        let mut found = Vec::with_capacity(probes.len());
        for pair in flat.chunks(2) {
            let state = String::from_redis_value_ref(&pair[0])?;
            let expiry = match pair.get(1) {
                Some(v) => i64::from_redis_value_ref(v)?,
                None => 0,
            };
            found.push(match state.as_str() {
                "alive" => Found::Alive,
                "expired" => Found::Expired { expiry },
                "done" | "stored" => Found::Done,
                "revoked" => Found::Revoked,
                "cancelled" => Found::Cancelled,
                "ahead" => Found::Ahead,
                "waiting" => Found::Waiting,
                "lost" => Found::Lost,
                "outcome_lost" => Found::OutcomeLost,
                _ => Found::Unknown,
            });
        }
        Ok(found)
    }

    /// Revokes each `(run, attempt, expiry seen)` (expiry 0: the attempt had no lease) unless
    /// its holder renewed it meanwhile; answers which were revoked.
    ///
    /// # Errors
    /// When Redis fails.
    pub async fn revoke<C: redis::aio::ConnectionLike + Send>(
        &self,
        conn: &mut C,
        runs: &[(Uuid, i32, i64)],
    ) -> redis::RedisResult<Vec<bool>> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        let mut call = self.revoke.prepare_invoke();
        call.arg(self.safety_ttl_s);
        for (run_id, attempt, expiry) in runs {
            call.key(self.streams.run_key(*run_id))
                .arg(attempt)
                .arg(expiry);
        }
        let flags: Vec<i64> = call.invoke_async(conn).await?;
        Ok(flags.into_iter().map(|f| f == 1).collect())
    }

    /// Marks `(run, attempt)` cancelled unless it began; answers whether it was cancelled.
    ///
    /// # Errors
    /// When Redis fails.
    pub async fn cancel<C: redis::aio::ConnectionLike + Send>(
        &self,
        conn: &mut C,
        run_id: Uuid,
        attempt: i32,
    ) -> redis::RedisResult<bool> {
        let done: i64 = self
            .cancel
            .key(self.streams.run_key(run_id))
            .arg(attempt)
            .arg(self.safety_ttl_s)
            .invoke_async(conn)
            .await?;
        Ok(done == 1)
    }

    /// The command that publishes `result`, the error outcome of a dead-lettered task, and
    /// records its attempt `done` (see `DEAD`), to be queued in the dead-lettering pipeline.
    pub fn dead_letter_outcome(&self, result: &RunResult) -> redis::Cmd {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(format!("{NOW}{DEAD}"))
            .arg(2)
            .arg(self.streams.run_key(result.run_id))
            .arg(&self.streams.results)
            .arg(result.attempt)
            .arg(&result.executor_id);
        for (_, value) in result.fields() {
            cmd.arg(value);
        }
        cmd
    }

    /// Marks the `(run, attempt)`s whose outcomes ingest has read and committed (applied,
    /// superseded, repeated, or of a run that no longer exists): their `done` keys expire
    /// [`STORED_TTL_S`] later.
    ///
    /// # Errors
    /// When Redis fails.
    pub async fn stored<C: redis::aio::ConnectionLike + Send>(
        &self,
        conn: &mut C,
        runs: &[(Uuid, i32)],
    ) -> redis::RedisResult<()> {
        if runs.is_empty() {
            return Ok(());
        }
        let mut call = self.stored.prepare_invoke();
        call.arg(STORED_TTL_S);
        for (run, attempt) in runs {
            call.key(self.streams.run_key(*run)).arg(attempt);
        }
        call.invoke_async::<i64>(conn).await.map(|_| ())
    }
}

/// Pins the first host key an executor sees on a device with no pin, atomically across
/// executors: `SET NX` on `<prefix>hostkey:<device id>`. Answers `None` when `fingerprint`
/// is (now) the pinned key, or the other fingerprint that was pinned first.
///
/// # Errors
/// When Redis fails.
pub async fn pin_first_contact<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    streams: &Streams,
    device_id: Uuid,
    fingerprint: &str,
    ttl_s: u64,
) -> redis::RedisResult<Option<String>> {
    let previous: Option<String> = redis::cmd("SET")
        .arg(streams.host_key_pin(device_id))
        .arg(fingerprint)
        .arg("NX")
        .arg("GET")
        .arg("EX")
        .arg(ttl_s.max(60))
        .query_async(conn)
        .await?;
    Ok(previous.filter(|p| p != fingerprint))
}

/// Forgets a device's first-contact pin (its pin was cleared or its address changed).
///
/// # Errors
/// When Redis fails.
pub async fn forget_first_contact<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    streams: &Streams,
    device_id: Uuid,
) -> redis::RedisResult<()> {
    redis::cmd("DEL")
        .arg(streams.host_key_pin(device_id))
        .query_async(conn)
        .await
}
