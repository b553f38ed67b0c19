//! Following a run's live output (see `netcron_protocol::live`): the entries of its
//! live stream as they arrive, then an end once Postgres has the run's final state, so a
//! client switches to the stored output knowing it is complete.
//!
//! One [`Hub`] per process serves every follower: one reader task with its own Redis
//! connection reads the streams of every followed run (one `XREAD` for all) and fans the
//! entries out in process (a `broadcast` channel per run); it asks Postgres for the state of
//! all followed runs in one query every [`POLL`], and keeps their watch keys alive, which is
//! what makes executors publish. A follower reads what it missed (from the start, or after
//! `Last-Event-ID`) through one shared connection, then the broadcast. Followers are bounded
//! per process and per client (token or console session), and each follow ends after
//! `NETCRON_LIVE_FOLLOW_MAX_S`, so no number of them can exhaust Redis' connections and none
//! outlives its welcome — not even one of a run that stays queued.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::Stream;
use netcron_common::domain::RunStatus;
use netcron_common::stored::Stored;
use netcron_protocol::Streams;
use netcron_protocol::live::{
    LiveEntry, RENAME_EVERY, WATCH_REFRESH_S, WATCH_TTL_S, connection_name, name_connection,
};
use netcron_store::entity::run;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamRangeReply, StreamReadOptions, StreamReadReply};
use sea_orm::{
    ColumnTrait as _, DatabaseConnection, EntityTrait as _, QueryFilter as _, QuerySelect as _,
};
use tokio::sync::{OnceCell, broadcast};
use uuid::Uuid;

use crate::config::LiveSettings;
use crate::error::{Error, Result};

/// What a follower sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// Output of the current attempt, with the live stream's entry id (an SSE client's
    /// `Last-Event-ID` to resume after it).
    Output {
        id: String,
        stream: &'static str,
        attempt: i32,
        data: String,
    },
    /// The run is over, with its final status; its whole output is stored.
    End { status: String },
    /// The follow lasted its maximum duration and ends; the run goes on.
    Timeout { after_s: u64 },
}

/// Who follows, for the per-client bound: a digest of the bearer token or session cookie.
pub type ClientKey = [u8; 32];

/// How often the state of followed runs is read from Postgres (a run whose executor died
/// leaves no end entry; re-queueing or ingest ends it there).
const POLL: Duration = Duration::from_secs(2);

/// How often once a run's attempt has ended: its outcome is on its way to Postgres.
const SETTLING: Duration = Duration::from_millis(100);

/// How long the reader's `XREAD` waits: also how long a newly followed run waits to be read.
const BLOCK: Duration = Duration::from_millis(500);

/// Entries per read.
const COUNT: usize = 200;

/// Entries buffered per run for followers; one that falls further behind reads again from
/// Redis.
const FANOUT: usize = 1024;

/// What a client is told to wait after a refusal.
const RETRY_AFTER_S: u64 = 5;

/// The process's followers and their shared reader. Cloning is cheap.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    settings: LiveSettings,
    db: DatabaseConnection,
    client: redis::Client,
    /// The name of both connections (`CLIENT SETNAME`).
    name: String,
    streams: Streams,
    /// Catch-up reads and watch keys, for every follower (made on first use).
    shared: OnceCell<ConnectionManager>,
    /// The reader's blocking reads (made on first use).
    reader: OnceCell<ConnectionManager>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    runs: HashMap<Uuid, Feed>,
    followers: usize,
    per_client: HashMap<ClientKey, usize>,
    reading: bool,
}

/// A followed run, as the reader sees it.
struct Feed {
    tx: broadcast::Sender<Arc<Update>>,
    /// The last entry read (`0-0`: none yet; the first read takes what the stream holds, which
    /// followers that read it already skip).
    last_id: String,
    followers: usize,
    next_check: Instant,
    attempt_ended: bool,
}

impl Hub {
    /// A hub reading `client`'s Redis; no connection is made until someone follows.
    pub fn new(
        settings: LiveSettings,
        db: DatabaseConnection,
        client: &redis::Client,
        streams: Streams,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                db,
                client: client.clone(),
                name: connection_name("api", streams.prefix()),
                streams,
                shared: OnceCell::new(),
                reader: OnceCell::new(),
                state: Mutex::new(State::default()),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.inner.state)
    }

    /// Counts a follower of `client` in, or refuses it.
    fn admit(&self, client: ClientKey) -> Result<Permit> {
        let settings = &self.inner.settings;
        let mut state = self.lock();
        if state.followers >= settings.max_followers {
            return Err(Error::TooManyRequests {
                reason: format!(
                    "this server already serves {} live-output followers \
                     (NETCRON_LIVE_FOLLOWERS); read GET /runs/{{run_id}}/output instead, \
                     or retry later",
                    settings.max_followers
                ),
                retry_after_s: RETRY_AFTER_S,
            });
        }
        let mine = state.per_client.entry(client).or_insert(0);
        if *mine >= settings.max_per_client {
            return Err(Error::TooManyRequests {
                reason: format!(
                    "this token or session already follows {} live outputs \
                     (NETCRON_LIVE_FOLLOWERS_PER_CLIENT); close one, or retry later",
                    settings.max_per_client
                ),
                retry_after_s: RETRY_AFTER_S,
            });
        }
        *mine += 1;
        state.followers += 1;
        Ok(Permit {
            hub: self.clone(),
            client,
        })
    }

    async fn shared(&self) -> redis::RedisResult<ConnectionManager> {
        self.inner
            .shared
            .get_or_try_init(|| self.connect(ConnectionManagerConfig::new()))
            .await
            .cloned()
    }

    async fn reader(&self) -> redis::RedisResult<ConnectionManager> {
        // Its timeout must outlast its blocking reads.
        let config = ConnectionManagerConfig::new().set_response_timeout(Some(BLOCK * 10));
        self.inner
            .reader
            .get_or_try_init(|| self.connect(config))
            .await
            .cloned()
    }

    /// A connection of the hub's, named.
    async fn connect(
        &self,
        config: ConnectionManagerConfig,
    ) -> redis::RedisResult<ConnectionManager> {
        let mut conn = self
            .inner
            .client
            .get_connection_manager_with_config(config)
            .await?;
        name_connection(&mut conn, &self.inner.name).await;
        Ok(conn)
    }

    /// Names both connections again (a reconnection loses the name).
    async fn rename(&self) -> redis::RedisResult<()> {
        name_connection(&mut self.shared().await?, &self.inner.name).await;
        name_connection(&mut self.reader().await?, &self.inner.name).await;
        Ok(())
    }

    /// Subscribes to `run_id`'s entries, starting the reader when it is idle.
    fn subscribe(&self, run_id: Uuid) -> broadcast::Receiver<Arc<Update>> {
        let mut state = self.lock();
        let feed = state.runs.entry(run_id).or_insert_with(|| Feed {
            tx: broadcast::channel(FANOUT).0,
            last_id: "0-0".to_owned(),
            followers: 0,
            next_check: Instant::now(),
            attempt_ended: false,
        });
        feed.followers += 1;
        let rx = feed.tx.subscribe();
        if !state.reading {
            state.reading = true;
            tokio::spawn(self.clone().read());
        }
        rx
    }

    fn unsubscribe(&self, run_id: Uuid) {
        let mut state = self.lock();
        if let Some(feed) = state.runs.get_mut(&run_id) {
            feed.followers = feed.followers.saturating_sub(1);
            if feed.followers == 0 {
                state.runs.remove(&run_id);
            }
        }
    }

    /// The reader: runs while some run is followed.
    async fn read(self) {
        let mut refreshed: Option<Instant> = None;
        let mut named = Instant::now();
        loop {
            if named.elapsed() >= RENAME_EVERY && self.rename().await.is_ok() {
                named = Instant::now();
            }
            let (keys, due) = {
                let mut state = self.lock();
                if state.runs.is_empty() {
                    state.reading = false;
                    return;
                }
                let now = Instant::now();
                let due: Vec<Uuid> = state
                    .runs
                    .iter()
                    .filter(|(_, f)| f.next_check <= now)
                    .map(|(id, _)| *id)
                    .collect();
                let keys: Vec<(Uuid, String)> = state
                    .runs
                    .iter()
                    .map(|(id, f)| (*id, f.last_id.clone()))
                    .collect();
                (keys, due)
            };
            if let Err(e) = self.step(&keys, &due, &mut refreshed).await {
                tracing::warn!(error = %e, "reading live output");
                tokio::time::sleep(POLL).await;
            }
        }
    }

    /// One round of the reader: watch keys, run states, one read of every followed stream.
    async fn step(
        &self,
        keys: &[(Uuid, String)],
        due: &[Uuid],
        refreshed: &mut Option<Instant>,
    ) -> anyhow::Result<()> {
        if refreshed.is_none_or(|at| at.elapsed() >= Duration::from_secs(WATCH_REFRESH_S)) {
            self.watch(keys.iter().map(|(id, _)| *id)).await?;
            *refreshed = Some(Instant::now());
        }
        let ended = self.states(due).await?;
        let mut conn = self.reader().await?;
        let stream_keys: Vec<String> = keys
            .iter()
            .map(|(id, _)| self.inner.streams.live_key(*id))
            .collect();
        let ids: Vec<&str> = keys.iter().map(|(_, last)| last.as_str()).collect();
        let mut options = StreamReadOptions::default().count(COUNT);
        if ended.is_empty() {
            options = options.block(usize::try_from(BLOCK.as_millis()).unwrap_or(500));
        }
        let reply: Option<StreamReadReply> =
            redis::AsyncCommands::xread_options(&mut conn, &stream_keys, &ids, &options).await?;
        let gone = self.dispatch(keys, &stream_keys, reply, ended);
        if !gone.is_empty() {
            self.unwatch(&gone).await;
        }
        Ok(())
    }

    /// Sends what was read to each run's followers, and the end to those of runs that are
    /// over and drained; answers those runs.
    fn dispatch(
        &self,
        keys: &[(Uuid, String)],
        stream_keys: &[String],
        reply: Option<StreamReadReply>,
        ended: Vec<(Uuid, String)>,
    ) -> Vec<Uuid> {
        let mut read: HashMap<Uuid, usize> = HashMap::new();
        let mut state = self.lock();
        for key in reply.map(|r| r.keys).unwrap_or_default() {
            let Some((run_id, _)) = keys
                .iter()
                .zip(stream_keys)
                .find(|(_, k)| **k == key.key)
                .map(|(k, _)| k)
            else {
                continue;
            };
            let Some(feed) = state.runs.get_mut(run_id) else {
                continue;
            };
            *read.entry(*run_id).or_default() += key.ids.len();
            for entry in key.ids {
                feed.last_id.clone_from(&entry.id);
                match LiveEntry::parse(&entry.map) {
                    Some(LiveEntry::Output {
                        stream,
                        attempt,
                        data,
                    }) => {
                        feed.attempt_ended = false;
                        let _ = feed.tx.send(Arc::new(Update::Output {
                            id: entry.id,
                            stream: stream.as_str(),
                            attempt,
                            data,
                        }));
                    }
                    Some(LiveEntry::End { .. }) => {
                        feed.attempt_ended = true;
                        feed.next_check = feed.next_check.min(Instant::now() + SETTLING);
                    }
                    None => {}
                }
            }
        }
        // A run that is over, and whose stream is drained, ends for all its followers.
        let mut gone = Vec::new();
        for (run_id, status) in ended {
            if read.get(&run_id).copied().unwrap_or(0) >= COUNT {
                continue;
            }
            if let Some(feed) = state.runs.remove(&run_id) {
                let _ = feed.tx.send(Arc::new(Update::End { status }));
                gone.push(run_id);
            }
        }
        gone
    }

    /// Keeps the watch keys of `runs` alive: executors publish these runs' output.
    async fn watch(&self, runs: impl Iterator<Item = Uuid>) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        for run_id in runs {
            pipe.cmd("SET")
                .arg(self.inner.streams.live_watch_key(run_id))
                .arg(1)
                .arg("EX")
                .arg(WATCH_TTL_S)
                .ignore();
        }
        pipe.query_async::<()>(&mut self.shared().await?).await
    }

    async fn unwatch(&self, runs: &[Uuid]) {
        let keys: Vec<String> = runs
            .iter()
            .map(|id| self.inner.streams.live_watch_key(*id))
            .collect();
        if let Ok(mut conn) = self.shared().await {
            let _: redis::RedisResult<()> =
                redis::cmd("DEL").arg(&keys).query_async(&mut conn).await;
        }
    }

    /// Reads the state of the runs in `due` (one query), and answers those that are over.
    async fn states(&self, due: &[Uuid]) -> Result<Vec<(Uuid, String)>> {
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(Uuid, Stored<RunStatus>)> = run::Entity::find()
            .select_only()
            .column(run::Column::Id)
            .column(run::Column::Status)
            .filter(run::Column::Id.is_in(due.iter().copied()))
            .into_tuple()
            .all(&self.inner.db)
            .await?;
        let found: HashMap<Uuid, Stored<RunStatus>> = rows.into_iter().collect();
        let mut state = self.lock();
        let mut ended = Vec::new();
        for run_id in due {
            let terminal = match found.get(run_id) {
                Some(status) => status.is_terminal().then(|| status.to_string()),
                None => Some("deleted".to_owned()),
            };
            if let Some(feed) = state.runs.get_mut(run_id) {
                feed.next_check = Instant::now() + if feed.attempt_ended { SETTLING } else { POLL };
            }
            if let Some(status) = terminal {
                ended.push((*run_id, status));
            }
        }
        Ok(ended)
    }

    /// The entries of `key` after `after`, at most [`COUNT`].
    async fn range(&self, key: &str, after: &EntryId) -> redis::RedisResult<StreamRangeReply> {
        let mut conn = self.shared().await?;
        redis::cmd("XRANGE")
            .arg(key)
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(COUNT)
            .query_async(&mut conn)
            .await
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    match state.lock() {
        Ok(s) => s,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// A follower's place in the process's bounds; dropping it frees the place.
struct Permit {
    hub: Hub,
    client: ClientKey,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut state = self.hub.lock();
        state.followers = state.followers.saturating_sub(1);
        if let Some(n) = state.per_client.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                state.per_client.remove(&self.client);
            }
        }
    }
}

/// A live stream's entry id, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
struct EntryId(u64, u64);

impl EntryId {
    fn parse(id: &str) -> Option<Self> {
        let (ms, seq) = id.split_once('-')?;
        if ms.is_empty()
            || seq.is_empty()
            || !ms.bytes().chain(seq.bytes()).all(|b| b.is_ascii_digit())
        {
            return None;
        }
        Some(Self(ms.parse().ok()?, seq.parse().ok()?))
    }
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// One follower: catching up from Redis, then on the broadcast.
struct Follower {
    hub: Hub,
    run_id: Uuid,
    key: String,
    last: EntryId,
    /// The broadcast, once subscribed (a run that was over at the start has none).
    rx: Option<broadcast::Receiver<Arc<Update>>>,
    catching_up: bool,
    /// The run's final status when it was over at the start.
    over: Option<String>,
    pending: VecDeque<Update>,
    done: bool,
    deadline: tokio::time::Instant,
    _permit: Permit,
}

impl Drop for Follower {
    fn drop(&mut self) {
        if self.rx.is_some() {
            self.hub.unsubscribe(self.run_id);
        }
    }
}

/// The updates of `run_id` after live entry `after` (from the start when `None`), for
/// `client`. Fails at once when the run does not exist or the follower bounds are reached.
///
/// # Errors
/// The run does not exist (404), or too many follow already (429).
pub async fn follow(
    hub: &Hub,
    client: ClientKey,
    run_id: Uuid,
    after: Option<String>,
) -> Result<impl Stream<Item = Update> + use<>> {
    let status = super::runs::status(&hub.inner.db, run_id).await?;
    let permit = hub.admit(client)?;
    let over = status.is_terminal().then(|| status.to_string());
    // Subscribed before the first read, so nothing read after it is missed.
    let rx = over.is_none().then(|| hub.subscribe(run_id));
    let follower = Follower {
        hub: hub.clone(),
        run_id,
        key: hub.inner.streams.live_key(run_id),
        last: after
            .as_deref()
            .and_then(EntryId::parse)
            .unwrap_or_default(),
        rx,
        catching_up: true,
        over,
        pending: VecDeque::new(),
        done: false,
        deadline: tokio::time::Instant::now() + hub.inner.settings.max_follow,
        _permit: permit,
    };
    Ok(futures::stream::unfold(follower, |mut f| async move {
        loop {
            if let Some(update) = f.pending.pop_front() {
                return Some((update, f));
            }
            if f.done {
                return None;
            }
            let step = tokio::time::timeout_at(f.deadline, f.step()).await;
            if step.is_err() {
                f.pending.push_back(Update::Timeout {
                    after_s: f.hub.inner.settings.max_follow.as_secs(),
                });
                f.done = true;
            }
        }
    }))
}

impl Follower {
    /// Reads the next updates into `pending`.
    async fn step(&mut self) {
        if self.catching_up {
            return self.catch_up().await;
        }
        let Some(rx) = self.rx.as_mut() else {
            self.done = true;
            return;
        };
        match rx.recv().await {
            Ok(update) => match &*update {
                Update::Output { id, .. } => {
                    if let Some(id) = EntryId::parse(id)
                        && id > self.last
                    {
                        self.last = id;
                        self.pending.push_back((*update).clone());
                    }
                }
                other => {
                    self.pending.push_back(other.clone());
                    self.done = true;
                }
            },
            Err(broadcast::error::RecvError::Lagged(_)) => self.catching_up = true,
            Err(broadcast::error::RecvError::Closed) => {
                // The run ended while this follower was catching up past its end.
                let status = match super::runs::status(&self.hub.inner.db, self.run_id).await {
                    Ok(status) => status.to_string(),
                    Err(_) => "deleted".to_owned(),
                };
                self.pending.push_back(Update::End { status });
                self.done = true;
            }
        }
    }

    /// Reads what the stream holds after `last` through the shared connection.
    async fn catch_up(&mut self) {
        let page = match self.hub.range(&self.key, &self.last).await {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(run_id = %self.run_id, error = %e, "reading live output");
                tokio::time::sleep(POLL).await;
                return;
            }
        };
        let complete = page.ids.len() < COUNT;
        for entry in page.ids {
            let Some(id) = EntryId::parse(&entry.id) else {
                continue;
            };
            self.last = self.last.max(id);
            if let Some(LiveEntry::Output {
                stream,
                attempt,
                data,
            }) = LiveEntry::parse(&entry.map)
            {
                self.pending.push_back(Update::Output {
                    id: entry.id,
                    stream: stream.as_str(),
                    attempt,
                    data,
                });
            }
        }
        if complete {
            self.catching_up = false;
            if let Some(status) = self.over.take() {
                self.pending.push_back(Update::End { status });
                self.done = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::EntryId;

    #[test]
    fn entry_ids_order_as_redis_orders_them() {
        assert!(EntryId::parse("10-0") > EntryId::parse("9-5"));
        assert!(EntryId::parse("10-10") > EntryId::parse("10-9"));
        assert_eq!(EntryId::parse("0-0"), Some(EntryId::default()));
        for bad in ["", "1", "-1", "1-", "a-1", "1-1-1"] {
            assert_eq!(EntryId::parse(bad), None, "{bad}");
        }
    }
}
