use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use netcron_common::domain::{RunStatus, RunTrigger};
use netcron_common::entity::run;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{ListErrors, ReadErrors};
use crate::error::{ApiError, Result};
use crate::extract::{Path, Query};
use crate::pagination::{Page, PageParams};
use crate::services::runs as service;
use crate::services::runs::RunFilter;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(run_command))
        .routes(routes!(device_results))
        .routes(routes!(list_runs))
        .routes(routes!(get_run))
        .routes(routes!(cancel_run))
}

/// One run of a command: queued, in progress, or finished with its output.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "id": "01936b32-3e4f-7a51-9c6d-7e8f9a0b1c2d", "schedule_id": null,
    "command_id": "01936b30-1c2d-7e3f-9a4b-5c6d7e8f9a0b", "device_id": "01936b2f-0a1b-7c2d-8e3f-405162738495",
    "trigger": "manual", "status": "succeeded", "scheduled_for": "2026-11-22T10:00:00Z",
    "queued_at": "2026-11-22T10:00:00Z", "started_at": "2026-11-22T10:00:00.120Z",
    "finished_at": "2026-11-22T10:00:00.480Z", "exit_code": 0, "exit_signal": null,
    "stdout": "core-sw1\n", "stderr": "", "truncated": false, "error_kind": null,
    "error_message": null, "duration_ms": 360, "payload": null, "attempt": 1, "executor_id": "executor-a1b2",
    "attempts": [{"started_at": "2026-11-22T10:00:00.120Z", "duration_ms": 360, "status": "succeeded", "error_kind": null, "error_message": null}]
}))]
pub struct RunView {
    pub id: Uuid,
    pub schedule_id: Option<Uuid>,
    pub command_id: Uuid,
    pub device_id: Uuid,
    pub trigger: RunTrigger,
    pub status: RunStatus,
    /// The fire time this run belongs to (for manual runs, when it was requested).
    pub scheduled_for: DateTime<Utc>,
    pub queued_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub exit_code: Option<i32>,
    /// The signal that ended the command, if one did.
    pub exit_signal: Option<String>,
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    /// Whether stdout or stderr was cut at the command's `max_output_bytes`.
    pub truncated: bool,
    /// For status `error`: `unreachable`, `connection_refused`, `handshake_failed`,
    /// `host_key_mismatch`, `auth_failed`, `timeout` or `internal`.
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
    pub duration_ms: Option<i64>,
    /// Structured results of command kinds that produce them.
    pub payload: Option<serde_json::Value>,
    /// 1 for the first attempt; higher when the run was re-queued because its attempt was lost
    /// (its executor's lease expired, or Redis lost the task). Only the current attempt's
    /// outcome is the run's.
    pub attempt: i32,
    pub executor_id: Option<String>,
    /// The run's history of attempts, oldest first. Each connection attempt: `attempt` (the
    /// run attempt it belongs to), `executor_id`, `started_at`, `duration_ms`, `status`,
    /// `error_kind`, `error_message` — more than one per attempt when transient errors
    /// (`unreachable`, `connection_refused`) were retried up to the command's `max_attempts`.
    /// A lost attempt: `attempt`, `executor_id`, `requeued_at`, `reason`. An outcome that
    /// arrived for an attempt that was no longer current: `superseded: true` with its
    /// `attempt`, `executor_id`, `status`, times, `exit_code`, `error_kind`, `error_message`,
    /// `stdout_bytes`, `stderr_bytes` and the first 512 characters of its stdout as `output`.
    #[schema(value_type = Option<Vec<Object>>)]
    pub attempts: Option<serde_json::Value>,
}

impl From<run::Model> for RunView {
    fn from(m: run::Model) -> Self {
        Self {
            id: m.id,
            schedule_id: m.schedule_id,
            command_id: m.command_id,
            device_id: m.device_id,
            trigger: m.trigger,
            status: m.status,
            scheduled_for: m.scheduled_for,
            queued_at: m.queued_at,
            started_at: m.started_at,
            finished_at: m.finished_at,
            exit_code: m.exit_code,
            exit_signal: m.exit_signal,
            stdout: m.stdout,
            stderr: m.stderr,
            truncated: m.truncated,
            error_kind: m.error_kind,
            error_message: m.error_message,
            duration_ms: m.duration_ms,
            payload: m.payload,
            attempt: m.attempt,
            executor_id: m.executor_id,
            attempts: m.attempts,
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunListParams {
    pub device_id: Option<Uuid>,
    pub command_id: Option<Uuid>,
    pub schedule_id: Option<Uuid>,
    pub status: Option<RunStatus>,
    /// Runs scheduled at or after this instant (RFC 3339).
    pub from: Option<DateTime<Utc>>,
    /// Runs scheduled before this instant (RFC 3339).
    pub to: Option<DateTime<Utc>>,
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u64>,
    pub cursor: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeviceResultParams {
    pub status: Option<RunStatus>,
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u64>,
    pub cursor: Option<String>,
}

/// Run a command now. The run is queued and goes through the same path as scheduled runs.
/// A disabled device answers 409.
#[utoipa::path(post, path = "/devices/{device_id}/commands/{command_id}/run", tag = "runs",
    params(("device_id" = Uuid, Path, description = "Device id"),
           ("command_id" = Uuid, Path, description = "Command id")),
    responses((status = 202, description = "The queued run", body = RunView), ReadErrors,
        (status = 409, description = "The device is disabled", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn run_command(
    State(state): State<AppState>,
    Path((device_id, command_id)): Path<(Uuid, Uuid)>,
) -> Result<(StatusCode, axum::Json<RunView>)> {
    let model = service::create_manual(&state.db, device_id, command_id).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(model.into())))
}

/// A device's runs, newest first.
#[utoipa::path(get, path = "/devices/{device_id}/results", tag = "runs",
    params(("device_id" = Uuid, Path, description = "Device id"), DeviceResultParams),
    responses((status = 200, description = "One page of runs", body = Page<RunView>), ListErrors))]
async fn device_results(
    State(state): State<AppState>,
    Path(device_id): Path<Uuid>,
    Query(params): Query<DeviceResultParams>,
) -> Result<axum::Json<Page<RunView>>> {
    let page = PageParams {
        limit: params.limit,
        cursor: params.cursor,
    }
    .parse()?;
    crate::services::devices::get(&state.db, device_id).await?;
    let filter = RunFilter {
        device_id: Some(device_id),
        status: params.status,
        ..RunFilter::default()
    };
    let rows = service::list(&state.db, filter, page).await?;
    Ok(axum::Json(Page::from_rows(
        rows,
        page,
        |r| r.id,
        RunView::from,
    )))
}

/// Runs, newest first, filtered by device, command, schedule, status and time range.
#[utoipa::path(get, path = "/runs", tag = "runs", params(RunListParams),
    responses((status = 200, description = "One page of runs", body = Page<RunView>), ListErrors))]
async fn list_runs(
    State(state): State<AppState>,
    Query(params): Query<RunListParams>,
) -> Result<axum::Json<Page<RunView>>> {
    let page = PageParams {
        limit: params.limit,
        cursor: params.cursor,
    }
    .parse()?;
    if let (Some(from), Some(to)) = (params.from, params.to)
        && to <= from
    {
        return Err(ApiError::bad_parameter("to", "must be later than from"));
    }
    let filter = RunFilter {
        device_id: params.device_id,
        command_id: params.command_id,
        schedule_id: params.schedule_id,
        status: params.status,
        from: params.from,
        to: params.to,
    };
    let rows = service::list(&state.db, filter, page).await?;
    Ok(axum::Json(Page::from_rows(
        rows,
        page,
        |r| r.id,
        RunView::from,
    )))
}

/// Get a run.
#[utoipa::path(get, path = "/runs/{run_id}", tag = "runs",
    params(("run_id" = Uuid, Path, description = "Run id")),
    responses((status = 200, description = "The run", body = RunView), ReadErrors))]
async fn get_run(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<RunView>> {
    Ok(axum::Json(service::get(&state.db, id).await?.into()))
}

/// Cancel a queued run that no executor has begun. Its task, if already on the tasks stream,
/// is dropped by the executor that reads it. A run that began (or ended) answers 409.
#[utoipa::path(post, path = "/runs/{run_id}/cancel", tag = "runs",
    params(("run_id" = Uuid, Path, description = "Run id")),
    responses((status = 200, description = "The cancelled run", body = RunView), ReadErrors,
        (status = 409, description = "The run is not queued, or began meanwhile", body = crate::error::Problem, content_type = "application/problem+json")))]
async fn cancel_run(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<RunView>> {
    let run = service::cancel(&state.db, &state.redis, &state.leases, id).await?;
    Ok(axum::Json(run.into()))
}
