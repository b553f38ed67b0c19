//! Runs: the filtered list and a run's page (status, attempts, timing, exit code, error, and its
//! output shown safely and in pages, or live while it runs).

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use netcron_common::domain::{RangeEnd, RunStatus, parse_time_bound};
use netcron_store::entity::{command, device};
use sea_orm::{ColumnTrait as _, EntityTrait, QueryFilter as _, QueryOrder as _, QuerySelect as _};
use serde::Deserialize;

use super::devices::id;
use super::session::{Action, Operator};
use super::view::{self, RunRow};
use super::{Chrome, Result, Shown, render, see_other};
use crate::error::ApiError;
use crate::pagination::PageParams;
use crate::state::AppState;
use netcron_services::runs::{self, OutputStream};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console/runs", get(list))
        .route("/console/runs/{id}", get(show))
        .route("/console/runs/{id}/live", get(live))
        .route("/console/runs/{id}/facts", get(facts))
        .route("/console/runs/{id}/cancel", post(cancel))
}

#[derive(Deserialize, Default)]
struct ListParams {
    status: Option<String>,
    device_id: Option<String>,
    schedule_id: Option<String>,
    command_id: Option<String>,
    from: Option<String>,
    to: Option<String>,
    cursor: Option<String>,
}

#[derive(askama::Template)]
#[template(path = "console/runs.html")]
struct ListPage {
    chrome: Chrome,
    rows: Vec<RunRow>,
    statuses: Vec<&'static str>,
    status: String,
    device_id: String,
    schedule_id: String,
    command_id: String,
    from: String,
    to: String,
    devices: Vec<(String, String)>,
    /// `(id, "command on device · cron")` of the first 500 schedules, for the picker.
    schedules: Vec<(String, String)>,
    /// `(id, "command on device")` of the first 500 commands and jobs, for the picker.
    commands: Vec<(String, String)>,
    next: Option<String>,
}

/// A bound typed into a filter: RFC 3339, or a plain date meaning that whole UTC day (the
/// API's rule, `parse_time_bound`).
fn instant(text: &str, field: &str, end: RangeEnd) -> Result<Option<DateTime<Utc>>> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    parse_time_bound(text, end)
        .map(Some)
        .map_err(|e| Shown(ApiError::bad_parameter(field, e.0)))
}

async fn list(
    State(state): State<AppState>,
    operator: Operator,
    Query(params): Query<ListParams>,
) -> Result<Response> {
    let text = |v: &Option<String>| v.clone().unwrap_or_default().trim().to_owned();
    let (status, device_id, schedule_id) = (
        text(&params.status),
        text(&params.device_id),
        text(&params.schedule_id),
    );
    let command_id = text(&params.command_id);
    let (from, to) = (text(&params.from), text(&params.to));
    let filter = runs::RunFilter {
        status: if status.is_empty() {
            None
        } else {
            Some(
                status
                    .parse::<RunStatus>()
                    .map_err(|e| Shown(ApiError::bad_parameter("status", e)))?,
            )
        },
        device_id: (!device_id.is_empty())
            .then(|| id(&device_id, "device_id"))
            .transpose()?,
        schedule_id: (!schedule_id.is_empty())
            .then(|| id(&schedule_id, "schedule_id"))
            .transpose()?,
        command_id: (!command_id.is_empty())
            .then(|| id(&command_id, "command_id"))
            .transpose()?,
        from: instant(&from, "from", RangeEnd::Start)?,
        to: instant(&to, "to", RangeEnd::End)?,
    };
    let page = PageParams {
        limit: Some(50),
        cursor: params.cursor.clone().filter(|c| !c.is_empty()),
    }
    .parse()?;
    let mut found = runs::list(&state.db, filter, page).await?;
    let next = view::next_page(
        &mut found,
        page.limit,
        |r| r.id,
        &[
            ("status", status.as_str()),
            ("device_id", device_id.as_str()),
            ("schedule_id", schedule_id.as_str()),
            ("command_id", command_id.as_str()),
            ("from", from.as_str()),
            ("to", to.as_str()),
        ],
    );
    let devices = netcron_services::devices::list(
        &state.db,
        netcron_services::devices::DeviceFilter::default(),
        netcron_services::PageRequest {
            limit: 500,
            after: None,
        },
    )
    .await?
    .into_iter()
    .map(|d| (d.id.to_string(), d.name))
    .collect();
    let schedules = netcron_services::schedules::list(
        &state.db,
        netcron_services::schedules::ScheduleFilter::default(),
        netcron_services::PageRequest {
            limit: 500,
            after: None,
        },
    )
    .await?;
    let schedules = super::schedules::labelled(&state.db, schedules)
        .await?
        .into_iter()
        .map(|(s, label)| (s.id.to_string(), format!("{label} · {}", s.cron_expression)))
        .collect();
    // The first 500 commands and jobs by name, each as a person knows it.
    let commands = command::Entity::find()
        .order_by_asc(command::Column::Name)
        .limit(500)
        .all(&state.db)
        .await?;
    let order: Vec<uuid::Uuid> = commands.iter().map(|c| c.id).collect();
    let mut labels = netcron_services::schedules::command_labels(&state.db, commands).await?;
    let commands = order
        .into_iter()
        .map(|id| (id.to_string(), labels.remove(&id).unwrap_or_default()))
        .collect();
    render(&ListPage {
        chrome: Chrome::new(&operator, "runs"),
        rows: view::run_rows(&state.db, found).await?,
        statuses: RunStatus::ALL.iter().map(|s| s.as_str()).collect(),
        status,
        device_id,
        schedule_id,
        from,
        to,
        devices,
        schedules,
        command_id,
        commands,
        next,
    })
}

/// How much output one page of the run page shows.
const OUTPUT_PAGE: u64 = 64 * 1024;

pub struct AttemptRow {
    pub n: usize,
    pub started: String,
    pub duration: String,
    pub status: String,
    pub error: String,
}

pub struct OutputView {
    pub name: &'static str,
    pub text: String,
    pub total: String,
    pub offset: u64,
    pub prev: Option<u64>,
    pub next: Option<u64>,
}

#[derive(askama::Template)]
#[template(path = "console/run.html")]
struct RunPage {
    chrome: Chrome,
    id: String,
    status: String,
    live: bool,
    device_id: String,
    device: String,
    command: String,
    facts: RunFacts,
    attempts: Vec<AttemptRow>,
    outputs: Vec<OutputView>,
    /// A `config_backup` run's configuration, and the version it stored (none when it was
    /// the same as the latest).
    config: Option<String>,
    config_version: Option<i32>,
    /// A network device's commands, each with its own output (`payload.lines`).
    lines: Vec<CommandLine>,
    /// A structured payload (an inventory) as facts and tables.
    sections: Vec<view::PayloadSection>,
    payload: String,
}

/// One line of a network device's command and what it printed.
struct CommandLine {
    command: String,
    output: String,
    failed: bool,
}

/// `payload.lines` of a run on an interactive CLI (docs/PROTOCOL.md), in order.
fn command_lines(payload: Option<&serde_json::Value>) -> Vec<CommandLine> {
    payload
        .and_then(|p| p.get("lines"))
        .and_then(serde_json::Value::as_array)
        .map(|lines| {
            lines
                .iter()
                .map(|l| CommandLine {
                    command: l["command"].as_str().unwrap_or_default().to_owned(),
                    output: view::terminal_text(l["output"].as_str().unwrap_or_default()),
                    failed: l["failed"].as_bool().unwrap_or(false),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What the run page says of a run beside its output. While the run is live the page asks for
/// it again every two seconds (`/console/runs/{id}/facts`), so "Started" and the attempt fill
/// in as they happen rather than at the end.
struct RunFacts {
    id: String,
    status: String,
    live: bool,
    schedule_id: String,
    trigger: String,
    attempt: i32,
    scheduled_for: String,
    started_at: String,
    finished_at: String,
    duration: String,
    exit: String,
    error_kind: String,
    error_message: String,
    truncated: bool,
}

impl RunFacts {
    fn of(run: &netcron_store::entity::run::Model) -> Self {
        Self {
            id: run.id.to_string(),
            status: run.status.to_string(),
            live: !run.status.is_terminal(),
            schedule_id: run.schedule_id.map(|s| s.to_string()).unwrap_or_default(),
            trigger: run.trigger.to_string(),
            attempt: run.attempt,
            scheduled_for: view::when(run.scheduled_for),
            started_at: view::when_opt(run.started_at),
            finished_at: view::when_opt(run.finished_at),
            duration: view::duration_ms(run.duration_ms),
            exit: match (run.exit_code, &run.exit_signal) {
                (_, Some(signal)) => format!("signal {signal}"),
                (Some(code), None) => code.to_string(),
                (None, None) => String::new(),
            },
            error_kind: run.error_kind.clone().unwrap_or_default(),
            error_message: view::terminal_text(run.error_message.as_deref().unwrap_or_default()),
            truncated: run.truncated,
        }
    }
}

#[derive(askama::Template)]
#[template(path = "console/run_facts.html")]
struct RunFactsFragment {
    facts: RunFacts,
}

/// The run page's facts alone, for its refresh while the run is live.
async fn facts(
    State(state): State<AppState>,
    _operator: Operator,
    Path(run_id): Path<String>,
) -> Result<Response> {
    let run_id = id(&run_id, "run_id")?;
    let run = runs::get(&state.db, run_id).await?;
    render(&RunFactsFragment {
        facts: RunFacts::of(&run),
    })
}

/// Cancels a queued run, as `POST /runs/{id}/cancel` does; a run that began meanwhile is
/// the API's 409, shown as an error page with its reason.
async fn cancel(
    State(state): State<AppState>,
    Path(run_id): Path<String>,
    _action: Action,
) -> Result<Response> {
    let run_id = id(&run_id, "run_id")?;
    runs::cancel(&state.db, &state.redis, &state.leases, run_id).await?;
    Ok(see_other(&format!("/console/runs/{run_id}")))
}

/// The run page's output offsets, as typed in the address bar: parsed here so that a value
/// that is not a byte offset is a 400 naming its parameter.
#[derive(Deserialize, Default)]
struct ShowParams {
    stdout: Option<String>,
    stderr: Option<String>,
}

/// An output offset: a whole number of bytes, empty for 0.
fn offset(text: Option<&str>, field: &str) -> Result<u64> {
    let text = text.unwrap_or_default().trim();
    if text.is_empty() {
        return Ok(0);
    }
    text.parse().map_err(|_| {
        Shown(ApiError::bad_parameter(
            field,
            format!("`{text}` is not a byte offset (a whole number from 0)"),
        ))
    })
}

async fn output_view(
    state: &AppState,
    run_id: uuid::Uuid,
    stream: OutputStream,
    offset: u64,
) -> Result<OutputView> {
    let slice = runs::output(&state.db, run_id, stream, offset, OUTPUT_PAGE).await?;
    if offset > slice.total {
        let field = match stream {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
        };
        return Err(Shown(ApiError::bad_parameter(
            field,
            format!(
                "{offset} is past the end of the output ({} bytes)",
                slice.total
            ),
        )));
    }
    // A page may begin or end inside a character: the pieces show as U+FFFD, which is
    // honest about the cut.
    let text = view::terminal_text(&String::from_utf8_lossy(&slice.bytes));
    let end = offset + slice.bytes.len() as u64;
    Ok(OutputView {
        name: match stream {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
        },
        text,
        total: view::bytes(i64::try_from(slice.total).ok()),
        offset,
        prev: (offset > 0).then(|| offset.saturating_sub(OUTPUT_PAGE)),
        next: (end < slice.total).then_some(end),
    })
}

async fn show(
    State(state): State<AppState>,
    operator: Operator,
    Path(run_id): Path<String>,
    Query(params): Query<ShowParams>,
) -> Result<Response> {
    let run_id = id(&run_id, "run_id")?;
    let run = runs::get(&state.db, run_id).await?;
    let device = device::Entity::find_by_id(run.device_id)
        .one(&state.db)
        .await?
        .map(|d| d.name)
        .unwrap_or_default();
    let command = command::Entity::find_by_id(run.command_id)
        .one(&state.db)
        .await?
        .map(|c| c.name)
        .unwrap_or_default();
    let attempts = run
        .attempts
        .as_ref()
        .and_then(|a| a.as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            let field = |name: &str| {
                a.get(name)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_owned()
            };
            AttemptRow {
                n: i + 1,
                started: field("started_at"),
                duration: view::duration_ms(
                    a.get("duration_ms").and_then(serde_json::Value::as_i64),
                ),
                status: field("status"),
                error: [field("error_kind"), field("error_message")]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(": "),
            }
        })
        .collect();
    let live = !run.status.is_terminal();
    let offsets = [
        (
            OutputStream::Stdout,
            offset(params.stdout.as_deref(), "stdout")?,
        ),
        (
            OutputStream::Stderr,
            offset(params.stderr.as_deref(), "stderr")?,
        ),
    ];
    let mut outputs = Vec::new();
    if !live {
        for (stream, offset) in offsets {
            let out = output_view(&state, run_id, stream, offset).await?;
            if !out.text.is_empty() || offset > 0 || stream == OutputStream::Stdout {
                outputs.push(out);
            }
        }
    }
    // A backup's configuration is text: shown as such, with the version it became (if it
    // changed anything), not as one escaped JSON string.
    let config = run
        .payload
        .as_ref()
        .and_then(|p| p.get("config"))
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned);
    let config_version = match config {
        Some(_) => netcron_store::entity::config_version::Entity::find()
            .filter(netcron_store::entity::config_version::Column::RunId.eq(run.id))
            .one(&state.db)
            .await?
            .map(|v| v.version),
        None => None,
    };
    let lines = command_lines(run.payload.as_ref());
    let sections = match &run.payload {
        Some(p) if config.is_none() && lines.is_empty() => view::payload_sections(p),
        _ => Vec::new(),
    };
    let payload = match &run.payload {
        // Shown as sections instead; JSON only for what has no better form.
        Some(p) if config.is_none() && lines.is_empty() && sections.is_empty() => {
            serde_json::to_string_pretty(p).unwrap_or_default()
        }
        _ => String::new(),
    };
    render(&RunPage {
        chrome: Chrome::new(&operator, "runs"),
        id: run.id.to_string(),
        status: run.status.to_string(),
        live,
        device_id: run.device_id.to_string(),
        device,
        command,
        facts: RunFacts::of(&run),
        attempts,
        outputs,
        config,
        config_version,
        lines,
        sections,
        payload,
    })
}

/// The run's live output for the run page (an `EventSource` sends the session cookie, not a
/// bearer token); the same events as `GET /runs/{run_id}/output/live`.
async fn live(
    State(state): State<AppState>,
    _operator: Operator,
    Path(run_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    let run_id = id(&run_id, "run_id")?;
    Ok(crate::routes::runs::live_events(&state, run_id, &headers).await?)
}
