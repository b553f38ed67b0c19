//! Schedules: the list with next fire times, the create and edit forms with a live preview of
//! the fire times as the cron expression and time zone are typed, pause and resume.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use chrono::Utc;
use netcron_common::domain::{DayMatch, MisfirePolicy, OverlapPolicy, Timing};
use netcron_store::entity::{command, schedule};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder};
use serde::Deserialize;
use uuid::Uuid;

use super::devices::id;
use super::forms::{Fields, Filled, Kind, edited, field_error};
use super::session::{Action, Operator};
use super::view;
use super::{Chrome, Notice, Result, Shown, render, render_form, see_other};
use crate::error::ApiError;
use crate::routes::schedules::{ScheduleCreate, SchedulePatch};
use crate::state::AppState;
use netcron_services::schedules;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console/schedules", get(list).post(create))
        .route("/console/schedules/new", get(new_form))
        .route("/console/schedules/preview", post(preview))
        .route("/console/schedules/{id}", post(update))
        .route("/console/schedules/{id}/edit", get(edit_form))
        .route("/console/schedules/{id}/pause", post(pause))
        .route("/console/schedules/{id}/resume", post(resume))
}

/// Each schedule with "command on device", in two queries.
pub async fn labelled(
    db: &DatabaseConnection,
    rows: Vec<schedule::Model>,
) -> Result<Vec<(schedule::Model, String)>> {
    let command_ids: Vec<Uuid> = rows.iter().map(|s| s.command_id).collect();
    let commands: Vec<command::Model> = command::Entity::find()
        .filter(command::Column::Id.is_in(command_ids))
        .all(db)
        .await?;
    let labels = netcron_services::schedules::command_labels(db, commands).await?;
    Ok(rows
        .into_iter()
        .map(|s| {
            let label = labels.get(&s.command_id).cloned().unwrap_or_default();
            (s, label)
        })
        .collect())
}

pub struct ScheduleRow {
    pub id: String,
    pub label: String,
    pub cron: String,
    pub timezone: String,
    pub next: String,
    pub enabled: bool,
    pub paused_reason: String,
    pub policies: String,
}

#[derive(askama::Template)]
#[template(path = "console/schedules.html")]
struct ListPage {
    chrome: Chrome,
    rows: Vec<ScheduleRow>,
    next: Option<String>,
}

#[derive(Deserialize)]
struct ListParams {
    cursor: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    operator: Operator,
    Query(params): Query<ListParams>,
    Query(notice): Query<Notice>,
) -> Result<Response> {
    let page = crate::pagination::PageParams {
        limit: Some(100),
        cursor: params.cursor.filter(|c| !c.is_empty()),
    }
    .parse()?;
    let mut rows = schedules::list(&state.db, schedules::ScheduleFilter::default(), page).await?;
    let next = view::next_page(&mut rows, page.limit, |s| s.id, &[]);
    let rows = labelled(&state.db, rows)
        .await?
        .into_iter()
        .map(|(s, label)| ScheduleRow {
            id: s.id.to_string(),
            label,
            next: if s.enabled {
                s.next_fire_at
                    .map(|t| view::when_in(t, &s.timezone))
                    .unwrap_or_default()
            } else {
                String::new()
            },
            cron: s.cron_expression,
            timezone: s.timezone,
            enabled: s.enabled,
            paused_reason: s.paused_reason.unwrap_or_default(),
            policies: format!(
                "misfire {}, overlap {}, day match {}",
                s.misfire_policy, s.overlap_policy, s.day_match
            ),
        })
        .collect();
    render(&ListPage {
        chrome: Chrome::new(&operator, "schedules").noticed(&notice),
        rows,
        next,
    })
}

/// The options of a policy select, each with what it means (the domain's own words).
pub struct Choice {
    pub value: &'static str,
    pub meaning: &'static str,
}

fn misfire_choices() -> Vec<Choice> {
    MisfirePolicy::ALL
        .iter()
        .map(|p| Choice {
            value: p.as_str(),
            meaning: match p {
                MisfirePolicy::Skip => {
                    "drop fire times that passed while netcron was down; each is recorded as a missed run"
                }
                MisfirePolicy::RunOnce => {
                    "run once to catch up; the other passed fire times are recorded as missed"
                }
                MisfirePolicy::RunAll => "run every passed fire time (at most 100), oldest first",
            },
        })
        .collect()
}

/// Short, as the options of a select: the label above it gives the example they refer to.
fn day_match_choices() -> Vec<Choice> {
    DayMatch::ALL
        .iter()
        .map(|d| Choice {
            value: d.as_str(),
            meaning: match d {
                DayMatch::Either => "on the 1st, the 15th and every Monday (crontab's rule)",
                DayMatch::Both => "only on Mondays that are the 1st or the 15th (the earlier rule)",
            },
        })
        .collect()
}

fn overlap_choices() -> Vec<Choice> {
    OverlapPolicy::ALL
        .iter()
        .map(|p| Choice {
            value: p.as_str(),
            meaning: match p {
                OverlapPolicy::Skip => {
                    "if the previous run is unfinished, do not start another; record a skipped run"
                }
                OverlapPolicy::Queue => "queue the new run behind the unfinished one",
                OverlapPolicy::Allow => "start it anyway, in parallel",
            },
        })
        .collect()
}

#[derive(askama::Template)]
#[template(path = "console/schedule_form.html")]
struct FormPage {
    chrome: Chrome,
    /// `None` for a new schedule.
    schedule_id: Option<String>,
    /// The command it runs (fixed when editing).
    command_label: String,
    commands: Vec<(String, String)>,
    form: Filled,
    misfire: Vec<Choice>,
    overlap: Vec<Choice>,
    day_match: Vec<Choice>,
    preview: Preview,
}

/// The live preview: the next fire times of what the form holds, or why there are none.
#[derive(askama::Template)]
#[template(path = "console/schedule_preview.html")]
pub struct Preview {
    times: Vec<(String, String)>,
    problem: Option<String>,
    timezone: String,
    /// The zone's wall clock is UTC's at every time shown: the UTC column alone.
    utc_only: bool,
}

const FIELDS: [(&str, Kind); 9] = [
    ("cron_expression", Kind::Text),
    ("timezone", Kind::Text),
    ("enabled", Kind::Check),
    ("misfire_policy", Kind::Text),
    ("overlap_policy", Kind::Text),
    ("start_at", Kind::Text),
    ("end_at", Kind::Text),
    ("pause_after_failures", Kind::Int),
    ("day_match", Kind::Text),
];

/// Parses the form exactly as a create would, and lists the next fire times.
fn preview_of(form: &Fields) -> Preview {
    let timezone = form.text("timezone").unwrap_or("UTC").to_owned();
    let parsed = form
        .body::<ScheduleCreate>(&FIELDS)
        .and_then(ScheduleCreate::parse);
    match parsed {
        Ok(new) => {
            let timing = Timing {
                cron: new.cron,
                tz: new.tz,
                start_at: new.start_at,
                end_at: new.end_at,
            };
            let upcoming = timing.upcoming(Utc::now(), 5);
            // A schedule whose wall clock is UTC's at every time shown: one column says it all.
            let utc_only = upcoming
                .iter()
                .all(|t| t.with_timezone(&timing.tz).naive_local() == t.naive_utc());
            let times: Vec<(String, String)> = upcoming
                .into_iter()
                .map(|t| {
                    (
                        t.with_timezone(&timing.tz)
                            .format("%a %Y-%m-%d %H:%M:%S %Z")
                            .to_string(),
                        view::when(t),
                    )
                })
                .collect();
            let problem = times
                .is_empty()
                .then(|| "This schedule has no future fire time.".to_owned());
            Preview {
                times,
                problem,
                timezone,
                utc_only,
            }
        }
        Err(e) => Preview {
            times: Vec::new(),
            problem: Some(e.to_string()),
            timezone,
            utc_only: false,
        },
    }
}

/// Answers the preview fragment that htmx swaps in while the operator types.
async fn preview(_operator: Operator, body: axum::body::Bytes) -> Result<Response> {
    render(&preview_of(&Fields::parse(&body)))
}

/// "show version on core-sw1" for a device's command, "backup (job)" for a job.
async fn command_choices(db: &DatabaseConnection) -> Result<Vec<(String, String)>> {
    let commands = command::Entity::find()
        .order_by_asc(command::Column::Name)
        .all(db)
        .await?;
    let order: Vec<Uuid> = commands.iter().map(|c| c.id).collect();
    let mut labels = netcron_services::schedules::command_labels(db, commands).await?;
    Ok(order
        .into_iter()
        .map(|id| (id.to_string(), labels.remove(&id).unwrap_or_default()))
        .collect())
}

async fn form_page(
    state: &AppState,
    operator: &Operator,
    schedule_id: Option<Uuid>,
    command_label: String,
    values: Fields,
    error: Option<(String, String)>,
) -> Result<Response> {
    let commands = if schedule_id.is_none() {
        command_choices(&state.db).await?
    } else {
        Vec::new()
    };
    let preview = preview_of(&values);
    let form = Filled::new(values, error);
    let failed = form.failed();
    render_form(
        &FormPage {
            chrome: Chrome::new(operator, "schedules"),
            schedule_id: schedule_id.map(|s| s.to_string()),
            command_label,
            commands,
            form,
            misfire: misfire_choices(),
            overlap: overlap_choices(),
            day_match: day_match_choices(),
            preview,
        },
        failed,
    )
}

#[derive(Deserialize)]
struct NewParams {
    command_id: Option<String>,
}

async fn new_form(
    State(state): State<AppState>,
    operator: Operator,
    Query(params): Query<NewParams>,
) -> Result<Response> {
    let values = {
        let mut values = form_urlencoded::Serializer::new(String::new());
        values.extend_pairs([
            ("cron_expression", "0 2 * * *"),
            ("day_match", "either"),
            ("timezone", "UTC"),
            ("enabled", "on"),
            ("misfire_policy", "run_once"),
            ("overlap_policy", "skip"),
        ]);
        if let Some(c) = &params.command_id {
            values.append_pair("command_id", c);
        }
        Fields::parse(values.finish().as_bytes())
    };
    form_page(&state, &operator, None, String::new(), values, None).await
}

async fn create(State(state): State<AppState>, action: Action) -> Result<Response> {
    let created = async {
        let command_id = action
            .form
            .text("command_id")
            .ok_or_else(|| ApiError::validation("command_id", "choose the command to schedule"))
            .and_then(|c| {
                Uuid::parse_str(c)
                    .map_err(|_| ApiError::validation("command_id", format!("`{c}` is not a UUID")))
            })?;
        let command = command::Entity::find_by_id(command_id)
            .one(&state.db)
            .await?
            .ok_or_else(|| {
                ApiError::validation("command_id", format!("command {command_id} does not exist"))
            })?;
        let body: ScheduleCreate = action.form.body(&FIELDS)?;
        schedules::create_for(&state.db, command.id, body.parse()?)
            .await
            .map_err(ApiError::from)
    }
    .await;
    match created {
        Ok(_) => Ok(see_other("/console/schedules")),
        Err(e) => match field_error(&e) {
            Some(err) => {
                form_page(
                    &state,
                    &action.operator,
                    None,
                    String::new(),
                    action.form,
                    Some(err),
                )
                .await
            }
            None => Err(e.into()),
        },
    }
}

async fn edit_form(
    State(state): State<AppState>,
    operator: Operator,
    Path(schedule_id): Path<String>,
) -> Result<Response> {
    let schedule_id = id(&schedule_id, "schedule_id")?;
    let s = schedules::get(&state.db, schedule_id).await?;
    let values = {
        let mut values = form_urlencoded::Serializer::new(String::new());
        values.extend_pairs([
            ("cron_expression", s.cron_expression.clone()),
            ("day_match", s.day_match.to_string()),
            ("timezone", s.timezone.clone()),
            ("misfire_policy", s.misfire_policy.to_string()),
            ("overlap_policy", s.overlap_policy.to_string()),
            (
                "start_at",
                s.start_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
            ),
            (
                "end_at",
                s.end_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
            ),
            (
                "pause_after_failures",
                s.pause_after_failures
                    .map(|n| n.to_string())
                    .unwrap_or_default(),
            ),
        ]);
        if s.enabled {
            values.append_pair("enabled", "on");
        }
        Fields::parse(values.finish().as_bytes())
    };
    let label = labelled(&state.db, vec![s])
        .await?
        .pop()
        .map(|(_, l)| l)
        .unwrap_or_default();
    form_page(&state, &operator, Some(schedule_id), label, values, None).await
}

async fn update(
    State(state): State<AppState>,
    Path(schedule_id): Path<String>,
    action: Action,
) -> Result<Response> {
    let schedule_id = id(&schedule_id, "schedule_id")?;
    let mut spec = edited(&FIELDS);
    // Empty window bounds and failure limits on the edit form clear them.
    spec[5] = ("start_at", Kind::Nullable);
    spec[6] = ("end_at", Kind::Nullable);
    spec[7] = ("pause_after_failures", Kind::NullableInt);
    let updated = async {
        let body: SchedulePatch = action.form.body(&spec)?;
        schedules::update(&state.db, &state.fence(), schedule_id, body.parse()?)
            .await
            .map_err(ApiError::from)
    }
    .await;
    match updated {
        Ok(_) => Ok(see_other("/console/schedules")),
        Err(e) => match field_error(&e) {
            Some(err) => {
                let label = match schedules::get(&state.db, schedule_id).await {
                    Ok(s) => labelled(&state.db, vec![s]).await?.pop().map(|(_, l)| l),
                    Err(_) => None,
                };
                form_page(
                    &state,
                    &action.operator,
                    Some(schedule_id),
                    label.unwrap_or_default(),
                    action.form,
                    Some(err),
                )
                .await
            }
            None => Err(e.into()),
        },
    }
}

async fn set_enabled(state: &AppState, schedule_id: &str, enabled: bool) -> Result<Response> {
    let schedule_id = id(schedule_id, "schedule_id")?;
    let changes = schedules::ScheduleChanges {
        enabled: Some(enabled),
        ..Default::default()
    };
    schedules::update(&state.db, &state.fence(), schedule_id, changes)
        .await
        .map_err(Shown::from)?;
    Ok(see_other("/console/schedules"))
}

async fn pause(
    State(state): State<AppState>,
    Path(schedule_id): Path<String>,
    _action: Action,
) -> Result<Response> {
    set_enabled(&state, &schedule_id, false).await
}

async fn resume(
    State(state): State<AppState>,
    Path(schedule_id): Path<String>,
    _action: Action,
) -> Result<Response> {
    set_enabled(&state, &schedule_id, true).await
}
