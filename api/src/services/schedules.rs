use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use netcron_common::db::SCHEDULE_CHANGED_CHANNEL;
use netcron_common::domain::{CronSpec, MisfirePolicy, OverlapPolicy, Timing, parse_timezone};
use netcron_common::entity::schedule;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    Set, Statement, TransactionTrait,
};
use uuid::Uuid;

use super::{new_id, paginate};
use crate::error::{ApiError, Result};
use crate::pagination::PageRequest;

pub struct NewSchedule {
    pub cron: CronSpec,
    pub tz: Tz,
    pub enabled: bool,
    pub misfire_policy: MisfirePolicy,
    pub overlap_policy: OverlapPolicy,
    pub start_at: Option<DateTime<Utc>>,
    pub end_at: Option<DateTime<Utc>>,
    pub pause_after_failures: Option<i32>,
}

#[derive(Default)]
pub struct ScheduleChanges {
    pub cron: Option<CronSpec>,
    pub tz: Option<Tz>,
    pub enabled: Option<bool>,
    pub misfire_policy: Option<MisfirePolicy>,
    pub overlap_policy: Option<OverlapPolicy>,
    pub start_at: Option<Option<DateTime<Utc>>>,
    pub end_at: Option<Option<DateTime<Utc>>>,
    pub pause_after_failures: Option<Option<i32>>,
}

#[derive(Default)]
pub struct ScheduleFilter {
    pub device_id: Option<Uuid>,
    pub command_id: Option<Uuid>,
    pub enabled: Option<bool>,
}

fn check_window(start: Option<DateTime<Utc>>, end: Option<DateTime<Utc>>) -> Result<()> {
    match (start, end) {
        (Some(s), Some(e)) if e <= s => Err(ApiError::validation(
            "end_at",
            "must be later than start_at",
        )),
        _ => Ok(()),
    }
}

/// The stored schedule's timing. Rows are validated on write, so a failure here means the row
/// was changed behind the API's back.
pub fn timing(model: &schedule::Model) -> Result<Timing> {
    let cron = CronSpec::parse(&model.cron_expression).map_err(|e| {
        anyhow::anyhow!(
            "schedule {} has a stored cron expression that {e}",
            model.id
        )
    })?;
    let tz = parse_timezone(&model.timezone)
        .map_err(|e| anyhow::anyhow!("schedule {} has a stored time zone: {e}", model.id))?;
    Ok(Timing {
        cron,
        tz,
        start_at: model.start_at,
        end_at: model.end_at,
    })
}

/// Wakes the scheduler. A lost notification only delays re-planning until its next wake-up.
async fn notify(db: &DatabaseConnection, id: Uuid) -> Result<()> {
    db.execute_raw(Statement::from_sql_and_values(
        db.get_database_backend(),
        "SELECT pg_notify($1, $2)",
        [SCHEDULE_CHANGED_CHANNEL.into(), id.to_string().into()],
    ))
    .await?;
    Ok(())
}

pub async fn create(
    db: &DatabaseConnection,
    device_id: Uuid,
    command_id: Uuid,
    new: NewSchedule,
) -> Result<schedule::Model> {
    super::commands::get(db, device_id, command_id).await?;
    check_window(new.start_at, new.end_at)?;
    let timing = Timing {
        cron: new.cron,
        tz: new.tz,
        start_at: new.start_at,
        end_at: new.end_at,
    };
    let now = Utc::now();
    let model = schedule::ActiveModel {
        id: Set(new_id()),
        command_id: Set(command_id),
        cron_expression: Set(timing.cron.as_str().to_owned()),
        timezone: Set(timing.tz.name().to_owned()),
        enabled: Set(new.enabled),
        misfire_policy: Set(new.misfire_policy),
        overlap_policy: Set(new.overlap_policy),
        start_at: Set(new.start_at),
        end_at: Set(new.end_at),
        next_fire_at: Set(timing.next_after(now)),
        consecutive_failures: Set(0),
        pause_after_failures: Set(new.pause_after_failures),
        paused_reason: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(db)
    .await?;
    notify(db, model.id).await?;
    Ok(model)
}

pub async fn get(db: &DatabaseConnection, id: Uuid) -> Result<schedule::Model> {
    schedule::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| ApiError::not_found("schedule", id))
}

pub async fn list(
    db: &DatabaseConnection,
    filter: ScheduleFilter,
    page: PageRequest,
) -> Result<Vec<schedule::Model>> {
    let mut select = schedule::Entity::find();
    if let Some(device_id) = filter.device_id {
        select = select.filter(Expr::cust_with_values(
            "command_id IN (SELECT id FROM commands WHERE device_id = $1)",
            [device_id],
        ));
    }
    if let Some(command_id) = filter.command_id {
        select = select.filter(schedule::Column::CommandId.eq(command_id));
    }
    if let Some(enabled) = filter.enabled {
        select = select.filter(schedule::Column::Enabled.eq(enabled));
    }
    Ok(paginate(select, schedule::Column::Id, page, false)
        .all(db)
        .await?)
}

/// Applies `changes`. When the timing changes or a paused schedule is resumed, the next fire
/// time is recomputed from now: fire times that passed while paused are not caught up.
pub async fn update(
    db: &DatabaseConnection,
    id: Uuid,
    changes: ScheduleChanges,
) -> Result<schedule::Model> {
    let current = get(db, id).await?;
    let mut timing = timing(&current)?;
    let timing_changed = changes.cron.is_some()
        || changes.tz.is_some()
        || changes.start_at.is_some()
        || changes.end_at.is_some();
    let resumed = changes.enabled == Some(true) && !current.enabled;
    if let Some(cron) = changes.cron {
        timing.cron = cron;
    }
    if let Some(tz) = changes.tz {
        timing.tz = tz;
    }
    if let Some(start) = changes.start_at {
        timing.start_at = start;
    }
    if let Some(end) = changes.end_at {
        timing.end_at = end;
    }
    check_window(timing.start_at, timing.end_at)?;
    let mut model: schedule::ActiveModel = current.into();
    if timing_changed || resumed {
        model.next_fire_at = Set(timing.next_after(Utc::now()));
    }
    model.cron_expression = Set(timing.cron.as_str().to_owned());
    model.timezone = Set(timing.tz.name().to_owned());
    model.start_at = Set(timing.start_at);
    model.end_at = Set(timing.end_at);
    if let Some(v) = changes.enabled {
        model.enabled = Set(v);
    }
    if resumed {
        // A resumed schedule starts counting failures afresh, or it would pause again at once.
        model.consecutive_failures = Set(0);
        model.paused_reason = Set(None);
    }
    if let Some(v) = changes.pause_after_failures {
        model.pause_after_failures = Set(v);
    }
    if let Some(v) = changes.misfire_policy {
        model.misfire_policy = Set(v);
    }
    if let Some(v) = changes.overlap_policy {
        model.overlap_policy = Set(v);
    }
    model.updated_at = Set(Utc::now());
    let model = model.update(db).await?;
    notify(db, id).await?;
    Ok(model)
}

/// Deletes the schedule; its runs stay in the history with no schedule.
pub async fn delete(db: &DatabaseConnection, id: Uuid) -> Result<()> {
    get(db, id).await?;
    let txn = db.begin().await?;
    netcron_lifecycle::runs::detach_schedule(&txn, id).await?;
    schedule::Entity::delete_by_id(id).exec(&txn).await?;
    txn.commit().await?;
    notify(db, id).await
}
