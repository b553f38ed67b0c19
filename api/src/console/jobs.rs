//! Fleet jobs in the console: the jobs list, a job's page (its target's devices now, its
//! schedules and next fires, its recent job runs, run now), and a job run's page: a grid of its
//! devices coloured by status that refreshes itself while the job run is running (htmx polls
//! the grid fragment), filtered to failures on request, with retry-failed and cancel.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use netcron_common::domain::RunStatus;
use netcron_lifecycle::jobs::target_of;
use netcron_services::PageRequest;
use netcron_services::jobs as service;
use netcron_services::schedules::{self, ScheduleFilter};
use netcron_store::entity::job_run;
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde::Deserialize;
use uuid::Uuid;

use super::devices::id;
use super::forms::{Fields, Filled, Kind, edited, field_error};
use super::session::{Action, Operator};
use super::view;
use super::{Chrome, Notice, Result, render, render_form, see_other};
use crate::error::ApiError;
use crate::routes::jobs::{JobCreate, JobPatch};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console/jobs", get(list).post(create))
        .route("/console/jobs/new", get(new_form))
        .route("/console/jobs/preview", post(preview_target))
        .route("/console/jobs/{id}", get(show).post(update))
        .route("/console/jobs/{id}/edit", get(edit_form))
        .route("/console/jobs/{id}/run", post(run_now))
        .route("/console/job-runs/{id}", get(job_run_page))
        .route("/console/job-runs/{id}/grid", get(grid_fragment))
        .route("/console/job-runs/{id}/retry-failed", post(retry_failed))
        .route("/console/job-runs/{id}/cancel", post(cancel))
}

#[derive(askama::Template)]
#[template(path = "console/job_form.html")]
struct JobForm {
    chrome: Chrome,
    job_id: Option<String>,
    form: Filled,
    kinds: Vec<&'static str>,
    platforms: Vec<&'static str>,
}

/// The job form's fields as the REST body names them (a dotted name is a field of `target`).
/// Limits are nullable on edit: emptied, the limit goes.
fn job_fields(edit: bool) -> Vec<(&'static str, Kind)> {
    let limit = if edit { Kind::NullableInt } else { Kind::Int };
    vec![
        ("name", Kind::Text),
        ("target.all", Kind::Check),
        ("target.tags_all", Kind::List),
        ("target.tags_any", Kind::List),
        ("target.platforms", Kind::List),
        ("target.zones", Kind::List),
        ("target.device_ids", Kind::List),
        ("target.exclude_tags", Kind::List),
        ("target.exclude_ids", Kind::List),
        ("kind", Kind::Text),
        ("command", Kind::Raw),
        ("platform_commands", Kind::Json),
        ("vars", Kind::Json),
        ("max_parallel", limit),
        ("batch", limit),
        ("max_fail_percent", limit),
        ("spread_s", Kind::Int),
        ("timeout_s", Kind::Int),
    ]
}

fn job_form(
    operator: &Operator,
    job_id: Option<Uuid>,
    form: Fields,
    error: Option<(String, String)>,
) -> Result<Response> {
    let form = Filled::new(form, error);
    let failed = form.failed();
    render_form(
        &JobForm {
            chrome: Chrome::new(operator, "jobs"),
            job_id: job_id.map(|j| j.to_string()),
            form,
            kinds: netcron_common::domain::CommandKind::ALL
                .iter()
                .map(|k| k.as_str())
                .collect(),
            platforms: netcron_common::domain::Platform::ALL
                .iter()
                .map(|p| p.as_str())
                .collect(),
        },
        failed,
    )
}

async fn new_form(operator: Operator) -> Result<Response> {
    job_form(
        &operator,
        None,
        Fields::parse(b"kind=shell&spread_s=0&timeout_s=60"),
        None,
    )
}

/// How many matched devices the form's preview names.
const FORM_PREVIEW: u64 = 20;

/// The form's target preview: the devices the target typed so far matches now, as
/// `POST /jobs/preview` answers them, or why the target is not valid.
#[derive(askama::Template)]
#[template(path = "console/job_preview.html")]
struct TargetPreview {
    problem: Option<String>,
    devices: Vec<(String, String, String)>,
    more: bool,
}

#[derive(Deserialize)]
struct TargetOnly {
    target: netcron_common::fleet::Target,
}

/// Answers the preview fragment that htmx swaps in while the target is typed (read-only, like
/// the schedule form's preview, so it needs a session but no CSRF token).
async fn preview_target(
    State(state): State<AppState>,
    _operator: Operator,
    body: axum::body::Bytes,
) -> Result<Response> {
    let fields = Fields::parse(&body);
    let spec: Vec<(&str, Kind)> = job_fields(false)
        .into_iter()
        .filter(|(name, _)| name.starts_with("target."))
        .collect();
    let target = fields
        .body::<TargetOnly>(&spec)
        .and_then(|t| crate::routes::jobs::parse_target(t.target));
    let preview = match target {
        Ok(target) => {
            let mut found = service::preview(
                &state.db,
                &target,
                PageRequest {
                    limit: FORM_PREVIEW,
                    after: None,
                },
            )
            .await?;
            let more = found.len() > usize::try_from(FORM_PREVIEW).unwrap_or(usize::MAX);
            found.truncate(usize::try_from(FORM_PREVIEW).unwrap_or(usize::MAX));
            TargetPreview {
                problem: None,
                devices: found
                    .into_iter()
                    .map(|d| (d.id.to_string(), d.name, d.platform))
                    .collect(),
                more,
            }
        }
        Err(e) => TargetPreview {
            problem: Some(e.to_string()),
            devices: Vec::new(),
            more: false,
        },
    };
    render(&preview)
}

async fn create(State(state): State<AppState>, action: Action) -> Result<Response> {
    let created = async {
        let body: JobCreate = action.form.body(&job_fields(false))?;
        service::create(&state.db, &state.key, body.parse()?)
            .await
            .map_err(ApiError::from)
    }
    .await;
    match created {
        Ok(job) => Ok(see_other(&format!("/console/jobs/{}", job.id))),
        Err(e) => match field_error(&e) {
            Some(err) => job_form(&action.operator, None, action.form, Some(err)),
            None => Err(e.into()),
        },
    }
}

async fn edit_form(
    State(state): State<AppState>,
    operator: Operator,
    Path(job_id): Path<String>,
) -> Result<Response> {
    let job_id = id(&job_id, "job_id")?;
    let job = service::get(&state.db, job_id).await?;
    let target = target_of(&job).unwrap_or_default();
    let words = |list: &[String]| list.join(", ");
    let ids = |list: &[Uuid]| {
        list.iter()
            .map(Uuid::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let json = |v: &serde_json::Value| {
        if v.as_object().is_some_and(serde_json::Map::is_empty) {
            String::new()
        } else {
            serde_json::to_string_pretty(v).unwrap_or_default()
        }
    };
    let number = |n: Option<i32>| n.map(|n| n.to_string()).unwrap_or_default();
    let mut pairs: Vec<(String, String)> = vec![
        ("revision".into(), job.revision.to_string()),
        ("name".into(), job.name.clone()),
        ("target.tags_all".into(), words(&target.tags_all)),
        ("target.tags_any".into(), words(&target.tags_any)),
        (
            "target.platforms".into(),
            target
                .platforms
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        ("target.zones".into(), words(&target.zones)),
        ("target.device_ids".into(), ids(&target.device_ids)),
        ("target.exclude_tags".into(), words(&target.exclude_tags)),
        ("target.exclude_ids".into(), ids(&target.exclude_ids)),
        ("kind".into(), job.kind.to_string()),
        ("command".into(), job.command.clone()),
        ("platform_commands".into(), json(&job.platform_commands)),
        (
            "vars".into(),
            json(&netcron_common::fleet::masked_vars(&job.vars)),
        ),
        ("max_parallel".into(), number(job.max_parallel)),
        ("batch".into(), number(job.batch_size)),
        ("max_fail_percent".into(), number(job.max_fail_percent)),
        ("spread_s".into(), job.spread_s.to_string()),
        ("timeout_s".into(), job.timeout_s.to_string()),
    ];
    if target.all {
        pairs.push(("target.all".into(), "on".into()));
    }
    job_form(&operator, Some(job_id), Fields::from_pairs(pairs), None)
}

async fn update(
    State(state): State<AppState>,
    Path(job_id): Path<String>,
    action: Action,
) -> Result<Response> {
    let job_id = id(&job_id, "job_id")?;
    let updated = async {
        let mut spec = edited(&job_fields(true));
        spec.push(("revision", Kind::Int));
        let body: JobPatch = action.form.body(&spec)?;
        let (revision, changes) = body.parse()?;
        service::update(&state.db, &state.key, job_id, revision, changes)
            .await
            .map_err(ApiError::from)
    }
    .await;
    match updated {
        Ok(job) => Ok(see_other(&format!("/console/jobs/{}", job.id))),
        Err(ApiError::PreconditionFailed(reason)) => job_form(
            &action.operator,
            Some(job_id),
            action.form,
            Some(("revision".into(), reason)),
        ),
        Err(e) => match field_error(&e) {
            Some(err) => job_form(&action.operator, Some(job_id), action.form, Some(err)),
            None => Err(e.into()),
        },
    }
}

/// Devices shown on a job's page; the API pages through the rest.
const PREVIEW: u64 = 100;
/// Job runs shown on a job's page.
const RECENT: u64 = 20;
/// Device runs shown in one job run's grid.
const GRID: u64 = 10_000;

pub struct JobRow {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub target: String,
    pub last: String,
}

#[derive(askama::Template)]
#[template(path = "console/jobs.html")]
struct JobList {
    chrome: Chrome,
    rows: Vec<JobRow>,
}

/// A target in one line, for lists.
fn describe_target(job: &netcron_store::entity::command::Model) -> String {
    target_of(job)
        .ok()
        .and_then(|t| serde_json::to_string(&t).ok())
        .unwrap_or_else(|| "(a target this version cannot read)".into())
}

async fn list(
    State(state): State<AppState>,
    operator: Operator,
    Query(notice): Query<Notice>,
) -> Result<Response> {
    let jobs = service::list(
        &state.db,
        PageRequest {
            limit: 500,
            after: None,
        },
    )
    .await?;
    let ids: Vec<Uuid> = jobs.iter().map(|j| j.id).collect();
    let mut last = service::last_statuses(&state.db, &ids).await?;
    let rows = jobs
        .into_iter()
        .map(|job| JobRow {
            id: job.id.to_string(),
            target: describe_target(&job),
            kind: job.kind.to_string(),
            last: last.remove(&job.id).unwrap_or_else(|| "never run".into()),
            name: job.name,
        })
        .collect();
    render(&JobList {
        chrome: Chrome::new(&operator, "jobs").noticed(&notice),
        rows,
    })
}

pub struct JobRunRow {
    pub id: String,
    pub status: String,
    pub trigger: String,
    pub scheduled_for: String,
    pub devices: usize,
}

impl From<job_run::Model> for JobRunRow {
    fn from(r: job_run::Model) -> Self {
        Self {
            id: r.id.to_string(),
            status: r.status,
            trigger: r.trigger.to_string(),
            scheduled_for: view::when(r.scheduled_for),
            devices: r.device_ids.len(),
        }
    }
}

pub struct ScheduleRow {
    pub cron: String,
    pub timezone: String,
    pub next: String,
}

#[derive(askama::Template)]
#[template(path = "console/job.html")]
struct JobPage {
    chrome: Chrome,
    id: String,
    name: String,
    kind: String,
    command: String,
    target: String,
    spread_s: i32,
    limits: String,
    devices: Vec<(String, String, String)>,
    more_devices: bool,
    schedules: Vec<ScheduleRow>,
    runs: Vec<JobRunRow>,
}

async fn show(
    State(state): State<AppState>,
    operator: Operator,
    Path(job_id): Path<String>,
) -> Result<Response> {
    let job_id = id(&job_id, "job_id")?;
    let job = service::get(&state.db, job_id).await?;
    let mut devices = match target_of(&job) {
        Ok(target) => {
            service::preview(
                &state.db,
                &target,
                PageRequest {
                    limit: PREVIEW,
                    after: None,
                },
            )
            .await?
        }
        Err(_) => Vec::new(),
    };
    let more_devices = devices.len() > usize::try_from(PREVIEW).unwrap_or(usize::MAX);
    devices.truncate(usize::try_from(PREVIEW).unwrap_or(usize::MAX));
    let filter = ScheduleFilter {
        command_id: Some(job_id),
        ..Default::default()
    };
    let schedules = schedules::list(
        &state.db,
        filter,
        PageRequest {
            limit: 50,
            after: None,
        },
    )
    .await?
    .into_iter()
    .map(|s| ScheduleRow {
        next: s
            .next_fire_at
            .map_or_else(|| "ended".into(), |t| view::when_in(t, &s.timezone)),
        cron: s.cron_expression,
        timezone: s.timezone,
    })
    .collect();
    let runs = service::runs_of(
        &state.db,
        job_id,
        PageRequest {
            limit: RECENT,
            after: None,
        },
    )
    .await?
    .into_iter()
    .map(JobRunRow::from)
    .collect();
    let limits = [
        job.max_parallel.map(|n| format!("{n} at once")),
        job.batch_size.map(|n| format!("batches of {n}")),
        job.max_fail_percent
            .map(|n| format!("stop above {n}% failed")),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(", ");
    render(&JobPage {
        chrome: Chrome::new(&operator, "jobs"),
        id: job.id.to_string(),
        target: describe_target(&job),
        kind: job.kind.to_string(),
        command: job.command,
        spread_s: job.spread_s,
        limits: if limits.is_empty() {
            "none".into()
        } else {
            limits
        },
        name: job.name,
        devices: devices
            .into_iter()
            .map(|d| (d.id.to_string(), d.name, d.platform))
            .collect(),
        more_devices,
        schedules,
        runs,
    })
}

async fn run_now(
    State(state): State<AppState>,
    Path(job_id): Path<String>,
    action: Action,
) -> Result<Response> {
    let job_id = id(&job_id, "job_id")?;
    let run = service::start(&state.db, job_id, &action.operator.caller.label()).await?;
    Ok(see_other(&format!("/console/job-runs/{}", run.id)))
}

#[derive(Deserialize)]
pub struct GridParams {
    /// `failed`: only the devices that did not succeed.
    pub show: Option<String>,
}

pub struct Cell {
    pub run_id: String,
    pub device: String,
    pub status: String,
    pub error: String,
}

#[derive(askama::Template)]
#[template(path = "console/job_run_grid.html")]
struct Grid {
    id: String,
    status: String,
    running: bool,
    failed_only: bool,
    counts: String,
    cells: Vec<Cell>,
}

/// A grid cell's fields for each device run of `$1` (at most `$2`, in device-run order), with
/// its device's name (NULL once the device was deleted). One narrow statement: whole `runs`
/// rows (with their outputs) and a 10,000-value `IN` for the names took ~170 ms of a
/// 10,000-device grid (`cargo bench --bench fleet`).
const GRID_CELLS: &str = r"
SELECT r.id, r.device_id, r.status, r.error_message, d.name
FROM runs r LEFT JOIN devices d ON d.id = r.device_id
WHERE r.job_run_id = $1
ORDER BY r.id
LIMIT $2";

async fn grid(state: &AppState, job_run_id: Uuid, failed_only: bool) -> Result<Grid> {
    let run = service::get_run(&state.db, job_run_id).await?;
    let rows = state
        .db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            GRID_CELLS,
            [
                job_run_id.into(),
                i64::try_from(GRID).unwrap_or(i64::MAX).into(),
            ],
        ))
        .await
        .map_err(netcron_services::Error::from)?;
    let counts = service::counts(&state.db, job_run_id)
        .await?
        .into_iter()
        .map(|(status, n)| format!("{n} {status}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut cells = Vec::with_capacity(rows.len());
    for row in rows {
        let cell = (|| -> std::result::Result<Option<Cell>, sea_orm::DbErr> {
            let status: String = row.try_get("", "status")?;
            if failed_only && status == RunStatus::Succeeded.as_str() {
                return Ok(None);
            }
            let device_id: Uuid = row.try_get("", "device_id")?;
            Ok(Some(Cell {
                run_id: row.try_get::<Uuid>("", "id")?.to_string(),
                device: row
                    .try_get::<Option<String>>("", "name")?
                    .unwrap_or_else(|| device_id.to_string()),
                status,
                error: row
                    .try_get::<Option<String>>("", "error_message")?
                    .unwrap_or_default(),
            }))
        })()
        .map_err(netcron_services::Error::from)?;
        cells.extend(cell);
    }
    Ok(Grid {
        id: job_run_id.to_string(),
        running: run.status == "running",
        status: run.status,
        failed_only,
        counts,
        cells,
    })
}

#[derive(askama::Template)]
#[template(path = "console/job_run.html")]
struct JobRunPage {
    chrome: Chrome,
    job_id: String,
    job_name: String,
    trigger: String,
    scheduled_for: String,
    stop_reason: String,
    id: String,
    /// Cancel is offered while the job run runs; retry once it has ended.
    running: bool,
    failed_only: bool,
    /// The grid, rendered by its own template (the fragment the page polls).
    grid_html: String,
}

async fn job_run_page(
    State(state): State<AppState>,
    operator: Operator,
    Path(job_run_id): Path<String>,
    Query(params): Query<GridParams>,
) -> Result<Response> {
    let job_run_id = id(&job_run_id, "job_run_id")?;
    let run = service::get_run(&state.db, job_run_id).await?;
    let job = service::get(&state.db, run.command_id).await?;
    let failed_only = params.show.as_deref() == Some("failed");
    render(&JobRunPage {
        chrome: Chrome::new(&operator, "jobs"),
        job_id: job.id.to_string(),
        job_name: job.name,
        trigger: run.trigger.to_string(),
        scheduled_for: view::when(run.scheduled_for),
        stop_reason: run.stop_reason.clone().unwrap_or_default(),
        id: job_run_id.to_string(),
        running: run.status == "running",
        failed_only,
        grid_html: askama::Template::render(&grid(&state, job_run_id, failed_only).await?)
            .map_err(|e| {
                super::Shown(crate::error::ApiError::Internal(
                    anyhow::Error::new(e).context("rendering the grid"),
                ))
            })?,
    })
}

/// The grid alone, which the job run's page polls while the job run is running.
async fn grid_fragment(
    State(state): State<AppState>,
    _operator: Operator,
    Path(job_run_id): Path<String>,
    Query(params): Query<GridParams>,
) -> Result<Response> {
    let job_run_id = id(&job_run_id, "job_run_id")?;
    let failed_only = params.show.as_deref() == Some("failed");
    render(&grid(&state, job_run_id, failed_only).await?)
}

async fn retry_failed(
    State(state): State<AppState>,
    Path(job_run_id): Path<String>,
    action: Action,
) -> Result<Response> {
    let job_run_id = id(&job_run_id, "job_run_id")?;
    let run = service::retry_failed(&state.db, job_run_id, &action.operator.caller.label()).await?;
    Ok(see_other(&format!("/console/job-runs/{}", run.id)))
}

async fn cancel(
    State(state): State<AppState>,
    Path(job_run_id): Path<String>,
    _action: Action,
) -> Result<Response> {
    let job_run_id = id(&job_run_id, "job_run_id")?;
    service::cancel(&state.db, &state.redis, &state.leases, job_run_id).await?;
    Ok(see_other(&format!("/console/job-runs/{job_run_id}")))
}
