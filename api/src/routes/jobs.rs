//! Fleet jobs: one definition, a device selector, many devices. A job's schedules use the
//! schedule resources (`/schedules/{id}` to read, change, pause and delete them).

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use netcron_common::domain::{CommandKind, OverlapPolicy, RunStatus, parse_name};
use netcron_common::fleet::Target;
use netcron_common::stored::Stored;
use netcron_services::jobs::{self as service, JobChanges, Limits, NewJob};
use netcron_services::runs::RunSummary;
use netcron_store::entity::{command, job_run};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::commands::{
    DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_TIMEOUT_S, MAX_ATTEMPTS, MAX_OUTPUT_BYTES, MAX_TIMEOUT_S,
    in_range, narrow,
};
use super::devices::parse_vars_field;
use super::schedules::{ScheduleCreate, ScheduleView};
use super::{DeleteErrors, ListErrors, ReadErrors, WriteErrors, field};
use crate::error::{ApiError, Result};
use crate::extract::{Json, Path, Query};
use crate::pagination::{Page, PageParams};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_job, list_jobs))
        .routes(routes!(get_job, update_job, delete_job))
        .routes(routes!(preview_target))
        .routes(routes!(job_devices))
        .routes(routes!(start_job, list_job_runs))
        .routes(routes!(create_job_schedule, list_job_schedules))
        .routes(routes!(get_job_run))
        .routes(routes!(job_run_devices))
        .routes(routes!(retry_failed))
        .routes(routes!(cancel_job_run))
        .routes(routes!(device_jobs))
}

/// A job: what to run on every device its target matches when it fires.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "name": "nightly-backup", "kind": "config_backup",
    "target": {"tags_all": ["site-a"], "platforms": ["cisco_ios"]},
    "spread_s": 600
}))]
pub struct JobCreate {
    /// Unique among jobs, 1 to 128 characters.
    pub name: String,
    /// Which devices the job runs on, evaluated at each fire.
    pub target: Target,
    /// What the job does (default `shell`).
    pub kind: Option<CommandKind>,
    /// The text run on each device, a template: `{{ device.name }}`, `{{ vars.vlan }}` (a
    /// variable missing for a device fails that device's run before anything is sent). Used
    /// for devices whose platform has no entry in `platform_commands`.
    #[serde(default)]
    pub command: String,
    /// Text per platform (`{"cisco_ios": "show run", "juniper_junos": "show configuration"}`),
    /// templates too.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub platform_commands: Map<String, Value>,
    /// Default template variables; a device's own `vars` win.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub vars: Map<String, Value>,
    #[schema(minimum = 1, maximum = 86400, default = 60)]
    pub timeout_s: Option<i64>,
    #[schema(minimum = 1, maximum = 104857600, default = 1048576)]
    pub max_output_bytes: Option<i64>,
    #[schema(minimum = 1, maximum = 10, default = 1)]
    pub max_attempts: Option<i64>,
    /// A schedule's fire starts its devices spread over this many seconds (0 to 86400,
    /// default 0): each device's offset is fixed by a hash of the job and the device, so it
    /// starts at the same offset every night and the fleet's logins are spread evenly. A start
    /// by hand (run now, retry failed) starts every device at once.
    #[schema(minimum = 0, maximum = 86400, default = 0)]
    pub spread_s: Option<i32>,
    /// Devices of one job run running at once at most (1 to 100000; absent: no limit). The
    /// next device starts when one ends.
    #[schema(minimum = 1, maximum = 100000)]
    pub max_parallel: Option<i32>,
    /// Rolling batches: this many devices at a time (1 to 100000), the next batch only once
    /// every device of the previous one ended. With `max_parallel` too, a batch is at most
    /// `max_parallel` devices.
    #[schema(minimum = 1, maximum = 100000)]
    pub batch: Option<i32>,
    /// Stop starting devices once more than this percentage (0 to 100) of the job run's
    /// devices did not succeed; the devices not started end `skipped`, with the reason. It is
    /// checked as devices end, so it stops a job run that releases devices over time
    /// (`batch`, `max_parallel`).
    #[schema(minimum = 0, maximum = 100)]
    pub max_fail_percent: Option<i32>,
}

/// Changes to a job. Send the `revision` you read (or `If-Match: "<revision>"`): a job changed
/// meanwhile answers 412 instead of losing the other change.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"revision": 3, "spread_s": 1200}))]
pub struct JobPatch {
    pub revision: Option<i64>,
    pub name: Option<String>,
    pub target: Option<Target>,
    pub kind: Option<CommandKind>,
    pub command: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub platform_commands: Option<Map<String, Value>>,
    #[schema(value_type = Option<Object>)]
    pub vars: Option<Map<String, Value>>,
    pub timeout_s: Option<i64>,
    pub max_output_bytes: Option<i64>,
    pub max_attempts: Option<i64>,
    pub spread_s: Option<i32>,
    /// `null` removes the limit.
    #[serde(default, deserialize_with = "super::nullable")]
    #[schema(value_type = Option<i32>)]
    pub max_parallel: Option<Option<i32>>,
    #[serde(default, deserialize_with = "super::nullable")]
    #[schema(value_type = Option<i32>)]
    pub batch: Option<Option<i32>>,
    #[serde(default, deserialize_with = "super::nullable")]
    #[schema(value_type = Option<i32>)]
    pub max_fail_percent: Option<Option<i32>>,
}

#[derive(Serialize, ToSchema)]
pub struct JobView {
    pub id: Uuid,
    pub name: String,
    /// Null only for a target this version cannot read (written by a newer one).
    pub target: Option<Target>,
    pub kind: Stored<CommandKind>,
    pub command: String,
    #[schema(value_type = Object)]
    pub platform_commands: Value,
    #[schema(value_type = Object)]
    pub vars: Value,
    pub timeout_s: i32,
    pub max_output_bytes: i64,
    pub max_attempts: i32,
    pub spread_s: i32,
    pub max_parallel: Option<i32>,
    pub batch: Option<i32>,
    pub max_fail_percent: Option<i32>,
    /// Bumped by every change; send it back with a change (or as `If-Match`).
    pub revision: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<command::Model> for JobView {
    fn from(m: command::Model) -> Self {
        Self {
            id: m.id,
            name: m.name,
            target: m.target.and_then(|t| serde_json::from_value(t).ok()),
            kind: m.kind,
            command: m.command,
            platform_commands: m.platform_commands,
            vars: netcron_common::fleet::masked_vars(&m.vars),
            timeout_s: m.timeout_s,
            max_output_bytes: m.max_output_bytes,
            max_attempts: m.max_attempts,
            spread_s: m.spread_s,
            max_parallel: m.max_parallel,
            batch: m.batch_size,
            max_fail_percent: m.max_fail_percent,
            revision: m.revision,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

pub(crate) fn parse_target(target: Target) -> Result<Target> {
    field("target", target.parse())
}

impl JobCreate {
    pub(crate) fn parse(self) -> Result<NewJob> {
        Ok(NewJob {
            name: field("name", parse_name(&self.name, 128))?,
            target: parse_target(self.target)?,
            kind: self.kind.unwrap_or(CommandKind::Shell),
            command: self.command,
            platform_commands: self.platform_commands,
            vars: vars(self.vars)?,
            timeout_s: narrow(
                "timeout_s",
                self.timeout_s.unwrap_or(DEFAULT_TIMEOUT_S),
                MAX_TIMEOUT_S,
            )?,
            max_output_bytes: in_range(
                "max_output_bytes",
                self.max_output_bytes.unwrap_or(DEFAULT_MAX_OUTPUT_BYTES),
                MAX_OUTPUT_BYTES,
            )?,
            max_attempts: narrow("max_attempts", self.max_attempts.unwrap_or(1), MAX_ATTEMPTS)?,
            spread_s: self.spread_s.unwrap_or(0),
            limits: Limits {
                max_parallel: self
                    .max_parallel
                    .map(|v| count("max_parallel", v))
                    .transpose()?,
                batch: self.batch.map(|v| count("batch", v)).transpose()?,
                max_fail_percent: self.max_fail_percent.map(percent).transpose()?,
            },
        })
    }
}

/// A count of devices: 1 to 100,000.
fn count(name: &str, value: i32) -> Result<i32> {
    if (1..=100_000).contains(&value) {
        Ok(value)
    } else {
        Err(ApiError::validation(
            name,
            format!("must be 1 to 100000, got {value}"),
        ))
    }
}

fn percent(value: i32) -> Result<i32> {
    if (0..=100).contains(&value) {
        Ok(value)
    } else {
        Err(ApiError::validation(
            "max_fail_percent",
            format!("must be 0 to 100, got {value}"),
        ))
    }
}

fn vars(map: Map<String, Value>) -> Result<Map<String, Value>> {
    match parse_vars_field(map)? {
        Value::Object(map) => Ok(map),
        _ => Ok(Map::new()),
    }
}

impl JobPatch {
    pub(crate) fn parse(self) -> Result<(Option<i64>, JobChanges)> {
        Ok((
            self.revision,
            JobChanges {
                name: self
                    .name
                    .map(|n| field("name", parse_name(&n, 128)))
                    .transpose()?,
                target: self.target.map(parse_target).transpose()?,
                kind: self.kind,
                command: self.command,
                platform_commands: self.platform_commands,
                vars: self.vars.map(vars).transpose()?,
                timeout_s: self
                    .timeout_s
                    .map(|v| narrow("timeout_s", v, MAX_TIMEOUT_S))
                    .transpose()?,
                max_output_bytes: self
                    .max_output_bytes
                    .map(|v| in_range("max_output_bytes", v, MAX_OUTPUT_BYTES))
                    .transpose()?,
                max_attempts: self
                    .max_attempts
                    .map(|v| narrow("max_attempts", v, MAX_ATTEMPTS))
                    .transpose()?,
                spread_s: self.spread_s,
                max_parallel: self
                    .max_parallel
                    .map(|v| v.map(|v| count("max_parallel", v)).transpose())
                    .transpose()?,
                batch: self
                    .batch
                    .map(|v| v.map(|v| count("batch", v)).transpose())
                    .transpose()?,
                max_fail_percent: self
                    .max_fail_percent
                    .map(|v| v.map(percent).transpose())
                    .transpose()?,
            },
        ))
    }
}

/// A device a target matches.
#[derive(Serialize, ToSchema)]
pub struct TargetDevice {
    pub id: Uuid,
    pub name: String,
    pub host: String,
    pub platform: String,
    pub zone: String,
    pub tags: Vec<String>,
}

impl From<netcron_lifecycle::jobs::Matched> for TargetDevice {
    fn from(m: netcron_lifecycle::jobs::Matched) -> Self {
        Self {
            id: m.id,
            name: m.name,
            host: m.host,
            platform: m.platform,
            zone: m.zone,
            tags: m.tags,
        }
    }
}

/// One fire (or manual start, or retry) of a job.
#[derive(Serialize, ToSchema)]
pub struct JobRunView {
    pub id: Uuid,
    pub job_id: Uuid,
    pub schedule_id: Option<Uuid>,
    pub trigger: String,
    pub scheduled_for: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// `running`, `succeeded`, `partially_failed`, `failed` or `stopped`.
    pub status: String,
    /// How many devices the target matched when the job run was created.
    pub devices: usize,
    /// The job run whose failed devices this one retries.
    pub retry_of: Option<Uuid>,
    /// Why the job run stopped, or why it ran nothing.
    pub stop_reason: Option<String>,
    /// Who started it: an account (`alice`, `alice (token ci)`), `bootstrap`, or `schedule`.
    pub triggered_by: Option<String>,
    /// Device runs per status (`queued`, `running`, `succeeded`, `failed`, `error`, …); only
    /// on a single job run.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub counts: Option<Map<String, Value>>,
}

impl From<job_run::Model> for JobRunView {
    fn from(m: job_run::Model) -> Self {
        Self {
            id: m.id,
            job_id: m.command_id,
            schedule_id: m.schedule_id,
            trigger: m.trigger.to_string(),
            scheduled_for: m.scheduled_for,
            created_at: m.created_at,
            finished_at: m.finished_at,
            status: m.status,
            devices: m.device_ids.len(),
            retry_of: m.retry_of,
            stop_reason: m.stop_reason,
            triggered_by: m.triggered_by.or_else(|| {
                (m.trigger == netcron_common::domain::RunTrigger::Scheduled)
                    .then(|| "schedule".to_owned())
            }),
            counts: None,
        }
    }
}

const JOB_ID: &str = "Job id";
const JOB_RUN_ID: &str = "Job run id";

/// Create a job.
#[utoipa::path(post, path = "/jobs", tag = "jobs", request_body = JobCreate,
    responses((status = 201, description = "The job", body = JobView), WriteErrors))]
async fn create_job(
    State(state): State<AppState>,
    Json(body): Json<JobCreate>,
) -> Result<(StatusCode, axum::Json<JobView>)> {
    let model = service::create(&state.db, &state.key, body.parse()?).await?;
    Ok((StatusCode::CREATED, axum::Json(model.into())))
}

/// List jobs, oldest first.
#[utoipa::path(get, path = "/jobs", tag = "jobs", params(PageParams),
    responses((status = 200, description = "One page of jobs", body = Page<JobView>), ListErrors))]
async fn list_jobs(
    State(state): State<AppState>,
    Query(page): Query<PageParams>,
) -> Result<axum::Json<Page<JobView>>> {
    let page = page.parse()?;
    let rows = service::list(&state.db, page).await?;
    Ok(axum::Json(Page::from_rows(
        rows,
        page,
        |r| r.id,
        JobView::from,
    )))
}

/// The job's revision as an `ETag`, so a client can send it back as `If-Match`.
fn with_etag(job: JobView) -> Response {
    let etag = HeaderValue::from_str(&format!("\"{}\"", job.revision)).ok();
    let mut response = axum::Json(job).into_response();
    if let Some(etag) = etag {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

/// Get a job (its revision is also the `ETag`).
#[utoipa::path(get, path = "/jobs/{job_id}", tag = "jobs",
    params(("job_id" = Uuid, Path, description = JOB_ID)),
    responses((status = 200, description = "The job", body = JobView), ReadErrors))]
async fn get_job(State(state): State<AppState>, Path(id): Path<Uuid>) -> Result<Response> {
    Ok(with_etag(service::get(&state.db, id).await?.into()))
}

/// The revision an `If-Match` header names, if any.
fn if_match(headers: &HeaderMap) -> Result<Option<i64>> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    let text = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
    text.parse::<i64>().map(Some).map_err(|_| {
        ApiError::bad_parameter(
            "If-Match",
            format!("`{text}` is not a revision of this job (send the ETag it was read with)"),
        )
    })
}

/// Change a job. A change carrying an old `revision` (or `If-Match`) answers 412.
#[utoipa::path(patch, path = "/jobs/{job_id}", tag = "jobs",
    params(("job_id" = Uuid, Path, description = JOB_ID)),
    request_body = JobPatch,
    responses((status = 200, description = "The updated job", body = JobView),
        (status = 412, description = "The job changed since it was read",
            body = crate::error::Problem, content_type = "application/problem+json",
            example = json!({"type": "urn:netcron:problem:precondition-failed",
                "title": "The resource changed since it was read", "status": 412,
                "detail": "job 01936b2f-0a1b-7c2d-8e3f-405162738495 is at revision 4, not 3: it changed since it was read; read it again and reapply the change"})),
        WriteErrors))]
async fn update_job(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    Json(body): Json<JobPatch>,
) -> Result<Response> {
    let (revision, changes) = body.parse()?;
    let revision = revision.or(if_match(&headers)?);
    let model = service::update(&state.db, &state.key, id, revision, changes).await?;
    Ok(with_etag(model.into()))
}

/// Delete a job, its job runs and their device runs. Refused with 409 while it has schedules.
#[utoipa::path(delete, path = "/jobs/{job_id}", tag = "jobs",
    params(("job_id" = Uuid, Path, description = JOB_ID)),
    responses((status = 204, description = "Deleted"), DeleteErrors))]
async fn delete_job(State(state): State<AppState>, Path(id): Path<Uuid>) -> Result<StatusCode> {
    service::delete(&state.db, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The devices a target matches now (before saving it as a job's), a page at a time.
#[utoipa::path(post, path = "/jobs/preview", tag = "jobs", params(PageParams),
    request_body = Target,
    responses((status = 200, description = "One page of matching devices", body = Page<TargetDevice>), WriteErrors))]
async fn preview_target(
    State(state): State<AppState>,
    Query(page): Query<PageParams>,
    Json(target): Json<Target>,
) -> Result<axum::Json<Page<TargetDevice>>> {
    let page = page.parse()?;
    let target = parse_target(target)?;
    let rows = service::preview(&state.db, &target, page).await?;
    Ok(axum::Json(Page::from_rows(
        rows,
        page,
        |r| r.id,
        TargetDevice::from,
    )))
}

/// The devices a job's target matches now, a page at a time.
#[utoipa::path(get, path = "/jobs/{job_id}/devices", tag = "jobs",
    params(("job_id" = Uuid, Path, description = JOB_ID), PageParams),
    responses((status = 200, description = "One page of matching devices", body = Page<TargetDevice>), ListErrors))]
async fn job_devices(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Query(page): Query<PageParams>,
) -> Result<axum::Json<Page<TargetDevice>>> {
    let page = page.parse()?;
    let job = service::get(&state.db, id).await?;
    let target = netcron_lifecycle::jobs::target_of(&job)?;
    let rows = service::preview(&state.db, &target, page).await?;
    Ok(axum::Json(Page::from_rows(
        rows,
        page,
        |r| r.id,
        TargetDevice::from,
    )))
}

/// Run a job now, on the devices its target matches now.
#[utoipa::path(post, path = "/jobs/{job_id}/runs", tag = "jobs",
    params(("job_id" = Uuid, Path, description = JOB_ID)),
    responses((status = 201, description = "The job run", body = JobRunView), ReadErrors))]
async fn start_job(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::access::Caller>,
    Path(id): Path<Uuid>,
) -> Result<(StatusCode, axum::Json<JobRunView>)> {
    let created = service::start(&state.db, id, &caller.label()).await?;
    Ok((StatusCode::CREATED, axum::Json(created.into())))
}

/// A job's runs, newest first.
#[utoipa::path(get, path = "/jobs/{job_id}/runs", tag = "jobs",
    params(("job_id" = Uuid, Path, description = JOB_ID), PageParams),
    responses((status = 200, description = "One page of job runs", body = Page<JobRunView>), ListErrors))]
async fn list_job_runs(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Query(page): Query<PageParams>,
) -> Result<axum::Json<Page<JobRunView>>> {
    let page = page.parse()?;
    let rows = service::runs_of(&state.db, id, page).await?;
    Ok(axum::Json(Page::from_rows(
        rows,
        page,
        |r| r.id,
        JobRunView::from,
    )))
}

/// Schedule a job. Its overlap policy is `skip` (default: a fire while the previous job run
/// is unfinished is recorded and runs nothing) or `allow`.
#[utoipa::path(post, path = "/jobs/{job_id}/schedules", tag = "jobs",
    params(("job_id" = Uuid, Path, description = JOB_ID)),
    request_body = ScheduleCreate,
    responses((status = 201, description = "The schedule, with its first fire time", body = ScheduleView), WriteErrors))]
async fn create_job_schedule(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Json(body): Json<ScheduleCreate>,
) -> Result<(StatusCode, axum::Json<ScheduleView>)> {
    let new = body.parse()?;
    if new.overlap_policy == OverlapPolicy::Queue {
        return Err(ApiError::validation(
            "overlap_policy",
            "a job's schedule takes `skip` or `allow`; `queue` would hold a whole fleet's runs \
             behind each other",
        ));
    }
    service::get(&state.db, id).await?;
    let model = netcron_services::schedules::create_for(&state.db, id, new).await?;
    Ok((StatusCode::CREATED, axum::Json(model.into())))
}

/// A job's schedules.
#[utoipa::path(get, path = "/jobs/{job_id}/schedules", tag = "jobs",
    params(("job_id" = Uuid, Path, description = JOB_ID), PageParams),
    responses((status = 200, description = "One page of schedules", body = Page<ScheduleView>), ListErrors))]
async fn list_job_schedules(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Query(page): Query<PageParams>,
) -> Result<axum::Json<Page<ScheduleView>>> {
    let page = page.parse()?;
    service::get(&state.db, id).await?;
    let filter = netcron_services::schedules::ScheduleFilter {
        command_id: Some(id),
        ..Default::default()
    };
    let rows = netcron_services::schedules::list(&state.db, filter, page).await?;
    Ok(axum::Json(Page::from_rows(
        rows,
        page,
        |r| r.id,
        ScheduleView::from,
    )))
}

/// A job run, with its device runs counted by status.
#[utoipa::path(get, path = "/job-runs/{job_run_id}", tag = "jobs",
    params(("job_run_id" = Uuid, Path, description = JOB_RUN_ID)),
    responses((status = 200, description = "The job run", body = JobRunView), ReadErrors))]
async fn get_job_run(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<JobRunView>> {
    let model = service::get_run(&state.db, id).await?;
    let counts = service::counts(&state.db, id).await?;
    let mut view = JobRunView::from(model);
    view.counts = Some(
        counts
            .into_iter()
            .map(|(status, n)| (status, Value::from(n)))
            .collect(),
    );
    Ok(axum::Json(view))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeviceRunParams {
    /// Only device runs of this status (e.g. `failed`).
    pub status: Option<RunStatus>,
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u64>,
    pub cursor: Option<String>,
}

/// A job run's device runs, a page at a time.
#[utoipa::path(get, path = "/job-runs/{job_run_id}/runs", tag = "jobs",
    params(("job_run_id" = Uuid, Path, description = JOB_RUN_ID), DeviceRunParams),
    responses((status = 200, description = "One page of device runs", body = Page<RunSummary>), ListErrors))]
async fn job_run_devices(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Query(params): Query<DeviceRunParams>,
) -> Result<axum::Json<Page<RunSummary>>> {
    let page = PageParams {
        limit: params.limit,
        cursor: params.cursor,
    }
    .parse()?;
    let rows = service::device_runs(&state.db, id, params.status, page).await?;
    Ok(axum::Json(Page::from_rows(
        rows,
        page,
        |r| r.id,
        |r| RunSummary::from(&r),
    )))
}

/// Run the job again on exactly the devices of this job run that did not succeed.
#[utoipa::path(post, path = "/job-runs/{job_run_id}/retry-failed", tag = "jobs",
    params(("job_run_id" = Uuid, Path, description = JOB_RUN_ID)),
    responses((status = 201, description = "The new job run", body = JobRunView),
        (status = 409, description = "No device failed", body = crate::error::Problem,
            content_type = "application/problem+json",
            example = json!({"type": "urn:netcron:problem:conflict", "title": "Conflict",
                "status": 409, "detail": "job run 01936b2f-0a1b-7c2d-8e3f-405162738495 has no failed device to retry"})),
        ReadErrors))]
async fn retry_failed(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::access::Caller>,
    Path(id): Path<Uuid>,
) -> Result<(StatusCode, axum::Json<JobRunView>)> {
    let created = service::retry_failed(&state.db, id, &caller.label()).await?;
    Ok((StatusCode::CREATED, axum::Json(created.into())))
}

/// What a job run's cancel did.
#[derive(Serialize, ToSchema)]
pub struct JobRunCancelled {
    /// Device runs cancelled before they began.
    pub cancelled: u64,
    /// Device runs already begun: they run to their end.
    pub already_started: u64,
}

/// Cancel a job run: its queued device runs end `cancelled`; runs already begun finish.
#[utoipa::path(post, path = "/job-runs/{job_run_id}/cancel", tag = "jobs",
    params(("job_run_id" = Uuid, Path, description = JOB_RUN_ID)),
    responses((status = 200, description = "What was cancelled", body = JobRunCancelled), ReadErrors))]
async fn cancel_job_run(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<JobRunCancelled>> {
    let done = service::cancel(&state.db, &state.redis, &state.leases, id).await?;
    Ok(axum::Json(JobRunCancelled {
        cancelled: done.cancelled,
        already_started: done.already_started,
    }))
}

/// The jobs whose targets match this device now.
#[utoipa::path(get, path = "/devices/{device_id}/jobs", tag = "jobs",
    params(("device_id" = Uuid, Path, description = "Device id")),
    responses((status = 200, description = "The jobs that would run on the device", body = Vec<JobView>), ReadErrors))]
async fn device_jobs(
    State(state): State<AppState>,
    Path(device_id): Path<Uuid>,
) -> Result<axum::Json<Vec<JobView>>> {
    let jobs = service::targeting(&state.db, device_id).await?;
    Ok(axum::Json(jobs.into_iter().map(JobView::from).collect()))
}
