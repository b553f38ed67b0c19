//! The consumer loop: read tasks, claim them, run them within the concurrency limits, publish
//! their outcomes, keep held tasks fresh, take over tasks of dead executors, and dead-letter what
//! cannot be run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use netcron_common::domain::{CommandKind, ErrorKind, RunStatus, RunTrigger, Zone};
use netcron_protocol::lease::{Leases, Start};
use netcron_protocol::{
    EXECUTOR_GROUP, RESULT_VERSION, RunResult, Streams, Task, ensure_group, is_missing_group,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamPendingCountReply, StreamReadReply};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::config::{ExecutorSettings, Settings};
use crate::error::Result;
use crate::first_contact::FirstContact;
use crate::metrics::ExecutorMetrics;
use crate::outcome::error_outcome;
use crate::runner::Runner;

/// One zone's consumer in an executor process: a consumer in the `executors` group of the
/// zone's tasks stream. Its `streams` are the zone's names ([`Streams::for_zone`]); the
/// process's zones share its [`Runner`] (slots, sessions) and its writing connection.
pub(crate) struct ZoneWorker {
    redis: ConnectionManager,
    reader: ConnectionManager,
    streams: Streams,
    config: ExecutorSettings,
    runner: Arc<Runner>,
    metrics: ExecutorMetrics,
    /// Stream entry ids this consumer holds (read and not yet acknowledged).
    held: Mutex<HashSet<String>>,
    /// The runs whose lease this executor holds (their command began), with their attempt.
    leased: Mutex<HashMap<Uuid, i32>>,
    /// Tasks read ahead of their `not_before`, by that instant (see [`ZoneWorker::wait_for`]).
    waiting: Mutex<BTreeMap<DateTime<Utc>, Batch>>,
    leases: Leases,
    /// Redis' clock minus this host's, in microseconds, measured by [`ZoneWorker::sync_clock`].
    /// `not_before` is a time on the scheduler's clock, which follows Postgres'; an executor
    /// host whose clock is off (a remote site without NTP) waits by Redis' clock instead, which
    /// is also the one its leases run on, so its own skew delays and hastens nothing.
    clock_offset_us: std::sync::atomic::AtomicI64,
}

/// Entries read, sorted for dispatch as they are read, so that nothing but starting them is
/// left for their `not_before`.
#[derive(Default)]
struct Batch {
    /// Valid no-op tasks, by entry id: they need neither their entry's fields nor a slot.
    noops: Vec<(String, Task)>,
    /// Everything else, with its entry (a task that cannot run is dead-lettered from it).
    others: Vec<(StreamId, std::result::Result<Task, Rejected>)>,
    /// Places in the hold-ahead budget of the tasks waiting for their `not_before`, given back
    /// once they are dispatched.
    held: Vec<tokio::sync::OwnedSemaphorePermit>,
}

impl Batch {
    fn push(&mut self, entry: StreamId, task: std::result::Result<Task, Rejected>) {
        match task {
            Ok(task) if task.command.kind == CommandKind::Noop => {
                self.noops.push((entry.id, task));
            }
            task => self.others.push((entry, task)),
        }
    }

    fn append(&mut self, mut other: Batch) {
        self.noops.append(&mut other.noops);
        self.others.append(&mut other.others);
        self.held.append(&mut other.held);
    }

    fn len(&self) -> usize {
        self.noops.len() + self.others.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn entry_ids(&self) -> impl Iterator<Item = &str> {
        self.noops
            .iter()
            .map(|(id, _)| id.as_str())
            .chain(self.others.iter().map(|(e, _)| e.id.as_str()))
    }
}

/// Why a stream entry cannot be run.
struct Rejected {
    reason: String,
    run_id: Option<Uuid>,
    attempt: i32,
}

impl From<netcron_protocol::Rejected> for Rejected {
    fn from(r: netcron_protocol::Rejected) -> Self {
        // An unreadable task's attempt is unknown; its error outcome is for the first one, and
        // ingest records it as superseded if the run is past it.
        Self {
            reason: r.reason,
            run_id: r.run_id,
            attempt: 1,
        }
    }
}

/// Results can be megabytes (the output caps), so writes get a generous timeout.
pub(crate) async fn writer(client: &redis::Client) -> Result<ConnectionManager> {
    Ok(client
        .get_connection_manager_with_config(
            ConnectionManagerConfig::new().set_response_timeout(Some(Duration::from_secs(30))),
        )
        .await?)
}

/// The runner of an executor process, shared by its zones.
pub(crate) fn runner(
    settings: &Settings,
    redis: &ConnectionManager,
    live: crate::live::LiveSink,
    metrics: &ExecutorMetrics,
) -> Runner {
    let streams = Streams::new(&settings.redis.stream_prefix);
    Runner::new(settings.secret_key.clone(), settings.executor.clone())
        .with_slot_wait_metric(metrics.slot_wait.clone())
        .with_session_pool(metrics.sessions.clone())
        .with_first_contact(FirstContact {
            redis: redis.clone(),
            streams: streams.clone(),
            ttl_s: settings.executor.done_ttl.as_secs(),
            runtime: tokio::runtime::Handle::current(),
        })
        .with_live(live)
        .with_shared_slots(Arc::new(crate::slots::DeviceSlots::new(
            redis.clone(),
            streams,
            settings.executor.lease_ttl,
            settings.executor.consumer.clone(),
        )))
}

impl ZoneWorker {
    /// Connects `zone`'s reader and makes sure the zone's consumer group exists.
    ///
    /// # Errors
    /// When Redis is unreachable.
    pub(crate) async fn connect(
        client: &redis::Client,
        redis: ConnectionManager,
        runner: Arc<Runner>,
        settings: &Settings,
        zone: &Zone,
        metrics: ExecutorMetrics,
    ) -> Result<Arc<Self>> {
        // The reader's timeout must outlast its blocking read.
        let reader = client
            .get_connection_manager_with_config(
                ConnectionManagerConfig::new()
                    .set_response_timeout(Some(settings.executor.block + Duration::from_secs(10))),
            )
            .await?;
        let streams = Streams::new(&settings.redis.stream_prefix).for_zone(zone);
        let executor = Arc::new(Self {
            runner,
            leases: Leases::new(streams.clone(), settings.executor.done_ttl.as_secs()),
            redis,
            reader,
            streams,
            metrics,
            held: Mutex::new(HashSet::new()),
            leased: Mutex::new(HashMap::new()),
            waiting: Mutex::new(BTreeMap::new()),
            config: settings.executor.clone(),
            clock_offset_us: std::sync::atomic::AtomicI64::new(0),
        });
        executor.ensure_group().await?;
        executor.sync_clock().await;
        Ok(executor)
    }

    /// Now, on Redis' clock (this host's, corrected by the last measured offset).
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
            + chrono::Duration::microseconds(
                self.clock_offset_us
                    .load(std::sync::atomic::Ordering::Relaxed),
            )
    }

    /// Measures Redis' clock against this host's: `TIME`, taken as read halfway through the
    /// round trip. A failure keeps the last offset (a Redis outage stops the executor anyway).
    async fn sync_clock(&self) {
        let before = Utc::now();
        let answer: redis::RedisResult<(i64, i64)> = redis::cmd("TIME")
            .query_async(&mut self.redis.clone())
            .await;
        let after = Utc::now();
        match answer {
            Ok((secs, micros)) => {
                let redis_us = secs.saturating_mul(1_000_000).saturating_add(micros);
                let local_us = before.timestamp_micros() / 2 + after.timestamp_micros() / 2;
                let offset = redis_us - local_us;
                if offset.abs() > 1_000_000 {
                    tracing::warn!(
                        offset_ms = offset / 1000,
                        "this host's clock differs from Redis'; runs start by Redis' clock"
                    );
                }
                self.clock_offset_us
                    .store(offset, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "cannot measure the clock against Redis"),
        }
    }

    async fn ensure_group(&self) -> Result<()> {
        Ok(ensure_group(&mut self.redis.clone(), &self.streams.tasks, EXECUTOR_GROUP).await?)
    }

    /// Reads and runs tasks until `shutdown` is cancelled, then lets in-flight runs finish
    /// within the grace period. Redis failures are logged and retried; they never end the loop.
    ///
    /// Dropping the returned future (or aborting its task) stops everything at once without
    /// acknowledging anything, like a crash: the held tasks are then taken over by other
    /// executors once idle.
    ///
    /// It is long because it is the loop itself, in the order of a turn (finished runs, free
    /// capacity, reclaim or read, due and held tasks, then the grace period), and each step
    /// reads and updates the loop's own state (the join set, the two semaphores, the reclaim
    /// clock and the backoff).
    ///
    /// # Errors
    /// Never, today; the signature leaves room for fatal conditions.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> Result<()> {
        tracing::info!(consumer = %self.config.consumer, "executor started");
        let mut runs: JoinSet<()> = JoinSet::new();
        let mut background: JoinSet<()> = JoinSet::new();
        background.spawn(Arc::clone(&self).heartbeat());
        // Up to twice the concurrency is read ahead, so tasks waiting for a busy device do not
        // starve the others; the rest stays on the stream for other executors.
        let capacity = Arc::new(Semaphore::new(self.config.concurrency * 2));
        // Tasks published ahead of their fire time wait on a timer without taking a slot.
        let holding = Arc::new(Semaphore::new(self.config.hold_ahead));
        let reclaim_every = self.config.reclaim_idle / 2;
        let mut last_reclaim: Option<Instant> = None;
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            while let Some(done) = runs.try_join_next() {
                if let Err(e) = done
                    && e.is_panic()
                {
                    tracing::error!("a run task panicked");
                }
            }
            let free = capacity
                .available_permits()
                .min(holding.available_permits());
            if free == 0 {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = runs.join_next() => continue,
                }
            }
            let mut entries = Vec::new();
            if last_reclaim.is_none_or(|t| t.elapsed() >= reclaim_every) {
                last_reclaim = Some(Instant::now());
                match self.reclaim(free).await {
                    Ok(claimed) => entries = claimed,
                    Err(e) => tracing::warn!(error = %e, "cannot reclaim idle tasks"),
                }
            }
            if entries.is_empty() {
                match self.read(free).await {
                    Ok(read) => {
                        backoff = Duration::from_millis(100);
                        entries = read;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot read tasks");
                        if matches!(&e, crate::error::Error::Redis(r) if is_missing_group(r)) {
                            // The stream or group vanished (Redis restarted empty or was
                            // flushed); the scheduler re-publishes what was lost.
                            let _ = self.ensure_group().await;
                        }
                        tokio::select! {
                            () = shutdown.cancelled() => break,
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            }
            let now = self.now();
            let mut due = Batch::default();
            let mut waiting: BTreeMap<DateTime<Utc>, Batch> = BTreeMap::new();
            for entry in entries {
                let task = Task::decode(&entry).map_err(Rejected::from);
                self.hold(&entry.id);
                match task {
                    Ok(task) if task.not_before.is_some_and(|at| at > now) => {
                        let at = task.not_before.unwrap_or(now);
                        // At most `free` entries were read, so a permit is there.
                        let Ok(permit) = Arc::clone(&holding).acquire_owned().await else {
                            break;
                        };
                        let batch = waiting.entry(at).or_default();
                        batch.push(entry, Ok(task));
                        batch.held.push(permit);
                    }
                    task => due.push(entry, task),
                }
            }
            if !due.is_empty() {
                let this = Arc::clone(&self);
                let capacity = Arc::clone(&capacity);
                runs.spawn(async move { this.dispatch(due, capacity).await });
            }
            for (at, batch) in waiting {
                if self.wait_for(at, batch) {
                    let this = Arc::clone(&self);
                    let capacity = Arc::clone(&capacity);
                    let shutdown = shutdown.clone();
                    runs.spawn(async move { this.start_at(at, capacity, shutdown).await });
                }
            }
        }
        if !runs.is_empty() {
            tracing::info!(
                in_flight = runs.len(),
                grace_s = self.config.grace.as_secs(),
                "executor stopping: letting in-flight runs finish"
            );
        }
        let drained = tokio::time::timeout(self.config.grace, async {
            while runs.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                unfinished = runs.len(),
                "grace period over; unfinished runs stay unacknowledged and will be taken over"
            );
            runs.abort_all();
        }
        // After the runs: a run finishing in the grace period returns its session first.
        self.runner.close_sessions().await;
        background.abort_all();
        tracing::info!("executor stopped");
        Ok(())
    }

    /// Adds `batch` to the tasks waiting for `at`; answers whether `at` needs a timer (it had
    /// none waiting yet). One timer per instant serves every read that brought tasks for it, so
    /// a second's fires start together, not one read after another.
    fn wait_for(&self, at: DateTime<Utc>, batch: Batch) -> bool {
        self.metrics
            .waiting
            .inc_by(i64::try_from(batch.len()).unwrap_or(i64::MAX));
        let Ok(mut waiting) = self.waiting.lock() else {
            return false;
        };
        match waiting.entry(at) {
            std::collections::btree_map::Entry::Occupied(mut e) => {
                e.get_mut().append(batch);
                false
            }
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(batch);
                true
            }
        }
    }

    /// Holds the tasks waiting for `at` until then, then dispatches them. The heartbeat keeps
    /// their entries ours meanwhile. On shutdown before `at`, they are left pending,
    /// unacknowledged, for another executor to take over: none of them has begun.
    ///
    /// The runtime's timer wakes up to a millisecond late; it is set that much early, and the
    /// rest is slept on this thread (at most a millisecond, once per fire instant).
    async fn start_at(
        self: Arc<Self>,
        at: DateTime<Utc>,
        capacity: Arc<Semaphore>,
        shutdown: CancellationToken,
    ) {
        let early = chrono::Duration::milliseconds(1);
        let wait = (at - early - self.now()).to_std().unwrap_or_default();
        let stopped = tokio::select! {
            () = shutdown.cancelled() => true,
            () = tokio::time::sleep(wait) => false,
        };
        if !stopped && let Ok(rest) = (at - self.now()).to_std() {
            std::thread::sleep(rest.min(Duration::from_millis(2)));
        }
        let batch = self
            .waiting
            .lock()
            .ok()
            .and_then(|mut w| w.remove(&at))
            .unwrap_or_default();
        self.metrics
            .waiting
            .dec_by(i64::try_from(batch.len()).unwrap_or(i64::MAX));
        if stopped {
            for id in batch.entry_ids() {
                self.release(id);
            }
            return;
        }
        self.dispatch(batch, capacity).await;
    }

    /// Runs entries that are due, each once it has a slot. No-ops need neither a device, SSH
    /// nor a slot: they start and finish together, up to [`NOOP_BATCH`] in one script, each
    /// batch on a task of its own so both cores serialize them, and the pipeline's own cost
    /// stays measurable.
    async fn dispatch(self: Arc<Self>, batch: Batch, capacity: Arc<Semaphore>) {
        let Batch {
            mut noops,
            others,
            held,
        } = batch;
        let mut runs: JoinSet<()> = JoinSet::new();
        while !noops.is_empty() {
            let rest = noops.split_off(noops.len().saturating_sub(NOOP_BATCH));
            let this = Arc::clone(&self);
            runs.spawn(async move { this.run_noops(rest).await });
        }
        drop(held);
        for (entry, task) in others {
            let Ok(permit) = Arc::clone(&capacity).acquire_owned().await else {
                break;
            };
            let this = Arc::clone(&self);
            runs.spawn(async move {
                this.process(&entry, task).await;
                this.release(&entry.id);
                drop(permit);
            });
        }
        while runs.join_next().await.is_some() {}
    }

    fn hold(&self, id: &str) {
        if let Ok(mut held) = self.held.lock() {
            held.insert(id.to_owned());
        }
    }

    fn release(&self, id: &str) {
        if let Ok(mut held) = self.held.lock() {
            held.remove(id);
        }
    }

    async fn read(&self, count: usize) -> Result<Vec<StreamId>> {
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(EXECUTOR_GROUP)
            .arg(&self.config.consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(self.config.block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.streams.tasks)
            .arg(">")
            .query_async(&mut self.reader.clone())
            .await?;
        Ok(reply
            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
            .unwrap_or_default())
    }

    /// Takes over tasks that another consumer has held without touching them for
    /// `reclaim_idle` (its process died). Tasks delivered too often are dead-lettered here.
    async fn reclaim(&self, count: usize) -> Result<Vec<StreamId>> {
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&self.streams.tasks)
            .arg(EXECUTOR_GROUP)
            .arg(&self.config.consumer)
            .arg(self.config.reclaim_idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.redis.clone())
            .await?;
        let mut runnable = Vec::new();
        for entry in reply.claimed {
            let pending: StreamPendingCountReply = redis::cmd("XPENDING")
                .arg(&self.streams.tasks)
                .arg(EXECUTOR_GROUP)
                .arg(&entry.id)
                .arg(&entry.id)
                .arg(1)
                .query_async(&mut self.redis.clone())
                .await?;
            let deliveries = pending.ids.first().map_or(0, |p| p.times_delivered) as u64;
            tracing::info!(entry = %entry.id, deliveries, "took over a task from an idle executor");
            if deliveries > self.config.max_deliveries {
                let (run_id, attempt) = match Task::decode(&entry) {
                    Ok(task) => (Some(task.run_id), task.attempt),
                    Err(r) => (r.run_id, 1),
                };
                let reason = format!(
                    "the task was delivered {deliveries} times without an outcome (more than \
                     NETCRON_EXECUTOR_MAX_DELIVERIES = {}); its executors crashed or were killed",
                    self.config.max_deliveries
                );
                self.reject(
                    &entry,
                    Rejected {
                        reason,
                        run_id,
                        attempt,
                    },
                )
                .await;
            } else {
                runnable.push(entry);
            }
        }
        Ok(runnable)
    }

    /// Renews the leases of the runs this executor is running, and keeps the idle time of
    /// the tasks it holds near zero so a task waiting for its device is never taken for an
    /// abandoned one (`XCLAIM … JUSTID` to ourselves does not count as a delivery).
    async fn heartbeat(self: Arc<Self>) {
        let renew_every = (self.config.lease_ttl / 6).max(Duration::from_millis(50));
        let touch_every = self.config.reclaim_idle / 4;
        let mut last_touch = Instant::now();
        let mut last_sync = Instant::now();
        loop {
            tokio::time::sleep(renew_every).await;
            self.renew_leases().await;
            self.runner.renew_slots(renew_every).await;
            if last_sync.elapsed() >= CLOCK_SYNC {
                last_sync = Instant::now();
                self.sync_clock().await;
            }
            if last_touch.elapsed() < touch_every {
                continue;
            }
            last_touch = Instant::now();
            let ids: Vec<String> = match self.held.lock() {
                Ok(held) => held.iter().cloned().collect(),
                Err(_) => continue,
            };
            for chunk in ids.chunks(500) {
                let touched: redis::RedisResult<redis::Value> = redis::cmd("XCLAIM")
                    .arg(&self.streams.tasks)
                    .arg(EXECUTOR_GROUP)
                    .arg(&self.config.consumer)
                    .arg(0)
                    .arg(chunk)
                    .arg("JUSTID")
                    .query_async(&mut self.redis.clone())
                    .await;
                if let Err(e) = touched {
                    tracing::warn!(error = %e, "cannot refresh held tasks");
                }
            }
        }
    }

    async fn renew_leases(&self) {
        let leased: Vec<(Uuid, i32)> = match self.leased.lock() {
            Ok(leased) => leased.iter().map(|(r, a)| (*r, *a)).collect(),
            Err(_) => return,
        };
        let lease_ms = self.config.lease_ttl.as_millis() as u64;
        for chunk in leased.chunks(500) {
            match self
                .leases
                .renew(
                    &mut self.redis.clone(),
                    &self.config.consumer,
                    lease_ms,
                    chunk,
                )
                .await
            {
                Ok(lost) => {
                    for (run_id, attempt) in lost {
                        // The scheduler revoked it (we were silent past the lease) and re-queues
                        // the run; our outcome will be recorded as superseded.
                        tracing::warn!(%run_id, attempt, "lease lost while the command runs");
                        if let Ok(mut leased) = self.leased.lock() {
                            leased.remove(&run_id);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot renew leases"),
            }
        }
    }

    async fn process(&self, entry: &StreamId, task: std::result::Result<Task, Rejected>) {
        match task {
            Err(rejected) => self.reject(entry, rejected).await,
            Ok(task) => {
                let span = tracing::info_span!("run", run_id = %task.run_id,
                    attempt = task.attempt, device = %task.device.name,
                    schedule_id = task.schedule_id.map(tracing::field::display));
                self.execute(&entry.id, task).instrument(span).await;
            }
        }
    }

    /// Runs no-op tasks: each starts and ends in the same step, under the same rules as
    /// [`ZoneWorker::start`] (a finished, begun or superseded attempt is dropped).
    async fn run_noops(&self, noops: Vec<(String, Task)>) {
        // The batch starts together: one instant for all of it.
        let outcome = crate::kinds::noop::noop_outcome();
        let results: Vec<(String, RunResult)> = noops
            .iter()
            .map(|(entry_id, task)| {
                let outcome = outcome.clone();
                let report = RunResult {
                    v: RESULT_VERSION,
                    run_id: task.run_id,
                    attempt: task.attempt,
                    executor_id: self.config.consumer.clone(),
                    started_at: outcome.finished_at,
                    outcome: Some(outcome),
                    kind: Some(CommandKind::Noop),
                };
                (entry_id.clone(), report)
            })
            .collect();
        let ran = until_ok("running no-ops", || async {
            self.leases
                .run_noops(&mut self.redis.clone(), &results)
                .await
        })
        .await;
        for ((entry_id, task), ran) in noops.into_iter().zip(ran) {
            if ran {
                self.metrics.finished(RunStatus::Succeeded, None);
                self.metrics.run_duration.observe(0.0);
                if task.trigger == RunTrigger::Scheduled {
                    self.metrics.started_late(task.scheduled_for, self.now());
                }
            } else {
                tracing::info!(run_id = %task.run_id, attempt = task.attempt,
                    "no-op not run: its attempt is finished, running elsewhere or superseded");
            }
            self.release(&entry_id);
        }
    }

    /// Dead-letters an entry, ends its run (when the entry names one) with status `error`,
    /// and acknowledges it, in one transaction.
    async fn reject(&self, entry: &StreamId, rejected: Rejected) {
        tracing::warn!(entry = %entry.id, reason = %rejected.reason, "task dead-lettered");
        let mut pipe = redis::pipe();
        pipe.atomic();
        let dl = self
            .streams
            .dead_letter_cmd(&self.streams.tasks, entry, &rejected.reason);
        pipe.add_command(dl).ignore();
        if let Some(run_id) = rejected.run_id {
            let now = Utc::now();
            let result = RunResult {
                v: RESULT_VERSION,
                run_id,
                attempt: rejected.attempt,
                executor_id: self.config.consumer.clone(),
                started_at: now,
                outcome: Some(error_outcome(
                    now,
                    ErrorKind::Internal,
                    format!("dead-lettered: {}", rejected.reason),
                )),
                kind: None,
            };
            pipe.add_command(self.leases.dead_letter_outcome(&result))
                .ignore();
        }
        pipe.cmd("XACK")
            .arg(&self.streams.tasks)
            .arg(EXECUTOR_GROUP)
            .arg(&entry.id)
            .ignore();
        self.until_done("dead-lettering a task", &pipe).await;
    }

    /// Runs `pipe` until Redis accepts it. See [`until_ok`].
    async fn until_done(&self, what: &str, pipe: &redis::Pipeline) {
        until_ok(what, || async {
            pipe.query_async::<()>(&mut self.redis.clone()).await
        })
        .await;
    }

    async fn execute(&self, entry_id: &str, task: Task) {
        let mut report = RunResult {
            v: RESULT_VERSION,
            run_id: task.run_id,
            attempt: task.attempt,
            executor_id: self.config.consumer.clone(),
            started_at: Utc::now(),
            outcome: None,
            kind: Some(task.command.kind),
        };
        // The lease is taken, and `started` published, only once the device and global slots
        // are held: the time a task waits for its device is not time its command runs.
        let start = async {
            report.started_at = Utc::now();
            let began = self.start(entry_id, &report).await;
            if began && task.trigger == RunTrigger::Scheduled {
                self.metrics.started_late(task.scheduled_for, self.now());
            }
            began
        };
        let Some(outcome) = self.runner.perform(&task, start).await else {
            return;
        };
        self.metrics.finished(outcome.status, outcome.error_kind);
        self.metrics.run_duration.observe(
            (outcome.finished_at - report.started_at)
                .as_seconds_f64()
                .max(0.0),
        );
        tracing::info!(status = %outcome.status, error_kind = outcome.error_kind.map(|k| k.as_str()),
            duration_ms = outcome.duration_ms, "run finished");
        report.outcome = Some(outcome);
        let (report, body) = serialized(report).await;
        // Outcome, `done` lease and acknowledgement in one script: the task is acknowledged
        // only together with its published outcome.
        let ours = until_ok("publishing an outcome", || async {
            self.leases
                .finish(&mut self.redis.clone(), entry_id, &report, &body)
                .await
        })
        .await;
        if !ours {
            tracing::warn!(run_id = %task.run_id, attempt = task.attempt,
                "outcome published after the lease was lost; it is recorded as superseded");
        }
        self.metrics.in_flight.dec();
        if let Ok(mut leased) = self.leased.lock() {
            leased.remove(&task.run_id);
        }
    }

    /// Waits until `NETCRON_EXECUTOR_START_REPLICAS` replicas hold the lease just taken (on
    /// the same connection, so `WAIT` covers the start script's writes). A start they do not
    /// acknowledge in time, or a failed `WAIT`, still runs: the lease is on the master, and
    /// only a fail-over in this instant could lose it. It is counted and logged.
    async fn replicate_start(&self, report: &RunResult) {
        let wanted = self.config.start_replicas;
        if wanted == 0 {
            return;
        }
        let acked: redis::RedisResult<u32> = redis::cmd("WAIT")
            .arg(wanted)
            .arg(self.config.start_wait.as_millis() as u64)
            .query_async(&mut self.redis.clone())
            .await;
        match acked {
            Ok(n) if n >= wanted => {}
            other => {
                self.metrics.unreplicated_starts.inc();
                tracing::warn!(run_id = %report.run_id, attempt = report.attempt, wanted,
                    acknowledged = ?other, "a run's lease was not acknowledged by enough Redis replicas in time; the run starts anyway");
            }
        }
    }

    /// Takes the run's lease and publishes `started`; answers whether the command may run. A
    /// task that may not (finished, held or begun elsewhere, superseded, cancelled) is
    /// acknowledged and dropped here.
    async fn start(&self, entry_id: &str, report: &RunResult) -> bool {
        let announce = report.kind != Some(CommandKind::Noop);
        let lease_ms = self.config.lease_ttl.as_millis() as u64;
        let answer = until_ok("taking a lease", || async {
            self.leases
                .start(
                    &mut self.redis.clone(),
                    entry_id,
                    lease_ms,
                    report,
                    announce,
                )
                .await
        })
        .await;
        if answer == Start::Started {
            self.replicate_start(report).await;
            if let Ok(mut leased) = self.leased.lock() {
                leased.insert(report.run_id, report.attempt);
            }
            self.metrics.in_flight.inc();
            return true;
        }
        tracing::info!(run_id = %report.run_id, attempt = report.attempt, answer = ?answer,
            "task not run: its attempt is finished, running elsewhere or superseded");
        let mut pipe = redis::pipe();
        pipe.cmd("XACK")
            .arg(&self.streams.tasks)
            .arg(EXECUTOR_GROUP)
            .arg(entry_id)
            .ignore();
        self.until_done("acknowledging a task not to run", &pipe)
            .await;
        false
    }
}

/// Runs `step` until Redis answers, backing off in between (100 ms doubling to 5 s). Aborting
/// the run task (the grace period ended) is the only way out, and leaves the task for another
/// executor.
async fn until_ok<T, F, Fut>(what: &str, mut step: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = redis::RedisResult<T>>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        match step().await {
            Ok(value) => return value,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "{what} failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// No-op tasks started and finished by one script. Each batch is stamped as it is built, and
/// building one (serializing its results) takes about 5 µs a task, so small batches keep the
/// last of a second's fires close to the first.
const NOOP_BATCH: usize = 100;

/// How often an executor measures its clock against Redis'.
const CLOCK_SYNC: Duration = Duration::from_secs(30);

/// Outcomes with this much output are serialized on a blocking thread.
const BLOCKING_SERIALIZE_BYTES: usize = 1024 * 1024;

/// The result's entry body, made once: on a blocking thread when the output is large, since
/// escaping 200 MiB of text would hold up the lease renewals of every other run.
async fn serialized(report: RunResult) -> (Arc<RunResult>, String) {
    let size = report
        .outcome
        .as_ref()
        .map_or(0, |o| o.stdout.len() + o.stderr.len());
    let report = Arc::new(report);
    if size < BLOCKING_SERIALIZE_BYTES {
        let body = report.body();
        return (report, body);
    }
    let shared = Arc::clone(&report);
    let body = match tokio::task::spawn_blocking(move || shared.body()).await {
        Ok(body) => body,
        Err(e) => {
            // Serializing does not fail; should the thread have panicked, it is done here.
            tracing::error!(run_id = %report.run_id, error = %e, "serializing an outcome failed");
            report.body()
        }
    };
    (report, body)
}
