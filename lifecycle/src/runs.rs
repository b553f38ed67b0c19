//! Every transition of a `runs` row. Each function is one statement, or one transaction, whose
//! `WHERE` clause is the transition's guard: applying it twice, late, or racing another role
//! changes nothing it should not.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use netcron_common::domain::RunStatus;
use netcron_protocol::RunResult;
use netcron_protocol::lease::Leases;
use netcron_store::db::RUN_QUEUED_CHANNEL;
use netcron_store::entity::run;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, QuerySelect as _,
    TransactionTrait, Value,
};
use serde_json::json;
use uuid::Uuid;

use crate::{Error, Result, stmt};

/// Fire times of scheduled runs, column by column, for one insert.
#[derive(Default)]
pub struct Fires {
    ids: Vec<Uuid>,
    schedule_ids: Vec<Uuid>,
    command_ids: Vec<Uuid>,
    device_ids: Vec<Uuid>,
    times: Vec<DateTime<Utc>>,
    statuses: Vec<String>,
    reasons: Vec<String>,
    publish: Vec<Uuid>,
}

impl Fires {
    /// Adds a fire time as a run: `queued` (entering the outbox when `publish`), or already
    /// ended as `missed`/`skipped` with its reason. Answers the new run's id.
    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        schedule_id: Uuid,
        command_id: Uuid,
        device_id: Uuid,
        scheduled_for: DateTime<Utc>,
        status: RunStatus,
        reason: Option<String>,
        publish: bool,
    ) -> Uuid {
        let id = Uuid::now_v7();
        if publish {
            self.publish.push(id);
        }
        self.ids.push(id);
        self.schedule_ids.push(schedule_id);
        self.command_ids.push(command_id);
        self.device_ids.push(device_id);
        self.times.push(scheduled_for);
        self.statuses.push(status.as_str().to_owned());
        self.reasons.push(reason.unwrap_or_default());
        id
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Inserts the fire times as runs and, for those to publish, their outbox rows, in one
/// statement. `UNIQUE (schedule_id, scheduled_for)` makes a fire time written twice one run.
const CREATE_SCHEDULED: &str = r"
WITH inserted AS (
    INSERT INTO runs (id, schedule_id, command_id, device_id, trigger, scheduled_for, queued_at,
                      status, finished_at, error_message)
    SELECT id, schedule_id, command_id, device_id, 'scheduled', scheduled_for, $8,
           status, CASE WHEN status = 'queued' THEN NULL ELSE $8 END, NULLIF(reason, '')
    FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::timestamptz[], $6::text[],
                $7::text[])
         AS t(id, schedule_id, command_id, device_id, scheduled_for, status, reason)
    ON CONFLICT (schedule_id, scheduled_for) DO NOTHING
    RETURNING id)
INSERT INTO task_outbox (run_id)
SELECT id FROM inserted WHERE id = ANY($9::uuid[])";

/// *created* (scheduled): writes `fires` inside the caller's transaction, which holds the
/// schedule rows locked. `now` stamps `queued_at` (and `finished_at` of missed/skipped runs).
///
/// # Errors
/// When the database fails.
pub async fn create_scheduled(
    txn: &DatabaseTransaction,
    fires: Fires,
    now: DateTime<Utc>,
) -> Result<()> {
    if fires.is_empty() {
        return Ok(());
    }
    let values: Vec<Value> = vec![
        fires.ids.into(),
        fires.schedule_ids.into(),
        fires.command_ids.into(),
        fires.device_ids.into(),
        fires.times.into(),
        fires.statuses.into(),
        fires.reasons.into(),
        now.into(),
        fires.publish.into(),
    ];
    txn.execute_raw(stmt(CREATE_SCHEDULED, values)).await?;
    Ok(())
}

/// The device row first, then the command (always in this order, as deletes take them), so
/// a delete and a manual run never wait on each other in a circle.
const LOCK_DEVICE: &str = "SELECT id FROM devices WHERE id = $1 FOR KEY SHARE";

const CREATE_MANUAL: &str = r"
WITH cmd AS (
    SELECT c.id, c.device_id FROM commands c
    WHERE c.id = $2 AND c.device_id = $3
    FOR KEY SHARE),
inserted AS (
    INSERT INTO runs (id, command_id, device_id, trigger, scheduled_for, queued_at, status,
                      triggered_by)
    SELECT $1, cmd.id, cmd.device_id, 'manual', now(), now(), 'queued', $4 FROM cmd
    RETURNING id),
outbox AS (INSERT INTO task_outbox (run_id) SELECT id FROM inserted)
SELECT count(*) AS n FROM inserted";

/// *created* (manual): a run of `command_id` on `device_id` now, entering the outbox in the
/// same transaction, with a notification that wakes the publisher at commit. The command and
/// device rows are key-share locked by the insert itself, so neither can be deleted under the
/// new run (`runs` has no foreign keys).
///
/// # Errors
/// [`Error::NotFound`] when the command does not exist on that device.
pub async fn create_manual(
    db: &DatabaseConnection,
    device_id: Uuid,
    command_id: Uuid,
    triggered_by: &str,
) -> Result<run::Model> {
    let id = Uuid::now_v7();
    let txn = db.begin().await?;
    txn.execute_raw(stmt(LOCK_DEVICE, vec![device_id.into()]))
        .await?;
    let row = txn
        .query_one_raw(stmt(
            CREATE_MANUAL,
            vec![
                id.into(),
                command_id.into(),
                device_id.into(),
                triggered_by.into(),
            ],
        ))
        .await?;
    let n: i64 = row.map(|r| r.try_get("", "n")).transpose()?.unwrap_or(0);
    if n == 0 {
        return Err(Error::NotFound {
            what: "command",
            id: command_id,
        });
    }
    txn.execute_raw(stmt(
        "SELECT pg_notify($1, $2)",
        vec![RUN_QUEUED_CHANNEL.into(), id.to_string().into()],
    ))
    .await?;
    let model = run::Entity::find_by_id(id)
        .one(&txn)
        .await?
        .ok_or(Error::NotFound { what: "run", id })?;
    txn.commit().await?;
    Ok(model)
}

/// Under the `queue` overlap policy a schedule's waiting runs enter the outbox one at a time:
/// the oldest unfinished run of each such schedule, once it is the only one ahead.
const RELEASE_WAITING: &str = r"
INSERT INTO task_outbox (run_id)
SELECT w.id
FROM schedules s
CROSS JOIN LATERAL (
    SELECT r.id, r.status FROM runs r
    WHERE r.schedule_id = s.id AND r.status IN ('queued', 'running')
    ORDER BY r.id LIMIT 1) w
WHERE s.overlap_policy = 'queue' AND w.status = 'queued'
ON CONFLICT (run_id) DO NOTHING";

/// *queued → outbox* for `queue` schedules whose previous run ended.
///
/// # Errors
/// When the database fails.
pub async fn release_waiting(db: &impl ConnectionTrait) -> Result<()> {
    db.execute_unprepared(RELEASE_WAITING).await?;
    Ok(())
}

/// An executor's report that it began a run's command.
pub struct Started<'a> {
    pub run_id: Uuid,
    pub attempt: i32,
    pub executor_id: &'a str,
    pub started_at: DateTime<Utc>,
}

/// Fenced: only the run's current attempt, only from `queued`.
const STARTED: &str = r"
UPDATE runs r
SET status = 'running', started_at = u.started_at, executor_id = u.executor_id
FROM jsonb_to_recordset($1::jsonb)
     AS u(run_id uuid, attempt int, executor_id text, started_at timestamptz)
WHERE r.id = u.run_id AND r.status = 'queued' AND r.attempt = u.attempt";

/// *started*: `queued → running` for each report of the run's current attempt. Answers how
/// many runs moved.
///
/// # Errors
/// When the database fails.
pub async fn started(txn: &DatabaseTransaction, reports: &[Started<'_>]) -> Result<u64> {
    if reports.is_empty() {
        return Ok(0);
    }
    let rows: Vec<serde_json::Value> = reports
        .iter()
        .map(|r| {
            json!({"run_id": r.run_id, "attempt": r.attempt, "executor_id": r.executor_id,
                   "started_at": r.started_at})
        })
        .collect();
    Ok(txn
        .execute_raw(stmt(STARTED, vec![serde_json::Value::Array(rows).into()]))
        .await?
        .rows_affected())
}

/// Applies outcomes of the runs' current attempts (first outcome wins), appends each
/// connection attempt tagged with its run attempt and executor to `attempts` (earlier
/// attempts' records stay), and pins first-seen host keys.
const FINISHED: &str = r"
WITH u AS (
    SELECT * FROM jsonb_to_recordset($1::jsonb) AS u(
        run_id uuid, attempt int, executor_id text, started_at timestamptz, status text,
        finished_at timestamptz, duration_ms bigint, exit_code int, exit_signal text,
        stdout text, stderr text, truncated boolean, error_kind text, error_message text,
        attempts jsonb, host_key_fingerprint text, payload jsonb,
        jump_host_key_fingerprint text)),
done AS (
    UPDATE runs r
    SET status = u.status, started_at = u.started_at, finished_at = u.finished_at,
        duration_ms = u.duration_ms, exit_code = u.exit_code, exit_signal = u.exit_signal,
        stdout = convert_to(u.stdout, 'UTF8'), stderr = convert_to(u.stderr, 'UTF8'),
        truncated = u.truncated,
        error_kind = u.error_kind, error_message = u.error_message,
        attempts = coalesce(r.attempts, '[]'::jsonb) || coalesce(
            (SELECT jsonb_agg(e || jsonb_build_object('attempt', u.attempt,
                                                      'executor_id', u.executor_id))
             FROM jsonb_array_elements(coalesce(u.attempts, '[]'::jsonb)) e), '[]'::jsonb),
        payload = u.payload, executor_id = u.executor_id
    FROM u
    WHERE r.id = u.run_id AND r.status IN ('queued', 'running') AND r.attempt = u.attempt
    RETURNING r.id, r.device_id, r.schedule_id, u.attempt,
              -- A refused key is never pinned: with no pin in Postgres yet, a run can still be
              -- refused because another run pinned a different key on first contact.
              CASE WHEN u.error_kind = 'host_key_mismatch' THEN NULL
                   ELSE u.host_key_fingerprint END AS host_key_fingerprint,
              CASE WHEN u.error_kind = 'host_key_mismatch' THEN NULL
                   ELSE u.jump_host_key_fingerprint END AS jump_fingerprint),
pinned AS (
    UPDATE devices d SET host_key_fingerprint = p.fingerprint, updated_at = now()
    FROM (SELECT DISTINCT ON (device_id) device_id, host_key_fingerprint AS fingerprint
          FROM done WHERE host_key_fingerprint IS NOT NULL ORDER BY device_id, id) p
    WHERE d.id = p.device_id AND d.host_key_fingerprint IS NULL
    RETURNING d.id),
jump_pinned AS (
    UPDATE devices j SET host_key_fingerprint = p.fingerprint, updated_at = now()
    FROM (SELECT DISTINCT ON (d.jump_host_id) d.jump_host_id AS id, done.jump_fingerprint AS fingerprint
          FROM done JOIN devices d ON d.id = done.device_id
          WHERE done.jump_fingerprint IS NOT NULL AND d.jump_host_id IS NOT NULL
          ORDER BY d.jump_host_id, done.id) p
    WHERE j.id = p.id AND j.host_key_fingerprint IS NULL
    RETURNING j.id)
SELECT (SELECT count(*) FROM pinned) + (SELECT count(*) FROM jump_pinned) AS pinned,
       (SELECT coalesce(array_agg(done.id ORDER BY done.id), '{}') FROM done) AS done_ids,
       (SELECT coalesce(array_agg(done.attempt ORDER BY done.id), '{}') FROM done) AS done_attempts,
       EXISTS (SELECT 1 FROM done JOIN schedules s ON s.id = done.schedule_id
               WHERE s.overlap_policy = 'queue') AS release";

/// Records the outcomes that were not applied: of attempts that are not their run's current
/// one (the run was re-queued after their lease expired: `superseded`), and further executions
/// of the run's current attempt after its outcome was applied (`repeat`: Redis lost the lease
/// of a started attempt, as an asynchronous fail-over can, and a second executor started it
/// again). Each goes on the run's `attempts` once, with its executor and a summary of what it
/// printed; a replay of the applied outcome itself (same executor, same start) adds nothing.
/// Answers the runs concerned and how many repeats each got.
const OTHER_OUTCOMES: &str = r"
WITH u AS (
    SELECT * FROM jsonb_to_recordset($1::jsonb) AS u(
        run_id uuid, attempt int, executor_id text, started_at timestamptz, status text,
        finished_at timestamptz, duration_ms bigint, exit_code int, stdout text, stderr text,
        truncated boolean, error_kind text, error_message text)),
n AS (
    SELECT r.id,
           jsonb_agg(jsonb_build_object(
               'attempt', u.attempt, 'executor_id', u.executor_id,
               CASE WHEN r.attempt = u.attempt THEN 'repeat' ELSE 'superseded' END, true,
               'status', u.status, 'started_at', u.started_at, 'finished_at', u.finished_at,
               'duration_ms', u.duration_ms, 'exit_code', u.exit_code,
               'error_kind', u.error_kind, 'error_message', u.error_message,
               'truncated', u.truncated, 'stdout_bytes', octet_length(u.stdout),
               'stderr_bytes', octet_length(u.stderr), 'output', left(u.stdout, 512))
               ORDER BY u.started_at) AS items,
           count(*) FILTER (WHERE r.attempt = u.attempt) AS repeats
    FROM u JOIN runs r ON r.id = u.run_id
    WHERE (r.attempt <> u.attempt
           AND NOT EXISTS (
               SELECT 1 FROM jsonb_array_elements(coalesce(r.attempts, '[]'::jsonb)) e
               WHERE e->>'superseded' = 'true' AND (e->>'attempt')::int = u.attempt))
       OR (r.attempt = u.attempt AND r.status NOT IN ('queued', 'running')
           AND (r.executor_id IS DISTINCT FROM u.executor_id
                OR r.started_at IS DISTINCT FROM u.started_at)
           AND NOT EXISTS (
               SELECT 1 FROM jsonb_array_elements(coalesce(r.attempts, '[]'::jsonb)) e
               WHERE e->>'repeat' = 'true' AND (e->>'attempt')::int = u.attempt
                 AND e->>'executor_id' = u.executor_id
                 AND (e->>'started_at')::timestamptz = u.started_at))
    GROUP BY r.id)
UPDATE runs r SET attempts = coalesce(r.attempts, '[]'::jsonb) || n.items
FROM n WHERE r.id = n.id
RETURNING r.id, n.repeats";

/// What [`finish`] did.
#[derive(Debug, Default)]
pub struct Finished {
    /// Runs this call moved to their final status (replays and late duplicates are not).
    pub done: Vec<Uuid>,
    /// Runs that got an outcome recorded as a superseded attempt or a repeat.
    pub superseded: u64,
    /// Runs whose current attempt executed again after its outcome was applied, with how
    /// many further executions this call recorded.
    pub repeated: Vec<(Uuid, i64)>,
    /// Host keys pinned on first sight (devices and jump hosts).
    pub pinned: u64,
    /// Whether a run of a `queue` schedule ended, so its next run may be released.
    pub release: bool,
}

/// *finished*, *superseded* and *repeat*: applies each outcome to its run if it is the run's
/// current attempt and the run has not ended; records it as superseded if it is another
/// attempt's, and as a repeat if the attempt's outcome was applied already by another
/// execution (see [`OTHER_OUTCOMES`]). `results` holds at most one outcome per `(run,
/// attempt)`; `repeats` the further executions of such an attempt in the same batch.
///
/// # Errors
/// When the database fails.
pub async fn finish(
    txn: &DatabaseTransaction,
    results: &[&RunResult],
    repeats: &[&RunResult],
) -> Result<Finished> {
    let mut report = Finished::default();
    let rows: Vec<serde_json::Value> = results.iter().filter_map(|r| outcome_row(r)).collect();
    if rows.is_empty() {
        return Ok(report);
    }
    let mut applied = std::collections::HashSet::new();
    if let Some(row) = txn
        .query_one_raw(stmt(
            FINISHED,
            vec![serde_json::Value::Array(rows.clone()).into()],
        ))
        .await?
    {
        report.pinned = u64::try_from(row.try_get::<i64>("", "pinned")?).unwrap_or(0);
        report.release = row.try_get("", "release")?;
        report.done = row.try_get("", "done_ids")?;
        let attempts: Vec<i32> = row.try_get("", "done_attempts")?;
        applied.extend(report.done.iter().copied().zip(attempts));
    }
    // Only outcomes that were not applied can be another attempt's; usually there are none,
    // and the batch's JSON is not parsed a second time. A run finished just now by one outcome
    // cannot take another of its attempts in the same statement, hence a second statement.
    let mut others: Vec<serde_json::Value> = rows
        .into_iter()
        .zip(results.iter().filter(|r| r.outcome.is_some()))
        .filter(|(_, r)| !applied.contains(&(r.run_id, r.attempt)))
        .map(|(row, _)| row)
        .collect();
    others.extend(repeats.iter().filter_map(|r| outcome_row(r)));
    if !others.is_empty() {
        let recorded = txn
            .query_all_raw(stmt(
                OTHER_OUTCOMES,
                vec![serde_json::Value::Array(others).into()],
            ))
            .await?;
        report.superseded = recorded.len() as u64;
        for row in recorded {
            let repeats: i64 = row.try_get("", "repeats")?;
            if repeats > 0 {
                report.repeated.push((row.try_get("", "id")?, repeats));
            }
        }
    }
    Ok(report)
}

/// The columns of an outcome as [`FINISHED`] and [`OTHER_OUTCOMES`] read them.
fn outcome_row(r: &RunResult) -> Option<serde_json::Value> {
    let o = r.outcome.as_ref()?;
    Some(json!({
        "run_id": r.run_id, "attempt": r.attempt, "executor_id": r.executor_id,
        "started_at": r.started_at, "status": o.status, "finished_at": o.finished_at,
        "duration_ms": o.duration_ms, "exit_code": o.exit_code,
        "exit_signal": o.exit_signal, "stdout": o.stdout, "stderr": o.stderr,
        "truncated": o.truncated, "error_kind": o.error_kind,
        "error_message": o.error_message, "attempts": o.attempts,
        "host_key_fingerprint": o.host_key_fingerprint, "payload": o.payload,
        "jump_host_key_fingerprint": o.jump_host_key_fingerprint,
    }))
}

/// Ends queued runs that cannot be published, with the reason.
const FAIL_UNPUBLISHABLE: &str = r"
UPDATE runs r
SET status = 'error', error_kind = 'internal', error_message = t.reason, finished_at = now()
FROM unnest($1::uuid[], $2::text[]) AS t(id, reason)
WHERE r.id = t.id AND r.status = 'queued'";

/// *queued → error*: runs whose row cannot become a task (a value this build does not know, a
/// command deleted under it). Answers how many ended.
///
/// # Errors
/// When the database fails.
pub async fn fail_unpublishable(
    txn: &DatabaseTransaction,
    failed: &[(Uuid, String)],
) -> Result<u64> {
    if failed.is_empty() {
        return Ok(0);
    }
    for (run_id, reason) in failed {
        tracing::error!(%run_id, %reason, "a queued run cannot be published; it ends in error");
    }
    let ids: Vec<Uuid> = failed.iter().map(|f| f.0).collect();
    let reasons: Vec<String> = failed.iter().map(|f| f.1.clone()).collect();
    Ok(txn
        .execute_raw(stmt(FAIL_UNPUBLISHABLE, vec![ids.into(), reasons.into()]))
        .await?
        .rows_affected())
}

/// Puts back in the queue, as their next attempt, the runs whose attempt was lost (lease
/// expired, or task and lease lost with Redis' data): only while the run is still `queued` or
/// `running` at exactly that attempt. The lost attempt is noted on `attempts`.
const REQUEUE: &str = r"
WITH t AS (SELECT * FROM unnest($1::uuid[], $2::int[], $3::text[]) AS t(id, attempt, reason)),
requeued AS (
    UPDATE runs r
    SET status = 'queued', started_at = NULL, executor_id = NULL, attempt = r.attempt + 1,
        attempts = coalesce(r.attempts, '[]'::jsonb) || jsonb_build_array(jsonb_build_object(
            'attempt', r.attempt, 'executor_id', r.executor_id, 'requeued_at', now(),
            'reason', t.reason))
    FROM t
    WHERE r.id = t.id AND r.attempt = t.attempt AND r.status IN ('queued', 'running')
      -- A cancel being made is finished by its own steps, never overtaken by a new attempt.
      AND NOT EXISTS (SELECT 1 FROM cancel_requests c WHERE c.run_id = r.id)
    RETURNING r.id)
INSERT INTO task_outbox (run_id) SELECT id FROM requeued
ON CONFLICT (run_id) DO UPDATE SET published_at = NULL, stream_id = NULL
RETURNING run_id";

/// *re-queued*: each `(run, attempt, reason)` becomes attempt + 1 and enters the outbox.
/// Answers the runs that moved.
///
/// # Errors
/// When the database fails.
pub async fn requeue(db: &impl ConnectionTrait, lost: &[(Uuid, i32, String)]) -> Result<Vec<Uuid>> {
    if lost.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = lost.iter().map(|l| l.0).collect();
    let attempts: Vec<i32> = lost.iter().map(|l| l.1).collect();
    let reasons: Vec<String> = lost.iter().map(|l| l.2.clone()).collect();
    let rows = db
        .query_all_raw(stmt(
            REQUEUE,
            vec![ids.into(), attempts.into(), reasons.into()],
        ))
        .await?;
    let mut moved = Vec::with_capacity(rows.len());
    for row in rows {
        moved.push(row.try_get("", "run_id")?);
    }
    if !moved.is_empty() {
        // Wakes every scheduler's publisher: the new attempts leave at once.
        db.execute_raw(stmt(
            "SELECT pg_notify($1, '')",
            vec![RUN_QUEUED_CHANNEL.into()],
        ))
        .await?;
    }
    Ok(moved)
}

/// *cancelled*: a `queued` run that no executor has begun ends `cancelled`, in three steps
/// so that a request cut off between the two stores never strands the run:
///
/// 1. the request is recorded in Postgres (`cancel_requests`, with the attempt), the run row
///    locked while it is, and committed — the run stays `queued`;
/// 2. the attempt is fenced in Redis ([`Leases::cancel`]), so no executor can start it; if one
///    began it first, the request is dropped and the cancel refused ([`Error::Conflict`]);
/// 3. the run ends `cancelled` ([`complete_cancel`]).
///
/// Stopped after 1 or 2 (the client went away, Redis or Postgres failed), the re-queue pass
/// finishes the request ([`crate::requeue::Requeuer::pass`]): the run ends either cancelled or,
/// when its attempt began first, runs — it is never left queued behind a fence.
///
/// # Errors
/// [`Error::NotFound`], [`Error::Conflict`], or a database or Redis failure (after step 1 the
/// request stands and is finished by the re-queue pass).
pub async fn cancel(
    db: &DatabaseConnection,
    redis: &mut (impl redis::aio::ConnectionLike + Send),
    leases: &Leases,
    run_id: Uuid,
) -> Result<run::Model> {
    let txn = db.begin().await?;
    let run = run::Entity::find_by_id(run_id)
        .lock_exclusive()
        .one(&txn)
        .await?
        .ok_or(Error::NotFound {
            what: "run",
            id: run_id,
        })?;
    if run.status != RunStatus::Queued {
        return Err(Error::Conflict(format!(
            "run {run_id} is {}; only a queued run can be cancelled",
            run.status
        )));
    }
    txn.execute_raw(stmt(
        "INSERT INTO cancel_requests (run_id, attempt) VALUES ($1, $2)
         ON CONFLICT (run_id) DO UPDATE SET attempt = excluded.attempt",
        vec![run_id.into(), run.attempt.into()],
    ))
    .await?;
    txn.commit().await?;
    if !leases.cancel(redis, run_id, run.attempt).await? {
        drop_cancel_request(db, run_id, run.attempt).await?;
        return Err(Error::Conflict(format!(
            "run {run_id} has already started on an executor; it can no longer be cancelled"
        )));
    }
    if !complete_cancel(db, run_id, run.attempt).await? {
        return Err(Error::Conflict(format!(
            "run {run_id} changed while it was being cancelled"
        )));
    }
    run::Entity::find_by_id(run_id)
        .one(db)
        .await?
        .ok_or(Error::NotFound {
            what: "run",
            id: run_id,
        })
}

/// Step 3 of [`cancel`]: `(run, attempt)`, fenced in Redis, ends `cancelled` and its request
/// and outbox row go, in one transaction. Answers whether the run moved (false: it was not
/// `queued` at that attempt any more, and only the request went).
///
/// # Errors
/// When the database fails.
pub async fn complete_cancel(db: &DatabaseConnection, run_id: Uuid, attempt: i32) -> Result<bool> {
    let txn = db.begin().await?;
    let moved = txn
        .execute_raw(stmt(
            "UPDATE runs SET status = 'cancelled', finished_at = now(),
                    error_message = 'cancelled before it started'
             WHERE id = $1 AND status = 'queued' AND attempt = $2",
            vec![run_id.into(), attempt.into()],
        ))
        .await?
        .rows_affected();
    txn.execute_raw(stmt(
        "DELETE FROM cancel_requests WHERE run_id = $1",
        vec![run_id.into()],
    ))
    .await?;
    if moved > 0 {
        txn.execute_raw(stmt(
            "DELETE FROM task_outbox WHERE run_id = $1",
            vec![run_id.into()],
        ))
        .await?;
        // A job's device run: its job run may have nothing left to wait for.
        crate::settle::settle_for_runs(&txn, &[run_id], chrono::Utc::now()).await?;
    }
    txn.commit().await?;
    Ok(moved > 0)
}

/// Drops the cancel request of `(run, attempt)`: its attempt began before the fence.
///
/// # Errors
/// When the database fails.
pub async fn drop_cancel_request(
    db: &impl ConnectionTrait,
    run_id: Uuid,
    attempt: i32,
) -> Result<()> {
    db.execute_raw(stmt(
        "DELETE FROM cancel_requests WHERE run_id = $1 AND attempt = $2",
        vec![run_id.into(), attempt.into()],
    ))
    .await?;
    Ok(())
}

/// What [`withdraw_ahead`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Withdrawn {
    /// Postgres' `now()` for the transaction: runs for fire times after it were withdrawn.
    pub as_of: DateTime<Utc>,
    /// Runs withdrawn: deleted, their tasks fenced so that no copy ever starts.
    pub runs: u64,
    /// The latest fire time of a run that could not be withdrawn because an executor had
    /// already begun it (its clock ahead of ours); the schedule's next fire time must come
    /// after it.
    pub kept_until: Option<DateTime<Utc>>,
    /// The earliest fire time withdrawn.
    pub first: Option<DateTime<Utc>>,
}

/// Runs of a schedule materialised for fire times after the transaction's `now()` (Postgres'
/// clock, which the scheduler follows too), with that `now()`.
const AHEAD: &str = r"
SELECT r.id, r.attempt, r.scheduled_for
FROM runs r
WHERE r.schedule_id = $1 AND r.status = 'queued' AND r.trigger = 'scheduled'
  AND r.scheduled_for > now()
ORDER BY r.scheduled_for
FOR UPDATE";

/// *withdrawn*: the runs of `schedule_id` materialised ahead of their fire time (after
/// Postgres' `now()`) leave, inside the caller's transaction, which must hold the schedule row locked (`FOR
/// UPDATE`: the scheduler skips a locked schedule, so nothing is materialised meanwhile).
///
/// A run still in the outbox is deleted with its outbox row, and the publisher, which takes
/// outbox rows with `SKIP LOCKED` and publishes only queued runs, never sees it. A run already
/// on the tasks stream is first fenced in Redis ([`Leases::cancel`], as a cancel does), so no
/// executor can start it; one an executor began meanwhile is kept and reported. Withdrawn runs
/// are deleted rather than marked: a fire time that was never reached did not happen, and the
/// schedule may want the same fire time again after an edit (`UNIQUE (schedule_id,
/// scheduled_for)`).
///
/// # Errors
/// When the database fails, or Redis does while published runs need fencing: then nothing is
/// withdrawn (the caller's transaction rolls back) and the caller must refuse the change.
pub async fn withdraw_ahead(
    txn: &DatabaseTransaction,
    redis: &mut (impl redis::aio::ConnectionLike + Send),
    leases: &Leases,
    schedule_id: Uuid,
) -> Result<Withdrawn> {
    let as_of: DateTime<Utc> = txn
        .query_one_raw(stmt("SELECT now() AS now", vec![]))
        .await?
        .map(|r| r.try_get("", "now"))
        .transpose()?
        .unwrap_or_else(Utc::now);
    let rows = txn
        .query_all_raw(stmt(AHEAD, vec![schedule_id.into()]))
        .await?;
    let mut gone: Vec<Uuid> = Vec::with_capacity(rows.len());
    let mut report = Withdrawn {
        as_of,
        runs: 0,
        kept_until: None,
        first: None,
    };
    let mut ahead = Vec::with_capacity(rows.len());
    for row in rows {
        let id: Uuid = row.try_get("", "id")?;
        let attempt: i32 = row.try_get("", "attempt")?;
        let scheduled_for: DateTime<Utc> = row.try_get("", "scheduled_for")?;
        ahead.push((id, attempt, scheduled_for));
    }
    // The outbox rows are locked before they are deleted; one the publisher holds now is
    // waited for, and then counts as published. A run without one (released later under the
    // `queue` policy, or tidied after publishing) is fenced like a published one.
    let ids: Vec<Uuid> = ahead.iter().map(|(id, ..)| *id).collect();
    let mut unpublished = std::collections::HashSet::new();
    for row in txn
        .query_all_raw(stmt(
            "SELECT run_id FROM task_outbox
             WHERE run_id = ANY($1) AND published_at IS NULL FOR UPDATE",
            vec![ids.into()],
        ))
        .await?
    {
        unpublished.insert(row.try_get::<Uuid>("", "run_id")?);
    }
    for (id, attempt, scheduled_for) in ahead {
        if unpublished.contains(&id) || leases.cancel(redis, id, attempt).await? {
            gone.push(id);
            report.first = report.first.or(Some(scheduled_for));
        } else {
            report.kept_until = Some(scheduled_for);
        }
    }
    if !gone.is_empty() {
        txn.execute_raw(stmt(
            "DELETE FROM task_outbox WHERE run_id = ANY($1)",
            vec![gone.clone().into()],
        ))
        .await?;
        report.runs = txn
            .execute_raw(stmt(
                "DELETE FROM runs WHERE id = ANY($1) AND status = 'queued'",
                vec![gone.into()],
            ))
            .await?
            .rows_affected();
    }
    Ok(report)
}

/// Deletes the runs (and their outbox rows) whose `column` (`device_id` or `command_id`) is
/// `id`, inside the transaction that deletes that device or command.
///
/// # Errors
/// When the database fails.
pub async fn delete_where(txn: &DatabaseTransaction, column: RunOwner, id: Uuid) -> Result<()> {
    let (column, parent) = match column {
        RunOwner::Device => ("device_id", "devices"),
        RunOwner::Command => ("command_id", "commands"),
    };
    // The parent row first: a manual run being created holds it `FOR KEY SHARE` until its
    // insert commits, so this waits for that run and then deletes it too — or, locking first,
    // makes the new run find no command. Either way no run outlives its device or command.
    txn.execute_raw(stmt(
        &format!("SELECT id FROM {parent} WHERE id = $1 FOR UPDATE"),
        vec![id.into()],
    ))
    .await?;
    // The job runs a deleted device's runs belonged to may have nothing left to wait for.
    let job_runs = txn
        .query_all_raw(stmt(
            &format!(
                "SELECT DISTINCT job_run_id FROM runs WHERE {column} = $1 AND job_run_id IS NOT NULL"
            ),
            vec![id.into()],
        ))
        .await?
        .iter()
        .map(|r| r.try_get::<Uuid>("", "job_run_id"))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    for sql in [
        format!(
            "DELETE FROM task_outbox WHERE run_id IN (SELECT id FROM runs WHERE {column} = $1)"
        ),
        format!("DELETE FROM runs WHERE {column} = $1"),
    ] {
        txn.execute_raw(stmt(&sql, vec![id.into()])).await?;
    }
    crate::settle::settle(txn, &job_runs, chrono::Utc::now()).await?;
    Ok(())
}

/// Whose runs [`delete_where`] deletes.
#[derive(Debug, Clone, Copy)]
pub enum RunOwner {
    Device,
    Command,
}

/// Keeps a deleted schedule's runs in the history, with no schedule.
///
/// # Errors
/// When the database fails.
pub async fn detach_schedule(txn: &DatabaseTransaction, schedule_id: Uuid) -> Result<()> {
    txn.execute_raw(stmt(
        "UPDATE runs SET schedule_id = NULL WHERE schedule_id = $1",
        vec![schedule_id.into()],
    ))
    .await?;
    Ok(())
}

/// Runs deleted per statement by [`apply_retention`], so that a day of runs at hundreds per
/// second is deleted in short transactions instead of one that holds millions of row locks.
const RETENTION_BATCH: i64 = 5_000;

/// One batch of ended runs older than `$1`, after id `$2` in id order (ids are UUIDv7, so the
/// walk goes from the oldest and never visits a deleted row again). Rows another replica is
/// deleting are skipped. Answers how many went and the last id.
const DELETE_OLD_RUNS: &str = r"
WITH doomed AS (
    SELECT id FROM runs
    WHERE id > $2 AND status NOT IN ('queued', 'running') AND scheduled_for < $1
    ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED),
gone AS (DELETE FROM runs r USING doomed WHERE r.id = doomed.id RETURNING r.id)
SELECT count(*) AS n, (SELECT id FROM gone ORDER BY id DESC LIMIT 1) AS last FROM gone";

/// Deletes ended runs older than `max_age` (in batches of [`RETENTION_BATCH`]), and beyond the
/// newest `keep_per_schedule` of each schedule. Queued and running runs are never deleted.
///
/// # Errors
/// When the database fails; what earlier batches deleted stays deleted.
pub async fn apply_retention(
    db: &DatabaseConnection,
    now: DateTime<Utc>,
    max_age: Duration,
    keep_per_schedule: u64,
) -> Result<u64> {
    let cutoff = now - max_age;
    let mut old = 0u64;
    let mut after = Uuid::nil();
    loop {
        let row = db
            .query_one_raw(stmt(
                DELETE_OLD_RUNS,
                vec![cutoff.into(), after.into(), RETENTION_BATCH.into()],
            ))
            .await?;
        let Some(row) = row else { break };
        let deleted: i64 = row.try_get("", "n")?;
        old += deleted.unsigned_abs();
        match row.try_get::<Option<Uuid>>("", "last")? {
            Some(last) if deleted >= RETENTION_BATCH => after = last,
            _ => break,
        }
    }
    let keep = i64::try_from(keep_per_schedule).unwrap_or(i64::MAX);
    let excess = db
        .execute_raw(stmt(
            r"DELETE FROM runs WHERE id IN (
                SELECT id FROM (
                  SELECT id, row_number() OVER (PARTITION BY schedule_id ORDER BY id DESC) AS n
                  FROM runs
                  WHERE schedule_id IS NOT NULL AND status NOT IN ('queued', 'running')
                ) ranked WHERE n > $1)",
            vec![keep.into()],
        ))
        .await?
        .rows_affected();
    Ok(old + excess)
}

/// Keeps at most one outcome per `(run, attempt)` of `results` (the first), and the newest
/// `started` report per run: what one ingest batch applies.
pub fn first_outcomes<'a>(results: impl IntoIterator<Item = &'a RunResult>) -> Batch<'a> {
    let mut batch = Batch::default();
    for r in results {
        if r.outcome.is_some() {
            match batch.finished.entry((r.run_id, r.attempt)) {
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(r);
                }
                // Another execution of the same attempt (not a replay of the same one) is
                // recorded as a repeat, never dropped.
                std::collections::hash_map::Entry::Occupied(e) => {
                    let first = *e.get();
                    if execution(first) != execution(r)
                        && !batch.repeats.iter().any(|p| execution(p) == execution(r))
                    {
                        batch.repeats.push(r);
                    }
                }
            }
        } else {
            let e = batch.started.entry(r.run_id).or_insert(r);
            if r.attempt > e.attempt {
                *e = r;
            }
        }
    }
    // An attempt that also finished in this batch needs only its outcome written. Another
    // attempt's outcome (a late one of an attempt that was re-queued) does not make the start
    // of the current one redundant.
    batch
        .started
        .retain(|run_id, r| !batch.finished.contains_key(&(*run_id, r.attempt)));
    batch
}

/// What tells one execution of an attempt from another: a replay of the same outcome has the
/// same executor and start, a second execution has not.
fn execution(r: &RunResult) -> (Uuid, i32, &str, DateTime<Utc>) {
    (r.run_id, r.attempt, r.executor_id.as_str(), r.started_at)
}

/// The results of one ingest batch, de-duplicated by [`first_outcomes`].
#[derive(Default)]
pub struct Batch<'a> {
    pub started: HashMap<Uuid, &'a RunResult>,
    pub finished: HashMap<(Uuid, i32), &'a RunResult>,
    /// Further executions of an attempt that `finished` holds an outcome of.
    pub repeats: Vec<&'a RunResult>,
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;
    use netcron_protocol::{Outcome, RESULT_VERSION};

    use super::*;

    const RUN: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001);
    const OTHER_RUN: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0002);

    fn at(second: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 7, 6, 0, second)
            .single()
            .expect("a valid time")
    }

    /// A `started` report of `attempt` of `run` by `executor`, begun at second `start`.
    fn started(run: Uuid, attempt: i32, executor: &str, start: u32) -> RunResult {
        RunResult {
            v: RESULT_VERSION,
            run_id: run,
            attempt,
            executor_id: executor.to_owned(),
            started_at: at(start),
            outcome: None,
            kind: None,
        }
    }

    /// The outcome of that execution, printing `stdout`.
    fn finished(run: Uuid, attempt: i32, executor: &str, start: u32, stdout: &str) -> RunResult {
        RunResult {
            outcome: Some(Outcome {
                status: RunStatus::Succeeded,
                finished_at: at(start + 1),
                duration_ms: 1000,
                exit_code: Some(0),
                exit_signal: None,
                stdout: stdout.to_owned(),
                stderr: String::new(),
                truncated: false,
                error_kind: None,
                error_message: None,
                host_key_fingerprint: None,
                attempts: Vec::new(),
                payload: None,
                jump_host_key_fingerprint: None,
            }),
            ..started(run, attempt, executor, start)
        }
    }

    fn stdout_of(r: &RunResult) -> &str {
        r.outcome.as_ref().map_or("", |o| o.stdout.as_str())
    }

    #[test]
    fn the_first_outcome_of_an_attempt_is_the_one_applied() {
        let results = [
            finished(RUN, 1, "exec-a", 0, "first"),
            finished(RUN, 1, "exec-b", 5, "second"),
        ];
        let batch = first_outcomes(&results);
        assert_eq!(batch.finished.len(), 1);
        assert_eq!(stdout_of(batch.finished[&(RUN, 1)]), "first");
    }

    #[test]
    fn outcomes_of_different_attempts_or_runs_are_each_applied() {
        let results = [
            finished(RUN, 1, "exec-a", 0, "attempt 1"),
            finished(RUN, 2, "exec-b", 5, "attempt 2"),
            finished(OTHER_RUN, 1, "exec-a", 0, "other run"),
        ];
        let batch = first_outcomes(&results);
        assert_eq!(stdout_of(batch.finished[&(RUN, 1)]), "attempt 1");
        assert_eq!(stdout_of(batch.finished[&(RUN, 2)]), "attempt 2");
        assert_eq!(stdout_of(batch.finished[&(OTHER_RUN, 1)]), "other run");
        assert!(batch.repeats.is_empty());
    }

    #[test]
    fn an_identical_replay_of_an_outcome_is_not_a_repeat() {
        let outcome = finished(RUN, 1, "exec-a", 0, "once");
        let results = [outcome.clone(), outcome.clone(), outcome];
        let batch = first_outcomes(&results);
        assert_eq!(batch.finished.len(), 1);
        assert!(batch.repeats.is_empty());
    }

    #[test]
    fn a_second_execution_of_an_attempt_on_another_executor_is_a_repeat() {
        let results = [
            finished(RUN, 1, "exec-a", 0, "first"),
            finished(RUN, 1, "exec-b", 0, "again elsewhere"),
        ];
        let batch = first_outcomes(&results);
        assert_eq!(stdout_of(batch.finished[&(RUN, 1)]), "first");
        let repeats: Vec<&str> = batch.repeats.iter().map(|r| stdout_of(r)).collect();
        assert_eq!(repeats, ["again elsewhere"]);
    }

    #[test]
    fn a_second_execution_of_an_attempt_started_at_another_time_is_a_repeat() {
        let results = [
            finished(RUN, 1, "exec-a", 0, "first"),
            finished(RUN, 1, "exec-a", 9, "again later"),
        ];
        let batch = first_outcomes(&results);
        let repeats: Vec<&str> = batch.repeats.iter().map(|r| stdout_of(r)).collect();
        assert_eq!(repeats, ["again later"]);
    }

    #[test]
    fn a_repeat_replayed_is_recorded_once() {
        let results = [
            finished(RUN, 1, "exec-a", 0, "first"),
            finished(RUN, 1, "exec-b", 0, "repeat"),
            finished(RUN, 1, "exec-b", 0, "repeat"),
        ];
        let batch = first_outcomes(&results);
        assert_eq!(batch.repeats.len(), 1);
    }

    #[test]
    fn the_newest_started_report_of_a_run_is_kept_whatever_the_order() {
        let newest_last = [started(RUN, 1, "exec-a", 0), started(RUN, 2, "exec-b", 5)];
        let newest_first = [started(RUN, 2, "exec-b", 5), started(RUN, 1, "exec-a", 0)];
        for results in [&newest_last, &newest_first] {
            let batch = first_outcomes(results.iter());
            assert_eq!(batch.started.len(), 1);
            assert_eq!(batch.started[&RUN].attempt, 2);
            assert_eq!(batch.started[&RUN].executor_id, "exec-b");
        }
    }

    #[test]
    fn a_run_that_finished_in_the_same_batch_needs_no_started_report() {
        let results = [
            started(RUN, 1, "exec-a", 0),
            finished(RUN, 1, "exec-a", 0, "done"),
            started(OTHER_RUN, 1, "exec-a", 0),
        ];
        let batch = first_outcomes(&results);
        assert!(!batch.started.contains_key(&RUN));
        assert!(batch.finished.contains_key(&(RUN, 1)));
        // Another run's start in the same batch is still written.
        assert!(batch.started.contains_key(&OTHER_RUN));
    }

    #[test]
    fn a_late_outcome_of_an_earlier_attempt_does_not_drop_the_start_of_the_current_one() {
        let results = [
            finished(RUN, 1, "exec-a", 0, "late"),
            started(RUN, 2, "exec-b", 1),
        ];
        let batch = first_outcomes(&results);
        assert!(batch.finished.contains_key(&(RUN, 1)));
        assert_eq!(batch.started.get(&RUN).map(|r| r.attempt), Some(2));
    }
}
