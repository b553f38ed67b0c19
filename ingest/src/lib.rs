//! Result ingest: a consumer group on the results stream that writes executors' reports into
//! Postgres. Part of the api role (and of `all`); `netcron ingest` runs it alone.
//!
//! Invariants:
//! - idempotent: a result seen twice changes nothing, and the first outcome of a run wins;
//! - monotonic: a `started` event never moves a finished run backwards, nor a run re-queued
//!   with a newer attempt;
//! - entries are acknowledged only after the transaction that stored them commits;
//! - reads and writes are batched and bounded: a read takes up to `batch` entries and stops
//!   once it holds [`MAX_BATCH_BYTES`] (plus at most one entry); a transaction stores at most
//!   about that much output.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use netcron_common::domain::CommandKind;
use netcron_common::metrics::Telemetry;
use netcron_common::secret::SecretKey;
use netcron_common::startup::{Waiting, wait_for};
use netcron_lifecycle::runs;
use netcron_protocol::RedisSettings;
use netcron_protocol::lease::Leases;
use netcron_protocol::stream::BoundedReader;
use netcron_protocol::{INGEST_GROUP, RunResult, Streams, ensure_group, is_missing_group};
use netcron_store::db::RUN_QUEUED_CHANNEL;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamId, StreamReadReply};
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, TransactionTrait};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub mod config;
pub mod events;
mod metrics;
pub mod webhook_policy;

pub use crate::config::{EventSettings, IngestSettings, Settings};
use crate::events::{Dispatcher, Finished};
pub use crate::metrics::IngestMetrics;

/// Output bytes stored per transaction; a batch of large outputs is split.
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// A consumer silent for this long has died; its unacknowledged results are taken over.
const RECLAIM_IDLE: Duration = Duration::from_secs(60);

/// The devices of the finished `config_backup` runs among `$1`, whose rows are then locked
/// (in id order) so two ingest workers number one device's versions one after the other.
const CONFIG_RUNS: &str = r"
SELECT r.id, r.device_id FROM runs r JOIN commands c ON c.id = r.command_id
WHERE r.id = ANY($1) AND c.kind = 'config_backup' AND r.status = 'succeeded'";

const LOCK_DEVICES: &str = "SELECT id FROM devices WHERE id = ANY($1) ORDER BY id FOR UPDATE";

/// A new version ($1 id, $2 device, $3 content, $4 run) unless the content hash equals the
/// device's latest version's.
const NEW_CONFIG_VERSION: &str = r"
WITH h AS (SELECT encode(sha256(convert_to($3::text, 'UTF8')), 'hex') AS hash),
latest AS (SELECT version, hash FROM config_versions WHERE device_id = $2
           ORDER BY version DESC LIMIT 1)
INSERT INTO config_versions (id, device_id, version, hash, content, run_id, created_at)
SELECT $1, $2, coalesce((SELECT version FROM latest), 0) + 1, h.hash, $3, $4, now()
FROM h
WHERE h.hash IS DISTINCT FROM (SELECT hash FROM latest)";

/// What one batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IngestReport {
    pub entries: usize,
    pub started: u64,
    pub finished: u64,
    pub pinned: u64,
    /// Outcomes of attempts that were not their run's current one, recorded as superseded.
    pub superseded: u64,
    /// Bytes of the entries read (all their fields).
    pub bytes: usize,
    pub dead_lettered: usize,
}

/// The ingest consumer. It connects to Redis when it runs (and reconnects on its own), so the
/// api starts, and reports itself unready, while Redis is down.
pub struct Ingest {
    db: DatabaseConnection,
    client: redis::Client,
    streams: Streams,
    consumer: String,
    batch: usize,
    workers: usize,
    metrics: IngestMetrics,
    events: EventSettings,
    /// Wakes the event dispatcher after a transaction wrote events.
    wake: Arc<Notify>,
    key: SecretKey,
    leases: Leases,
    reader: BoundedReader,
}

/// A writer and a reader: a blocking read must not hold up acknowledgements.
struct Conns {
    redis: ConnectionManager,
    reader: ConnectionManager,
    /// This worker's consumer name in the group.
    consumer: String,
}

impl Ingest {
    /// # Errors
    /// When the Redis URL is malformed.
    pub fn new(
        db: DatabaseConnection,
        redis: &RedisSettings,
        key: SecretKey,
        settings: IngestSettings,
        telemetry: &Telemetry,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            db,
            client: redis::Client::open(redis.url.as_str()).context("REDIS_URL")?,
            streams: Streams::new(&redis.stream_prefix),
            leases: Leases::new(Streams::new(&redis.stream_prefix), 24 * 3600),
            consumer: format!("ingest-{}-{:08x}", std::process::id(), rand_suffix()),
            batch: settings.batch.max(1),
            workers: settings.workers.max(1),
            metrics: IngestMetrics::new(telemetry),
            events: settings.events,
            wake: Arc::new(Notify::new()),
            key,
            reader: {
                let streams = Streams::new(&redis.stream_prefix);
                BoundedReader::new(&streams.results, &streams.results_large, INGEST_GROUP)
            },
        })
    }

    async fn connect(&self, consumer: &str) -> redis::RedisResult<Conns> {
        let redis = self
            .client
            .get_connection_manager_with_config(
                ConnectionManagerConfig::new().set_response_timeout(Some(Duration::from_secs(10))),
            )
            .await?;
        let reader = self
            .client
            .get_connection_manager_with_config(
                ConnectionManagerConfig::new().set_response_timeout(Some(Duration::from_secs(30))),
            )
            .await?;
        let conns = Conns {
            redis,
            reader,
            consumer: consumer.to_owned(),
        };
        self.ensure_group(&conns).await?;
        Ok(conns)
    }

    async fn ensure_group(&self, conns: &Conns) -> redis::RedisResult<()> {
        ensure_group(
            &mut conns.redis.clone(),
            &self.streams.results,
            INGEST_GROUP,
        )
        .await
    }

    /// Ingests until `shutdown` is cancelled. Failures are logged and retried with backoff;
    /// unacknowledged entries are read again.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(consumer = %self.consumer, workers = self.workers, "result ingest started");
        // Workers are consumers of the group with transactions of their own, so batches are
        // stored in parallel; results of different runs never touch the same rows.
        let dispatcher = Dispatcher {
            db: self.db.clone(),
            redis: self.client.clone(),
            streams: self.streams.clone(),
            key: self.key.clone(),
            settings: self.events.clone(),
            metrics: self.metrics.clone(),
            wake: Arc::clone(&self.wake),
        };
        let dispatcher = tokio::spawn(dispatcher.run(shutdown.clone()));
        let this = Arc::new(self);
        let workers: Vec<_> = (0..this.workers)
            .map(|i| {
                let this = Arc::clone(&this);
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    let consumer = format!("{}-{i}", this.consumer);
                    this.worker(&consumer, shutdown).await;
                })
            })
            .collect();
        for worker in workers {
            let _ = worker.await;
        }
        let _ = dispatcher.await;
        tracing::info!("result ingest stopped");
    }

    async fn worker(&self, consumer: &str, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        let mut last_reclaim: Option<Instant> = None;
        let mut conns: Option<Conns> = None;
        while !shutdown.is_cancelled() {
            let reclaim = last_reclaim.is_none_or(|t| t.elapsed() >= RECLAIM_IDLE / 2);
            if reclaim {
                last_reclaim = Some(Instant::now());
            }
            let step = match &conns {
                Some(c) => self.step(c, reclaim, Duration::from_secs(1)).await,
                None => match self.connect(consumer).await {
                    Ok(c) => {
                        conns = Some(c);
                        continue;
                    }
                    Err(e) => Err(anyhow::Error::from(e).context("connecting to Redis")),
                },
            };
            match step {
                Ok(report) => {
                    backoff = Duration::from_millis(100);
                    if report.entries > 0 {
                        tracing::debug!(?report, "ingested results");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "result ingest failed");
                    // What this worker read but did not store is in its pending list: read it
                    // again first thing, rather than at the next periodic reclaim.
                    last_reclaim = None;
                    if let Some(c) = &conns
                        && e.downcast_ref::<redis::RedisError>()
                            .is_some_and(is_missing_group)
                    {
                        let _ = self.ensure_group(c).await;
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Reads one batch (after taking over idle entries of dead consumers, when `reclaim`),
    /// stores it and acknowledges it. Waits up to `block` for entries. Every read is bounded
    /// by [`MAX_BATCH_BYTES`] as well as by `batch` entries (see [`BoundedReader`]).
    ///
    /// # Errors
    /// When Redis or Postgres fails; nothing is acknowledged then.
    async fn step(
        &self,
        conns: &Conns,
        reclaim: bool,
        block: Duration,
    ) -> anyhow::Result<IngestReport> {
        let mut entries = Vec::new();
        if reclaim {
            // Our own pending entries first (a failed commit), then other consumers' idle ones,
            // taken over by id only and then read like our own.
            entries = self.read_bounded(conns, "0").await?;
            if entries.is_empty() {
                let _: redis::Value = redis::cmd("XAUTOCLAIM")
                    .arg(&self.streams.results)
                    .arg(INGEST_GROUP)
                    .arg(&conns.consumer)
                    .arg(RECLAIM_IDLE.as_millis() as u64)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(self.batch)
                    .arg("JUSTID")
                    .query_async(&mut conns.redis.clone())
                    .await?;
                entries = self.read_bounded(conns, "0").await?;
            }
        }
        if entries.is_empty() {
            entries = self.read_bounded(conns, ">").await?;
        }
        if entries.is_empty() {
            // Nothing waiting: block for the next entry alone, then read on without blocking.
            entries = self.read_blocking(conns, block).await?;
        }
        self.store(conns, entries).await
    }

    async fn read_bounded(&self, conns: &Conns, from: &str) -> anyhow::Result<Vec<StreamId>> {
        Ok(self
            .reader
            .read(
                &mut conns.reader.clone(),
                &conns.consumer,
                from,
                self.batch,
                MAX_BATCH_BYTES,
            )
            .await?)
    }

    async fn read_blocking(&self, conns: &Conns, block: Duration) -> anyhow::Result<Vec<StreamId>> {
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(INGEST_GROUP)
            .arg(&conns.consumer)
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.streams.results)
            .arg(">")
            .query_async(&mut conns.reader.clone())
            .await?;
        Ok(reply
            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
            .unwrap_or_default())
    }

    async fn store(&self, conns: &Conns, entries: Vec<StreamId>) -> anyhow::Result<IngestReport> {
        let mut report = IngestReport {
            entries: entries.len(),
            bytes: entries.iter().map(entry_bytes).sum(),
            ..IngestReport::default()
        };
        let mut chunk: Vec<(String, RunResult)> = Vec::new();
        let mut chunk_bytes = 0;
        let mut bad: Vec<(StreamId, String)> = Vec::new();
        for entry in entries {
            if entry.map.is_empty() {
                // Trimmed while pending: nothing left to store.
                self.ack(conns, &[entry.id]).await?;
                continue;
            }
            match RunResult::decode(&entry) {
                Ok(result) => {
                    chunk_bytes += result
                        .outcome
                        .as_ref()
                        .map_or(0, |o| o.stdout.len() + o.stderr.len());
                    chunk.push((entry.id, result));
                    if chunk_bytes >= MAX_BATCH_BYTES {
                        self.commit(conns, std::mem::take(&mut chunk), &mut report)
                            .await?;
                        chunk_bytes = 0;
                    }
                }
                Err(rejected) => bad.push((entry, rejected.reason)),
            }
        }
        if !chunk.is_empty() {
            self.commit(conns, chunk, &mut report).await?;
        }
        for (entry, reason) in bad {
            self.dead_letter(conns, &entry, &reason).await?;
            report.dead_lettered += 1;
        }
        Ok(report)
    }

    /// Stores one chunk in one transaction, then marks its outcomes' leases stored and
    /// acknowledges it. A chunk stored twice changes nothing the second time.
    async fn commit(
        &self,
        conns: &Conns,
        chunk: Vec<(String, RunResult)>,
        report: &mut IngestReport,
    ) -> anyhow::Result<()> {
        let batch = runs::first_outcomes(chunk.iter().map(|(_, r)| r));
        let started = started_reports(&batch);
        let outcomes: Vec<&RunResult> = batch.finished.values().copied().collect();
        let txn = self.db.begin().await?;
        report.started += runs::started(&txn, &started).await?;
        let finished = runs::finish(&txn, &outcomes, &batch.repeats).await?;
        tally(report, &finished);
        let applied = applied_outcomes(&outcomes, &finished.done);
        store_configs(&txn, &applied, &finished.done).await?;
        let wrote_events = self
            .detect_events(&txn, conns, &applied, &finished.done)
            .await?;
        // The job runs whose last device run this batch finished end now, in the same
        // transaction, so a job run is never left running behind finished device runs.
        netcron_lifecycle::settle::settle_for_runs(&txn, &finished.done, chrono::Utc::now())
            .await?;
        // Outbox rows of finished runs are left to the scheduler's housekeeping, which deletes
        // them in bulk; deleting them here doubled the rows this transaction writes.
        if finished.release {
            // A run of a `queue` schedule ended: wake the scheduler to release the next one.
            txn.execute_raw(stmt(
                "SELECT pg_notify($1, '')",
                vec![RUN_QUEUED_CHANNEL.into()],
            ))
            .await?;
        }
        txn.commit().await?;
        if wrote_events {
            self.wake.notify_one();
        }
        self.mark_stored(conns, &chunk).await?;
        self.count_stored(started.len(), &applied);
        let ids: Vec<String> = chunk.into_iter().map(|(id, _)| id).collect();
        self.ack(conns, &ids).await
    }

    /// Detects the events of the runs this transaction finished (`done`) and withdraws the
    /// runs materialised ahead of the schedules it paused. Whether it wrote events.
    async fn detect_events(
        &self,
        txn: &DatabaseTransaction,
        conns: &Conns,
        applied: &HashMap<Uuid, &RunResult>,
        done: &[Uuid],
    ) -> anyhow::Result<bool> {
        // Only runs this transaction finished: a result seen twice must not count twice.
        let mut newly = newly_finished(applied, done);
        let mut paused = Vec::new();
        let new_events = events::record(txn, &mut newly, &self.events, &mut paused).await?;
        // A schedule paused for its failures is paused like any other: its runs materialised
        // ahead of their fire time are withdrawn with it (Redis failing rolls the whole batch
        // back, to be stored again).
        for schedule_id in paused {
            let withdrawn =
                runs::withdraw_ahead(txn, &mut conns.redis.clone(), &self.leases, schedule_id)
                    .await?;
            if withdrawn.runs > 0 {
                tracing::info!(%schedule_id, runs = withdrawn.runs,
                    "runs materialised ahead withdrawn from a schedule paused for its failures");
            }
        }
        Ok(!new_events.is_empty())
    }

    /// The attempts' outcomes are stored: their `done` keys, which do not expire while an
    /// outcome waits for ingest, go shortly. Called before the acknowledgement: should this
    /// fail, the batch is read again and stored again (every step of [`Self::commit`] is a
    /// no-op the second time), so no key is left without an expiry.
    async fn mark_stored(
        &self,
        conns: &Conns,
        chunk: &[(String, RunResult)],
    ) -> anyhow::Result<()> {
        let read: Vec<(Uuid, i32)> = chunk
            .iter()
            .filter(|(_, r)| r.outcome.is_some())
            .map(|(_, r)| (r.run_id, r.attempt))
            .collect();
        self.leases
            .stored(&mut conns.redis.clone(), &read)
            .await
            .context("marking stored outcomes' leases")
    }

    /// Counts what a committed transaction stored: `started` reports, and each applied
    /// outcome with its lag behind the run's end.
    fn count_stored(&self, started: usize, applied: &HashMap<Uuid, &RunResult>) {
        let now = chrono::Utc::now();
        for _ in 0..started {
            self.metrics.stored("started", None);
        }
        for r in applied.values() {
            if let Some(o) = r.outcome.as_ref() {
                let lag = (now - o.finished_at).as_seconds_f64();
                self.metrics.stored(o.status.as_str(), Some(lag));
            }
        }
    }

    async fn ack(&self, conns: &Conns, ids: &[String]) -> anyhow::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        redis::cmd("XACK")
            .arg(&self.streams.results)
            .arg(INGEST_GROUP)
            .arg(ids)
            .query_async::<()>(&mut conns.redis.clone())
            .await?;
        Ok(())
    }

    async fn dead_letter(
        &self,
        conns: &Conns,
        entry: &StreamId,
        reason: &str,
    ) -> anyhow::Result<()> {
        tracing::warn!(entry = %entry.id, %reason, "result dead-lettered");
        let dl = self
            .streams
            .dead_letter_cmd(&self.streams.results, entry, reason);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .add_command(dl)
            .ignore()
            .cmd("XACK")
            .arg(&self.streams.results)
            .arg(INGEST_GROUP)
            .arg(&entry.id)
            .ignore();
        pipe.query_async::<()>(&mut conns.redis.clone()).await?;
        Ok(())
    }
}

/// The `started` reports of a batch, as the lifecycle takes them.
fn started_reports<'a>(batch: &runs::Batch<'a>) -> Vec<runs::Started<'a>> {
    batch
        .started
        .values()
        .map(|r| runs::Started {
            run_id: r.run_id,
            attempt: r.attempt,
            executor_id: &r.executor_id,
            started_at: r.started_at,
        })
        .collect()
}

/// Adds what `finish` did to the report, and logs the attempts that executed again.
fn tally(report: &mut IngestReport, finished: &runs::Finished) {
    for (run_id, repeats) in &finished.repeated {
        tracing::warn!(%run_id, repeats,
            "an attempt executed again after its outcome was stored (Redis lost its \
             lease); the repeat is recorded on the run's attempts");
    }
    report.finished += finished.done.len() as u64;
    report.pinned += finished.pinned;
    report.superseded += finished.superseded;
}

/// The outcome applied to each run this transaction finished (`done`: its current attempt).
fn applied_outcomes<'a>(outcomes: &[&'a RunResult], done: &[Uuid]) -> HashMap<Uuid, &'a RunResult> {
    outcomes
        .iter()
        .filter(|r| done.contains(&r.run_id))
        .map(|r| (r.run_id, *r))
        .collect()
}

/// What event detection needs of each run this transaction finished (`done`).
fn newly_finished<'a>(applied: &HashMap<Uuid, &'a RunResult>, done: &[Uuid]) -> Vec<Finished<'a>> {
    done.iter()
        .filter_map(|id| {
            let r = applied.get(id).copied()?;
            // A no-op never contacts its device: nothing to detect, no query to make.
            if r.kind == Some(CommandKind::Noop) {
                return None;
            }
            let o = r.outcome.as_ref()?;
            Some(Finished {
                run_id: r.run_id,
                attempt: r.attempt,
                status: o.status,
                error_kind: o.error_kind,
                error_message: o.error_message.as_deref(),
                finished_at: o.finished_at,
                host_key_fingerprint: o.host_key_fingerprint.as_deref(),
            })
        })
        .collect()
}

/// Stores the configurations fetched by the `config_backup` runs this batch finished (`done`:
/// replays and late duplicates are not among them), each only if it differs from the device's
/// latest version.
async fn store_configs(
    txn: &sea_orm::DatabaseTransaction,
    applied: &HashMap<Uuid, &RunResult>,
    done: &[Uuid],
) -> anyhow::Result<()> {
    let candidates: Vec<Uuid> = done
        .iter()
        .copied()
        .filter(|id| config_of(applied.get(id).copied()).is_some())
        .collect();
    if candidates.is_empty() {
        return Ok(());
    }
    let rows = txn
        .query_all_raw(stmt(CONFIG_RUNS, vec![candidates.into()]))
        .await?;
    let mut runs: Vec<(Uuid, Uuid)> = Vec::with_capacity(rows.len());
    for row in rows {
        runs.push((row.try_get("", "id")?, row.try_get("", "device_id")?));
    }
    if runs.is_empty() {
        return Ok(());
    }
    // Oldest run first, so versions follow the order the configurations were fetched in.
    runs.sort();
    let devices: Vec<Uuid> = runs.iter().map(|(_, d)| *d).collect();
    txn.execute_raw(stmt(LOCK_DEVICES, vec![devices.into()]))
        .await?;
    for (run_id, device_id) in runs {
        let Some(content) = config_of(applied.get(&run_id).copied()) else {
            continue;
        };
        txn.execute_raw(stmt(
            NEW_CONFIG_VERSION,
            vec![
                Uuid::now_v7().into(),
                device_id.into(),
                content.to_owned().into(),
                run_id.into(),
            ],
        ))
        .await?;
    }
    Ok(())
}

/// The normalized configuration a succeeded `config_backup` run carries in its payload.
fn config_of(result: Option<&RunResult>) -> Option<&str> {
    let outcome = result?.outcome.as_ref()?;
    if outcome.status != netcron_common::domain::RunStatus::Succeeded {
        return None;
    }
    outcome.payload.as_ref()?.get("config")?.as_str()
}

use netcron_store::db::stmt;

fn rand_suffix() -> u32 {
    Uuid::new_v4().as_u128() as u32
}

/// The size of an entry's fields.
fn entry_bytes(entry: &StreamId) -> usize {
    entry
        .map
        .iter()
        .map(|(k, v)| {
            k.len()
                + match v {
                    redis::Value::BulkString(b) => b.len(),
                    _ => 0,
                }
        })
        .sum()
}

/// Runs result ingest alone (`netcron ingest`). Postgres and Redis being unreachable are
/// waited out.
///
/// # Errors
/// When `REDIS_URL` is malformed.
pub async fn run(
    settings: Settings,
    telemetry: Telemetry,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Postgres being down at start is waited out with backoff, like any later outage.
    let url = settings.database.url.as_str();
    let Some(db) = wait_for(
        Waiting {
            what: "ingest cannot reach Postgres",
            dependency: "postgres",
            telemetry: Some(&telemetry),
        },
        &shutdown,
        |_| true,
        || netcron_store::db::connect(url),
    )
    .await?
    else {
        return Ok(());
    };
    netcron_store::db::add_readiness_check(&telemetry, &db);
    let ingest = Ingest::new(
        db,
        &settings.redis,
        settings.secret_key,
        settings.ingest,
        &telemetry,
    )?;
    netcron_protocol::gauges::add_readiness_check(&telemetry, &ingest.client);
    ingest.run(shutdown).await;
    Ok(())
}
