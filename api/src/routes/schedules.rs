use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use netcron_common::domain::{CronSpec, DayMatch, MisfirePolicy, OverlapPolicy, parse_timezone};
use netcron_common::stored::Stored;
use netcron_store::entity::schedule;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{DeleteErrors, ListErrors, ReadErrors, WriteErrors, field, nullable};
use crate::error::{ApiError, Result};
use crate::extract::{Json, Path, Query};
use crate::pagination::{Page, PageParams};
use crate::state::AppState;
use netcron_services::schedules as service;
use netcron_services::schedules::{NewSchedule, ScheduleChanges, ScheduleFilter};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_schedule, list_command_schedules))
        .routes(routes!(list_schedules))
        .routes(routes!(get_schedule, update_schedule, delete_schedule))
        .routes(routes!(pause_schedule))
        .routes(routes!(resume_schedule))
        .routes(routes!(preview_schedule))
}

/// A cron schedule for a command.
///
/// `cron_expression` accepts:
/// - 5 fields, standard crontab `minute hour day-of-month month day-of-week`, firing at second
///   0; day-of-week is 0-7 with 0 and 7 = Sunday, or names (MON-FRI);
/// - 6 fields `second minute hour day-of-month month day-of-week`, and
/// - 7 fields, the 6-field form plus `year`; in the 6/7-field forms day-of-week is 1-7 with
///   1 = Sunday (Quartz style), or names;
/// - `@hourly`, `@daily` (`@midnight`), `@weekly`, `@monthly`, `@yearly` (`@annually`).
///
/// Day-of-month also takes `L` (the last day), `LW` (the last weekday) and `15W` (the weekday
/// nearest to the 15th, within the month); day-of-week `MON#1` (the first Monday, `#1` to
/// `#5`) and `5L` or `FRIL` (the last Friday); either takes `?` (no specific value).
///
/// When both day-of-month and day-of-week are restricted (neither begins with `*` nor is
/// `?`), `day_match` decides: `either` (default, crontab's rule) fires on a day that matches
/// either field, `both` only on a day that matches both.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"cron_expression": "*/5 * * * *", "timezone": "Europe/Berlin", "enabled": true}))]
pub struct ScheduleCreate {
    #[schema(example = "*/5 * * * *")]
    pub cron_expression: String,
    /// How day-of-month and day-of-week combine when both are restricted (default `either`:
    /// `0 0 1,15 * MON` fires on the 1st, the 15th and every Monday; `both`: only on Mondays
    /// that are the 1st or the 15th).
    pub day_match: Option<DayMatch>,
    /// IANA time zone whose wall clock the expression follows (default `UTC`).
    #[schema(example = "Europe/Berlin", default = "UTC")]
    pub timezone: Option<String>,
    /// Paused when false (default true).
    #[schema(default = true)]
    pub enabled: Option<bool>,
    /// What happens to fire times missed while netcron was down (default `run_once`).
    pub misfire_policy: Option<MisfirePolicy>,
    /// What happens when a fire time comes while the previous run is unfinished (default `skip`).
    pub overlap_policy: Option<OverlapPolicy>,
    /// No fire before this instant (RFC 3339).
    pub start_at: Option<DateTime<Utc>>,
    /// No fire after this instant (RFC 3339); must be later than `start_at`.
    pub end_at: Option<DateTime<Utc>>,
    /// Pause the schedule automatically after this many failed runs in a row (1 to 1000);
    /// absent or null: never. A `schedule_auto_paused` event reports it.
    #[schema(example = 5, minimum = 1, maximum = 1000)]
    pub pause_after_failures: Option<i32>,
}

/// Changes to a schedule; `start_at: null` or `end_at: null` removes that bound.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"cron_expression": "0 */2 * * *"}))]
pub struct SchedulePatch {
    /// A new expression; it keeps the schedule's `day_match` unless the patch names one.
    pub cron_expression: Option<String>,
    /// A new day rule, for the new or the stored expression.
    pub day_match: Option<DayMatch>,
    pub timezone: Option<String>,
    pub enabled: Option<bool>,
    pub misfire_policy: Option<MisfirePolicy>,
    pub overlap_policy: Option<OverlapPolicy>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub start_at: Option<Option<DateTime<Utc>>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub end_at: Option<Option<DateTime<Utc>>>,
    /// `null` turns automatic pausing off.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<i32>, minimum = 1, maximum = 1000)]
    pub pause_after_failures: Option<Option<i32>>,
}

#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "id": "01936b31-2d3e-7f40-8b5c-6d7e8f9a0b1c", "command_id": "01936b30-1c2d-7e3f-9a4b-5c6d7e8f9a0b",
    "cron_expression": "*/5 * * * *", "day_match": "either", "timezone": "Europe/Berlin",
    "enabled": true, "misfire_policy": "run_once", "overlap_policy": "skip",
    "start_at": null, "end_at": null,
    "next_fire_at": "2026-11-22T10:05:00Z", "consecutive_failures": 0,
    "pause_after_failures": null, "paused_reason": null,
    "created_at": "2026-11-22T10:00:00Z", "updated_at": "2026-11-22T10:00:00Z"
}))]
pub struct ScheduleView {
    pub id: Uuid,
    pub command_id: Uuid,
    pub cron_expression: String,
    /// How day-of-month and day-of-week combine when both are restricted. Schedules created
    /// before this field existed have `both`, the rule they were created under.
    pub day_match: Stored<DayMatch>,
    pub timezone: String,
    pub enabled: bool,
    pub misfire_policy: Stored<MisfirePolicy>,
    pub overlap_policy: Stored<OverlapPolicy>,
    pub start_at: Option<DateTime<Utc>>,
    pub end_at: Option<DateTime<Utc>>,
    /// The next fire time in UTC; null once the schedule is past `end_at`.
    pub next_fire_at: Option<DateTime<Utc>>,
    /// Failed or errored runs in a row.
    pub consecutive_failures: i32,
    pub pause_after_failures: Option<i32>,
    /// Set when the schedule was paused automatically; cleared on resume.
    pub paused_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<schedule::Model> for ScheduleView {
    fn from(m: schedule::Model) -> Self {
        Self {
            id: m.id,
            command_id: m.command_id,
            cron_expression: m.cron_expression,
            day_match: m.day_match,
            timezone: m.timezone,
            enabled: m.enabled,
            misfire_policy: m.misfire_policy,
            overlap_policy: m.overlap_policy,
            start_at: m.start_at,
            end_at: m.end_at,
            next_fire_at: m.next_fire_at,
            consecutive_failures: m.consecutive_failures,
            pause_after_failures: m.pause_after_failures,
            paused_reason: m.paused_reason,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

impl ScheduleCreate {
    pub(crate) fn parse(self) -> Result<NewSchedule> {
        Ok(NewSchedule {
            cron: field(
                "day_match",
                field("cron_expression", CronSpec::parse(&self.cron_expression))?
                    .with_day_match(self.day_match.unwrap_or(DayMatch::Either)),
            )?,
            tz: field(
                "timezone",
                parse_timezone(self.timezone.as_deref().unwrap_or("UTC")),
            )?,
            enabled: self.enabled.unwrap_or(true),
            misfire_policy: self.misfire_policy.unwrap_or(MisfirePolicy::RunOnce),
            overlap_policy: self.overlap_policy.unwrap_or(OverlapPolicy::Skip),
            start_at: self.start_at,
            end_at: self.end_at,
            pause_after_failures: self
                .pause_after_failures
                .map(parse_pause_after)
                .transpose()?,
        })
    }
}

fn parse_pause_after(n: i32) -> Result<i32> {
    if (1..=1000).contains(&n) {
        Ok(n)
    } else {
        Err(ApiError::validation(
            "pause_after_failures",
            "must be between 1 and 1000 (or null for never)",
        ))
    }
}

impl SchedulePatch {
    pub(crate) fn parse(self) -> Result<ScheduleChanges> {
        Ok(ScheduleChanges {
            cron: self
                .cron_expression
                .map(|c| field("cron_expression", CronSpec::parse(&c)))
                .transpose()?,
            day_match: self.day_match,
            tz: self
                .timezone
                .map(|t| field("timezone", parse_timezone(&t)))
                .transpose()?,
            enabled: self.enabled,
            misfire_policy: self.misfire_policy,
            overlap_policy: self.overlap_policy,
            start_at: self.start_at,
            end_at: self.end_at,
            pause_after_failures: self
                .pause_after_failures
                .map(|v| v.map(parse_pause_after).transpose())
                .transpose()?,
        })
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ScheduleListParams {
    pub device_id: Option<Uuid>,
    pub command_id: Option<Uuid>,
    pub enabled: Option<bool>,
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u64>,
    pub cursor: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PreviewParams {
    /// How many fire times, 1 to 100 (default 10).
    #[param(minimum = 1, maximum = 100, default = 10)]
    pub count: Option<u32>,
}

/// One upcoming fire time, on the schedule's wall clock and in UTC.
#[derive(Serialize, ToSchema)]
pub struct FireTime {
    #[schema(example = "2026-11-22T11:05:00+01:00")]
    pub local: String,
    pub utc: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
pub struct SchedulePreview {
    pub schedule_id: Uuid,
    pub timezone: String,
    pub fire_times: Vec<FireTime>,
}

const SCHEDULE_ID: &str = "Schedule id";

/// Schedule a command.
#[utoipa::path(post, path = "/devices/{device_id}/commands/{command_id}/schedules", tag = "schedules",
    params(("device_id" = Uuid, Path, description = "Device id"),
           ("command_id" = Uuid, Path, description = "Command id")),
    request_body = ScheduleCreate,
    responses((status = 201, description = "The schedule, with its first fire time", body = ScheduleView), WriteErrors))]
async fn create_schedule(
    State(state): State<AppState>,
    Path((device_id, command_id)): Path<(Uuid, Uuid)>,
    Json(body): Json<ScheduleCreate>,
) -> Result<(StatusCode, axum::Json<ScheduleView>)> {
    let model = service::create(&state.db, device_id, command_id, body.parse()?).await?;
    Ok((StatusCode::CREATED, axum::Json(model.into())))
}

/// List a command's schedules.
#[utoipa::path(get, path = "/devices/{device_id}/commands/{command_id}/schedules", tag = "schedules",
    params(("device_id" = Uuid, Path, description = "Device id"),
           ("command_id" = Uuid, Path, description = "Command id"), PageParams),
    responses((status = 200, description = "One page of schedules", body = Page<ScheduleView>), ListErrors))]
async fn list_command_schedules(
    State(state): State<AppState>,
    Path((device_id, command_id)): Path<(Uuid, Uuid)>,
    Query(page): Query<PageParams>,
) -> Result<axum::Json<Page<ScheduleView>>> {
    let page = page.parse()?;
    netcron_services::commands::get(&state.db, device_id, command_id).await?;
    let filter = ScheduleFilter {
        command_id: Some(command_id),
        ..ScheduleFilter::default()
    };
    let rows = service::list(&state.db, filter, page).await?;
    Ok(axum::Json(Page::from_rows(
        rows,
        page,
        |r| r.id,
        ScheduleView::from,
    )))
}

/// List all schedules, optionally by device, command or enabled.
#[utoipa::path(get, path = "/schedules", tag = "schedules", params(ScheduleListParams),
    responses((status = 200, description = "One page of schedules", body = Page<ScheduleView>), ListErrors))]
async fn list_schedules(
    State(state): State<AppState>,
    Query(params): Query<ScheduleListParams>,
) -> Result<axum::Json<Page<ScheduleView>>> {
    let page = PageParams {
        limit: params.limit,
        cursor: params.cursor,
    }
    .parse()?;
    let filter = ScheduleFilter {
        device_id: params.device_id,
        command_id: params.command_id,
        enabled: params.enabled,
    };
    let rows = service::list(&state.db, filter, page).await?;
    Ok(axum::Json(Page::from_rows(
        rows,
        page,
        |r| r.id,
        ScheduleView::from,
    )))
}

/// Get a schedule.
#[utoipa::path(get, path = "/schedules/{schedule_id}", tag = "schedules",
    params(("schedule_id" = Uuid, Path, description = SCHEDULE_ID)),
    responses((status = 200, description = "The schedule", body = ScheduleView), ReadErrors))]
async fn get_schedule(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<ScheduleView>> {
    Ok(axum::Json(service::get(&state.db, id).await?.into()))
}

/// Change a schedule. Timing changes take effect at once, from now.
#[utoipa::path(patch, path = "/schedules/{schedule_id}", tag = "schedules",
    params(("schedule_id" = Uuid, Path, description = SCHEDULE_ID)),
    request_body = SchedulePatch,
    responses((status = 200, description = "The updated schedule", body = ScheduleView), WriteErrors))]
async fn update_schedule(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Json(body): Json<SchedulePatch>,
) -> Result<axum::Json<ScheduleView>> {
    Ok(axum::Json(
        service::update(&state.db, &state.fence(), id, body.parse()?)
            .await?
            .into(),
    ))
}

/// Delete a schedule; its runs stay in the history.
#[utoipa::path(delete, path = "/schedules/{schedule_id}", tag = "schedules",
    params(("schedule_id" = Uuid, Path, description = SCHEDULE_ID)),
    responses((status = 204, description = "Deleted"), DeleteErrors))]
async fn delete_schedule(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<StatusCode> {
    service::delete(&state.db, &state.fence(), id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_enabled(state: &AppState, id: Uuid, enabled: bool) -> Result<ScheduleView> {
    let changes = ScheduleChanges {
        enabled: Some(enabled),
        ..ScheduleChanges::default()
    };
    Ok(service::update(&state.db, &state.fence(), id, changes)
        .await?
        .into())
}

/// Pause a schedule: no fires until it is resumed.
#[utoipa::path(post, path = "/schedules/{schedule_id}/pause", tag = "schedules",
    params(("schedule_id" = Uuid, Path, description = SCHEDULE_ID)),
    responses((status = 200, description = "The paused schedule", body = ScheduleView), ReadErrors))]
async fn pause_schedule(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<ScheduleView>> {
    Ok(axum::Json(set_enabled(&state, id, false).await?))
}

/// Resume a paused schedule from now; fire times that passed while paused are not caught up.
#[utoipa::path(post, path = "/schedules/{schedule_id}/resume", tag = "schedules",
    params(("schedule_id" = Uuid, Path, description = SCHEDULE_ID)),
    responses((status = 200, description = "The resumed schedule", body = ScheduleView), ReadErrors))]
async fn resume_schedule(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<ScheduleView>> {
    Ok(axum::Json(set_enabled(&state, id, true).await?))
}

/// The next fire times, on the schedule's wall clock and in UTC, within its start/end window.
#[utoipa::path(get, path = "/schedules/{schedule_id}/preview", tag = "schedules",
    params(("schedule_id" = Uuid, Path, description = SCHEDULE_ID), PreviewParams),
    responses((status = 200, description = "Upcoming fire times", body = SchedulePreview), ListErrors))]
async fn preview_schedule(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Query(params): Query<PreviewParams>,
) -> Result<axum::Json<SchedulePreview>> {
    let count = params.count.unwrap_or(10);
    if !(1..=100).contains(&count) {
        return Err(ApiError::bad_parameter("count", "must be 1 to 100"));
    }
    let model = service::get(&state.db, id).await?;
    let timing = service::timing(&model)?;
    let fire_times = timing
        .upcoming(Utc::now(), count as usize)
        .into_iter()
        .map(|utc| FireTime {
            local: utc.with_timezone(&timing.tz).to_rfc3339(),
            utc,
        })
        .collect();
    Ok(axum::Json(SchedulePreview {
        schedule_id: id,
        timezone: model.timezone,
        fire_times,
    }))
}
