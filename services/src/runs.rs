use chrono::{DateTime, Utc};
use netcron_common::domain::{RunStatus, RunTrigger};
use netcron_common::stored::Stored;
use netcron_protocol::lease::Leases;
use netcron_store::entity::run;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, FromQueryResult, QueryFilter,
    QuerySelect, Statement,
};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::paginate;
use crate::PageRequest;
use crate::error::{Error, Result};

#[derive(Default)]
pub struct RunFilter {
    pub device_id: Option<Uuid>,
    pub command_id: Option<Uuid>,
    pub schedule_id: Option<Uuid>,
    pub status: Option<RunStatus>,
    /// Runs scheduled at or after this instant.
    pub from: Option<DateTime<Utc>>,
    /// Runs scheduled before this instant.
    pub to: Option<DateTime<Utc>>,
}

/// A run without its output, payload or attempt history: what list endpoints answer, and the
/// first part of a whole run. In lists the sizes come from Postgres' `octet_length`, which
/// reads a stored value's header and not the value, so a page of runs with 100 MiB outputs
/// costs what a page of empty ones does.
#[derive(Debug, FromQueryResult, Serialize, ToSchema)]
#[schema(example = json!({
    "id": "01936b32-3e4f-7a51-9c6d-7e8f9a0b1c2d", "schedule_id": null,
    "command_id": "01936b30-1c2d-7e3f-9a4b-5c6d7e8f9a0b", "device_id": "01936b2f-0a1b-7c2d-8e3f-405162738495",
    "trigger": "manual", "status": "succeeded", "scheduled_for": "2026-11-22T10:00:00Z",
    "queued_at": "2026-11-22T10:00:00Z", "started_at": "2026-11-22T10:00:00.120Z",
    "finished_at": "2026-11-22T10:00:00.480Z", "exit_code": 0, "exit_signal": null,
    "stdout_bytes": 9, "stderr_bytes": 0, "truncated": false, "has_payload": false,
    "error_kind": null, "error_message": null, "duration_ms": 360, "attempt": 1,
    "executor_id": "executor-a1b2"
}))]
pub struct RunSummary {
    pub id: Uuid,
    pub schedule_id: Option<Uuid>,
    pub command_id: Uuid,
    pub device_id: Uuid,
    pub trigger: Stored<RunTrigger>,
    pub status: Stored<RunStatus>,
    /// The fire time this run belongs to (for manual runs, when it was requested).
    pub scheduled_for: DateTime<Utc>,
    pub queued_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub exit_code: Option<i32>,
    /// The signal that ended the command, if one did.
    pub exit_signal: Option<String>,
    /// Whether stdout or stderr was cut at the command's `max_output_bytes`.
    pub truncated: bool,
    /// For status `error`: `unreachable`, `connection_refused`, `handshake_failed`,
    /// `host_key_mismatch`, `auth_failed`, `timeout`, `invalid_output` or `internal`.
    pub error_kind: Option<String>,
    /// In lists, at most its first 1,024 characters; the run itself has all of it.
    pub error_message: Option<String>,
    pub duration_ms: Option<i64>,
    /// 1 for the first attempt; higher when the run was re-queued because its attempt was lost
    /// (its executor's lease expired, or Redis lost the task). Only the current attempt's
    /// outcome is the run's.
    pub attempt: i32,
    pub executor_id: Option<String>,
    /// Size of the stored stdout in bytes; null until the run has finished.
    pub stdout_bytes: Option<i64>,
    /// Size of the stored stderr in bytes; null until the run has finished.
    pub stderr_bytes: Option<i64>,
    /// Whether the run has a structured `payload` (see `GET /runs/{run_id}`).
    pub has_payload: bool,
    /// Who started it: an account (`alice`, or `alice (token ci)` for one of its tokens),
    /// `bootstrap` (a `NETCRON_API_TOKEN`), or `schedule`. Null for manual runs from before
    /// accounts existed.
    pub triggered_by: Option<String>,
}

impl From<&run::Model> for RunSummary {
    fn from(m: &run::Model) -> Self {
        let size = |bytes: &Option<Vec<u8>>| {
            bytes
                .as_ref()
                .map(|t| i64::try_from(t.len()).unwrap_or(i64::MAX))
        };
        Self {
            id: m.id,
            schedule_id: m.schedule_id,
            command_id: m.command_id,
            device_id: m.device_id,
            trigger: m.trigger.clone(),
            status: m.status.clone(),
            scheduled_for: m.scheduled_for,
            queued_at: m.queued_at,
            started_at: m.started_at,
            finished_at: m.finished_at,
            exit_code: m.exit_code,
            exit_signal: m.exit_signal.clone(),
            truncated: m.truncated,
            error_kind: m.error_kind.clone(),
            error_message: m.error_message.clone(),
            duration_ms: m.duration_ms,
            attempt: m.attempt,
            executor_id: m.executor_id.clone(),
            stdout_bytes: size(&m.stdout),
            stderr_bytes: size(&m.stderr),
            has_payload: m.payload.is_some(),
            triggered_by: m
                .triggered_by
                .clone()
                .or_else(|| (m.trigger == RunTrigger::Scheduled).then(|| "schedule".to_owned())),
        }
    }
}

/// Error messages are device text of bounded but unchecked length; a summary carries at most
/// this many characters of one (the run itself has all of it).
pub const SUMMARY_ERROR_CHARS: i32 = 1024;

/// Newest first, as summaries.
pub async fn list(
    db: &DatabaseConnection,
    filter: RunFilter,
    page: PageRequest,
) -> Result<Vec<RunSummary>> {
    let mut select = run::Entity::find();
    if let Some(v) = filter.device_id {
        select = select.filter(run::Column::DeviceId.eq(v));
    }
    if let Some(v) = filter.command_id {
        select = select.filter(run::Column::CommandId.eq(v));
    }
    if let Some(v) = filter.schedule_id {
        select = select.filter(run::Column::ScheduleId.eq(v));
    }
    if let Some(v) = filter.status {
        select = select.filter(run::Column::Status.eq(v));
    }
    if let Some(v) = filter.from {
        select = select.filter(run::Column::ScheduledFor.gte(v));
    }
    if let Some(v) = filter.to {
        select = select.filter(run::Column::ScheduledFor.lt(v));
    }
    use run::Column as C;
    Ok(paginate(select, C::Id, page, true)
        .select_only()
        .columns([
            C::Id,
            C::ScheduleId,
            C::CommandId,
            C::DeviceId,
            C::Trigger,
            C::Status,
            C::ScheduledFor,
            C::QueuedAt,
            C::StartedAt,
            C::FinishedAt,
            C::ExitCode,
            C::ExitSignal,
            C::Truncated,
            C::ErrorKind,
            C::DurationMs,
            C::Attempt,
            C::ExecutorId,
        ])
        .column_as(
            Expr::cust(format!("left(error_message, {SUMMARY_ERROR_CHARS})")),
            "error_message",
        )
        .column_as(Expr::cust("octet_length(stdout)::int8"), "stdout_bytes")
        .column_as(Expr::cust("octet_length(stderr)::int8"), "stderr_bytes")
        .column_as(Expr::cust("payload IS NOT NULL"), "has_payload")
        .into_model::<RunSummary>()
        .all(db)
        .await?)
}

/// Which of a run's two outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

impl OutputStream {
    fn column(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// A byte range of one of a run's outputs.
#[derive(Debug)]
pub struct OutputSlice {
    /// The output's length in bytes (0 while the run has none).
    pub total: u64,
    pub bytes: Vec<u8>,
    /// Whether the executor cut the run's output at its `max_output_bytes`.
    pub truncated: bool,
}

/// The largest slice one request answers; larger outputs are read in several requests.
pub const MAX_OUTPUT_SLICE: u64 = 8 * 1024 * 1024;

/// The size in bytes of a run's stdout or stderr (0 while it has none).
pub async fn output_size(db: &DatabaseConnection, id: Uuid, stream: OutputStream) -> Result<u64> {
    let sql = format!(
        "SELECT coalesce(octet_length({}), 0)::int8 AS total FROM runs WHERE id = $1",
        stream.column()
    );
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            db.get_database_backend(),
            sql,
            [id.into()],
        ))
        .await?
        .ok_or_else(|| Error::not_found("run", id))?;
    let total: i64 = row.try_get("", "total")?;
    Ok(total.unsigned_abs())
}

/// No value in Postgres is longer than 1 GiB, so an offset at or past this is past the end of
/// any output; clamping to it keeps every bound within `int4`.
const TEXT_MAX: u64 = 1 << 30;

/// The statement [`output`] reads a slice with: `$1` the run, `$2` the first byte (from 1),
/// `$3` how many. Public so that tests can ask Postgres what it reads.
pub fn output_slice_sql(stream: OutputStream) -> String {
    let column = stream.column();
    format!(
        "SELECT coalesce(octet_length({column}), 0)::int8 AS total, truncated, \
         coalesce(substring({column} FROM $2::int4 FOR $3::int4), ''::bytea) AS slice \
         FROM runs WHERE id = $1"
    )
}

/// Bytes `offset .. offset + limit` of a run's stdout or stderr (fewer at the end), cut by
/// Postgres so that only the slice travels. Offsets are in bytes of the UTF-8 text, as HTTP
/// ranges are; a slice may therefore begin or end inside a character.
///
/// Outputs are stored as bytes, uncompressed and out of line (`STORAGE EXTERNAL`), so
/// Postgres fetches only the TOAST chunks (about 2 kB each) that hold the slice, wherever it
/// lies in the output.
pub async fn output(
    db: &DatabaseConnection,
    id: Uuid,
    stream: OutputStream,
    offset: u64,
    limit: u64,
) -> Result<OutputSlice> {
    // Three bytes over the cap: JSON slices read past their end to finish a character.
    let limit = limit.min(MAX_OUTPUT_SLICE + 3);
    let offset = offset.min(TEXT_MAX);
    // Both fit in int4: offset is at most 1 GiB and limit 8 MiB + 3.
    let (start, limit) = (offset as i64 + 1, limit as i64);
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            db.get_database_backend(),
            output_slice_sql(stream),
            [id.into(), start.into(), limit.into()],
        ))
        .await?
        .ok_or_else(|| Error::not_found("run", id))?;
    let total: i64 = row.try_get("", "total")?;
    Ok(OutputSlice {
        total: total.unsigned_abs(),
        bytes: row.try_get("", "slice")?,
        truncated: row.try_get("", "truncated")?,
    })
}

pub async fn get(db: &DatabaseConnection, id: Uuid) -> Result<run::Model> {
    run::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| Error::not_found("run", id))
}

/// Queues a manual run of the command now. The scheduler's outbox publishes it to the tasks
/// stream, the same path scheduled runs take.
pub async fn create_manual(
    db: &DatabaseConnection,
    device_id: Uuid,
    command_id: Uuid,
    triggered_by: &str,
) -> Result<run::Model> {
    if !crate::found::device(db, device_id).await?.enabled {
        return Err(Error::conflict(
            None,
            format!("device {device_id} is disabled; enable it to run commands on it"),
        ));
    }
    Ok(netcron_lifecycle::runs::create_manual(db, device_id, command_id, triggered_by).await?)
}

/// Cancels a queued run that no executor has begun.
pub async fn cancel(
    db: &DatabaseConnection,
    redis: &redis::Client,
    leases: &Leases,
    run_id: Uuid,
) -> Result<run::Model> {
    let mut conn = redis
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| {
            Error::unavailable(format!(
                "Redis is unreachable ({e}); run {run_id} was not cancelled, try again"
            ))
        })?;
    netcron_lifecycle::runs::cancel(db, &mut conn, leases, run_id)
        .await
        .map_err(|e| match e {
            // The request is recorded: the re-queue pass finishes it once Redis answers,
            // unless the run starts first.
            netcron_lifecycle::Error::Redis(e) => Error::unavailable(format!(
                "Redis failed ({e}) while run {run_id} was being cancelled; the cancel is \
                 recorded and completes within a re-queue pass unless the run starts first"
            )),
            other => other.into(),
        })
}

/// A run's status alone (the live-output follower polls it).
pub async fn status(db: &DatabaseConnection, id: Uuid) -> Result<Stored<RunStatus>> {
    run::Entity::find_by_id(id)
        .select_only()
        .column(run::Column::Status)
        .into_tuple::<Stored<RunStatus>>()
        .one(db)
        .await?
        .ok_or_else(|| Error::not_found("run", id))
}
