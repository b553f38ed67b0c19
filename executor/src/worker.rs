//! The consumer loop: read tasks, claim them, run them within the concurrency limits, publish
//! their outcomes, keep held tasks fresh, take over tasks of dead executors, and dead-letter what
//! cannot be run.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use netcron_common::domain::{CommandKind, ErrorKind};
use netcron_common::metrics::Telemetry;
use netcron_common::protocol::{
    EXECUTOR_GROUP, FIELD_BODY, FIELD_RUN_ID, FIELD_VERSION, RESULT_VERSION, RunResult, Streams,
    TASK_VERSION, Task,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamPendingCountReply, StreamReadReply};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::error::Result;
use crate::metrics::ExecutorMetrics;
use crate::runner::{Runner, error_outcome};
use crate::{ExecutorConfig, Settings};

/// Tasks are small (command text is capped at 64 KiB by the API); a larger body is hostile or
/// broken and is dead-lettered without being parsed.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// One executor process: a consumer in the `executors` group of the tasks stream.
pub struct Executor {
    redis: ConnectionManager,
    reader: ConnectionManager,
    streams: Streams,
    config: ExecutorConfig,
    runner: Runner,
    metrics: ExecutorMetrics,
    /// Stream entry ids this consumer holds (read and not yet acknowledged).
    held: Mutex<HashSet<String>>,
}

/// Why a stream entry cannot be run.
struct Rejected {
    reason: String,
    run_id: Option<Uuid>,
    attempt: i32,
}

impl Executor {
    /// Connects to Redis and makes sure the consumer group exists.
    ///
    /// # Errors
    /// When Redis is unreachable.
    pub async fn connect(
        settings: Settings,
        telemetry: &Telemetry,
        metrics: ExecutorMetrics,
    ) -> Result<Arc<Self>> {
        let client = redis::Client::open(settings.redis.url.as_str())?;
        telemetry.add_redis_check(&client);
        // Results can be megabytes (the output caps), so writes get a generous timeout; the
        // reader's must outlast its blocking read.
        let redis = client
            .get_connection_manager_with_config(
                ConnectionManagerConfig::new().set_response_timeout(Some(Duration::from_secs(30))),
            )
            .await?;
        let reader = client
            .get_connection_manager_with_config(
                ConnectionManagerConfig::new()
                    .set_response_timeout(Some(settings.executor.block + Duration::from_secs(10))),
            )
            .await?;
        let executor = Arc::new(Self {
            redis,
            reader,
            streams: Streams::new(&settings.redis.stream_prefix),
            runner: Runner::new(settings.secret_key, settings.executor.clone())
                .with_slot_wait_metric(metrics.slot_wait.clone()),
            metrics,
            held: Mutex::new(HashSet::new()),
            config: settings.executor,
        });
        executor.ensure_group().await?;
        Ok(executor)
    }

    pub fn consumer(&self) -> &str {
        &self.config.consumer
    }

    async fn ensure_group(&self) -> Result<()> {
        // From the start of the stream, so tasks published before the first executor ever
        // started are run too.
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.streams.tasks)
            .arg(EXECUTOR_GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.redis.clone())
            .await;
        match created {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => Ok(other?),
        }
    }

    /// Reads and runs tasks until `shutdown` is cancelled, then lets in-flight runs finish
    /// within the grace period. Redis failures are logged and retried; they never end the loop.
    ///
    /// Dropping the returned future (or aborting its task) stops everything at once without
    /// acknowledging anything, like a crash: the held tasks are then taken over by other
    /// executors once idle.
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
            let free = capacity.available_permits();
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
                        if e.to_string().contains("NOGROUP") {
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
            let parsed: Vec<_> = entries
                .into_iter()
                .map(|entry| {
                    let task = parse(&entry);
                    (entry, task)
                })
                .collect();
            let claims = self.claim_many(&parsed).await;
            for ((entry, task), claimed) in parsed.into_iter().zip(claims) {
                let Ok(permit) = Arc::clone(&capacity).acquire_owned().await else {
                    break;
                };
                self.hold(&entry.id);
                let this = Arc::clone(&self);
                runs.spawn(async move {
                    this.process(&entry, task, claimed).await;
                    this.release(&entry.id);
                    drop(permit);
                });
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
        background.abort_all();
        tracing::info!("executor stopped");
        Ok(())
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
                let (run_id, attempt) = match parse(&entry) {
                    Ok(task) => (Some(task.run_id), task.attempt),
                    Err(r) => (r.run_id, r.attempt),
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

    /// Keeps the idle time of held tasks near zero, so a long-running command is never taken
    /// for an abandoned one. `XCLAIM … JUSTID` to ourselves does not count as a delivery.
    async fn heartbeat(self: Arc<Self>) {
        let every = self.config.reclaim_idle / 4;
        loop {
            tokio::time::sleep(every).await;
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

    /// `claimed` is the outcome of the batch claim, if it got an answer.
    async fn process(
        &self,
        entry: &StreamId,
        task: std::result::Result<Task, Rejected>,
        claimed: Option<bool>,
    ) {
        match task {
            Err(rejected) => self.reject(entry, rejected).await,
            Ok(task) => {
                let span = tracing::info_span!("run", run_id = %task.run_id,
                    attempt = task.attempt, device = %task.device.name,
                    schedule_id = ?task.schedule_id);
                self.execute(&entry.id, task, claimed)
                    .instrument(span)
                    .await;
            }
        }
    }

    /// Dead-letters an entry, ends its run (when the entry names one) with status `error`,
    /// and acknowledges it, in one transaction.
    async fn reject(&self, entry: &StreamId, rejected: Rejected) {
        tracing::warn!(entry = %entry.id, reason = %rejected.reason, "task dead-lettered");
        let mut pipe = redis::pipe();
        pipe.atomic();
        let dl = self.streams.dead_letter_cmd(
            &self.streams.tasks,
            &entry.id,
            &rejected.reason,
            &entry.map,
        );
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
            match serde_json::to_string(&result) {
                Ok(body) => {
                    pipe.add_command(self.result_cmd(run_id, &body)).ignore();
                }
                Err(e) => tracing::error!(error = %e, "cannot encode a result"),
            }
        }
        pipe.cmd("XACK")
            .arg(&self.streams.tasks)
            .arg(EXECUTOR_GROUP)
            .arg(&entry.id)
            .ignore();
        self.until_done("dead-lettering a task", &pipe).await;
    }

    fn result_cmd(&self, run_id: Uuid, body: &str) -> redis::Cmd {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.streams.results)
            .arg("*")
            .arg(FIELD_VERSION)
            .arg(RESULT_VERSION)
            .arg(FIELD_RUN_ID)
            .arg(run_id.to_string())
            .arg(FIELD_BODY)
            .arg(body);
        cmd
    }

    /// Runs `pipe` until Redis accepts it, backing off in between. Aborting the run task (the
    /// grace period ended) is the only way out, and leaves the task for another executor.
    async fn until_done(&self, what: &str, pipe: &redis::Pipeline) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match pipe.query_async::<()>(&mut self.redis.clone()).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "{what} failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn execute(&self, entry_id: &str, task: Task, claimed: Option<bool>) {
        let claimed = match claimed {
            Some(claimed) => claimed,
            None => self.claim(entry_id, &task).await,
        };
        if !claimed {
            tracing::info!(run_id = %task.run_id, attempt = task.attempt, "duplicate task dropped");
            let mut pipe = redis::pipe();
            pipe.cmd("XACK")
                .arg(&self.streams.tasks)
                .arg(EXECUTOR_GROUP)
                .arg(entry_id)
                .ignore();
            self.until_done("acknowledging a duplicate task", &pipe)
                .await;
            return;
        }
        let started_at = Utc::now();
        let mut started = RunResult {
            v: RESULT_VERSION,
            run_id: task.run_id,
            attempt: task.attempt,
            executor_id: self.config.consumer.clone(),
            started_at,
            outcome: None,
            kind: Some(task.command.kind),
        };
        // A no-op ends as it starts; its outcome alone says both.
        if task.command.kind != CommandKind::Noop
            && let Ok(body) = serde_json::to_string(&started)
        {
            let mut pipe = redis::pipe();
            pipe.add_command(self.result_cmd(task.run_id, &body))
                .ignore();
            self.until_done("publishing a started event", &pipe).await;
        }
        self.metrics.in_flight.inc();
        let outcome = self.runner.perform(&task).await;
        self.metrics.in_flight.dec();
        self.metrics.finished(outcome.status, outcome.error_kind);
        self.metrics
            .run_duration
            .observe((outcome.finished_at - started_at).as_seconds_f64().max(0.0));
        tracing::info!(status = %outcome.status, error_kind = ?outcome.error_kind,
            duration_ms = outcome.duration_ms, "run finished");
        started.outcome = Some(outcome);
        let body = match serde_json::to_string(&started) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a result");
                return;
            }
        };
        // Outcome, "done" marker and acknowledgement in one transaction: the task is
        // acknowledged only together with its published outcome.
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.add_command(self.result_cmd(task.run_id, &body))
            .ignore();
        pipe.cmd("SET")
            .arg(self.streams.claim_key(task.run_id, task.attempt))
            .arg("done")
            .arg("EX")
            .arg(self.config.done_ttl.as_secs().max(1))
            .ignore();
        pipe.cmd("XACK")
            .arg(&self.streams.tasks)
            .arg(EXECUTOR_GROUP)
            .arg(entry_id)
            .ignore();
        self.until_done("publishing an outcome", &pipe).await;
    }

    /// `SET <claim key> <entry id> NX GET EX <ttl>`: sets the claim if nobody holds it and
    /// answers the previous holder (nil when it was free). Needs Redis 7.0 or later.
    fn claim_cmd(&self, entry_id: &str, task: &Task) -> redis::Cmd {
        // Long enough for every attempt and its backoff; a claim that outlives its run only
        // keeps a duplicate from running.
        let ttl = i64::from(task.command.timeout_s).max(1)
            * i64::from(task.command.max_attempts.max(1))
            + 3600;
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.streams.claim_key(task.run_id, task.attempt))
            .arg(entry_id)
            .arg("NX")
            .arg("GET")
            .arg("EX")
            .arg(ttl);
        cmd
    }

    /// Whether this entry may run `(run_id, attempt)`: nobody claimed it, or the claim is this
    /// very entry's (a redelivery after its executor died). A claim by another entry, or a
    /// finished run (`done`), makes this entry a duplicate.
    fn may_run(entry_id: &str, holder: Option<&str>) -> bool {
        holder.is_none_or(|h| h == entry_id)
    }

    /// Claims every task of a read in one round trip. `None` for entries that are not tasks,
    /// and for all when Redis does not answer (each task then claims on its own, retrying).
    async fn claim_many(
        &self,
        parsed: &[(StreamId, std::result::Result<Task, Rejected>)],
    ) -> Vec<Option<bool>> {
        let mut pipe = redis::pipe();
        for (entry, task) in parsed {
            if let Ok(task) = task {
                pipe.add_command(self.claim_cmd(&entry.id, task));
            }
        }
        let holders: Vec<Option<String>> = if pipe.cmd_iter().next().is_none() {
            Vec::new()
        } else {
            match pipe.query_async(&mut self.redis.clone()).await {
                Ok(holders) => holders,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim tasks");
                    return parsed.iter().map(|_| None).collect();
                }
            }
        };
        let mut holders = holders.into_iter();
        parsed
            .iter()
            .map(|(entry, task)| match task {
                Ok(_) => holders
                    .next()
                    .map(|holder| Self::may_run(&entry.id, holder.as_deref())),
                Err(_) => None,
            })
            .collect()
    }

    /// Claims one task, retrying until Redis answers.
    async fn claim(&self, entry_id: &str, task: &Task) -> bool {
        loop {
            let holder: redis::RedisResult<Option<String>> = self
                .claim_cmd(entry_id, task)
                .query_async(&mut self.redis.clone())
                .await;
            match holder {
                Ok(holder) => return Self::may_run(entry_id, holder.as_deref()),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim a task; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

/// Reads a task entry: `v`, `run_id` and `body`, checked against each other.
fn parse(entry: &StreamId) -> std::result::Result<Task, Rejected> {
    let text = |field: &str| -> Option<String> {
        match entry.map.get(field) {
            Some(redis::Value::BulkString(b)) => String::from_utf8(b.clone()).ok(),
            Some(redis::Value::SimpleString(s)) => Some(s.clone()),
            _ => None,
        }
    };
    let run_id = text(FIELD_RUN_ID).and_then(|t| Uuid::parse_str(&t).ok());
    let reject = |reason: String| Rejected {
        reason,
        run_id,
        attempt: 1,
    };
    let version = text(FIELD_VERSION).ok_or_else(|| reject("the entry has no `v` field".into()))?;
    if version != TASK_VERSION.to_string() {
        return Err(reject(format!(
            "task version `{version}` is not supported (this executor reads version {TASK_VERSION})"
        )));
    }
    let Some(redis::Value::BulkString(body)) = entry.map.get(FIELD_BODY) else {
        return Err(reject("the entry has no `body` field".into()));
    };
    if body.len() > MAX_BODY_BYTES {
        return Err(reject(format!(
            "the body is {} bytes, more than the {MAX_BODY_BYTES} a task may have",
            body.len()
        )));
    }
    let task: Task = serde_json::from_slice(body)
        .map_err(|e| reject(format!("the body is not a valid task: {e}")))?;
    if Some(task.run_id) != run_id {
        return Err(reject(
            "the entry's `run_id` field does not match its body".into(),
        ));
    }
    if task.v != TASK_VERSION {
        return Err(reject(format!(
            "task body version {} is not supported",
            task.v
        )));
    }
    Ok(task)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fields: &[(&str, &[u8])]) -> StreamId {
        StreamId {
            id: "1-0".into(),
            map: fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), redis::Value::BulkString(v.to_vec())))
                .collect(),
            milliseconds_elapsed_from_delivery: None,
            delivered_count: None,
        }
    }

    #[test]
    fn malformed_entries_are_rejected_with_a_reason_and_their_run() {
        let run = Uuid::now_v7().to_string();
        let cases: Vec<(StreamId, &str)> = vec![
            (entry(&[("run_id", run.as_bytes())]), "no `v` field"),
            (
                entry(&[("v", b"9"), ("run_id", run.as_bytes()), ("body", b"{}")]),
                "version `9`",
            ),
            (
                entry(&[("v", b"1"), ("run_id", run.as_bytes())]),
                "no `body`",
            ),
            (
                entry(&[
                    ("v", b"1"),
                    ("run_id", run.as_bytes()),
                    ("body", b"{not json"),
                ]),
                "not a valid task",
            ),
        ];
        for (e, expected) in cases {
            let Err(rejected) = parse(&e) else {
                panic!("accepted a malformed entry")
            };
            assert!(
                rejected.reason.contains(expected),
                "{} vs {expected}",
                rejected.reason
            );
            assert_eq!(rejected.run_id.map(|u| u.to_string()), Some(run.clone()));
        }
        let Err(nameless) = parse(&entry(&[("v", b"1"), ("body", b"x")])) else {
            panic!("accepted a malformed entry")
        };
        assert_eq!(nameless.run_id, None);
    }
}
